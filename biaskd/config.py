"""Config validation, run identity and teacher derivation.

Hydra already rejects unknown keys at override time (the config tree is in struct mode);
:func:`validate` adds types and ranges, before any data is loaded or model trained, and raises
one :class:`ConfigError` that names the key.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

from biaskd import objectives
from biaskd.artifacts import config_hash
from biaskd.data import transfer
from biaskd.errors import ConfigError
from biaskd.recipes import DISTILL_MODES  # the modes some recipe trains: the recipe table is their one list
from biaskd.search import VALIDATION_METRICS
TEACHER_OUTPUTS = ("cached", "forward", "online")
ALPHA_SCHEDULES = ("constant", "linear", "exponential")
OPTIMIZERS = ("adam", "adamw", "sgd")
LR_SCHEDULES = ("constant", "cosine")
#: how a teacher run is trained: 2 = from its own config alone (its seed orders its batches, its
#: overrides apply before interpolation). Part of the identity of teachers and of the students
#: distilled from them, so runs made under the old protocol are never reused as if made now.
TEACHER_PROTOCOL = 2

# keys that do not change what is computed (where things live, how it is displayed)
_NOT_IDENTITY = {
    "runs_dir", "data_dir", "logger", "experiment_name", "threads", "hydra", "summary", "repair", "sweep_note",
    "optimized_metric", "scenario",
    "callbacks",  # Lightning callbacks that only watch a run (progress bar); ones that change it: train.callbacks
}
_NOT_IDENTITY_NESTED = {
    "trainer": {"enable_progress_bar", "log_every_n_steps", "enable_model_summary"},
    # train_source / train_size: the data fingerprint already says which digits a run trained on,
    # and leaving them out keeps the identity of runs made before they were options
    "task": {"data_dir", "download", "eval_batch_size", "train_source", "train_size"},
    "teacher": {"compare"},  # what a finished run is compared with, not how it trains
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
    _choice(cfg, "train.optimizer", OPTIMIZERS)
    if OmegaConf.select(cfg, "train.lr_schedule") is not None:
        _choice(cfg, "train.lr_schedule", LR_SCHEDULES)
    _check_ood(cfg)
    if cfg.get("optimized_metric") is not None:  # a search reads the validation split, never an eval split
        _choice(cfg, "optimized_metric", VALIDATION_METRICS)
    if OmegaConf.select(cfg, "logger.wandb.enabled", default=False):
        from biaskd import extras

        if not extras.installed("wandb"):
            raise ConfigError(f"config key 'logger': {extras.message('wandb')}")
    compare = OmegaConf.select(cfg, "teacher.compare", default="auto")
    if compare != "auto" and not isinstance(compare, bool):
        raise ConfigError(f"config key 'teacher.compare' must be auto, true or false; got {compare!r}")
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
        teacher_model = OmegaConf.select(cfg, "teacher.model")
        if isinstance(teacher_model, str):
            raise ConfigError(f"config key 'teacher.model' is the string {teacher_model!r}, not a model config; "
                              f"choose the teacher's architecture with model@teacher.model={teacher_model}")
        if _get(cfg, "teacher.model.name") is None:
            raise ConfigError(f"distill.mode={mode} needs a teacher model (config key 'teacher.model')")
        _positive_sizes(cfg, "teacher.model")
        task = _get(cfg, "teacher.task")
        if task is not None and task != _get(cfg, "task.name"):
            raise ConfigError(
                f"config key 'teacher.task': teacher is for task {task!r} but the student's task is "
                f"{_get(cfg, 'task.name')!r}"
            )


def _check_ood(cfg: DictConfig) -> None:
    """``task.ood`` (image tasks): every transform known, every severity in range, named by key."""
    ood = OmegaConf.select(cfg, "task.ood")
    if ood is None:
        return
    from biaskd.data.ood import expand_ood_config

    ood = OmegaConf.to_container(ood, resolve=True) if OmegaConf.is_config(ood) else ood
    if isinstance(ood, Mapping):
        entries = [(f"task.ood.{name}", {name: value}) for name, value in ood.items()]
    elif isinstance(ood, Sequence) and not isinstance(ood, str):
        entries = [(f"task.ood[{i}]", [item]) for i, item in enumerate(ood)]
    else:
        entries = [("task.ood", ood)]
    for key, entry in entries:
        try:
            expand_ood_config(entry)
        except ConfigError as exc:
            raise ConfigError(f"config key {key!r}: {exc}") from None
    try:
        expand_ood_config(ood)
    except ConfigError as exc:
        raise ConfigError(f"config key 'task.ood': {exc}") from None


def check(cfg: DictConfig) -> None:
    """Everything that can be checked from the config alone, for the run and for the teacher it
    needs: :func:`validate` of both, with the teacher's keys named as the student's config
    spells them (``teacher.overrides.<key>``, ``teacher.max_epochs``)."""
    validate(cfg)
    if _get(cfg, "distill.mode") not in ("self", "cross"):
        return
    tcfg = teacher_config(cfg)
    try:
        validate(tcfg)
    except ConfigError as exc:
        def name(match: re.Match) -> str:
            key = match.group(1)
            spec = cfg.get("teacher") or {}
            if OmegaConf.select(spec, f"overrides.{key}") is not None:
                key = f"teacher.overrides.{key}"
            elif key == "trainer.max_epochs" and spec.get("max_epochs") is not None:
                key = "teacher.max_epochs"
            elif key.startswith("model.") and _get(cfg, "distill.mode") == "cross":
                key = f"teacher.{key}"
            return f"config key {key!r}"

        raise ConfigError(re.sub(r"config key '([^']+)'", name, str(exc)) + " (in the teacher's config)") from None


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
    if c.get("role") == "teacher" or mode in ("self", "cross"):
        c["teacher_protocol"] = TEACHER_PROTOCOL
    c["data_fingerprint"] = data_fingerprint
    return c


def run_hash(cfg: DictConfig, data_fingerprint: str) -> str:
    return config_hash(identity(cfg, data_fingerprint))


def _leaf_keys(d: Mapping, prefix: str = "") -> list[str]:
    keys = []
    for k, v in d.items():
        if isinstance(v, Mapping) and v:
            keys += _leaf_keys(v, f"{prefix}{k}.")
        else:
            keys.append(f"{prefix}{k}")
    return keys


def teacher_config(cfg: DictConfig) -> DictConfig:
    """The config of the teacher a student run needs: the student's config with the teacher's
    model and seed (``seed + teacher.seed_offset``), no distillation, the labelled training set,
    ``teacher.max_epochs`` (if set) and ``teacher.overrides`` merged in *before* interpolations
    are resolved (so ``train.batch_size`` also sets ``task.batch_size``). Training the result
    alone, e.g. ``python -m biaskd.rerun`` on its run dir, gives the very same teacher."""
    mode = cfg.distill.mode
    spec = OmegaConf.to_container(cfg.teacher, resolve=True) if cfg.get("teacher") is not None else {}
    t = OmegaConf.to_container(cfg, resolve=False)
    if mode != "self":
        t["model"] = spec["model"]
    t["seed"] = int(cfg.seed) + int(spec.get("seed_offset", 0) or 0)
    t["distill"] = {"mode": "none"}
    t["transfer"] = transfer.TransferSpec().to_dict()  # teachers learn from the labelled training set
    t["role"] = "teacher"
    out = OmegaConf.create(t)
    if spec.get("max_epochs") is not None:
        out.trainer.max_epochs = spec["max_epochs"]
    overrides = spec.get("overrides") or {}
    if not isinstance(overrides, Mapping):
        raise ConfigError(f"config key 'teacher.overrides' must be a mapping of config keys, got {overrides!r}")
    for key in _leaf_keys(overrides):
        if OmegaConf.select(out, key, default="<missing>") == "<missing>":
            raise ConfigError(f"config key 'teacher.overrides.{key}': the teacher's config has no key {key!r}")
    out = OmegaConf.merge(out, OmegaConf.create(overrides))
    OmegaConf.resolve(out)
    if "batch_size" in out.task and "batch_size" not in (overrides.get("task") or {}):
        # task.batch_size is ${train.batch_size}; kept so when cfg was already resolved (a config.yaml)
        out.task.batch_size = out.train.batch_size
    return out
