import numpy as np
import pytest
import torch
from torchmetrics.functional.classification import multiclass_calibration_error

from analysis.calibration import expected_calibration_error, reliability_data, reliability_frame
from analysis.runs import load_run


def _tm(probs, labels, C):
    return float(multiclass_calibration_error(torch.as_tensor(probs), torch.as_tensor(labels),
                                              num_classes=C, n_bins=15, norm="l1"))


@pytest.mark.parametrize("scale", [0.5, 3.0, 40.0])  # 40: float32 softmax saturates at exactly 1.0
def test_ece_equals_torchmetrics(scale):
    rng = np.random.default_rng(int(scale * 10))
    n, C = 700, 10
    labels = rng.integers(0, C, n)
    logits = (scale * (np.eye(C)[labels] * rng.uniform(0, 2, (n, 1)) + rng.standard_normal((n, C)))).astype(np.float32)
    probs = torch.softmax(torch.from_numpy(logits), 1).numpy()
    if scale == 40.0:
        assert (probs.max(1) == 1.0).any()
    expected = _tm(probs, labels, C)
    assert expected > 0.005
    assert expected_calibration_error(probs, labels) == pytest.approx(expected, abs=1e-6)
    assert expected_calibration_error(logits, labels, from_logits=True) == pytest.approx(
        _tm(logits, labels, C), abs=1e-6)
    # the reliability diagram bins as torchmetrics does: its weighted gaps add up to the same ECE
    r = reliability_data(probs, labels)
    assert float((r["fraction"] * r["gap"].abs()).fillna(0).sum()) == pytest.approx(expected, abs=1e-6)


def test_reliability_data_bins_and_ece_hand_case():
    # confidences .9 (right), .9 (wrong), .5 (right), 1.0 (right) in 15 bins of width 1/15
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.5, 0.5], [1.0, 0.0]], dtype=np.float32)
    labels = np.array([0, 1, 0, 0])
    r = reliability_data(probs, labels)
    assert len(r) == 16  # 15 bins + the degenerate [1, 1] bin used by torchmetrics
    b9, b5 = int(0.9 * 15), int(0.5 * 15)
    assert r.loc[b9, "count"] == 2 and r.loc[b9, "accuracy"] == 0.5
    assert r.loc[b5, "count"] == 1 and r.loc[15, "count"] == 1
    expected = 0.5 * abs(0.5 - 0.9) + 0.25 * abs(1 - 0.5) + 0.25 * 0.0
    assert expected_calibration_error(probs, labels) == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(_tm(probs, labels, 2), abs=1e-6)


def test_reliability_frame_matches_logged_ece(sva_sweep):
    run = load_run(sva_sweep.teachers[0])
    rel = reliability_frame([run])
    assert set(rel["split"]) == set(run.output_splits())
    for split, g in rel.groupby("split"):
        assert g["count"].sum() == run.outputs(split).n
        assert g["ece"].iloc[0] == pytest.approx(run.metric(split, "ece"), abs=1e-6)


def test_expected_calibration_error_rejects_logits_as_probs():
    with pytest.raises(ValueError, match="from_logits"):
        expected_calibration_error(np.array([[3.0, -1.0]]), np.array([0]))
