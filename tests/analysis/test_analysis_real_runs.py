"""The analysis reads what biaskd training writes: a tiny real teacher -> student sweep."""
import numpy as np
import pytest

from analysis.agreement import agreement_table
from analysis.basins import barrier, run_linear_path
from analysis.calibration import expected_calibration_error
from analysis.maps import training_paths
from analysis.runs import find_runs, runs_frame
from analysis.similarity import similarity_matrix
from biaskd.run.train import train


@pytest.fixture
def real_runs(compose_tiny, tmp_path):
    train(compose_tiny("distill=cross", runs_dir=tmp_path / "runs"))  # trains the CNN teacher too
    train(compose_tiny("distill=none", runs_dir=tmp_path / "runs"))
    return find_runs(tmp_path / "runs")


def test_analysis_on_real_run_dirs(real_runs):
    by_mode = {(r.role, r.distill): r for r in real_runs}
    student, indep, teacher = by_mode[("student", "cross")], by_mode[("student", "none")], by_mode[("teacher", "none")]
    assert student.teacher == teacher and student.teacher_model == teacher.model
    frame = runs_frame(real_runs)
    assert set(frame["split"]) == {"test", "shifted"}
    assert frame.loc[frame.run == student.run_id, "teacher_run"].eq(teacher.run_id).all()
    for r in real_runs:  # the recomputed ECE equals the one logged at training time
        out = r.outputs("test")
        assert expected_calibration_error(out.logits, out.labels, from_logits=True) == pytest.approx(
            r.metric("test", "ece"), abs=1e-6)
    table = agreement_table([student, (indep, teacher)])
    assert len(table) == 4 and table["top1_agreement"].between(0, 1).all()
    S = similarity_matrix(real_runs)
    assert np.allclose(np.diag(S), 1.0)
    paths = training_paths(real_runs)
    assert set(paths["run"]) == {r.run_id for r in real_runs} and paths["is_final"].sum() == 3
    lp = run_linear_path(indep, student, lambdas=[0, 0.5, 1])
    for i, run in ((0, indep), (2, student)):  # the end points are the two runs as trained
        assert lp.loc[i, "accuracy"] == pytest.approx(run.metric("test", "accuracy"))
        assert lp.loc[i, "loss"] == pytest.approx(run.metric("test", "loss"), rel=1e-5)
    l0, l_mid, l1 = lp["loss"]
    assert barrier(lp["lambda"], lp["loss"]) == pytest.approx(max(0.0, l_mid - (l0 + l1) / 2))
    flat = run_linear_path(student, student, lambdas=[0, 0.5, 1])  # one solution: no barrier
    assert flat["loss"].nunique() == 1 and barrier(flat["lambda"], flat["loss"]) == pytest.approx(0.0, abs=1e-9)
