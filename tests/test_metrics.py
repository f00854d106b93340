"""Metrics against hand-made predictions (docs/design.md, "Metrics")."""
import numpy as np
import pytest
import torch
from torchmetrics.functional.classification import multiclass_calibration_error

from biaskd.metrics import a_accuracy, d_accuracy, ece, split_metrics


def test_a_accuracy_is_mean_of_per_bin_accuracy_on_homogeneous_examples():
    #            bin:   0  0  1  1  1  2  2(not homogeneous)  3
    attractors = np.array([0, 0, 1, 1, 1, 2, 2, 3])
    homogeneous = np.array([1, 1, 1, 1, 1, 1, 0, 1])
    correct = np.array([1, 0, 1, 1, 0, 0, 1, 1])
    res = a_accuracy(correct, attractors, homogeneous)
    # per bin: 0 -> 1/2, 1 -> 2/3, 2 -> 0/1 (the non-homogeneous one is dropped), 3 -> 1; bin 4 empty
    assert res.per_bin == pytest.approx({0: 0.5, 1: 2 / 3, 2: 0.0, 3: 1.0})
    assert res.value == pytest.approx((0.5 + 2 / 3 + 0.0 + 1.0) / 4)
    assert res.empty_bins == [4]
    assert res.counts[2] == 1


def test_d_accuracy_reports_empty_bins_instead_of_zero():
    distance = np.array([1, 1, 2, 5, -1])
    correct = np.array([1, 1, 0, 1, 0])
    res = d_accuracy(correct, distance, max_distance=6)
    assert res.per_bin == {1: 1.0, 2: 0.0, 5: 1.0}
    assert res.value == pytest.approx(2 / 3)
    assert res.empty_bins == [3, 4, 6]


def test_ece_uses_15_bins_l1_like_torchmetrics_and_a_hand_case():
    # two examples, both predicted class 0 with confidence 0.8; one right, one wrong:
    # one bin, |acc - conf| = |0.5 - 0.8| = 0.3
    p = torch.tensor([[0.8, 0.2], [0.8, 0.2]])
    logits = p.log()
    y = torch.tensor([0, 1])
    assert ece(logits, y) == pytest.approx(0.3, abs=1e-6)
    torch.manual_seed(0)
    z = torch.randn(200, 5)
    yy = torch.randint(0, 5, (200,))
    ref = multiclass_calibration_error(z.softmax(-1), yy, num_classes=5, n_bins=15, norm="l1")
    assert ece(z, yy) == pytest.approx(float(ref))


def test_split_metrics_adds_agreement_metrics_when_metadata_present():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [2.0, 0.0]])
    y = torch.tensor([0, 1, 1, 0])
    meta = {"attractors": np.array([0, 1, 1, -1]), "homogeneous": np.array([1, 1, 1, 0]),
            "distance": np.array([1, 3, 3, 2])}
    m = split_metrics(logits, y, meta)
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["a_accuracy"] == pytest.approx((1.0 + 0.5) / 2)
    assert m["d_accuracy"] == pytest.approx((1.0 + 1.0 + 0.5) / 3)
    assert m["a_accuracy_empty_bins"] == [2, 3, 4]


class WandbLogger:  # the teacher table is written for loggers of this class name
    def __init__(self):
        self.tables, self.summary = {}, {}
        self.experiment = type("Experiment", (), {"summary": self.summary})()

    def log_table(self, key, columns, data):
        self.tables[key] = (columns, data)


def test_the_teacher_table_has_a_cka_column_only_with_a_probe_cka():
    from biaskd.run.versus_teacher import TeacherComparison, log_to_wandb

    splits = {"test": {"teacher_agreement": 0.9, "teacher_js": 0.05}}
    without, with_probe = WandbLogger(), WandbLogger()
    log_to_wandb([without], TeacherComparison(teacher={"model": "cnn"}, splits=splits))
    log_to_wandb([with_probe], TeacherComparison(teacher={"model": "cnn"}, splits=splits,
                                                 probe={"teacher_cka": 0.7, "n": 64}))
    assert without.tables["teacher/agreement"] == (["split", "teacher_agreement", "teacher_js"],
                                                   [["test", 0.9, 0.05]])
    columns, rows = with_probe.tables["teacher/agreement"]
    assert columns[-1] == "teacher_cka" and rows[-1] == ["probe", None, None, 0.7]
    assert without.summary == {"test/teacher_agreement": 0.9, "test/teacher_js": 0.05}
