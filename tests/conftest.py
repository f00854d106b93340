import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from biaskd.cli import CONF_DIR

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"

#: overrides that make any run tiny and quiet
TINY = [
    "task=toy",
    "model=mlp_small",
    "model@teacher.model=cnn_small",
    "trainer.max_epochs=2",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
    "threads=1",
]


def compose_cfg(overrides, runs_dir):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=[*overrides, f"runs_dir={runs_dir}"])


@pytest.fixture
def compose_tiny(tmp_path):
    def _compose(*overrides, runs_dir=None):
        return compose_cfg([*TINY, *overrides], runs_dir or tmp_path / "runs")
    return _compose


@pytest.fixture(autouse=True)
def _no_wandb_network(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))  # W&B stages media tables here, not in ~
