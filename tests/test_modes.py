"""Distillation mode and objective: two config axes (``distill=...`` x ``objective=...``), and run
identities that stay what they were before the axes were split."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from biaskd import config as config_mod
from biaskd.record.identity import run_name
from biaskd.tools.cli import CONF_DIR

ROOT = Path(__file__).resolve().parent.parent
SVA = ["task=sva", "model=transformer", "model@teacher.model=lstm"]
LM = ["task=sva", "task.setup=lm", "model=transformer_seq", "model@teacher.model=lstm"]

#: run dir names (fingerprint "fp") computed before mode and objective were two config groups,
#: when objectives were spelled distill=hints etc.; existing run folders and result tables use them
PINNED = {
    ("task=mnist", "distill=none"): "mnist-mlp-none-s1-f5ddc77632",
    ("task=mnist", "distill=none", "distill.temperature=1"): "mnist-mlp-none-s1-f5ddc77632",
    ("task=mnist", "distill=self"): "mnist-mlp-self-s1-860f9c5187",
    ("task=mnist", "distill=cross"): "mnist-mlp-cross-from-cnn-s1-597e696f52",
    ("task=mnist", "distill=cross", "distill.temperature=1"): "mnist-mlp-cross-from-cnn-s1-9feaed91db",
    ("task=mnist", "distill=cross", "distill.temperature=5"): "mnist-mlp-cross-from-cnn-s1-1fc5bcc6d3",
    ("task=mnist", "distill=cross", "model@teacher.model=cnn_gp", "distill.temperature=5"):
        "mnist-mlp-cross-from-cnn_gp-s1-f2064e99ad",
    ("task=mnist", "distill=cross", "distill.teacher_outputs=forward"): "mnist-mlp-cross-from-cnn-s1-c18a51d578",
    ("task=mnist", "distill=online"): "mnist-mlp-online-from-cnn-s1-d8ba4fdcdb",
    ("task=mnist", "distill=cross", "objective=hints"): "mnist-mlp-cross-hints-from-cnn-s1-ea11eef0c2",
    ("task=mnist", "distill=self", "objective=hints"): "mnist-mlp-self-hints-s1-9aaecfbb60",
    ("task=mnist", "distill=cross", "objective=relation"): "mnist-mlp-cross-relation-from-cnn-s1-ec5723ba6e",
    ("task=mnist", "distill=cross", "objective=logits_mse"): "mnist-mlp-cross-logits_mse-from-cnn-s1-49442dc439",
    (*SVA, "distill=none"): "sva-transformer-none-s1-aaf03f7791",
    (*SVA, "distill=self"): "sva-transformer-self-s1-dc0454c587",
    (*SVA, "distill=cross", "distill.temperature=1"): "sva-transformer-cross-from-lstm-s1-4ddc01420e",
    (*SVA, "distill=cross", "distill.temperature=5"): "sva-transformer-cross-from-lstm-s1-f5a445b277",
    (*SVA, "distill=cross", "objective=hints"): "sva-transformer-cross-hints-from-lstm-s1-41446bb194",
    (*SVA, "distill=online"): "sva-transformer-online-from-lstm-s1-dfd68a716d",
    (*LM, "distill=cross"): "sva_lm-transformer_seq-cross-from-lstm-s1-3a8c853d65",
    (*LM, "distill=cross", "objective=seqkd"): "sva_lm-transformer_seq-cross-seqkd-from-lstm-s1-71c1b3870a",
}
#: their teachers' run dir names
PINNED_TEACHERS = {
    ("task=mnist", "distill=self"): "mnist-mlp-s101-20f3671a69",
    ("task=mnist", "distill=cross"): "mnist-cnn-s101-9e13e58a8f",
    (*SVA, "distill=cross", "distill.temperature=5"): "sva-lstm-s101-a9832f55e1",
    (*LM, "distill=cross", "objective=seqkd"): "sva_lm-lstm-s101-0d2c759981",
}


def _compose(*overrides, tmp_path):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=[*overrides, f"runs_dir={tmp_path}"])


def _name(cfg) -> str:
    cfg = config_mod.canonical(cfg)
    return run_name(cfg, config_mod.run_hash(cfg, "fp"), cfg.task.get("setup") or "classification")


def test_run_identities_are_those_of_before_the_split(tmp_path):
    got = {overrides: _name(_compose(*overrides, tmp_path=tmp_path)) for overrides in PINNED}
    assert got == PINNED
    for overrides, name in PINNED_TEACHERS.items():
        assert _name(config_mod.teacher_config(_compose(*overrides, tmp_path=tmp_path))) == name


def test_temperature_is_in_the_identity_only_of_objectives_that_read_it(compose_tiny):
    def names(*overrides):
        return {_name(compose_tiny(*overrides, f"distill.temperature={t}", "distill.t_squared=false"))
                for t in (1, 5)}

    for ignoring in ("hints", "relation", "logits_mse", "hard"):  # token: only with a ViT student (tests/test_vit.py)
        (name,) = names("distill=cross", f"objective={ignoring}")  # a T sweep: one run
        assert name == _name(compose_tiny("distill=cross", f"objective={ignoring}"))  # the default T's
    assert len(names("distill=cross", "objective=kd")) == 2
    assert len(names("distill=none")) == 1 and len(names("distill=none", "objective=hints")) == 1
    # an objective of one's own may read them: kept
    assert len(names("distill=cross", "distill.objective=biaskd.objectives.kd.SoftTargets")) == 2


def test_mode_and_objective_sweep_alone_and_together(compose_tiny):
    for mode in ("none", "self", "cross", "online"):
        cfg = compose_tiny(f"distill={mode}")
        assert (cfg.distill.mode, cfg.distill.objective, cfg.distill.alpha) == (mode, "kd", 1.0)
    hints = compose_tiny("distill=self", "objective=hints")
    assert (hints.distill.mode, hints.distill.objective, hints.distill.alpha) == ("self", "hints", 0.5)
    assert compose_tiny("objective=hints").distill.mode == "none"  # the objective alone leaves the mode


def test_the_old_spelling_is_refused_in_one_line_naming_the_new(tmp_path):
    env = dict(os.environ, WANDB_MODE="offline", PYTHONWARNINGS="ignore", PYTHONPATH=str(ROOT))

    def run(*args):
        return subprocess.run([sys.executable, "-m", "biaskd.tools.cli", *args, "task=toy", "runs_dir=runs"], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=300)

    p = run("-m", "distill=cross,hints")
    (line,) = [x for x in p.stderr.splitlines() if x.strip()]
    assert p.returncode != 0 and line == (
        "error: distill=hints: the mode (distill=none|self|cross|online) and the objective are two config groups; "
        "write distill=cross objective=hints (or distill=self objective=hints)")
    p = run("objective=fitnet")
    (line,) = [x for x in p.stderr.splitlines() if x.strip()]
    assert line == "error: config group 'objective' has no option 'fitnet' (objective=fitnet); did you mean hints?"
    assert not list(tmp_path.rglob("COMPLETE"))
