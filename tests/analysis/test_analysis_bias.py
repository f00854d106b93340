import math

import numpy as np
import pytest
import torch

from analysis.bias import (
    attractor_drop,
    attractor_drop_table,
    bias_frame,
    prediction_consistency,
    shift_consistency_table,
    teacher_agreement_table,
    teacher_signal,
    teacher_signal_table,
    transferred_share,
)
from analysis.runs import load_run
from analysis.tables import transfer_table
from synthetic import write_run
from biaskd.errors import ArtifactError

LN3, LN9 = math.log(3), math.log(9)


# -- arrays -----------------------------------------------------------------------------------------
def test_prediction_consistency_matches_by_id_not_position():
    clean, clean_ids = np.array([0, 1, 2, 3]), np.array([10, 11, 12, 13])
    moved, moved_ids = np.array([3, 0, 1, 1]), np.array([13, 10, 12, 11])
    # by id: 13: 3=3, 10: 0=0, 12: 2≠1, 11: 1=1  ->  3/4
    assert prediction_consistency(clean, moved, clean_ids, moved_ids) == 0.75
    # by position every pair differs (0/3, 1/0, 2/1, 3/1): ids matter
    assert prediction_consistency(clean, moved) == 0.0
    # logits and tensors work like predictions
    logits = 5.0 * np.eye(4)[moved]
    assert prediction_consistency(torch.eye(4)[clean], logits, clean_ids, torch.from_numpy(moved_ids)) == 0.75
    with pytest.raises(ValueError, match="no clean example"):
        prediction_consistency(clean, moved, clean_ids, np.array([13, 10, 12, 99]))
    with pytest.raises(ValueError, match="ids for both"):
        prediction_consistency(clean, moved, clean_ids)


def test_consistency_is_one_for_a_model_that_ignores_its_input():
    rng = np.random.default_rng(0)
    bias = rng.standard_normal(10)
    model = lambda images: np.tile(bias, (len(images), 1))  # noqa: E731 -- input ignored
    images = rng.random((50, 28, 28))
    shifted = np.roll(images, (2, -2), axis=(1, 2))
    assert prediction_consistency(model(images), model(shifted)) == 1.0
    # ... and an input-reading model is not (sanity: the measure can fail)
    reader = lambda im: im.reshape(len(im), -1)[:, :10]  # noqa: E731
    assert prediction_consistency(reader(images), reader(shifted)) < 0.5


def test_teacher_signal_hand_worked():
    # ex1 z=[ln3, 0] gold 0; ex2 z=[ln3, 0] gold 1; ex3 z=[0, ln9] gold 1.
    # T=1: p = [.75,.25], [.75,.25], [.1,.9];  p(gold) = (.75+.25+.9)/3 = 0.633333...
    #   H(.75,.25) = .75 ln(4/3) + .25 ln 4 = 0.5623351;  H(.1,.9) = .1 ln 10 + .9 ln(10/9) = 0.3250830
    #   mean entropy = (2·0.5623351 + 0.3250830)/3 = 0.4832511;  top ≠ gold only for ex2: 1/3
    z = np.array([[LN3, 0.0], [LN3, 0.0], [0.0, LN9]])
    y = np.array([0, 1, 1])
    s = teacher_signal(z, y, temperature=1.0)
    assert s["n"] == 3 and s["temperature"] == 1.0
    assert s["p_gold"] == pytest.approx(1.9 / 3, abs=1e-12)
    assert s["entropy"] == pytest.approx(0.4832511, abs=1e-7)
    assert s["top_not_gold"] == pytest.approx(1 / 3)
    # T=2: z/2 = [ln√3, 0] -> p = [√3/(√3+1), 1/(√3+1)] = [0.6339746, 0.3660254];
    #   [0, ln3] -> [.25, .75].  p(gold) = (0.6339746 + 0.3660254 + .75)/3 = 1.75/3
    #   H(0.6339746, 0.3660254) = 0.6339746·0.4557464 + 0.3660254·1.0050525 = 0.6568064
    #   mean entropy = (2·0.6568064 + 0.5623351)/3 = 0.6253160;  top ≠ gold unchanged by T
    s2 = teacher_signal(torch.tensor(z, dtype=torch.float32), torch.tensor(y), temperature=2.0)
    assert s2["p_gold"] == pytest.approx(1.75 / 3, abs=1e-7)
    assert s2["entropy"] == pytest.approx(0.6253160, abs=1e-6)
    assert s2["top_not_gold"] == pytest.approx(1 / 3)
    # extreme logits stay finite: a one-hot distribution has entropy 0 and p(gold) 1
    hard = teacher_signal(np.array([[1000.0, -1000.0, 0.0]]), np.array([0]))
    assert hard["entropy"] == pytest.approx(0.0, abs=1e-12) and hard["p_gold"] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        teacher_signal(z, y, temperature=0.0)
    with pytest.raises(ValueError):
        teacher_signal(z, y[:2])


