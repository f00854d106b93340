import math

import numpy as np
import pytest
import torch

from analysis.agreement import agreement_table, error_consistency, from_logits, js_divergence, top1_agreement
from analysis.runs import load_run


def test_top1_agreement_on_probabilities_logits_and_tensors():
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.5, 0.4, 0.1]])
    q = np.array([[0.6, 0.3, 0.1], [0.5, 0.4, 0.1], [0.1, 0.1, 0.8], [0.2, 0.7, 0.1]])
    assert top1_agreement(p, q) == 0.5
    assert top1_agreement(np.log(p), torch.from_numpy(np.log(q)) * 3) == 0.5
    assert top1_agreement(p, p) == 1.0
    with pytest.raises(ValueError):
        top1_agreement(p, q[:3])


def test_js_divergence_identical_is_zero_and_disjoint_one_hots_is_ln2():
    p = from_logits(np.random.default_rng(0).standard_normal((50, 5)))
    assert js_divergence(p, p) == pytest.approx(0.0, abs=1e-15)
    eye = np.eye(4)
    assert js_divergence(eye, eye[[1, 2, 3, 0]]) == pytest.approx(math.log(2), abs=1e-15)


def test_js_divergence_hand_worked_two_examples():
    # Example 1: p=[1,0], q=[.5,.5], m=[.75,.25]:
    #   KL(p||m) = ln(4/3); KL(q||m) = .5 ln(2/3) + .5 ln 2 = .5 ln(4/3); JS = .75 ln(4/3).
    # Example 2: p = q -> 0.  Mean: .375 ln(4/3).
    p = np.array([[1.0, 0.0], [0.3, 0.7]])
    q = np.array([[0.5, 0.5], [0.3, 0.7]])
    assert js_divergence(p, q) == pytest.approx(0.375 * math.log(4 / 3), abs=1e-15)
    np.testing.assert_allclose(js_divergence(p, q, per_example=True), [0.75 * math.log(4 / 3), 0.0], atol=1e-15)
    assert js_divergence(q, p) == pytest.approx(js_divergence(p, q), abs=1e-15)


def test_js_divergence_rejects_logits():
    with pytest.raises(ValueError, match="from_logits"):
        js_divergence(np.array([[2.0, -1.0]]), np.array([[0.5, 0.5]]))


def test_from_logits_is_stable_for_huge_logits():
    p = from_logits(np.array([[1000.0, 0.0, -1000.0]], dtype=np.float32))
    assert np.isfinite(p).all() and p[0, 0] == pytest.approx(1.0)


def test_error_consistency_identical_is_one():
    c = np.array([1, 0, 1, 1, 0, 1], dtype=bool)
    assert error_consistency(c, c) == pytest.approx(1.0)


def test_error_consistency_hand_worked_two_by_two():
    # both right 5, only A right 1, only B right 2, both wrong 2 (n=10)
    a = np.array([1] * 5 + [1] + [0, 0] + [0, 0], dtype=bool)
    b = np.array([1] * 5 + [0] + [1, 1] + [0, 0], dtype=bool)
    # p_a=.6, p_b=.7, c_obs=.7, c_exp=.6*.7+.4*.3=.54, kappa=.16/.46
    assert error_consistency(a, b) == pytest.approx(0.16 / 0.46, abs=1e-12)
    assert error_consistency(torch.from_numpy(a), b.astype(int)) == pytest.approx(0.16 / 0.46, abs=1e-12)


def test_error_consistency_is_geirhos_kappa_as_scikit_learn_computes_it():
    # Geirhos et al. 2020, written out: kappa = (c_obs - c_exp) / (1 - c_exp)
    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b = rng.random(200) < rng.random(), rng.random(200) < rng.random()
        pa, pb = a.mean(), b.mean()
        c_exp = pa * pb + (1 - pa) * (1 - pb)
        if np.isclose(c_exp, 1.0):
            continue
        assert error_consistency(a, b) == pytest.approx((np.mean(a == b) - c_exp) / (1 - c_exp), rel=1e-12, abs=1e-15)


def test_error_consistency_opposite_errors_is_negative_and_degenerate_is_nan():
    a = np.array([1, 1, 0, 0], dtype=bool)
    assert error_consistency(a, ~a) == pytest.approx(-1.0)
    assert math.isnan(error_consistency(np.ones(5, bool), np.ones(5, bool)))
    assert math.isnan(error_consistency(np.zeros(5, bool), np.zeros(5, bool)))
    # one always right, the other always wrong: c_exp = 0, kappa = 0 (defined)
    assert error_consistency(np.ones(5, bool), np.zeros(5, bool)) == 0.0


def test_agreement_table_distilled_students_agree_more_than_independent(mnist_sweep):
    students = [load_run(p) for p in mnist_sweep.students.values()]
    teachers = {s: load_run(p) for s, p in mnist_sweep.teachers.items()}
    indep = [(load_run(p), teachers[s]) for s, p in mnist_sweep.independent.items()]
    kd = agreement_table(students)
    base = agreement_table(indep)
    assert set(kd["split"]) == {"test", "translated", "scaled"}
    assert (kd["group"] == "all").all() and len(kd) == 9
    for split in ("test", "translated", "scaled"):
        k, b = kd[kd.split == split], base[base.split == split]
        assert k["top1_agreement"].mean() > b["top1_agreement"].mean()
        assert k["js_divergence"].mean() < b["js_divergence"].mean()
    assert (kd["teacher"] == [load_run(p).teacher.run_id for p in mnist_sweep.students.values() for _ in range(3)]).all()


def test_agreement_table_breaks_down_by_metadata_key(sva_sweep):
    s = load_run(sva_sweep.students[("cross", 0)])
    t = s.teacher
    table = agreement_table([s], splits=["test"], by="attractors")
    overall = table[table.group == "all"].iloc[0]
    groups = table[table.group == "attractors"]
    out = s.outputs("test")
    assert sorted(groups["group_value"]) == sorted(np.unique(out.meta["attractors"]).tolist())
    assert groups["n"].sum() == overall["n"] == out.n
    # the per-group agreements recombine to the overall one
    assert (groups["top1_agreement"] * groups["n"]).sum() / out.n == pytest.approx(overall["top1_agreement"])
    k = groups.iloc[0]["group_value"]
    mask = out.meta["attractors"] == k
    to = t.outputs("test")
    assert groups.iloc[0]["top1_agreement"] == pytest.approx(
        np.mean(out.predictions[mask] == to.predictions[mask]))
