"""Hyperparameter search: a job's return value for the Optuna sweeper (``optimized_metric``) and
the shipped search recipes in ``conf/hparams_search/``."""
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from biaskd.errors import ArtifactError, ConfigError
from biaskd.record.optimized_metric import last_logged
from biaskd.tools.cli import CONF_DIR

TINY_SEARCH = """\
# @package _global_
defaults:
  - override /hydra/sweeper: optuna
  - override /task: toy
  - override /model: mlp_small
experiment_name: search
optimized_metric: valid/accuracy
trainer:
  max_epochs: 2
hydra:
  sweeper:
    direction: maximize
    n_trials: 3
    n_jobs: 1
    sampler: {_target_: optuna.samplers.TPESampler, seed: 1, n_startup_trials: 3}
    params:
      train.lr: choice(0.00001, 0.001, 0.03)
"""


def write_log(run: Path, text: str) -> None:
    (run / "logs").mkdir(parents=True)
    (run / "logs" / "metrics.csv").write_text(text)


def test_last_logged_is_the_last_finite_value_of_the_column(tmp_path):
    write_log(tmp_path, "epoch,step,train/loss,valid/accuracy,valid/loss\n"
                        "0,9,,0.5,1.25\n0,9,0.9,,\n1,19,,0.75,nan\n1,19,0.4,,\n,20,,,\n")
    assert last_logged(tmp_path, "valid/accuracy") == 0.75
    assert last_logged(tmp_path, "valid/loss") == 1.25  # the nan after it is skipped
    with pytest.raises(ConfigError, match=r"'valid/los' is not logged in .*metrics.csv; logged: train/loss, valid/accuracy"):
        last_logged(tmp_path, "valid/los")


def test_a_log_from_before_the_rename_is_read_under_either_name(tmp_path):
    write_log(tmp_path, "epoch,step,valid/acc,valid/loss\n0,9,0.5,1.0\n1,19,0.625,0.5\n")
    assert last_logged(tmp_path, "valid/accuracy") == 0.625  # a new search config, an old run's log
    assert last_logged(tmp_path, "valid/acc") == 0.625  # an old search's config


def test_last_logged_names_a_missing_log_or_an_empty_column(tmp_path):
    with pytest.raises(ArtifactError, match=r"logs/metrics.csv: missing"):
        last_logged(tmp_path, "valid/accuracy")
    write_log(tmp_path, "epoch,step,valid/accuracy\n0,9,\n")
    with pytest.raises(ArtifactError, match="no finite value"):
        last_logged(tmp_path, "valid/accuracy")


@pytest.mark.parametrize("search", sorted(p.stem for p in (Path(CONF_DIR) / "hparams_search").glob("*.yaml")))
def test_every_search_recipe_composes_and_searches_on_a_logged_validation_metric(search):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[f"hparams_search={search}"], return_hydra_config=True)
    assert str(cfg.optimized_metric).startswith("valid/")  # never an eval (e.g. attractor) split
    assert cfg.hydra.sweeper.direction == ("minimize" if cfg.optimized_metric.endswith("loss") else "maximize")
    for key in cfg.hydra.sweeper.params:  # every searched key exists in the composed config
        assert OmegaConf.select(cfg, key, default=None) is not None, key


@pytest.mark.slow
def test_an_optuna_search_returns_each_runs_validation_metric_and_keeps_the_best(tmp_path):
    conf = tmp_path / "conf" / "hparams_search"
    conf.mkdir(parents=True)
    (conf / "tiny.yaml").write_text(TINY_SEARCH)
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "biaskd.tools.cli", "-m", "hparams_search=tiny", f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
           f"runs_dir={runs}", "trainer.enable_progress_bar=false", "threads=1"]
    env = dict(os.environ, WANDB_MODE="offline", PYTHONWARNINGS="ignore")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    # every trial trained its own run; its objective is its last logged validation accuracy
    finals = {}
    for run in (runs / "search").iterdir():
        if not (run / "COMPLETE").exists():
            continue
        log = pd.read_csv(run / "logs" / "metrics.csv")
        lr = yaml.safe_load((run / "config.yaml").read_text())["train"]["lr"]
        finals[lr] = log["valid/accuracy"].dropna().iloc[-1]
    assert len(finals) >= 2  # TPE may draw a value twice: then the run is reused
    result = yaml.safe_load(next(runs.glob("_hydra/*/optimization_results.yaml")).read_text())
    assert math.isclose(result["best_value"], max(finals.values()), rel_tol=0, abs_tol=1e-12)
    assert finals[result["best_params"]["train.lr"]] == max(finals.values())
    assert out.stdout.count("valid/accuracy=") == 3  # one line per trial says its objective
    # the trials as a table: the settings each job got, its objective and the best one marked
    from analysis.search import trials

    table = trials(next(runs.glob("_hydra/*/optimization_results.yaml")).parent)
    assert list(table["trial"]) == [0, 1, 2]
    assert {lr: v for lr, v in zip(table["train.lr"], table["value"])} == finals
    best = table[table["best"]]
    assert len(best) >= 1 and (best["value"] == max(finals.values())).all()
    assert set(table["objective"]) == {"valid/accuracy"} and "acc_test" in table


def test_a_search_metric_that_is_not_a_validation_column_is_refused_before_training(compose_tiny):
    from biaskd.config import check

    with pytest.raises(ConfigError, match=r"config key 'optimized_metric' must be one of valid/loss, valid/accuracy; "
                                          r"got 'attractors_4/accuracy'"):
        check(compose_tiny("+optimized_metric=attractors_4/accuracy"))
    check(compose_tiny("+optimized_metric=valid/loss"))


def test_a_search_whose_every_trial_fails_ends_with_one_line_and_status_2(tmp_path):
    conf = tmp_path / "conf" / "hparams_search"
    conf.mkdir(parents=True)
    (conf / "tiny.yaml").write_text(TINY_SEARCH.replace("n_trials: 3", "n_trials: 2"))
    cmd = [sys.executable, "-m", "biaskd.tools.cli", "-m", "hparams_search=tiny", f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
           "optimized_metric=valid/los", f"runs_dir={tmp_path / 'runs'}", "trainer.enable_progress_bar=false"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, WANDB_MODE="offline"), timeout=300)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    failed = [line for line in out.stderr.splitlines() if line.startswith("[job failed]")]
    assert len(failed) == 2 and all(line.endswith("got 'valid/los'") for line in failed)
    assert out.stderr.strip().splitlines()[-1].startswith("error: the sweep stopped after 2 failed job(s)")
    assert not (tmp_path / "runs" / "search").exists()  # refused before anything trained


def test_analysis_search_on_a_folder_that_is_no_search_says_so_in_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "analysis.search", str(tmp_path), "--out", str(tmp_path / "t.csv")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip() == (f"error: ArtifactError: {tmp_path}/optimization_results.yaml: missing; {tmp_path} "
                                  "is not the folder of a finished search (biaskd -m hparams_search=...)")
    assert not (tmp_path / "t.csv").exists()
