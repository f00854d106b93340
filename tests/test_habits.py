"""The ecosystem's habits: callbacks and loggers from the config, fast_dev_run, launchers a recipe
chooses without pinning their keys, and the commands' one-line errors."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, TQDMProgressBar
from omegaconf import open_dict

from biaskd import config as config_mod
from biaskd.run.train import configured_callbacks, train
from biaskd.tools.cli import CONF_DIR
from tiny import TINY

ROOT = Path(__file__).resolve().parent.parent


def test_callbacks_come_from_the_config_group(compose_tiny):
    (bar,) = configured_callbacks(compose_tiny())
    assert isinstance(bar, TQDMProgressBar) and bar.refresh_rate == 20
    extra = configured_callbacks(compose_tiny(
        "+callbacks/early_stopping=valid_loss",
        "+callbacks.lr_monitor._target_=lightning.pytorch.callbacks.LearningRateMonitor",
        "callbacks.progress_bar=null"))
    assert sorted(type(c).__name__ for c in extra) == ["EarlyStopping", "LearningRateMonitor"]
    stop = next(c for c in extra if isinstance(c, EarlyStopping))
    assert stop.monitor == "valid/loss" and stop.patience == 3
    assert any(isinstance(c, LearningRateMonitor) for c in extra)


def test_callbacks_keep_run_identity_unless_they_change_training(compose_tiny):
    cfg = compose_tiny("distill=cross")
    bare = cfg.copy()
    with open_dict(bare):
        del bare["callbacks"]
    assert config_mod.run_hash(cfg, "fp") == config_mod.run_hash(bare, "fp")  # as before the group existed
    assert config_mod.run_hash(compose_tiny("distill=cross", "callbacks/progress_bar=rich"), "fp") == \
        config_mod.run_hash(cfg, "fp")
    stopped = compose_tiny("distill=cross", "+callbacks/early_stopping=valid_loss")
    assert config_mod.run_hash(stopped, "fp") != config_mod.run_hash(cfg, "fp")  # train.callbacks: its own run dir
    assert config_mod.teacher_config(stopped).train.callbacks.early_stopping.monitor == "valid/loss"


def test_a_configured_callback_and_logger_are_used_by_a_run(compose_tiny, tmp_path):
    run = train(compose_tiny("+callbacks/early_stopping=valid_loss", "train.callbacks.early_stopping.patience=0", "train.callbacks.early_stopping.min_delta=100",
                             "trainer.max_epochs=5", "+logger.extra._target_=lightning.pytorch.loggers.CSVLogger",
                             "+logger.extra.name=extra"))
    assert run.is_complete and run.metrics["train"]["epochs"] < 5  # stopped early
    assert (run.path / "extra").is_dir()  # the extra logger wrote under the run dir (its save_dir default)


@pytest.mark.parametrize("mode", ["none", "cross"])
def test_fast_dev_run_keeps_nothing(compose_tiny, tmp_path, mode, caplog):
    caplog.set_level("INFO", logger="biaskd")
    assert train(compose_tiny(f"distill={mode}", "+trainer.fast_dev_run=true")) is None
    runs = tmp_path / "runs"
    assert not runs.exists() or not any(runs.rglob("COMPLETE"))
    assert "fast_dev_run: [mlp_small" in caplog.text and "nothing kept" in caplog.text


def _compose(*overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml")))
def test_every_recipe_runs_with_the_basic_launcher(experiment):
    cfg = _compose(f"experiment={experiment}", "hydra/launcher=basic")
    assert cfg.hydra.launcher._target_.endswith("BasicLauncher")
    chosen = _compose(f"experiment={experiment}")
    if "joblib" in chosen.hydra.launcher._target_.lower():
        assert chosen.hydra.launcher.n_jobs == 2  # conf/hydra/launcher/parallel.yaml's, not the recipe's


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml")))
def test_recipes_with_an_independent_control_compare_it_with_the_teacher(experiment):
    cfg = _compose(f"experiment={experiment}")
    modes = str((cfg.hydra.sweeper.params or {}).get("distill", cfg.distill.mode))
    if "none" in modes.split(",") and len(modes.split(",")) > 1:
        assert cfg.teacher.compare is True


def _biaskd(*args, cwd):
    env = dict(os.environ, WANDB_MODE="offline", PYTHONWARNINGS="ignore", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "biaskd.tools.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_a_sweep_recipe_without_m_is_refused_in_one_line(tmp_path):
    p = _biaskd("experiment=toy_grid", "runs_dir=runs", cwd=tmp_path)
    assert p.returncode == 2, p.stdout + p.stderr
    (line,) = [x for x in p.stderr.splitlines() if x.strip()]
    assert line.startswith("error: ConfigError: experiment=toy_grid is a sweep over model, model@teacher.model, "
                           "distill: add -m to run it (biaskd -m experiment=toy_grid runs_dir=runs)")
    assert not list(tmp_path.rglob("COMPLETE"))


def test_a_typo_in_a_config_option_is_one_line_with_the_closest_options(tmp_path):
    p = _biaskd("model=mlpp", "runs_dir=runs", cwd=tmp_path)
    assert p.returncode == 2, p.stdout + p.stderr
    assert p.stderr.strip() == "error: config group 'model' has no option 'mlpp' (model=mlpp); did you mean mlp?"
    p = _biaskd("model@teacher.model=cnn_gpp", cwd=tmp_path)
    assert p.returncode == 2 and p.stderr.strip().startswith(
        "error: config group 'model' has no option 'cnn_gpp' (model=cnn_gpp); did you mean cnn_gp or "), p.stderr


def test_one_run_of_a_sweep_recipe_when_every_swept_key_is_set(tmp_path):
    p = _biaskd("experiment=toy_grid", "model=mlp_small", "model@teacher.model=cnn_small", "distill=cross",
                *[o for o in TINY if not o.startswith(("task=", "model"))], "runs_dir=runs", cwd=tmp_path)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert "[mlp_small distilled from cnn_small seed=1]" in p.stdout
    # the run's table: accuracy, then the measures against its teacher
    assert "test ECE" in p.stdout and "agreement with the teacher per eval split, mean JS divergence, probe CKA" in p.stdout


def test_analysis_commands_end_in_one_line_on_a_folder_without_runs(tmp_path, capsys):
    from analysis import dashboard, report
    from analysis.command import run

    (tmp_path / "empty").mkdir()
    assert run(report.main, [str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: ArtifactError: no complete run dirs under {tmp_path / 'empty'} (a run dir holds meta.json and "
        "COMPLETE; a sweep folder lists its run dirs in runs.txt)"]
    assert not (tmp_path / "out" / "report.md").exists()
    assert run(dashboard.main, [str(tmp_path / "nothere")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: ArtifactError: report folder {tmp_path / 'nothere'} does not exist (write one with python -m "
        f"analysis.report RUNS --out {tmp_path / 'nothere'})"]


def test_parallel_jobs_share_the_cores_instead_of_each_taking_all():
    from biaskd.tools.cli import threads_per_job

    assert threads_per_job(0, 2, 8) == 4 and threads_per_job(0, 3, 8) == 2 and threads_per_job(0, 4, 2) == 1
    assert threads_per_job(0, -1, 8) == 1  # joblib's n_jobs=-1: a job per core
    assert threads_per_job(3, 2, 8) == 3  # set by the user: kept
    assert threads_per_job(0, None, 8) == 0 and threads_per_job(0, 1, 8) == 0  # one job at a time: all cores


def test_a_parallel_sweep_with_threads_0_runs_each_job_on_its_share(tmp_path):
    import json

    env = dict(os.environ, WANDB_MODE="offline", PYTHONWARNINGS="ignore", PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, "-m", "biaskd.cli", "-m", *[o for o in TINY if not o.startswith("threads")],
                        "threads=0", "seed=1,2", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2",
                        "runs_dir=runs"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    metas = [json.loads(m.read_text()) for m in (tmp_path / "runs").rglob("meta.json") if "teachers" not in str(m)]
    assert len(metas) == 2
    assert {m["machine"]["threads"] for m in metas} == {str(max(1, (os.cpu_count() or 1) // 2))}


def test_the_epoch_bar_says_how_many_epochs_the_run_has(compose_tiny, capsys):
    train(compose_tiny("trainer.max_epochs=3", "trainer.enable_progress_bar=true"))
    captured = capsys.readouterr()
    bar = captured.out + captured.err  # Lightning's bar writes to stdout
    assert "Epoch 1/3" in bar and "Epoch 2/3" in bar and bar.rstrip().rsplit("\r", 1)[-1].startswith("Epoch 3/3")
