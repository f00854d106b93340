"""Pinned results: tiny real runs and the analysis tables on them, to the bit.

The expected values were recorded from the code as it was; a change that alters what a run
computes (its weights, its metrics) or what the analysis reports on it fails here. Only the
listed metrics are compared, so keys added to ``metrics.json`` later do not break the test.
"""
import hashlib
import warnings

import pytest

from analysis.agreement import agreement_table
from analysis.runs import find_runs, runs_frame
from analysis.similarity import linear_cka
from analysis.tables import summarize, transfer_table
from biaskd.artifacts import load_state_dict
from biaskd.train import train
from tiny import TINY, TINY_LM, compose_cfg

pytestmark = pytest.mark.slow

PINNED_METRICS = ("accuracy", "loss", "ece")


def tensor_digests(path) -> dict[str, str]:
    """SHA-256 of each tensor's bytes (with dtype and shape) in a state-dict file."""
    out = {}
    for key, t in sorted(load_state_dict(path).items()):
        t = t.detach().cpu().contiguous()
        h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())
        out[key] = h.hexdigest()[:16]
    return out


def pinned_metrics(run) -> dict:
    return {split: {k: m[k] for k in PINNED_METRICS} for split, m in sorted(run.metrics["splits"].items())}


def check_metrics(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for split, values in expected.items():
        for key, value in values.items():
            assert actual[split][key] == value, (split, key, actual[split][key], value)


#: other training paths (the student's run only): mode, objective, where teacher outputs come from, setup
OTHER_RUNS = {
    "self_forward": ["distill=self", "distill.teacher_outputs=forward"],
    "online": ["distill=online"],
    "hints": ["distill=hints", "distill.alpha=0.5"],
    "relation_schedule": ["distill=relation", "distill.alpha=0.8", "distill.alpha_schedule=linear",
                          "distill.final_alpha=0.2"],
    "logits_mse": ["distill=logits_mse"],
    "lm_cross": [*TINY_LM, "distill=cross"],
    "lm_seqkd": [*TINY_LM, "distill=seqkd", "distill.alpha=0.5", "distill.seqkd.beam_width=2"],
}


# -- the recorded values ---------------------------------------------------------------------------
EXPECTED = {'weights': {'teacher': {'conv.0.bias': 'fb647c275876ba8f',
                         'conv.0.weight': 'f31e6db5411510e8',
                         'fc.1.bias': '2f16aa23b3857b3f',
                         'fc.1.weight': 'ebd6e19983440508',
                         'head.bias': '36ffcd61223bba8f',
                         'head.weight': 'f5b315f1594013e3'},
             'student': {'encoder.1.bias': '9076d0f9ede9f554',
                         'encoder.1.weight': 'aee589108f209e84',
                         'head.bias': 'b23113e18737afb4',
                         'head.weight': '70e1a33dc3d2085f'},
             'independent': {'encoder.1.bias': 'ba9a5e7209696f3f',
                             'encoder.1.weight': 'dffee82ea36836db',
                             'head.bias': 'caa51ab24d0af146',
                             'head.weight': 'c930fe0712a8e693'}},
 'metrics': {'teacher': {'shifted': {'accuracy': 0.28125,
                                     'loss': 1.3718470335006714,
                                     'ece': 0.051478639245033264},
                         'test': {'accuracy': 0.3125, 'loss': 1.3567274808883667, 'ece': 0.0700107291340828}},
             'student': {'shifted': {'accuracy': 0.3984375,
                                     'loss': 1.3526073694229126,
                                     'ece': 0.15346938371658325},
                         'test': {'accuracy': 0.3515625,
                                  'loss': 1.3464481830596924,
                                  'ece': 0.07642252743244171}},
             'independent': {'shifted': {'accuracy': 0.3984375,
                                         'loss': 1.320537805557251,
                                         'ece': 0.11167645454406738},
                             'test': {'accuracy': 0.703125,
                                      'loss': 1.2544684410095215,
                                      'ece': 0.4093204736709595}}},
 'agreement': {'cross/test': (0.4765625, 0.0005576338288387161, 0.3142857142857143),
               'cross/shifted': (0.09375, 0.0011311818903535654, -0.21757770632368703),
               'none/test': (0.171875, 0.002069957238957398, -0.16610169491525423),
               'none/shifted': (0.078125, 0.002044783200539038, -0.21757770632368703)},
 'cka': {'cross': 0.7080623879371419, 'none': 0.7188028937255653},
 'summary': {'teacher/none/shifted/accuracy': 0.28125,
             'teacher/none/shifted/ece': 0.051478639245033264,
             'teacher/none/shifted/loss': 1.3718470335006714,
             'teacher/none/test/accuracy': 0.3125,
             'teacher/none/test/ece': 0.0700107291340828,
             'teacher/none/test/loss': 1.3567274808883667,
             'student/cross/shifted/accuracy': 0.3984375,
             'student/cross/shifted/ece': 0.15346938371658325,
             'student/cross/shifted/loss': 1.3526073694229126,
             'student/cross/test/accuracy': 0.3515625,
             'student/cross/test/ece': 0.07642252743244171,
             'student/cross/test/loss': 1.3464481830596924,
             'student/none/shifted/accuracy': 0.3984375,
             'student/none/shifted/ece': 0.11167645454406738,
             'student/none/shifted/loss': 1.320537805557251,
             'student/none/test/accuracy': 0.703125,
             'student/none/test/ece': 0.4093204736709595,
             'student/none/test/loss': 1.2544684410095215},
 'transfer': {'shifted': (0.3984375, 0.3984375, 0.28125, -0.0), 'test': (0.3515625, 0.703125, 0.3125, 0.9)}}

EXPECTED_OTHER = {'self_forward': {'weights': {'encoder.1.bias': 'fda79b15ecdd9619',
                              'encoder.1.weight': '50c220e2543bf0a5',
                              'head.bias': 'a3002dd93b6607be',
                              'head.weight': '13dfcba7b7adf236'},
                  'metrics': {'shifted': {'accuracy': 0.4375,
                                          'loss': 1.3424826860427856,
                                          'ece': 0.15841099619865417},
                              'test': {'accuracy': 0.4296875,
                                       'loss': 1.315722942352295,
                                       'ece': 0.14958597719669342}}},
 'online': {'weights': {'encoder.1.bias': '20fd59c1acce4b53',
                        'encoder.1.weight': 'fbbe68402e04f4ff',
                        'head.bias': '44669fe749ec6ae7',
                        'head.weight': 'fbf297e083856c03'},
            'metrics': {'shifted': {'accuracy': 0.4140625,
                                    'loss': 1.352057933807373,
                                    'ece': 0.16289348900318146},
                        'test': {'accuracy': 0.3125,
                                 'loss': 1.3502168655395508,
                                 'ece': 0.035048965364694595}}},
 'hints': {'weights': {'encoder.1.bias': '9648ab55bedc569b',
                       'encoder.1.weight': '626b32d68019dc1f',
                       'head.bias': 'ada611851d8d149a',
                       'head.weight': '7e294e5cb021ebdc'},
           'metrics': {'shifted': {'accuracy': 0.3984375,
                                   'loss': 1.3202917575836182,
                                   'ece': 0.11227602511644363},
                       'test': {'accuracy': 0.703125,
                                'loss': 1.2555404901504517,
                                'ece': 0.4103148281574249}}},
 'relation_schedule': {'weights': {'encoder.1.bias': '6d6179117340d9a3',
                                   'encoder.1.weight': 'df38220baab708ef',
                                   'head.bias': 'e1dce665f4bb4a97',
                                   'head.weight': '69ceab0abc989303'},
                       'metrics': {'shifted': {'accuracy': 0.390625,
                                               'loss': 1.325454831123352,
                                               'ece': 0.1050972044467926},
                                   'test': {'accuracy': 0.609375,
                                            'loss': 1.2813640832901,
                                            'ece': 0.32205209136009216}}},
 'logits_mse': {'weights': {'encoder.1.bias': 'c7d7c24ca7cd7cb3',
                            'encoder.1.weight': '3d8bdd2101158054',
                            'head.bias': '112a9819a2a7e50a',
                            'head.weight': '4e4778d045b4788c'},
                'metrics': {'shifted': {'accuracy': 0.3828125,
                                        'loss': 1.3439159393310547,
                                        'ece': 0.10793773084878922},
                            'test': {'accuracy': 0.3359375,
                                     'loss': 1.3444747924804688,
                                     'ece': 0.09642107039690018}}},
 'lm_cross': {'weights': {'embedding.weight': '763235c8ea106cbd',
                          'final_norm.bias': '30c8af3ed90ad21e',
                          'final_norm.weight': '3001a2a21f99fbbd',
                          'layers.0.linear1.bias': 'cf07202a4036e4ab',
                          'layers.0.linear1.weight': '34c79191cdad2a7d',
                          'layers.0.linear2.bias': '7ab0007fc436bb83',
                          'layers.0.linear2.weight': '06504054ea5c7b84',
                          'layers.0.norm1.bias': '44d35fb3e03a560e',
                          'layers.0.norm1.weight': 'deb584f3bbeaf6dd',
                          'layers.0.norm2.bias': 'd4eb567e7c5b78c0',
                          'layers.0.norm2.weight': '3d498af489fc7e56',
                          'layers.0.self_attn.in_proj_bias': '1d6772b978dcad18',
                          'layers.0.self_attn.in_proj_weight': 'c7fc3d4c23c67d15',
                          'layers.0.self_attn.out_proj.bias': 'a16d030c3afa617c',
                          'layers.0.self_attn.out_proj.weight': '362a3eda431e1dd1',
                          'lm_head.bias': '9e65ae4c71144ae5',
                          'lm_head.weight': '5e08b86e58fa8f20',
                          'position.weight': 'a8d6663de1856c8e'},
              'metrics': {'attractors_1': {'accuracy': 0.30000001192092896,
                                           'loss': 0.7405508756637573,
                                           'ece': 0.2642539441585541},
                          'attractors_2': {'accuracy': 0.3499999940395355,
                                           'loss': 0.7341585755348206,
                                           'ece': 0.2535836398601532},
                          'attractors_3': {'accuracy': 0.6499999761581421,
                                           'loss': 0.6286107301712036,
                                           'ece': 0.224225714802742},
                          'attractors_4': {'accuracy': 0.25,
                                           'loss': 0.7606399059295654,
                                           'ece': 0.32259708642959595},
                          'test': {'accuracy': 0.4333333373069763,
                                   'loss': 0.7257570028305054,
                                   'ece': 0.16369447112083435},
                          'test_deep': {'accuracy': 0.5666666626930237,
                                        'loss': 0.6854747533798218,
                                        'ece': 0.11627956479787827}}},
 'lm_seqkd': {'weights': {'embedding.weight': '02d61270eb9d7902',
                          'final_norm.bias': '3758ccabccfcc7fe',
                          'final_norm.weight': 'd6d5cdfd6146f070',
                          'layers.0.linear1.bias': 'b734cac30e434b17',
                          'layers.0.linear1.weight': 'c9e44005f2b835ae',
                          'layers.0.linear2.bias': 'd47906ddd9572502',
                          'layers.0.linear2.weight': '748b7e249833d1e6',
                          'layers.0.norm1.bias': '905e595d2c23c517',
                          'layers.0.norm1.weight': '3ec639c9f0c34fa6',
                          'layers.0.norm2.bias': 'bb39067644f6cf9c',
                          'layers.0.norm2.weight': '2f9d6b5541c95926',
                          'layers.0.self_attn.in_proj_bias': 'd35d25c06fce8031',
                          'layers.0.self_attn.in_proj_weight': 'be89354e3bda9a88',
                          'layers.0.self_attn.out_proj.bias': '86bf0573fd460d2a',
                          'layers.0.self_attn.out_proj.weight': '5b395170fe05e5a0',
                          'lm_head.bias': '8712b708e2426037',
                          'lm_head.weight': '5f8dbd9bb5ecd3af',
                          'position.weight': '093bb634b2e80b66'},
              'metrics': {'attractors_1': {'accuracy': 0.3499999940395355,
                                           'loss': 1.0547293424606323,
                                           'ece': 0.47940793633461},
                          'attractors_2': {'accuracy': 0.44999998807907104,
                                           'loss': 0.7887126803398132,
                                           'ece': 0.22755689918994904},
                          'attractors_3': {'accuracy': 0.699999988079071,
                                           'loss': 0.6820010542869568,
                                           'ece': 0.16815149784088135},
                          'attractors_4': {'accuracy': 0.550000011920929,
                                           'loss': 0.8029276132583618,
                                           'ece': 0.21975016593933105},
                          'test': {'accuracy': 0.5, 'loss': 0.7161577939987183, 'ece': 0.20825612545013428},
                          'test_deep': {'accuracy': 0.6000000238418579,
                                        'loss': 0.7997214794158936,
                                        'ece': 0.1808641105890274}}}}


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory):
    return tmp_path_factory.mktemp("pinned")


