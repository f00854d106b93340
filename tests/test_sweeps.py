"""Sweeps as a user runs them: the `biaskd` command in a subprocess, killed and rerun."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from biaskd.record.artifacts import RunDir
from biaskd.tools.cli import CONF_DIR

QUIET = ["trainer.enable_progress_bar=false", "threads=1"]


def biaskd(*args, runs_dir, **kw):
    cmd = [sys.executable, "-m", "biaskd.tools.cli", *args, f"runs_dir={runs_dir}", *QUIET]
    env = dict(os.environ, WANDB_MODE="offline", PYTHONWARNINGS="ignore")
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, **kw)


def complete_runs(runs_dir: Path) -> list[RunDir]:
    return [RunDir(p.parent) for p in runs_dir.rglob("COMPLETE")]


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml")))
def test_every_experiment_config_composes(experiment):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={experiment}"], return_hydra_config=True)
    assert cfg.experiment_name == experiment
    for key, values in (cfg.hydra.sweeper.params or {}).items():
        # every swept group value composes too
        for value in str(values).split(","):
            GlobalHydra.instance().clear()
            with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
                compose("config", overrides=[f"experiment={experiment}", f"{key}={value.strip()}"])


@pytest.mark.parametrize("launcher", ["parallel", "slurm", "basic"])
@pytest.mark.parametrize("trainer", ["cpu", "gpu", "ddp"])
def test_launcher_and_trainer_configs_compose(launcher, trainer):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[f"hydra/launcher={launcher}", f"trainer={trainer}"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_
    if trainer != "cpu":
        assert cfg.trainer.precision == "bf16-mixed"


def test_grid_trains_each_teacher_once_and_rerun_skips_everything(tmp_path):
    runs = tmp_path / "runs"
    p = biaskd("-m", "experiment=toy_grid", runs_dir=runs)
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out[-3000:]
    done = complete_runs(runs)
    teachers = [r for r in done if r.meta["role"] == "teacher"]
    students = [r for r in done if r.meta["role"] == "student"]
    # 2 teacher archs; 2 student archs x (none + self + 2 online + 1 cross from the other arch)
    assert len(teachers) == 2 and len(students) == 2 * 5
    assert out.count("training teacher:") == 2
    # every self/cross student found its teacher among the two
    teacher_dirs = {str(t.path) for t in teachers}
    for s in students:
        if s.meta["distill"] in ("self", "cross"):
            assert str(s.teacher_dir.path) in teacher_dirs
    assert "test ECE" in out  # the sweep's summary table
    # rerunning the same sweep trains nothing
    p = biaskd("-m", "experiment=toy_grid", runs_dir=runs)
    out2, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out2[-3000:]
    assert out2.count("complete, skipping") == 16 and "training teacher" not in out2


def test_kill_minus_9_then_rerun_resumes_from_checkpoint(tmp_path):
    runs = tmp_path / "runs"
    args = ["task=toy", "model=mlp_small", "task.n_train=20000", "trainer.max_epochs=12"]
    p = biaskd(*args, runs_dir=runs)
    deadline = time.time() + 120
    ckpt = None
    while time.time() < deadline and p.poll() is None:
        found = list(runs.glob("default/*/checkpoints/last.ckpt"))
        if found:
            ckpt = found[0]
            break
        time.sleep(0.05)
    assert ckpt is not None, "no checkpoint appeared"
    p.send_signal(signal.SIGKILL)
    p.wait()
    run = RunDir(ckpt.parent.parent)
    assert not run.is_complete
    # nothing half-written under a real name
    for f in run.path.rglob("*.npz"):
        assert not f.name.startswith(".")
    p = biaskd(*args, runs_dir=runs)
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out[-3000:]
    assert "resuming from" in out
    assert run.is_complete
    assert run.metrics["train"]["epochs"] == 12
    assert run.metrics["train"]["steps"] == 12 * (20000 // 64 + 1)
