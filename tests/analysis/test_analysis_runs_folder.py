"""The report on a real runs folder: one config under two experiment names, and bad run dirs.

The run dirs are real tiny runs (trained once per module) copied into each test's own
``runs/`` folder, laid out as ``make report`` finds it: ``teachers/`` plus experiment folders.
"""
import json
import shutil
import warnings

import numpy as np
import pytest

from analysis.maps import training_paths
from analysis.report import build_report
from analysis.runs import find_runs, with_teachers
from biaskd.run.train import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return tmp_path_factory.mktemp("trained")


@pytest.fixture
def runs(compose_tiny, trained, tmp_path):
    """``runs/teachers/<cnn teacher>``, ``runs/exp_a/<cross student>`` and ``runs/exp_a/<independent>``."""
    for mode in ("cross", "none"):  # trained on the first call, then found complete
        train(compose_tiny(f"distill={mode}", "experiment_name=exp_a", runs_dir=trained))
    root = tmp_path / "runs"
    shutil.copytree(trained, root)
    return root


def _run_dir(folder, pattern):
    (d,) = [p for p in folder.glob(pattern) if p.is_dir()]
    return d


def _report(paths, out):
    build_report(paths, out)
    return (out / "report.md").read_text()


def test_one_config_under_two_experiment_names_is_analysed_once(runs, tmp_path):
    shutil.copytree(runs / "exp_a", runs / "exp_b")  # the same jobs rerun with experiment_name=exp_b
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = find_runs(runs)
    assert sorted(r.path.parent.name for r in found) == ["exp_a", "exp_a", "teachers"]
    assert len(caught) == 1
    message = str(caught[0].message)
    copies = [d for d in (runs / "exp_b").iterdir() if d.is_dir()]  # (a lock file may sit beside a run dir)
    assert len(copies) == 2 and all(str(d) in message for d in copies)
    assert "same metrics" in message and str(runs / "exp_a") in message
    # the teacher under runs/teachers is one run, found directly and named by both students
    assert with_teachers(found) == found
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert len(with_teachers(find_runs(runs / "exp_a", runs / "exp_b"))) == 3
    paths = training_paths(found)  # failed with "duplicate (run, step) points" before
    assert set(paths["run"]) == {r.run_id for r in found}

    text = _report([runs], tmp_path / "report")
    assert "3 complete run(s)" in text
    assert sum("second copies" in line for line in text.splitlines()) == 1
    assert "## Training paths" in text and "section stopped" not in text


def _fail(d):
    (d / "COMPLETE").unlink()
    (d / "FAILED").write_text(json.dumps({"reason": "loss became nan at step 3"}))


def test_bad_run_dirs_are_named_once_and_left_out(runs, tmp_path):
    student, indep = _run_dir(runs / "exp_a", "*-cross-*"), _run_dir(runs / "exp_a", "*-none-*")
    npz = indep / "outputs" / "test.npz"
    npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])  # truncated
    bad = {indep: "outputs/test.npz"}
    for folder, damage, what in [
        ("no_metrics", lambda d: (d / "metrics.json").unlink(), "missing metrics.json"),
        ("no_meta", lambda d: (d / "meta.json").unlink(), "missing meta.json"),
        ("killed", lambda d: (d / "COMPLETE").unlink(), "incomplete"),
        ("failed", _fail, "loss became nan at step 3"),
    ]:
        d = runs / folder / student.name
        shutil.copytree(student, d)
        damage(d)
        bad[d] = what

    text = _report([runs], tmp_path / "report")
    notes = text.partition("## Notes on the inputs")[2].partition("\n## ")[0]
    for d, what in bad.items():
        lines = [line for line in text.splitlines() if str(d) in line]
        assert len(lines) == 1 and what in lines[0] and lines[0] in notes, (d, lines)
    assert "2 complete run(s)" in text  # the teacher and the cross-distilled student
    assert "section stopped" not in text
    agreement = (tmp_path / "report" / "agreement.csv").read_text()
    assert student.name in agreement and indep.name not in agreement


def test_unreadable_teacher_and_another_probe_set_stop_only_what_needs_them(runs, compose_tiny, tmp_path):
    teacher, student = _run_dir(runs / "teachers", "*"), _run_dir(runs / "exp_a", "*-cross-*")
    npz = teacher / "features" / "final.npz"
    npz.write_bytes(npz.read_bytes()[:100])  # truncated
    # a run of the same task whose probe features are on 32 examples, not 64: not comparable
    other = train(compose_tiny("distill=none", "task.probe_size=32", "experiment_name=exp_c", runs_dir=runs))

    text = _report([runs], tmp_path / "report")
    assert sum(str(teacher) in line for line in text.splitlines()) == 1
    assert f"its teacher {teacher.name} is not among the runs analysed" in text
    similarity = text.partition("## Representational similarity")[2].partition("\n## ")[0]
    assert "this section stopped" in similarity and other.path.name in similarity
    assert "3 complete run(s)" in text and "## Calibration" in text
    assert student.name in (tmp_path / "report" / "ece_recomputed.csv").read_text()
