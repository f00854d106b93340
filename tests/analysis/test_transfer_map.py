"""The transfer map's arithmetic and the v2 verdicts, against values worked out by hand."""
import math

import pandas as pd
import pytest

from analysis.protocol import PRIMARY, Comparison, judge
from analysis.tables import holm
from analysis.transfer_map import compare_cell


def test_compare_cell_by_hand():
    values = {"kd": {1: 0.5, 2: 0.7}, "indep": {1: 0.4, 2: 0.5}, "self": {1: 0.45, 2: 0.55},
              "teacher": {1: 0.9, 2: 0.9}}
    row = compare_cell(values)
    # differences kd - indep: 0.1, 0.2 -> mean 0.15, sd 0.0707107, t = 0.15 / (0.0707107 / sqrt 2) = 3
    assert row["diff_vs_independent"] == pytest.approx(0.15)
    # half width t_{0.975, 1} * sd / sqrt(2) = 12.7062 * 0.05
    assert row["ci_half_width"] == pytest.approx(12.7062 * 0.05, rel=1e-4)
    # two-sided p of t = 3 with 1 df: 1 - 2 atan(3) / pi
    assert row["p_value"] == pytest.approx(1 - 2 * math.atan(3) / math.pi, rel=1e-6)
    assert row["diff_vs_self"] == pytest.approx(0.1)
    # share: (mean kd - mean indep) / (mean teacher - mean indep) = (0.6 - 0.45) / (0.9 - 0.45)
    assert row["transferred_share"] == pytest.approx(1 / 3)
    assert row["n_seeds"] == 2 and row["seeds"] == "1,2"


def test_share_is_nan_without_a_gap_and_pairs_only_common_seeds():
    row = compare_cell({"kd": {1: 0.5, 2: 0.6, 3: 0.9}, "indep": {1: 0.5, 2: 0.5}, "teacher": {1: 0.5, 2: 0.5}})
    assert math.isnan(row["transferred_share"])
    assert row["n_seeds"] == 2 and row["diff_vs_independent"] == pytest.approx(0.05)
    # a gap under MIN_SHARE_GAP (0.05) gets no share: -0.04 / 0.01 = -4 would be noise
    row = compare_cell({"kd": {1: 0.86, 2: 0.88}, "indep": {1: 0.9, 2: 0.92}, "teacher": {1: 0.91, 2: 0.93}})
    assert row["teacher_gap"] == pytest.approx(0.01) and math.isnan(row["transferred_share"])
    row = compare_cell({"kd": {1: 0.5, 2: 0.5}, "indep": {1: 0.4, 2: 0.4}, "teacher": {1: 0.46, 2: 0.46}})
    assert row["transferred_share"] == pytest.approx(0.1 / 0.06)


def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04 -> 3 x 0.01 = 0.03, 2 x 0.03 = 0.06, max(0.06, 1 x 0.04) = 0.06
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, float("nan")])[0] == 0.5 and math.isnan(holm([0.5, float("nan")])[1])
    assert holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])  # capped at 1


def _per_seed(diffs: dict[int, float]) -> pd.DataFrame:
    rows = []
    cell = {"scenario": "vision", "teacher": "cnn_gp", "student": "mlp", "student_epochs": 100, "temperature": 5.0,
            "transfer_n": 0, "metric": "ood_mean"}
    for seed, d in diffs.items():
        rows += [{**cell, "seed": seed, "role": "kd", "value": 0.5 + d},
                 {**cell, "seed": seed, "role": "indep", "value": 0.5}]
    return pd.DataFrame(rows)


