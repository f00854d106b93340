"""Tiny, quiet runs: the overrides and the composer the tests share (conftest's fixtures use them)."""
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from biaskd.cli import CONF_DIR

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