def test_attractor_drop_hand_worked():
    attractors = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 2])
    correct = np.array([1, 1, 1, 0, 1, 0, 1, 0, 0, 0], dtype=bool)
    # acc0 = 3/4, acc1 = 1/2, acc2 = 1/4  ->  drops .25, .5; no 3-attractor example -> NaN
    drop = attractor_drop(correct, attractors, ks=(1, 2, 3))
    assert drop[1] == pytest.approx(0.25) and drop[2] == pytest.approx(0.5) and math.isnan(drop[3])
    # homogeneous-only, as A-accuracy: dropping the wrong 0-attractor example makes acc0 = 1
    homogeneous = np.array([1, 1, 1, 0, 1, 1, 1, 1, 1, 1])
    drop_h = attractor_drop(correct, attractors, homogeneous, ks=(1, 2))
    assert drop_h == pytest.approx({1: 0.5, 2: 0.75})
    # a model that never errs has no drop
    assert attractor_drop(np.ones(10, bool), attractors, ks=(1, 2)) == {1: 0.0, 2: 0.0}


def test_transferred_share_hand_worked_and_identities():
    assert transferred_share(0.8, 0.6, 1.0) == pytest.approx(0.5)  # (.8-.6)/(1-.6)
    assert transferred_share(0.9, 0.6, 0.9) == 1.0  # student equals teacher
    assert transferred_share(0.6, 0.6, 0.9) == 0.0  # student equals independent
    assert transferred_share(0.5, 0.6, 0.9) == pytest.approx(-1 / 3)  # KD hurt
    # no gap to close: NaN, never inf
    assert math.isnan(transferred_share(0.7, 0.6, 0.6))
    assert math.isnan(transferred_share(0.7, 0.6, 0.6 + 1e-12))
    out = transferred_share(np.array([0.75, 0.75, 0.5]), np.array([0.5, 0.25, 0.5]), np.array([1.0, 0.75, 0.5]))
    np.testing.assert_allclose(out, [0.5, 1.0, np.nan])
    assert not np.isinf(out).any()


# -- run dirs ---------------------------------------------------------------------------------------
TEST_IDS = np.array([10, 11, 12, 13])
TEST_LABELS = np.array([0, 1, 2, 3])
MOVED_IDS = {1: np.array([13, 10, 12, 11]), 2: np.array([11, 13, 10, 12])}


def _vision_outputs(clean_pred, changed):
    """test + translated_s1/_s2 outputs; ``changed[c]`` = ids whose prediction moves by one
    class at shift c. OOD splits list the test ids in another order, as a check on matching."""
    clean_pred = np.asarray(clean_pred)
    by_id = dict(zip(TEST_IDS.tolist(), clean_pred.tolist()))
    label_of = dict(zip(TEST_IDS.tolist(), TEST_LABELS.tolist()))
    outs = {"test": {"logits": 5.0 * np.eye(4)[clean_pred], "labels": TEST_LABELS, "ids": TEST_IDS,
                     "meta_severity": np.zeros(4, np.int64)}}
    for c, ids in MOVED_IDS.items():
        pred = np.array([(by_id[i] + 1) % 4 if i in changed[c] else by_id[i] for i in ids])
        signs = np.array([1, -1, -1, 1])
        outs[f"translated_s{c}"] = {"logits": 5.0 * np.eye(4)[pred], "labels": np.array([label_of[i] for i in ids]),
                                    "ids": ids, "meta_severity": np.full(4, c), "meta_shift_x": c * signs,
                                    "meta_shift_y": -c * signs}
    return outs


@pytest.fixture
def vision_runs(tmp_path):
    common = dict(task="mnist", num_classes=4)
    # consistency by shift c=1, 2:  teacher 1, 3/4;  independent 1/2, 1/4;  KD 3/4, 3/4
    t = write_run(tmp_path / "teacher", run_id="teacher", model="cnn", role="teacher", distill="none", seed=101,
                  outputs=_vision_outputs([0, 1, 2, 3], {1: set(), 2: {12}}), **common)
    i = write_run(tmp_path / "indep", run_id="indep", model="mlp", role="student", distill="none", seed=1,
                  outputs=_vision_outputs([0, 1, 2, 0], {1: {10, 11}, 2: {10, 11, 13}}), **common)
    k = write_run(tmp_path / "kd", run_id="kd", model="mlp", role="student", distill="cross", seed=1,
                  teacher_run="teacher", teacher_model="cnn", alpha=1.0, temperature=2.0,
                  outputs=_vision_outputs([0, 1, 2, 3], {1: {13}, 2: {12}}), **common)
    return load_run(t), load_run(i), load_run(k)


def test_shift_consistency_table_per_shift(vision_runs):
    teacher, indep, kd = vision_runs
    table = shift_consistency_table([teacher, indep, kd])
    got = {(r.run, r.shift_px): r.consistency for r in table.itertuples()}
    assert got == {("teacher", 1): 1.0, ("teacher", 2): 0.75, ("indep", 1): 0.5, ("indep", 2): 0.25,
                   ("kd", 1): 0.75, ("kd", 2): 0.75}
    assert set(table["severity"]) == {1, 2} and set(table["n"]) == {4}
    # accuracy on the moved set: the KD student at c=1 errs only on id 13
    assert table[(table.run == "kd") & (table.shift_px == 1)]["accuracy"].item() == 0.75


