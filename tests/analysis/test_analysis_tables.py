import math

import numpy as np
import pandas as pd
import pytest

from analysis.runs import find_runs, runs_frame
from analysis.tables import (
    NO_CI_NOTE,
    format_mean_ci,
    mean_ci,
    paired_test,
    paired_tests,
    summarize,
    transfer_ratio,
    transfer_table,
)

T_975_2 = 4.302652729911275  # Student t quantile, 0.975, 2 degrees of freedom (tables)


def test_mean_ci_hand_computed():
    ci = mean_ci([1.0, 2.0, 3.0])
    # mean 2, sd 1, half-width t_{.975,2} * 1/sqrt(3)
    assert ci["mean"] == 2.0 and ci["sd"] == 1.0 and ci["n"] == 3
    assert ci["half_width"] == pytest.approx(T_975_2 / math.sqrt(3), abs=1e-9)
    assert ci["ci_low"] == pytest.approx(2 - T_975_2 / math.sqrt(3), abs=1e-9)


def test_t_intervals_from_scipy_equal_the_textbook_formulas():
    from scipy import stats

    from analysis.tables import _welch_half_width

    rng = np.random.default_rng(0)
    for n in (2, 3, 5, 10):
        x = rng.normal(size=n)
        textbook = stats.t.ppf(0.975, n - 1) * x.std(ddof=1) / math.sqrt(n)
        assert mean_ci(x)["half_width"] == pytest.approx(textbook, rel=1e-12)
        a, b = pd.Series(rng.normal(size=n)), pd.Series(rng.normal(size=n + 2) * 2)
        va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
        df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))  # Welch–Satterthwaite
        assert _welch_half_width(a, b) == pytest.approx(stats.t.ppf(0.975, df) * math.sqrt(va + vb), rel=1e-12)
    assert mean_ci([2.0, 2.0, 2.0])["half_width"] == 0.0


def test_mean_ci_single_value_has_no_interval_and_says_so():
    ci = mean_ci([0.7])
    assert ci["mean"] == 0.7 and math.isnan(ci["half_width"]) and math.isnan(ci["ci_low"])
    assert ci["note"] == NO_CI_NOTE
    assert format_mean_ci(0.7, math.nan, 1) == "0.700 (n=1)"
    assert format_mean_ci(0.7123, 0.01) == "0.712 ± 0.010"
    assert math.isnan(mean_ci([])["mean"])


def test_transfer_ratio_hand_made_numbers():
    assert transfer_ratio(0.8, 0.6, 0.9) == pytest.approx(2 / 3)
    assert transfer_ratio(0.6, 0.6, 0.9) == 0.0
    assert transfer_ratio(0.9, 0.6, 0.9) == pytest.approx(1.0)
    assert transfer_ratio(0.5, 0.6, 0.9) == pytest.approx(-1 / 3)
    # lower-is-better metrics read the same way: ECE .10 -> .06 of a possible .10 -> .04
    assert transfer_ratio(0.06, 0.10, 0.04) == pytest.approx(2 / 3)
    assert math.isnan(transfer_ratio(0.8, 0.9, 0.9))
    assert math.isnan(transfer_ratio(0.8, 0.9, 0.9 + 1e-12))


def _frame(rows):
    base = {"objective": "kd", "alpha": 1.0, "temperature": 1.0, "split": "test", "metric": "accuracy",
            "task": "mnist"}
    return pd.DataFrame([{**base, **r} for r in rows])


def test_transfer_table_on_hand_made_frame():
    rows = []
    for seed, (t, i, k) in enumerate([(0.90, 0.60, 0.80), (0.92, 0.62, 0.84), (0.88, 0.58, 0.77)]):
        rows += [
            {"run": f"t{seed}", "model": "cnn", "role": "teacher", "distill": "none", "teacher_model": None,
             "teacher_run": None, "seed": seed, "value": t},
            {"run": f"i{seed}", "model": "mlp", "role": "student", "distill": "none", "teacher_model": None,
             "teacher_run": None, "seed": seed, "value": i},
            {"run": f"k{seed}", "model": "mlp", "role": "student", "distill": "cross", "teacher_model": "cnn",
             "teacher_run": f"t{seed}", "seed": seed, "value": k},
        ]
    t = transfer_table(_frame(rows))
    assert len(t) == 1
    r = t.iloc[0]
    assert (r.m_teacher, r.m_indep) == (pytest.approx(0.90), pytest.approx(0.60))
    assert r.m_kd == pytest.approx(0.80333333)
    assert r.transfer_ratio == pytest.approx((0.80333333 - 0.6) / 0.3)
    assert r.teacher_source == "named teacher runs" and r.note == ""
    # without the named teachers in the frame, independent CNN runs stand in for them
    no_named = _frame([{**x, "teacher_run": "elsewhere"} if x["distill"] == "cross" else x for x in rows])
    assert transfer_table(no_named).iloc[0].teacher_source == "independent runs of teacher_model"