@pytest.fixture(scope="module")
def vision_runs(runs_root):
    student = train(compose_cfg([*TINY, "distill=cross"], runs_root))
    indep = train(compose_cfg([*TINY, "distill=none"], runs_root))
    return student, indep, student.teacher_dir


def current_values(vision_runs) -> dict:
    student, indep, teacher = vision_runs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        runs = find_runs(student.path.parent, teacher.path)
    by = {(r.role, r.distill): r for r in runs}
    s, i, t = by[("student", "cross")], by[("student", "none")], by[("teacher", "none")]
    agreement = agreement_table([s, (i, t)])
    cka = {r.distill: linear_cka(r.features().features, t.features().features) for r in (s, i)}
    frame = runs_frame(runs)
    summary = summarize(frame[frame.metric.isin(PINNED_METRICS)])
    transfer = transfer_table(frame, metrics=["accuracy"])
    return {
        "weights": {name: tensor_digests(run / "model.pt") for name, run in
                    (("teacher", teacher), ("student", student), ("independent", indep))},
        "metrics": {name: pinned_metrics(run) for name, run in
                    (("teacher", teacher), ("student", student), ("independent", indep))},
        "agreement": {f"{row.distill}/{row.split}": (row.top1_agreement, row.js_divergence, row.error_consistency)
                      for row in agreement.itertuples()},
        "cka": cka,
        "summary": {f"{row.role}/{row.distill}/{row.split}/{row.metric}": row.mean for row in summary.itertuples()},
        "transfer": {f"{row.split}": (row.m_kd, row.m_indep, row.m_teacher, row.transfer_ratio)
                     for row in transfer.itertuples()},
    }


def test_cross_distilled_run_and_its_analysis_are_pinned(vision_runs):
    actual = current_values(vision_runs)
    assert actual["weights"] == EXPECTED["weights"]
    for name, expected in EXPECTED["metrics"].items():
        check_metrics(actual["metrics"][name], expected)
    # analysis: numpy/scipy arithmetic on the run dirs (1e-12: room for a library's summation order only)
    for table in ("agreement", "cka", "summary", "transfer"):
        assert actual[table].keys() == EXPECTED[table].keys(), table
        for key, expected in EXPECTED[table].items():
            assert actual[table][key] == pytest.approx(expected, rel=1e-12, abs=1e-15), (table, key)


@pytest.mark.parametrize("name", list(OTHER_RUNS))
def test_other_training_paths_are_pinned(name, runs_root, vision_runs):
    run = train(compose_cfg([*TINY, *OTHER_RUNS[name]], runs_root))
    assert tensor_digests(run / "model.pt") == EXPECTED_OTHER[name]["weights"]
    check_metrics(pinned_metrics(run), EXPECTED_OTHER[name]["metrics"])