def test_teacher_agreement_reuses_agreement_table(vision_runs):
    teacher, indep, kd = vision_runs
    table = teacher_agreement_table(kd)
    # test: identical predictions; s1: KD moved id 13, teacher nothing -> 3/4; s2: both moved id 12 alike -> 1
    assert dict(zip(table["split"], table["top1_agreement"])) == {"test": 1.0, "translated_s1": 0.75,
                                                                  "translated_s2": 1.0}
    base = teacher_agreement_table([(indep, teacher)])
    # independent: test differs on id 13 -> 3/4
    assert base.set_index("split")["top1_agreement"]["test"] == 0.75


def test_teacher_signal_table_uses_the_students_temperature(vision_runs):
    teacher, _, kd = vision_runs
    table = teacher_signal_table(kd)
    assert set(table["temperature"]) == {2.0} and set(table["teacher"]) == {"teacher"}
    out = teacher.outputs("translated_s2")
    row = table.set_index("split").loc["translated_s2"]
    assert row["p_gold"] == pytest.approx(teacher_signal(out.logits, out.labels, 2.0)["p_gold"])
    assert row["top_not_gold"] == 0.25  # the teacher's prediction for id 12 moved off its label
    with pytest.raises(ValueError, match="temperature"):
        teacher_signal_table(teacher)
    assert teacher_signal_table(teacher, temperature=1.0, splits=["test"])["top_not_gold"].item() == 0.0


def test_bias_frame_gives_transferred_share_through_transfer_table(vision_runs):
    frame = bias_frame(list(vision_runs))
    cons = frame[frame.metric == "shift_consistency"]
    assert len(cons) == 6
    table = transfer_table(frame, metrics=["shift_consistency"]).set_index("split")
    # c=1: (3/4 - 1/2)/(1 - 1/2) = 1/2;  c=2: (3/4 - 1/4)/(3/4 - 1/4) = 1
    assert table.loc["translated_s1", "transfer_ratio"] == pytest.approx(0.5)
    assert table.loc["translated_s2", "transfer_ratio"] == pytest.approx(1.0)
    agree = frame[frame.metric == "teacher_agreement"]
    assert set(agree["run"]) == {"kd"} and len(agree) == 3


def test_attractor_drop_table_baselines(tmp_path):
    y = np.array([0, 1, 0, 1])
    right, ids = 5.0 * np.eye(2)[y], np.arange(4)
    part_right = lambda k: 5.0 * np.eye(2)[np.where(np.arange(4) < k, y, 1 - y)]  # noqa: E731 -- first k right
    outputs = {"test": {"logits": right, "labels": y, "ids": ids},
               "attractors_1": {"logits": part_right(3), "labels": y, "ids": ids},
               "attractors_2": {"logits": part_right(2), "labels": y, "ids": ids}}
    grammar = write_run(tmp_path / "g", run_id="g", task="sva", model="lstm", role="teacher", distill="none",
                        seed=0, num_classes=2, outputs=outputs,
                        extra_metrics={"test": {"accuracy_by_attractors": {"0": 0.9, "1": 0.8}}})
    linzen = write_run(tmp_path / "l", run_id="l", task="sva_linzen", model="lstm", role="teacher",
                       distill="none", seed=0, num_classes=2, outputs=outputs)
    table = attractor_drop_table([load_run(grammar), load_run(linzen)])
    got = {(r.run, r.attractors): r.drop for r in table.itertuples()}
    # grammar: 0-attractor bin of test (.9) minus 3/4 and 1/2; Linzen: test accuracy (1) minus the same
    assert got == pytest.approx({("g", 1): 0.15, ("g", 2): 0.4, ("l", 1): 0.25, ("l", 2): 0.5})
    assert set(table[table.run == "g"]["baseline"]) == {"test 0-attractor accuracy"}
    assert set(table[table.run == "l"]["baseline"]) == {"test accuracy"}
    frame = bias_frame([load_run(grammar)])
    assert frame.set_index("split").loc["attractors_2", "value"] == pytest.approx(0.4)


def test_shift_consistency_refuses_splits_that_are_not_the_clean_examples_moved(tmp_path):
    # like the toy task's ``shifted``: ids 0..n-1 again, but new examples (labels differ)
    outs = {"test": {"logits": np.eye(2)[[0, 1, 0]], "labels": np.array([0, 1, 0]), "ids": np.arange(3)},
            "shifted": {"logits": np.eye(2)[[0, 1, 1]], "labels": np.array([1, 1, 0]), "ids": np.arange(3)}}
    run = load_run(write_run(tmp_path / "toy", run_id="toy", task="toy", model="cnn", role="teacher",
                             distill="none", seed=0, num_classes=2, outputs=outs))
    with pytest.raises(ArtifactError, match="not a transformed"):
        shift_consistency_table(run, family="shifted")
    assert shift_consistency_table(run).empty  # no translated split: nothing to measure