def test_verdicts_follow_sign_and_corrected_p():
    comparison = [c for c in PRIMARY if c.claim == 4 and c.second == "indep"]
    up = judge(_per_seed({1: 0.05, 2: 0.06, 3: 0.05, 4: 0.055, 5: 0.06}), comparison)
    assert up[0]["verdict"].tolist() == ["reproduced"] and up[1]["verdict"].tolist() == ["reproduced"]
    down = judge(_per_seed({1: -0.05, 2: -0.06, 3: -0.05, 4: -0.055, 5: -0.06}), comparison)
    assert down[0]["verdict"].tolist() == ["not reproduced"]
    noise = judge(_per_seed({1: 0.05, 2: -0.06, 3: 0.01}), comparison)
    assert noise[0]["verdict"].tolist() == ["inconclusive"]
    # two comparisons: Holm doubles the smaller p
    two = [comparison[0], Comparison(4, "x", "vision", comparison[0].cell, "ood_mean", "kd", "indep", -1)]
    rows = judge(_per_seed({1: 0.05, 2: 0.06, 3: 0.05, 4: 0.055, 5: 0.06}), two)[0]
    assert rows["p_holm"].iloc[0] == pytest.approx(min(1.0, 2 * rows["p"].iloc[0]))
    assert rows["verdict"].tolist() == ["reproduced", "not reproduced"]


def test_each_agreement_setting_is_its_own_scenario_with_the_language_metrics():
    """Runs recorded before scenarios were declared get their task's declaration; an unknown task
    is its own scenario with the generic measures, never dropped."""
    from analysis.bias import MEASURES
    from biaskd.scenario import of_record

    got = {(t, s): of_record({"task": t, "setup": s}) for t, s in [
        ("mnist", "classification"), ("sva", "classification"), ("sva_lm", "lm"),
        ("sva_linzen_transfer", "classification"), ("sva_linzen_lm", "lm"), ("toy", "classification")]}
    assert {k: v.name for k, v in got.items()} == {
        ("mnist", "classification"): "vision", ("sva", "classification"): "language",
        ("sva_lm", "lm"): "language_lm", ("sva_linzen_transfer", "classification"): "linzen",
        ("sva_linzen_lm", "lm"): "linzen_lm", ("toy", "classification"): "toy"}
    assert [v.measure for v in got.values()] == ["shift"] + ["attractors"] * 4 + ["generic"]
    assert "a_accuracy" in MEASURES[got[("sva_linzen_lm", "lm")].measure].metrics
    # a recipe's name for the scenario (recorded as a string by older code) is kept
    assert of_record({"task": "mnist", "scenario": "vision_60k"}).name == "vision_60k"
    assert of_record({"task": "mnist", "scenario": "vision_60k"}).measure == "shift"
    # the declaration a run records wins
    recorded = {"task": "mine", "scenario": {"name": "mine_v1", "measure": "pkg.mod:fn", "headline": "x"}}
    assert of_record(recorded).to_dict() == {"name": "mine_v1", "measure": "pkg.mod:fn", "headline": "x"}


def test_task_configs_declare_their_scenario_and_runs_record_it():
    from biaskd.scenario import declared
    from tiny import compose_cfg

    cfg = compose_cfg(["task=mnist"], "/tmp/unused")
    assert declared(cfg).to_dict() == {"name": "vision", "measure": "shift", "headline": "translated"}
    cfg = compose_cfg(["experiment=mnist_v3"], "/tmp/unused")
    assert declared(cfg).name == "vision_60k" and declared(cfg).measure == "shift"
    cfg = compose_cfg(["task=sva", "task.setup=lm", "model=transformer_seq"], "/tmp/unused")
    assert declared(cfg, "lm").name == "language_lm"


def test_the_map_of_a_sweep_pairs_each_distilled_student_with_its_seeds_independent_and_self_distilled(tmp_path):
    import json

    from analysis.transfer_map import build
    from synthetic import make_sweep

    sweep = make_sweep(tmp_path / "runs", task="mnist", seeds=(0, 1, 2), closeness={"cross": 0.8, "self": 0.1},
                       steps=())
    written = build([tmp_path / "runs"], tmp_path / "out")
    for name in ("transfer_map", "per_seed", "teacher_signal", "teacher_bias", "claims_v2", "verdicts_v2", "markdown",
                 "heatmap_vision"):
        assert written[name].is_file(), name

    def acc(path, split="translated"):
        return json.loads((path / "metrics.json").read_text())["splits"][split]["accuracy"]

    kd = [acc(sweep.students[("cross", s)]) for s in (0, 1, 2)]
    indep = [acc(sweep.independent[s]) for s in (0, 1, 2)]
    own = [acc(sweep.students[("self", s)]) for s in (0, 1, 2)]
    teacher = [acc(sweep.teachers[s]) for s in (0, 1, 2)]
    frame = pd.read_csv(written["transfer_map"])
    row = frame[(frame["scenario"] == "vision") & (frame["metric"] == "translated")]
    assert len(row) == 1
    row = row.iloc[0]
    assert (row["teacher"], row["student"], row["student_epochs"], row["n_seeds"]) == ("cnn", "mlp", 1, 3)
    diffs = [k - i for k, i in zip(kd, indep)]
    assert row["diff_vs_independent"] == pytest.approx(sum(diffs) / 3, rel=1e-5)
    assert row["diff_vs_self"] == pytest.approx(sum(k - o for k, o in zip(kd, own)) / 3, rel=1e-5)
    share = (sum(kd) - sum(indep)) / (sum(teacher) - sum(indep))
    assert row["transferred_share"] == pytest.approx(share, rel=1e-5)  # the CSV keeps 6 significant digits
    assert row["diff_vs_independent"] > 0  # the synthetic teacher is better OOD and the students lean on it


