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
from biaskd.data import transfer
from biaskd.errors import ConfigError
from biaskd.modes import mode_named, mode_of
from biaskd.record.artifacts import config_hash
from biaskd.record.optimized_metric import VALIDATION_METRICS
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
    "runs_dir", "data_dir", "cache_dir", "logger", "experiment_name", "threads", "flush_denormal", "hydra", "summary", "repair", "sweep_note",
    "optimized_metric", "scenario",
    "callbacks",  # Lightning callbacks that only watch a run (progress bar); ones that change it: train.callbacks
}
_NOT_IDENTITY_NESTED = {
    "trainer": {"enable_progress_bar", "log_every_n_steps", "enable_model_summary"},
    # train_source / train_size: the data fingerprint already says which digits a run trained on,
    # and leaving them out keeps the identity of runs made before they were options
    "task": {"data_dir", "cache_dir", "download", "eval_batch_size", "train_source", "train_size",
             "bias"},  # bias: how the analysis measures the task's bias (biaskd.scenario)
    "teacher": {"compare"},  # what a finished run is compared with, not how it trains
    "train": {"steps_per_call"},  # the same optimizer steps, grouped into fewer Lightning calls
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


def _is_probability(key: str) -> bool:
    """A model config key that is a probability or rate (``dropout``, ``attn_dropout``,
    ``drop_prob``, ``drop_path_rate``), in [0, 1) rather than a positive size."""
    return key.endswith("dropout") or key.endswith("_prob") or key.endswith("_rate")


def _positive_sizes(cfg: DictConfig, node: str) -> None:
    for key, value in (_get(cfg, node) or {}).items():
        full = f"{node}.{key}"
        items = value if isinstance(value, (list, tuple)) or OmegaConf.is_list(value) else [value]
        for v in items:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            if _is_probability(str(key)):
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
    if OmegaConf.select(cfg, "train.steps_per_call") is not None:
        _number(cfg, "train.steps_per_call", low=1, integer=True)
        per_call = _get(cfg, "train.steps_per_call")
        for key in ("limit_train_batches", "val_check_interval"):  # Lightning counts these in calls
            value = OmegaConf.select(cfg, f"trainer.{key}")
            if per_call > 1 and isinstance(value, int) and not isinstance(value, bool):
                raise ConfigError(f"config key 'trainer.{key}' = {value} counts training_step calls, and with "
                                  f"train.steps_per_call={per_call} each call takes {per_call} batches: give it "
                                  "as a fraction of the epoch (e.g. 0.5) or set train.steps_per_call=1")
    _number(cfg, "trainer.max_epochs", low=0, low_open=True, integer=True)
    if not isinstance(cfg.get("flush_denormal", False), bool):
        raise ConfigError(f"config key 'flush_denormal' must be true or false, got {cfg.get('flush_denormal')!r}")
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
    if OmegaConf.select(cfg, "task.num_classes") is not None:  # tasks whose class count is a setting (toy)
        _number(cfg, "task.num_classes", low=2, integer=True)
    _positive_sizes(cfg, "model")
    mode = mode_named(_get(cfg, "distill.mode"))
    transfer.check(OmegaConf.to_container(cfg, resolve=True))
    # the distillation settings are checked for distill=none too (which has them, unused, so that a
    # sweep over modes can set them once): a value no mode accepts is a mistake in every job
    for key, low, high in (("distill.alpha", 0, 1), ("distill.final_alpha", 0, 1)):
        if OmegaConf.select(cfg, key) is not None or mode.distilled:
            _number(cfg, key, low=low, high=high)
    if OmegaConf.select(cfg, "distill.temperature") is not None or mode.distilled:
        _number(cfg, "distill.temperature", low=0, low_open=True)
    for key, choices in (("distill.alpha_schedule", ALPHA_SCHEDULES), ("distill.teacher_outputs", TEACHER_OUTPUTS)):
        if OmegaConf.select(cfg, key) is not None or mode.distilled:
            _choice(cfg, key, choices)
    if mode.distilled:
        objectives.check_config(_get(cfg, "distill"))
        if _get(cfg, "distill.teacher_outputs") not in mode.teacher_outputs:
            raise ConfigError(f"config key 'distill.teacher_outputs' must be one of {', '.join(mode.teacher_outputs)} "
                              f"with distill.mode={mode.name}; got {_get(cfg, 'distill.teacher_outputs')!r}")
    if mode.teacher_from_config:
        teacher_model = OmegaConf.select(cfg, "teacher.model")
        if isinstance(teacher_model, str):
            raise ConfigError(f"config key 'teacher.model' is the string {teacher_model!r}, not a model config; "
                              f"choose the teacher's architecture with model@teacher.model={teacher_model}")
        if _get(cfg, "teacher.model.name") is None:
            raise ConfigError(f"distill.mode={mode.name} needs a teacher model (config key 'teacher.model')")
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
    if not mode_of(cfg).trained_teacher:
        return
    tcfg = teacher_config(cfg)
    try:
        validate(tcfg)
    except ConfigError as exc:
        raise in_teacher_config(cfg, exc) from None


def in_teacher_config(cfg: DictConfig, exc: ConfigError) -> ConfigError:
    """``exc``, raised for the teacher's config of the student ``cfg``, with the keys named as
    the student's config spells them (``teacher.overrides.<key>``, ``teacher.max_epochs``)."""
    def name(match: re.Match) -> str:
        key = match.group(1)
        spec = cfg.get("teacher") or {}
        if OmegaConf.select(spec, f"overrides.{key}") is not None:
            key = f"teacher.overrides.{key}"
        elif key == "trainer.max_epochs" and spec.get("max_epochs") is not None:
            key = "teacher.max_epochs"
        elif key.startswith("model.") and mode_of(cfg).teacher_from_config:
            key = f"teacher.{key}"
        return f"config key {key!r}"

    return ConfigError(re.sub(r"config key '([^']+)'", name, str(exc)) + " (in the teacher's config)")


# -- keys a command line adds ---------------------------------------------------------------------------
#: keys something reads that the config tree may leave out: ``+key=value`` adds them
OPTIONAL_KEYS = (
    "repair",  # biaskd.run.train: a run dir that fails verification is set aside and trained anew
    # conf/logger/wandb.yaml's keys, for a logger config that has only wandb.enabled
    "logger.wandb.project", "logger.wandb.entity", "logger.wandb.mode", "logger.wandb.tags",
    "logger.wandb.log_predictions", "logger.wandb.prediction_rows",
)
#: nodes open on purpose, whose keys what reads them checks: the teacher's config
#: (:func:`teacher_config`), the extra eval files (their names are free), the transfer set
#: (:class:`biaskd.data.transfer.TransferSpec`), the Trainer (:func:`biaskd.run.preflight.check_trainer`)
OPEN_NODES = ("teacher.overrides", "task.extra_eval", "transfer", "trainer", "hydra")
#: nodes whose keys are constructor arguments of their ``_target_`` class -> the arguments the
#: driver passes itself (biaskd.models.build_model, biaskd.data.build.build_data), and keys of
#: the node that are not arguments
TARGET_NODES = {
    "teacher.model": (("num_classes", "in_shape", "vocab_size", "lm_head"), ("name",)),
    "model": (("num_classes", "in_shape", "vocab_size", "lm_head"), ("name",)),
    "task": (("seed",), ("name", "kd")),
}


def check_added_keys(cfg: DictConfig, added: Mapping[str, str]) -> None:
    """Raise ConfigError for a key the command line added (``+key=value``: ``added`` maps each
    such key to its override) that nothing reads, with the closest key at its level: a typo such
    as ``+distill.temprature=3`` would otherwise train, as a run of its own, without effect.

    Open on purpose: :data:`OPEN_NODES`, the options of the run's objective
    (``distill.<objective>``, checked by the objective), :data:`OPTIONAL_KEYS`, and under
    :data:`TARGET_NODES` (``model``, ``teacher.model``, ``task``) any argument of the class the
    node's ``_target_`` names."""
    if not added:
        return
    base = _without(OmegaConf.to_container(cfg, resolve=False), added)
    for key, override in added.items():
        _check_added_key(cfg, base, key, override)


def _without(tree: dict, keys) -> dict:
    """``tree`` without ``keys`` (dotted), and without the nodes that held only them."""
    for key in keys:
        parts = key.split(".")
        path = [tree]  # path[d]: the node at parts[:d]
        for part in parts[:-1]:
            node = path[-1].get(part)
            if not isinstance(node, dict):
                break
            path.append(node)
        else:
            path[-1].pop(parts[-1], None)
            for d in range(len(parts) - 1, 0, -1):  # what the added key alone made
                if path[d]:
                    break
                path[d - 1].pop(parts[d - 1], None)
    return tree


def _under(key: str, node: str) -> bool:
    return key == node or key.startswith(node + ".")


def _check_added_key(cfg: DictConfig, base: dict, key: str, override: str) -> None:
    if key in OPTIONAL_KEYS or any(_under(key, node) for node in OPEN_NODES):
        return
    if _under(key, "distill") and key != "distill":
        try:
            if key.split(".")[1] == objectives.objective_class(_get(cfg, "distill")).name:
                return  # the objective's own options: objectives.check_config names an unknown one
        except ConfigError:
            pass  # an unknown objective: validate() says so
    for node, (filled_in, not_arguments) in TARGET_NODES.items():
        if key.startswith(node + "."):
            arg = key[len(node) + 1:].split(".")[0]
            if arg not in not_arguments:
                _check_target_argument(cfg, node, arg, filled_in, override)
                return
            break
    parts = key.split(".")
    level: Any = base
    for i, part in enumerate(parts):
        if not isinstance(level, dict) or part not in level:
            at = ".".join(parts[:i])
            known = sorted({*(level if isinstance(level, dict) else {}),
                            *(k[len(at) + 1:].split(".")[0] if at else k.split(".")[0]
                              for k in OPTIONAL_KEYS if not at or k.startswith(at + "."))})
            full = ".".join(parts[: i + 1])
            hint = did_you_mean(part, known, f"{at}." if at else "")
            if not hint and known:
                hint = f"; the keys {'of ' + repr(at) if at else 'at the top level'} are: {', '.join(known)}"
            raise ConfigError(f"config key {full!r} is not a key biaskd reads ({override} adds it){hint}")
        level = level[part]


def _check_target_argument(cfg: DictConfig, node: str, arg: str, filled_in: tuple, override: str) -> None:
    """``arg`` under ``node`` must be an argument of the node's ``_target_`` class."""
    import hydra.utils

    target = OmegaConf.select(cfg, f"{node}._target_", default=None)
    if not isinstance(target, str):
        return  # no class to ask: building the node says what is wrong
    try:
        cls = hydra.utils.get_class(target)
    except Exception:
        return  # the class cannot be imported: building the node says so, naming it
    key = f"{node}.{arg}"
    if arg in filled_in:
        raise ConfigError(f"config key {key!r} ({override}): {arg} is given to {target} by biaskd itself "
                          f"(from the task), not by the config")
    names = constructor_arguments(cls)
    if names is None or arg in names:
        return
    known = sorted(n for n in names if n not in filled_in)
    hint = did_you_mean(arg, known, f"{node}.") or (f"; its arguments: {', '.join(known)}" if known else "")
    raise ConfigError(f"config key {key!r} is not an argument of {target} ({override} adds it){hint}")


def constructor_arguments(cls: type) -> set[str] | None:
    """The keyword arguments ``cls(...)`` takes, or None if it takes any keyword. The ``**kwargs``
    of biaskd's own classes go to their base class's constructor, which is followed; another
    class's ``**kwargs`` may take anything."""
    import inspect

    names: set[str] = set()
    for klass in cls.__mro__:
        if klass is object:
            return names
        if "__init__" not in vars(klass):
            continue
        try:
            params = inspect.signature(klass.__init__).parameters
        except (TypeError, ValueError):
            return None
        names |= {n for n, p in params.items() if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
            return names
        if not klass.__module__.startswith("biaskd."):
            return None
    return None


def did_you_mean(word: str, candidates, prefix: str = "") -> str:
    """``"; did you mean 'distill.temperature'?"`` for the closest candidate, or ``""``."""
    import difflib

    close = difflib.get_close_matches(str(word), [str(c) for c in candidates], n=1, cutoff=0.6)
    return f"; did you mean {prefix + close[0]!r}?" if close else ""


def model_from_conf(name: str, **kwargs: Any):
    """The model ``conf/model/<name>.yaml`` configures, built with ``kwargs``: what a task supplies
    (``vocab_size``, ``num_classes``, ``in_shape``, ``lm_head``) and overrides of the file's values.
    A model is configured in one place, the config tree; the benchmark and the tests build theirs
    from it, as a run does (:func:`biaskd.models.build_model`)."""
    import hydra.utils

    from biaskd import PROJECT_ROOT

    folder = PROJECT_ROOT / "conf" / "model"
    if not (folder / f"{name}.yaml").is_file():
        known = sorted(p.stem for p in folder.glob("*.yaml"))
        raise ConfigError(f"no model config {name!r} in conf/model/{did_you_mean(name, known)} "
                          f"(there: {', '.join(known)})")
    spec = OmegaConf.to_container(OmegaConf.load(folder / f"{name}.yaml"), resolve=True)
    spec.pop("name", None)
    return hydra.utils.instantiate({**spec, **kwargs}, _convert_="all")


def canonical(cfg: DictConfig) -> DictConfig:
    """Cross-distillation from a teacher with the student's own model config *is*
    self-distillation: name it so, so that a grid over teacher × student × mode runs it once."""
    name = mode_of(cfg).canonical_name(cfg)
    if name != cfg.distill.mode:
        cfg = cfg.copy()
        cfg.distill.mode = name
    return cfg


def identity(cfg: DictConfig, data_fingerprint: str) -> dict:
    """What determines a run's results: the config minus paths/display, plus the data hash."""
    c = OmegaConf.to_container(cfg, resolve=True)
    c = {k: v for k, v in c.items() if k not in _NOT_IDENTITY}
    for node, keys in _NOT_IDENTITY_NESTED.items():
        if isinstance(c.get(node), dict):
            c[node] = {k: v for k, v in c[node].items() if k not in keys}
    mode = mode_of(c)
    if mode.distilled:
        c["distill"] = objectives.identity_options(c["distill"], c.get("task") or {})
    mode.trim_identity(c)
    if transfer.spec_of(c).is_train:  # the default: runs from before transfer sets keep their hash
        c.pop("transfer", None)
    if c.get("role") == "teacher" or mode.trained_teacher:
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
    spec = OmegaConf.to_container(cfg.teacher, resolve=True) if cfg.get("teacher") is not None else {}
    t = OmegaConf.to_container(cfg, resolve=False)
    if not mode_of(cfg).teacher_is_student:
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
