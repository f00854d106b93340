"""A multirun's sweep folder as a Hydra user expects it: the summary table saved, the run dirs
listed, and the report (and its W&B run) made from the sweep folder itself."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from biaskd.record.artifacts import RunDir
from biaskd.record.sweep import duration

TINY = ["task=toy", "model=mlp_small", "model@teacher.model=cnn_small", "trainer.max_epochs=2",
        "trainer.enable_progress_bar=false", "threads=1"]
ROOT = Path(__file__).resolve().parent.parent


def run(args, cwd, **env):
    # this checkout's packages, whatever the environment has installed
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", PYTHONWARNINGS="ignore",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep), **env)
    p = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p.stdout, p.stderr


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """4 jobs: independent and cross-distilled MLP x 2 seeds (the independent one compared with its teacher)."""
    cwd = tmp_path_factory.mktemp("sweep")
    out, err = run(["-m", "biaskd.tools.cli", "-m", *TINY, "distill=none,cross", "seed=1,2", "teacher.compare=true",
                    "runs_dir=runs"], cwd)
    (folder,) = (cwd / "runs" / "_hydra").glob("*_multirun")
    return cwd, folder, out, err


def test_multirun_writes_summary_and_run_list_into_the_sweep_folder(sweep):
    cwd, folder, out, err = sweep
    runs = [folder / line for line in (folder / "runs.txt").read_text().split()]
    assert len(runs) == 4 and all(RunDir(r).is_complete for r in runs)
    assert {RunDir(r).meta["distill"] for r in runs} == {"none", "cross"}
    summary = pd.read_csv(folder / "summary.csv")
    acc = summary[(summary["metric"] == "accuracy") & (summary["split"] == "test")].set_index("configuration")
    assert set(acc["role"]) == {"teacher", "student"} and (acc["n"] == 2).all()
    assert acc["half_width"].notna().all() and (acc["seeds"].astype(str).str.contains(",")).all()
    agree = summary[summary["metric"] == "teacher_agreement"]
    assert set(agree["distill"]) == {"none", "cross"}  # the independent baseline has it too
    assert (summary[summary["metric"] == "teacher_cka"]["split"] == "probe").all()
    md = (folder / "summary.md").read_text()
    assert "± " in md and "Top-1 agreement with the teacher" in md
    # what the person at the terminal read
    assert "[sweep] 4/4 jobs done" in err and "about" in err  # progress with an estimate
    assert "its teacher cnn_small in" in out  # time spent on the teacher, told apart
    rel = folder.relative_to(cwd)
    assert f"summary (mean ± 95% CI over seeds): {rel / 'summary.md'}" in out
    assert f"report: python -m analysis.report {rel} --out <folder>" in out
    assert (folder / "0" / "biaskd.log").exists()  # hydra.job.name
    # did the students move toward their teacher: per teacher, paired by seed, said in a computed sentence
    assert "Top-1 agreement with the teacher" in md and "| teacher | configuration |" in md
    assert "## Did the distilled students move toward their teacher?" in md and (folder / "paired.csv").exists()
    said = "mlp_small distilled from cnn_small − mlp_small independent (2 seeds, on shifted): accuracy "
    assert said in md and said in out and "− independent" in out
    paired = pd.read_csv(folder / "paired.csv")
    assert set(paired["metric"]) == {"accuracy", "teacher_agreement", "teacher_js", "teacher_cka"}
    assert (paired["n_pairs"] == 2).all() and paired["diff_half_width"].notna().all()
    # the per-job line shows the measures against the teacher, and the job's log has it too
    assert "[mlp_small independent seed=1] shifted=" in out and "· agreement with cnn_small 0." in out
    log = (folder / "0" / "biaskd.log").read_text()
    assert "[mlp_small independent seed=1] shifted=" in log and "probe CKA" in log
    assert "evaluating on 2 eval split(s) (test, shifted: 256 examples)" in log and "evaluated in " in log


def test_report_on_the_sweep_folder_with_a_wandb_analysis_run(sweep):
    cwd, folder, _, _ = sweep
    _, err = run(["-m", "analysis.report", str(folder), "--out", "report", "--wandb"], cwd,
                 WANDB_DATA_DIR=str(cwd / "wandb-data"))
    text = (cwd / "report" / "report.md").read_text()
    assert "6 complete run(s)" in text  # 4 students + their 2 teachers
    (offline,) = (cwd / "report" / "wandb").glob("offline-run-*")
    records = next(offline.glob("*.wandb")).read_bytes()
    assert b"analysis" in records and b"transfer" in records
    tables = {p.name.split("_")[0] for p in (offline / "files" / "media" / "table").glob("*.table.json")}
    assert {"transfer", "agreement", "summary"} <= tables
    transfer = json.loads(next((offline / "files" / "media" / "table").glob("transfer_*.table.json")).read_text())
    assert transfer["columns"] == list(pd.read_csv(cwd / "report" / "transfer.csv").columns)
    images = list((offline / "files" / "media" / "images").rglob("*.png"))
    assert len(images) == len(list((cwd / "report").glob("*.png"))) > 0
    assert "job_type analysis, group 'default'" in err and "wandb sync" in err
    # the report says how far it is while it works
    assert "[report 1/12] read 6 run dir(s)" in err and "[report 12/12] calibration" in err


def _as_if_only(folder, tmp_path, done):
    """A copy of the sweep folder in which only the jobs whose overrides include all of ``done``
    have finished (times kept)."""
    import shutil

    copy = tmp_path / "sweep"
    shutil.copytree(folder, copy)
    for job in copy.iterdir():
        overrides = job / ".hydra" / "overrides.yaml"
        if overrides.is_file() and not all(o in overrides.read_text() for o in done):
            (job / "run.txt").unlink()
    return copy


def test_the_estimate_of_time_left_counts_the_teachers_still_to_train(sweep, tmp_path):
    from biaskd.record.sweep import progress_line, teachers_left

    _, folder, _, _ = sweep
    started = (folder / "multirun.yaml").stat().st_mtime
    # after the independent seed-1 job (it trained the seed-1 teacher, to compare with): the
    # seed-2 teacher is still to train, at the pace of the first
    first = _as_if_only(folder, tmp_path / "a", ["distill=none", "seed=1"])
    n, expected, spent = teachers_left(first, started)
    assert n == 1 and expected == pytest.approx(spent) and spent > 0
    line = progress_line(first)
    assert line.startswith("[sweep] 1/4 jobs done") and "+ 1 teacher(s) to train, about " in line
    # after both independent jobs every teacher exists: the distilled students need none
    both = _as_if_only(folder, tmp_path / "b", ["distill=none"])
    assert teachers_left(both, started)[0] == 0 and progress_line(both).endswith("left (no teacher left to train)")


def test_a_job_s_teacher_is_told_apart_by_the_overrides_that_choose_it():
    from biaskd.record.sweep import _teacher_key

    base = {"model": "mlp", "model@teacher.model": "cnn", "distill": "none", "teacher.compare": "auto"}
    key = lambda *o: _teacher_key(frozenset(o), base)  # noqa: E731
    assert key("seed=1") is None  # independent, not compared with a teacher
    assert key("seed=1", "distill=cross", "distill.temperature=5") == key("seed=1", "distill=cross") \
        == key("seed=1", "teacher.compare=true", "transfer.size=5000")
    assert key("seed=1", "distill=cross") != key("seed=2", "distill=cross")
    assert key("seed=1", "distill=self") == key("seed=1", "distill=self", "model@teacher.model=cnn_gp") \
        != key("seed=1", "distill=cross")


def test_durations_read_as_a_person_writes_them():
    assert [duration(s) for s in (0.42, 12.4, 185, 3720)] == ["0.4s", "12s", "3m05s", "1h02m"]


def test_the_summary_callback_writes_the_summary_it_is_given_and_the_run_list_without_one(tmp_path):
    from biaskd.record import sweep
    from biaskd.tools.cli import SummaryCallback

    run_dir = tmp_path / "runs" / "a-run"
    sweep.record_job(tmp_path / "sweep" / "0", run_dir)
    given = SummaryCallback(summarize=f"{__name__}._record_call")
    _CALLS[:] = []
    assert given._summarize(tmp_path / "sweep", failed=1) == ("summary.md", "table")
    assert _CALLS == [(tmp_path / "sweep", 1)] and not (tmp_path / "sweep" / sweep.RUNS_FILE).exists()
    assert SummaryCallback()._summarize(tmp_path / "sweep", failed=0) is None  # the config names none
    assert (tmp_path / "sweep" / sweep.RUNS_FILE).read_text() == "../runs/a-run\n"


_CALLS: list = []  # what _record_call, a summary function named by its dotted path, was called with


def _record_call(sweep_dir, failed=0):
    _CALLS.append((sweep_dir, failed))
    return "summary.md", "table"


def test_summary_compares_each_student_with_the_teacher_it_is_a_control_for(compose_tiny, tmp_path):
    """Independent students trained before any teacher existed (teacher.compare=auto) still get
    their agreement with it, from the saved outputs, and equal to what a run logs itself."""
    from analysis.controls import load_sweep, teacher_measures
    from analysis.runs import load_run
    from analysis.sweep_summary import write_summary
    from biaskd.record import sweep as sweep_mod
    from biaskd.run.train import train

    folder = tmp_path / "sweep"
    job = 0
    for mode in ("none", "self", "cross"):  # the independent ones first: no teacher exists yet
        for seed in (1, 2):
            run = train(compose_tiny(f"distill={mode}", f"seed={seed}"))
            sweep_mod.record_job(folder / str(job), run.path)
            job += 1
    independent = load_run(sweep_mod.sweep_runs(folder)[0])
    assert "teacher_agreement" not in independent.metrics["splits"]["test"]
    path, text = write_summary(folder)
    summary = pd.read_csv(folder / "summary.csv")
    agree = summary[(summary["metric"] == "teacher_agreement") & (summary["split"] == "test")]
    rows = set(zip(agree["teacher"], agree["configuration"]))
    assert rows == {("cnn_small", "mlp_small independent"), ("cnn_small", "mlp_small self-distilled"),
                    ("cnn_small", "mlp_small distilled from cnn_small"), ("mlp_small", "mlp_small independent"),
                    ("mlp_small", "mlp_small self-distilled")}
    assert (agree["n"] == 2).all()
    paired = pd.read_csv(folder / "paired.csv")
    kd = paired[paired["distilled"] == "mlp_small distilled from cnn_small"]
    assert set(kd["control"]) == {"independent", "self-distilled"}
    assert set(paired[paired["distilled"] == "mlp_small self-distilled"]["control"]) == {"independent"}
    md = path.read_text()
    assert "mlp_small distilled from cnn_small − mlp_small self-distilled (2 seeds, on shifted)" in md
    assert "mlp_small distilled from cnn_small − mlp_small self-distilled (2 seeds, on shifted)" in text
    # recomputed from saved outputs = what the distilled run logged against the same teacher
    sweep = load_sweep(sweep_mod.sweep_runs(folder))
    student = next(r for r in sweep.students if r.distill == "cross")
    logged = teacher_measures(student, student.teacher)
    student.metrics = {k: v for k, v in student.metrics.items() if k != "teacher"}  # as if it had not compared
    recomputed = teacher_measures(student, student.teacher)
    assert logged.keys() == recomputed.keys() and len(logged) == 5
    for key, value in logged.items():
        assert recomputed[key] == pytest.approx(value, abs=1e-12), key