def test_a_task_the_suite_never_saw_gets_the_generic_measures_not_dropped(tmp_path):
    """No analysis module knows 'birdsong': its runs still make map rows (accuracy, agreement, JS,
    CKA with the teacher), a heatmap, and the build says which scenarios it read."""
    import json

    from analysis.transfer_map import build
    from synthetic import make_sweep

    sweep = make_sweep(tmp_path / "runs", task="birdsong", seeds=(0, 1, 2), closeness={"cross": 0.8, "self": 0.1},
                       steps=())
    written = build([tmp_path / "runs"], tmp_path / "out")
    frame = pd.read_csv(written["transfer_map"])
    assert set(frame["scenario"]) == {"birdsong"}
    assert set(frame["metric"]) == {"test", "eval_mean", "teacher_agreement_eval", "teacher_js_eval",
                                    "teacher_cka_probe"}
    assert written["heatmap_birdsong"].is_file()

    def acc(path, split):
        return json.loads((path / "metrics.json").read_text())["splits"][split]["accuracy"]

    def eval_mean(path):
        return (acc(path, "noisy") + acc(path, "far_field")) / 2

    row = frame[frame["metric"] == "eval_mean"].iloc[0]
    diffs = [eval_mean(sweep.students[("cross", s)]) - eval_mean(sweep.independent[s]) for s in (0, 1, 2)]
    assert row["diff_vs_independent"] == pytest.approx(sum(diffs) / 3, rel=1e-5)
    agree = frame[frame["metric"] == "teacher_agreement_eval"].iloc[0]
    assert agree["m_teacher"] == 1.0 and agree["diff_vs_independent"] > 0  # pulled toward the teacher


def test_the_objective_is_an_axis_of_the_map_and_a_temperature_it_does_not_read_is_empty(tmp_path):
    """Soft-target (kd, T = 1) and hard-label students of one teacher are two cells, each paired
    with the same independent students; the hard cell has no temperature."""
    import json

    from analysis.transfer_map import build
    from synthetic import make_sweep

    sweep = make_sweep(tmp_path / "runs", task="mnist", seeds=(0, 1, 2),
                       closeness={"cross": 0.8, "cross:hard": 0.3}, steps=())
    frame = pd.read_csv(build([tmp_path / "runs"], tmp_path / "out")["transfer_map"])
    rows = frame[frame["metric"] == "translated"].set_index("objective")
    assert sorted(rows.index) == ["hard", "kd"]
    assert rows.loc["kd", "temperature"] == 1.0 and math.isnan(rows.loc["hard", "temperature"])

    def acc(path):
        return json.loads((path / "metrics.json").read_text())["splits"]["translated"]["accuracy"]

    for label, objective in (("cross", "kd"), ("cross:hard", "hard")):
        diffs = [acc(sweep.students[(label, s)]) - acc(sweep.independent[s]) for s in (0, 1, 2)]
        assert rows.loc[objective, "diff_vs_independent"] == pytest.approx(sum(diffs) / 3, rel=1e-5)
        assert rows.loc[objective, "n_seeds"] == 3
    assert rows.loc["kd", "diff_vs_independent"] > rows.loc["hard", "diff_vs_independent"]  # closer to the teacher
