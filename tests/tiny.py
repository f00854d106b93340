"""Tiny, quiet runs: the overrides and the composer the tests share (conftest's fixtures use them)."""
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from biaskd.tools.cli import CONF_DIR

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

#: the tiny LM setup: agreement grammar, a causal Transformer student, an LSTM teacher (2 epochs)
TINY_LM = [
    "task=sva", "task.setup=lm", "task.probe_size=40",
    "task.grammar.n_train=240", "+task.grammar.n_valid=40", "+task.grammar.n_test=60",
    "+task.grammar.n_deep=30", "+task.grammar.n_attractors=20", "task.grammar.train_max_depth=2",
    "+task.grammar.deep_max_depth=3",
    "model=transformer_seq", "model.d_model=16", "model.nhead=2", "model.num_layers=1",
    "model.dim_feedforward=32", "model@teacher.model=lstm", "teacher.model.d_model=16",
    "train.batch_size=32", "train.lr=3e-2", "trainer.max_epochs=2",
]


def compose_cfg(overrides, runs_dir):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=[*overrides, f"runs_dir={runs_dir}"])
