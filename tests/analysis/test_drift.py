"""The report's drift section on real tiny runs: a distilled student trained on without its teacher."""
import numpy as np
import pandas as pd
import pytest

from analysis.agreement import top1_agreement
from analysis.basins import run_linear_path
from analysis.report import build_report
from analysis.runs import load_run
from analysis.similarity import linear_cka
from biaskd.run.train import train


def test_drift_section_measures_start_and_end_against_the_teacher(compose_tiny, tmp_path):
    student = train(compose_tiny("distill=cross"))
    drift = train(compose_tiny("distill=none", f"train.init_from={student.path}", "experiment_name=drift"))
    build_report([drift.path.parent], tmp_path / "report")
    text = (tmp_path / "report" / "report.md").read_text()
    assert "## Drift without the teacher" in text
    rows = pd.read_csv(tmp_path / "report" / "drift.csv")
    test = rows[rows["split"] == "test"].iloc[0]
    assert test["acc_start"] == pytest.approx(student.metrics["splits"]["test"]["accuracy"])
    assert test["acc_end"] == pytest.approx(drift.metrics["splits"]["test"]["accuracy"])
    teacher_logits = student.teacher_dir.outputs("test")["logits"]
    assert test["agree_teacher_end"] == pytest.approx(top1_agreement(drift.outputs("test")["logits"], teacher_logits))
    teacher_features = student.teacher_dir.features()["features"]
    assert test["cka_teacher_start"] == pytest.approx(linear_cka(student.features()["features"], teacher_features))
    assert test["cka_teacher_end"] == pytest.approx(linear_cka(drift.features()["features"], teacher_features))
    # the barrier from the path arrays: max over lambda of the loss above the line between the end losses
    path = run_linear_path(load_run(student.path), load_run(drift.path), "test")
    lam, loss = path["lambda"].to_numpy(), path["loss"].to_numpy()
    assert loss[0] == pytest.approx(student.metrics["splits"]["test"]["loss"], rel=1e-5)  # starts at the student
    assert loss[-1] == pytest.approx(drift.metrics["splits"]["test"]["loss"], rel=1e-5)
    assert test["barrier"] == pytest.approx(np.max(loss - ((1 - lam) * loss[0] + lam * loss[-1])))
