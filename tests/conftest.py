import os
from pathlib import Path

import pytest

from tiny import TINY, compose_cfg  # noqa: F401  (TINY: for tests that compose by hand)

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


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
