"""SLURM requeue: a job that hits its time limit is sent a signal, stopped and run again as the
same job; the run resumes from its last checkpoint instead of starting over."""
import csv
import os
import signal
import subprocess
import sys
import time

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from biaskd.record.artifacts import RunDir
from biaskd.tools.cli import CONF_DIR

JOB = ["-m", "task=toy", "model=mlp_small", "task.n_train=20000", "trainer.max_epochs=8", "seed=1",
       "trainer.enable_progress_bar=false", "threads=1"]


def test_slurm_jobs_are_requeued_a_bounded_number_of_times():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert 1 <= launcher.max_num_timeout <= 5  # requeued, but a run that never fits stops
    assert 0 < launcher.signal_delay_s < launcher.timeout_min * 60
    assert cfg.hydra.job.name == "biaskd"  # the SLURM job's name


def _sweep(runs, cwd):
    env = dict(os.environ, WANDB_MODE="offline", PYTHONWARNINGS="ignore")
    return subprocess.Popen([sys.executable, "-m", "biaskd.tools.cli", *JOB, f"runs_dir={runs}"], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _steps(path):
    with open(path, newline="") as f:
        return sorted({int(row["step"]) for row in csv.DictReader(f)})


def test_sigterm_then_the_same_job_again_resumes_from_the_checkpoint(tmp_path):
    runs = tmp_path / "runs"
    p = _sweep(runs, tmp_path)
    deadline, ckpt = time.time() + 120, None
    while time.time() < deadline and p.poll() is None and ckpt is None:
        ckpt = next(iter(runs.glob("default/*/checkpoints/last.ckpt")), None)
        time.sleep(0.05)
    assert ckpt is not None, "no checkpoint appeared"
    time.sleep(0.3)  # into the next epoch
    p.send_signal(signal.SIGTERM)  # what SLURM sends a job at its time limit or on preemption
    p.communicate(timeout=60)
    run = RunDir(ckpt.parent.parent)
    assert not run.is_complete
    logged_before = _steps(run / "logs" / "metrics.csv")

    p = _sweep(runs, tmp_path)  # the requeued job: the same job, the same config
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out[-3000:]
    assert "resuming from" in out and str(ckpt) in out
    assert run.is_complete and run.metrics["train"]["epochs"] == 8
    assert run.metrics["train"]["steps"] == 8 * (20000 // 64 + 1)
    steps = _steps(run / "logs" / "metrics.csv")
    assert logged_before and set(logged_before) <= set(steps)  # the log from before the requeue is kept
    assert "[sweep] 1/1 jobs done" in out