def test_transfer_table_guards_zero_gap_and_missing_sides():
    rows = [
        {"run": "t0", "model": "cnn", "role": "teacher", "distill": "none", "teacher_model": None,
         "teacher_run": None, "seed": 0, "value": 0.7},
        {"run": "i0", "model": "mlp", "role": "student", "distill": "none", "teacher_model": None,
         "teacher_run": None, "seed": 0, "value": 0.7},
        {"run": "k0", "model": "mlp", "role": "student", "distill": "cross", "teacher_model": "cnn",
         "teacher_run": "t0", "seed": 0, "value": 0.75},
        {"run": "x0", "model": "lstm", "role": "student", "distill": "cross", "teacher_model": "cnn",
         "teacher_run": "t0", "seed": 0, "value": 0.75},
    ]
    t = transfer_table(_frame(rows)).set_index("model")
    assert math.isnan(t.loc["mlp", "transfer_ratio"]) and "gap ~0" in t.loc["mlp", "note"]
    assert math.isnan(t.loc["lstm", "transfer_ratio"]) and "no independent" in t.loc["lstm", "note"]


def test_paired_test_pairs_by_seed():
    kd = {0: 0.80, 1: 0.85, 2: 0.83, 3: 0.90}
    indep = {1: 0.80, 0: 0.78, 2: 0.79, 3: 0.84, 7: 0.5}  # seed 7 has no partner
    r = paired_test(kd, indep)
    d = np.array([0.02, 0.05, 0.04, 0.06])
    assert r["n_pairs"] == 4 and r["mean_diff"] == pytest.approx(d.mean())
    assert r["t"] == pytest.approx(d.mean() / (d.std(ddof=1) / 2))
    assert math.isnan(r["p_wilcoxon"]) and "6 pairs" in r["note"] and "[7]" in r["note"]
    six = paired_test({s: 1.0 + s * 0.1 + (s % 2) * 0.01 for s in range(6)}, {s: 0.9 + s * 0.1 for s in range(6)})
    assert six["p_wilcoxon"] == pytest.approx(0.03125)  # exact: all 6 differences positive
    one = paired_test({0: 0.8}, {0: 0.7})
    assert math.isnan(one["p_ttest"]) and "fewer than 2" in one["note"]


def test_tables_on_synthetic_runs(mnist_sweep, quiet):
    frame = runs_frame(find_runs(mnist_sweep.root))
    s = summarize(frame[frame.metric == "accuracy"])
    assert (s["n"] == 3).all() and (s["seeds"] == "0,1,2").all()
    t = transfer_table(frame, metrics=["accuracy"])
    assert set(t["split"]) == {"test", "translated", "scaled"}
    ood = t[t.split != "test"]
    assert (ood["transfer_ratio"] > 0.3).all()  # the distilled MLP inherits the CNN's OOD edge
    p = paired_tests(frame)
    assert (p["n_pairs"] == 3).all() and (p[p.split != "test"]["mean_diff"] > 0).all()


def test_independent_students_exclude_teachers_of_the_same_architecture():
    base = {"teacher_model": None, "teacher_run": None, "model": "mlp", "distill": "none"}
    rows = [
        {**base, "run": "i1", "role": "student", "seed": 1, "value": 0.60},
        {**base, "run": "i2", "role": "student", "seed": 2, "value": 0.62},
        {**base, "run": "mt", "role": "teacher", "seed": 101, "value": 0.99},  # MLP teacher (self-KD)
        {**base, "run": "t1", "role": "teacher", "seed": 101, "value": 0.90, "model": "cnn"},
        {"run": "k1", "model": "mlp", "role": "student", "distill": "cross", "teacher_model": "cnn",
         "teacher_run": "t1", "seed": 1, "value": 0.75},
        {"run": "k2", "model": "mlp", "role": "student", "distill": "cross", "teacher_model": "cnn",
         "teacher_run": "t1", "seed": 2, "value": 0.78},
    ]
    t = transfer_table(_frame(rows)).iloc[0]
    assert t.n_indep == 2 and t.m_indep == pytest.approx(0.61) and t.m_teacher == pytest.approx(0.90)
    assert t.transfer_ratio == pytest.approx((0.765 - 0.61) / (0.90 - 0.61))
    p = paired_tests(_frame(rows)).iloc[0]
    assert p.n_pairs == 2 and p.note == "Wilcoxon needs >= 6 pairs"


def test_prediction_interval_for_a_new_seed_by_hand():
    from analysis.tables import prediction_half_width

    # d = 1, 2, 3: sd 1, n 3, t(2, 0.975) = 4.302653; PI = t·sd·sqrt(1 + 1/3), CI = t·sd/sqrt(3)
    assert prediction_half_width([1.0, 2.0, 3.0]) == pytest.approx(4.302653 * (4 / 3) ** 0.5, rel=1e-6)
    out = paired_test({1: 2.0, 2: 4.0, 3: 6.0}, {1: 1.0, 2: 2.0, 3: 3.0})
    assert out["diff_half_width"] == pytest.approx(4.302653 / 3 ** 0.5, rel=1e-6)
    assert out["diff_prediction_half_width"] == pytest.approx(4.302653 * (4 / 3) ** 0.5, rel=1e-6)
    assert math.isnan(prediction_half_width([1.0]))
