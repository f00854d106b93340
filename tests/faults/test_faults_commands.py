"""The commands on damaged run dirs: one line naming the file and a non-zero exit status from
``biaskd`` (a run and a sweep's summary) and ``python -m biaskd.rerun``; ``python -m
analysis.report`` names each run dir it leaves out; a teacher's cache loses what a killed
writer left; a job says when another process trained its run."""
import json
import os
import re

import pytest

from biaskd.record import artifacts, schema
from biaskd.record.artifacts import RunDir
from biaskd.record.summary import summary_line
from biaskd.tools.rerun import main as rerun
from faultkit import Killed, cfg, command, error_lines, flip, kill_in_rename, tree
from tiny import TINY

QUIET = ["trainer.enable_progress_bar=false"]


def test_a_sweep_says_each_damaged_run_in_one_line_and_exits_2(trained, tmp_path):
    """Job 0's run lost its manifest: the job fails with one line naming it (the sweep goes on).
    Job 1's run is fine, but its teacher's metrics.json is damaged: the sweep's summary leaves
    the teacher out with one line naming the file. The sweep exits with status 2."""
    runs = trained.copy(tmp_path / "runs")
    (runs.independent / artifacts.MANIFEST).unlink()
    flip(runs.teacher / schema.METRICS)
    before = tree(runs.root)
    out = command(["-m", "biaskd.tools.cli", "-m", *TINY, *QUIET, "distill=none,cross", f"runs_dir={runs.root}",
                   f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr and "Warning" not in out.stderr
    failed = [line for line in out.stderr.splitlines() if line.startswith("[job failed]")]
    assert len(failed) == 1 and " distill=none " in failed[0]
    assert failed[0].endswith(f": ArtifactError: {runs.independent / artifacts.MANIFEST}: missing (a complete "
                              f"format-2 run writes it before COMPLETE); {artifacts.REPAIR_HINT}")
    assert "1 job(s) failed" in out.stderr
    assert "complete already" in out.stdout  # the student itself is fine
    (line,) = error_lines(out.stderr)
    assert line.startswith(f"error: the sweep's summary left out a damaged run: run {runs.teacher.name}: "
                           f"{runs.teacher / schema.METRICS}: contents do not match the SHA-256")
    assert tree(runs.root) == before  # nothing trained, nothing moved


def _lr_changed(path):
    text = path.read_text()
    assert "\n  lr: 0.001\n" in text
    path.write_text(text.replace("\n  lr: 0.001\n", "\n  lr: 0.003\n", 1))


CONFIG_DAMAGE = {
    "edited": (_lr_changed, "contents do not match the SHA-256 in the run's MANIFEST.json"),
    "bit-flip": (flip, "contents do not match the SHA-256 in the run's MANIFEST.json"),
    "manifest-lost": (lambda p: (p.parent / artifacts.MANIFEST).unlink(), "MANIFEST.json: missing"),
    "manifest-damaged": (lambda p: flip(p.parent / artifacts.MANIFEST), "MANIFEST.json: "),
}


@pytest.mark.parametrize("how", CONFIG_DAMAGE)
def test_rerun_refuses_a_config_that_fails_its_manifest(trained, tmp_path, capsys, how):
    runs = trained.copy(tmp_path / "runs")
    config = runs.teacher / schema.CONFIG
    damage, reason = CONFIG_DAMAGE[how]
    damage(config)
    capsys.readouterr()
    assert rerun([str(runs.teacher), "--runs-dir", str(tmp_path / "again")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1
    assert err.startswith(f"error: ArtifactError: {config} fails its manifest (") and reason in err
    assert not (tmp_path / "again").exists()  # nothing trained


def test_the_report_prints_each_run_dir_it_leaves_out(trained, tmp_path, capsys):
    from analysis.report import main as report

    runs = trained.copy(tmp_path / "runs")
    flip(runs.independent / "outputs" / "test.npz")
    (runs.student / artifacts.MANIFEST).unlink()
    capsys.readouterr()
    assert report([str(runs.root), "--out", str(tmp_path / "report")]) == 0
    err = capsys.readouterr().err
    left_out = [line for line in err.splitlines() if line.startswith("[report] skipping")]
    assert len(left_out) == 2, err
    assert any(str(runs.independent / "outputs" / "test.npz") in line for line in left_out)
    assert any(str(runs.student / artifacts.MANIFEST) in line for line in left_out)
    notes = (tmp_path / "report" / "report.md").read_text()
    assert "outputs/test.npz" in notes and "MANIFEST.json" in notes


def _teacher_parts(runs):
    from biaskd.data.build import build_data
    from biaskd.run.rebuild import load_model

    data = build_data(cfg(runs.root, "student"))
    teacher = RunDir(runs.teacher)
    return teacher, load_model(teacher, data), data


def test_a_teacher_cache_loses_what_a_killed_writer_left(trained, tmp_path, monkeypatch):
    from biaskd.run.teacher import teacher_cache

    runs = trained.copy(tmp_path / "runs")
    teacher, model, data = _teacher_parts(runs)
    folder = runs.teacher / schema.TEACHER_CACHE
    (cached,) = folder.glob("train-*.npz")
    expected = teacher_cache(teacher, model, data).logits
    for p in folder.glob("train-*.npz*"):
        if not p.name.endswith(".lock"):
            p.unlink()
    killed = kill_in_rename(monkeypatch, f"{schema.TEACHER_CACHE}/{cached.name}")
    with pytest.raises(Killed):
        teacher_cache(teacher, model, data)
    monkeypatch.undo()
    assert killed["killed"] and not cached.exists()
    left = sorted(p.name for p in folder.glob(f".*{schema.TMP_SUFFIX}"))
    assert left == [f".{cached.name}.killed{schema.TMP_SUFFIX}"]
    other = folder / f".fit-0123456789abcdef.npz.x1{schema.TMP_SUFFIX}"  # another cache's, maybe being written
    other.write_bytes(b"partial")

    again = teacher_cache(teacher, model, data)
    assert sorted(p.name for p in folder.glob(f".*{schema.TMP_SUFFIX}")) == [other.name]
    assert cached.exists() and again.logits.equal(expected)


def _complete_marker_from(run, pid):
    marker = json.loads((run / schema.COMPLETE).read_text())
    stamp = (run / schema.COMPLETE).stat().st_mtime
    artifacts.write_json(run / schema.COMPLETE, {**marker, "pid": pid})
    os.utime(run / schema.COMPLETE, (stamp, stamp))
    return stamp


@pytest.mark.parametrize("finisher", ["this process", "another process"])
def test_a_job_says_who_trained_its_run(trained, tmp_path, finisher):
    runs = trained.copy(tmp_path / "runs")
    run = RunDir(runs.independent)
    finished = _complete_marker_from(run.path, os.getpid() + (finisher == "another process"))
    since = finished - 1  # the job started before the run was finished (it waited on the run's lock)
    line = summary_line(run, since=since)
    if finisher == "this process":
        assert re.search(r"\(trained in [0-9.]+s;", line) and "another process" not in line
    else:
        assert "(found complete: another process trained it while this job waited;" in line
        assert "trained in" not in line
    assert "complete already" in summary_line(run, since=finished + 1)
