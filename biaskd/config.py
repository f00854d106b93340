"""Config validation, run identity and teacher derivation.

Hydra already rejects unknown keys at override time (the config tree is in struct mode);
:func:`validate` adds types and ranges, before any data is loaded or model trained, and raises
one :class:`ConfigError` that names the key.
"""
from __future__ import annotations

import math
from typing import Any

from omegaconf import DictConfig, OmegaConf

from biaskd import objectives
from biaskd.artifacts import config_hash
from biaskd.data import transfer
from biaskd.errors import ConfigError

DISTILL_MODES = ("none", "self", "cross", "online")
TEACHER_OUTPUTS = ("cached", "forward", "online")
ALPHA_SCHEDULES = ("constant", "linear", "exponential")

# keys that do not change what is computed (where things live, how it is displayed)
_NOT_IDENTITY = {
    "runs_dir", "data_dir", "logger", "experiment_name", "threads", "hydra", "summary",
}
_NOT_IDENTITY_NESTED = {
    "trainer": {"enable_progress_bar", "log_every_n_steps", "enable_model_summary"},
    "task": {"data_dir", "download", "eval_batch_size"},
}


def _get(cfg: DictConfig, key: str) -> Any:
    try:
        return OmegaConf.select(cfg, key, throw_on_missing=True)
    except Exception as exc:
        raise ConfigError(f"config key {key!r}: {exc}") from None


def _number(cfg: DictConfig, key: str, *, low: float | None = None, high: float | None = None,
            low_open: bool = False, integer: bool = False) -> None:
    value = _get(cfg, key)
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise ConfigError(f"config key {key!r} must be {kind}, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"config key {key!r} must be a finite number, got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        raise ConfigError(f"config key {key!r} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and value > high:
        raise ConfigError(f"config key {key!r} must be <= {high}, got {value}")


def _choice(cfg: DictConfig, key: str, choices: tuple[str, ...]) -> None:
    value = _get(cfg, key)
    if value not in choices:
        raise ConfigError(f"config key {key!r} must be one of {', '.join(choices)}; got {value!r}")


def _positive_sizes(cfg: DictConfig, node: str) -> None:
    for key, value in (_get(cfg, node) or {}).items():
        full = f"{node}.{key}"
        items = value if isinstance(value, (list, tuple)) or OmegaConf.is_list(value) else [value]
        for v in items:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            if key in ("dropout",):
                if not 0 <= v < 1:
                    raise ConfigError(f"config key {full!r} must be in [0, 1), got {v}")
            elif v <= 0:
                raise ConfigError(f"config key {full!r} must be > 0, got {v}")


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError for the first invalid value, naming its key."""
    for key in ("task.name", "model.name", "model._target_", "distill.mode", "seed"):
        if _get(cfg, key) is None:
            raise ConfigError(f"config key {key!r} is required")
    _number(cfg, "seed", low=0, integer=True)
    _number(cfg, "train.lr", low=0, low_open=True)
    _number(cfg, "train.weight_decay", low=0)
    _number(cfg, "train.batch_size", low=0, low_open=True, integer=True)
    _number(cfg, "trainer.max_epochs", low=0, low_open=True, integer=True)
    _positive_sizes(cfg, "model")
    _choice(cfg, "distill.mode", DISTILL_MODES)
    mode = _get(cfg, "distill.mode")
    transfer.check(OmegaConf.to_container(cfg, resolve=True))
    if mode != "none":
        _number(cfg, "distill.alpha", low=0, high=1)
        _number(cfg, "distill.temperature", low=0, low_open=True)
        _number(cfg, "distill.final_alpha", low=0, high=1)
        _choice(cfg, "distill.alpha_schedule", ALPHA_SCHEDULES)
        _choice(cfg, "distill.teacher_outputs", TEACHER_OUTPUTS)
        objectives.check_config(_get(cfg, "distill"))
        if (mode == "online") != (_get(cfg, "distill.teacher_outputs") == "online"):
            raise ConfigError("config key 'distill.teacher_outputs' must be 'online' exactly when distill.mode=online")
    if mode in ("cross", "online"):
        if _get(cfg, "teacher.model.name") is None:
            raise ConfigError(f"distill.mode={mode} needs a teacher model (config key 'teacher.model')")
        _positive_sizes(cfg, "teacher.model")
        task = _get(cfg, "teacher.task")
        if task is not None and task != _get(cfg, "task.name"):
            raise ConfigError(
                f"config key 'teacher.task': teacher is for task {task!r} but the student's task is "
                f"{_get(cfg, 'task.name')!r}"
            )


def canonical(cfg: DictConfig) -> DictConfig:
    """Cross-distillation from a teacher with the student's own model config *is*
    self-distillation: name it so, so that a grid over teacher × student × mode runs it once."""
    if cfg.distill.mode == "cross" and OmegaConf.to_container(cfg.teacher.model, resolve=True) == \
            OmegaConf.to_container(cfg.model, resolve=True):
        cfg = cfg.copy()
        cfg.distill.mode = "self"
    return cfg


def identity(cfg: DictConfig, data_fingerprint: str) -> dict:
    """What determines a run's results: the config minus paths/display, plus the data hash."""
    c = OmegaConf.to_container(cfg, resolve=True)
    c = {k: v for k, v in c.items() if k not in _NOT_IDENTITY}
    for node, keys in _NOT_IDENTITY_NESTED.items():
        if isinstance(c.get(node), dict):
            c[node] = {k: v for k, v in c[node].items() if k not in keys}
    mode = c.get("distill", {}).get("mode", "none")
    if mode == "none":
        c.pop("teacher", None)
        c["distill"] = {"mode": "none"}
    elif mode == "self":
        c.get("teacher", {}).pop("model", None)
    if transfer.spec_of(c).is_train:  # the default: runs from before transfer sets keep their hash
        c.pop("transfer", None)
    c["data_fingerprint"] = data_fingerprint
    return c


def run_hash(cfg: DictConfig, data_fingerprint: str) -> str:
    return config_hash(identity(cfg, data_fingerprint))


def teacher_config(cfg: DictConfig) -> DictConfig:
    """The config of the teacher a student run needs: same task/training, the teacher's model,
    the teacher's seed, no distillation, plus ``teacher.overrides``."""
    mode = cfg.distill.mode
    t = OmegaConf.to_container(cfg, resolve=True)
    teacher_spec = t.get("teacher", {}) or {}
    if mode == "self":
        t["model"] = t["model"]
    else:
        t["model"] = teacher_spec["model"]
    t["seed"] = int(cfg.seed) + int(teacher_spec.get("seed_offset", 0))
    t["distill"] = {"mode": "none"}
    t["transfer"] = transfer.TransferSpec().to_dict()  # teachers learn from the labelled training set
    t["role"] = "teacher"
    overrides = teacher_spec.get("overrides") or {}
    out = OmegaConf.merge(OmegaConf.create(t), OmegaConf.create(overrides))
    return out
