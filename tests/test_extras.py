"""W&B and the SLURM launcher are optional extras: the core runs without them, and a config that
needs one names the extra to install."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from biaskd.config import check
from biaskd.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent

# hides the named modules from imports, as if they were not installed
BLOCKER = '''
import os, sys
class _Hide:
    def find_spec(self, name, path=None, target=None):
        for hidden in os.environ["HIDE_MODULES"].split(","):
            if name == hidden or name.startswith(hidden + "."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, _Hide())
'''


def run_without(tmp_path, modules, *args):
    (tmp_path / "hide").mkdir(exist_ok=True)
    (tmp_path / "hide" / "sitecustomize.py").write_text(BLOCKER)
    env = dict(os.environ, HIDE_MODULES=",".join(modules), PYTHONPATH=os.pathsep.join([str(tmp_path / "hide"), str(REPO)]), WANDB_MODE="offline")
    return subprocess.run([sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_extras_are_declared_and_dev_installs_them():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert not any(d.startswith("wandb") for d in project["dependencies"])
    extras = project["optional-dependencies"]
    assert any(d.startswith("wandb") for d in extras["wandb"])
    assert any(d.startswith("hydra-submitit-launcher") for d in extras["cluster"])
    dev = " ".join(extras["dev"])
    assert any(d.startswith("hydra-optuna-sweeper") for d in extras["search"])
    assert "wandb" in dev and "hydra-submitit-launcher" in dev and "hydra-optuna-sweeper" in dev  # .ci/run installs .[dev]


def test_training_and_analysis_run_without_wandb_and_submitit(tmp_path):
    p = run_without(tmp_path, ["wandb", "submitit", "hydra_plugins.hydra_submitit_launcher"],
                    "-m", "biaskd.tools.cli", "task=toy", "model=mlp_small", "distill=cross", "model@teacher.model=cnn_small",
                    "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "threads=1", "runs_dir=runs")
    assert p.returncode == 0, p.stderr[-3000:]
    p = run_without(tmp_path, ["wandb"], "-m", "analysis.report", "runs", "--out", "report")
    assert p.returncode == 0 and (tmp_path / "report" / "report.md").exists(), p.stderr[-3000:]


def test_wandb_logger_without_wandb_names_the_extra_before_training(compose_tiny, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # what Python does for a module it must not import
    with pytest.raises(ConfigError, match=r'logger=wandb.*pip install -e "\.\[wandb\]"'):
        check(compose_tiny("logger=wandb"))


def test_slurm_launcher_without_its_extra_names_it(tmp_path):
    p = run_without(tmp_path, ["submitit", "hydra_plugins.hydra_submitit_launcher"],
                    "-m", "biaskd.tools.cli", "-m", "hydra/launcher=slurm", "task=toy", "runs_dir=runs")
    assert p.returncode == 1
    assert p.stderr.strip().splitlines()[-1] == (
        "error: the SLURM launcher (hydra/launcher=slurm) needs the optional package 'submitit', which is not "
        'installed: pip install -e ".[cluster]"')
    p = run_without(tmp_path, ["wandb"], "-m", "analysis.dashboard", str(tmp_path))
    assert p.returncode == 1 and 'pip install -e ".[wandb]"' in p.stderr


def test_a_search_without_the_optuna_sweeper_names_its_extra(tmp_path):
    p = run_without(tmp_path, ["optuna", "hydra_plugins.hydra_optuna_sweeper"],
                    "-m", "biaskd.tools.cli", "-m", "hparams_search=sva_linzen_lstm", "runs_dir=runs")
    assert p.returncode == 1
    assert p.stderr.strip().splitlines()[-1] == (
        "error: hyperparameter search (hparams_search=..., the Optuna sweeper) needs the optional package "
        "'optuna', which is not installed: pip install -e \".[search]\"")
