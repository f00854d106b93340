"""Distillation objectives: *which* of the teacher's knowledge the student is asked to match,
``α·term + (1−α)·CE``, chosen by ``distill.objective`` (options under ``distill.<name>``).
Formulas, references and normalisations of each: ``docs/objectives.md``. Adding one: a file with
an :class:`Objective` subclass and a line in ``OUTPUT_OBJECTIVES``, or its import path from outside.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from biaskd.errors import ConfigError
from biaskd.objectives.base import Objective, Outputs, features_and_logits, mix
from biaskd.objectives.hard import DistillationToken, HardLabels
from biaskd.objectives.hints import Hints
from biaskd.objectives.kd import SoftTargets
from biaskd.objectives.logits_mse import LogitsMSE
from biaskd.objectives.relation import Relation
from biaskd.objectives.seqkd import SequenceLevelKD, not_lm_message

#: objectives that are a loss term on the batch's outputs (built by :func:`build_objective`)
OUTPUT_OBJECTIVES: dict[str, type[Objective]] = {cls.name: cls for cls in (SoftTargets, LogitsMSE, Hints, Relation, HardLabels,
                                                                         DistillationToken)}
#: every value of ``distill.objective``: the output objectives and sequence-level KD, which makes
#: the student's training data instead (:mod:`biaskd.run.teacher_sentences`)
OBJECTIVES: dict[str, type] = {**OUTPUT_OBJECTIVES, SequenceLevelKD.name: SequenceLevelKD}

__all__ = ["OBJECTIVES", "OUTPUT_OBJECTIVES", "Objective", "Outputs", "build_objective", "check_config",
           "features_and_logits", "identity_options", "mix", "objective_class", "objective_options"]


def objective_class(distill: Mapping[str, Any]) -> type:
    """The class of the objective a ``distill`` config names (``kd`` when it names none)."""
    name = distill.get("objective") or "kd"
    if isinstance(name, str) and name in OBJECTIVES:
        return OBJECTIVES[name]
    if isinstance(name, str) and "." in name:  # the user's own: an importable Objective subclass (pkg.module.Class)
        return _own_objective(name)
    raise ConfigError(f"config key 'distill.objective' must be one of {', '.join(OBJECTIVES)}, or the import "
                      f"path of an Objective subclass (package.module.Class); got {name!r}")


def _own_objective(path: str) -> type[Objective]:
    import hydra.utils

    try:
        cls = hydra.utils.get_class(path)
    except Exception as exc:
        raise ConfigError(f"config key 'distill.objective': cannot import {path!r} ({exc})") from None
    if not (isinstance(cls, type) and issubclass(cls, Objective) and isinstance(getattr(cls, "name", None), str)):
        raise ConfigError(f"config key 'distill.objective': {path} is not a subclass of biaskd.objectives.Objective "
                          f"with a name")
    return cls


def check_config(distill: Mapping[str, Any]) -> None:
    """Raise one ConfigError, naming the key, for an unknown objective or option, or for an
    objective that cannot train the classifier head at α = 1."""
    cls = objective_class(distill)
    options = distill.get(cls.name)
    if options is not None and not isinstance(options, Mapping):
        raise ConfigError(f"config key 'distill.{cls.name}' must be a mapping of options, got {options!r}")
    cls.check_options(options or {}, f"distill.{cls.name}")
    if getattr(cls, "lm_only", False):
        setup = _task_setup(distill)
        if setup is not None and setup != "lm":
            raise ConfigError(not_lm_message(setup))
    if not cls.trains_logits:
        alpha = distill.get("alpha", 1.0)
        final = alpha if distill.get("alpha_schedule", "constant") == "constant" else distill.get("final_alpha", 0.0)
        if alpha == 1 and final == 1:
            raise ConfigError(
                f"config key 'distill.alpha' must be < 1 for objective {cls.name!r}: its term does not reach the "
                f"classifier head, which only the (1 - alpha) cross-entropy term trains"
            )


def _task_setup(distill: Mapping[str, Any]) -> str | None:
    """The ``task.setup`` of the run config ``distill`` belongs to (``classification`` when the task
    has none), or None for a detached ``distill`` mapping."""
    if not isinstance(distill, DictConfig):
        return None
    try:
        task = OmegaConf.select(distill, "..task", default=None)
    except OmegaConfBaseException:  # no parent config
        return None
    return None if task is None else str(task.get("setup") or "classification")


def build_objective(distill: Mapping[str, Any], student: nn.Module, teacher: nn.Module | None = None) -> Objective:
    """The objective ``distill`` (the ``distill`` config node) asks for, sized for ``student``
    and ``teacher`` (their ``feature_dim``)."""
    cls = objective_class(distill)
    if not issubclass(cls, Objective):
        raise ConfigError(f"distill.objective={cls.name} is not a loss on the model's outputs; "
                          f"it trains through biaskd.run.teacher_sentences")
    if cls.needs_features:
        for role, model in (("student", student), ("teacher", teacher)):
            if model is not None and not hasattr(model, "features_and_logits"):
                raise ConfigError(
                    f"distill.objective={cls.name} needs features: the {role} model {type(model).__name__} "
                    f"has no features_and_logits(x)"
                )
    if cls.reads_heads and not hasattr(student, "heads"):
        raise ConfigError(f"distill.objective={cls.name} reads a distillation head: the student model "
                          f"{type(student).__name__} has no heads(x) (e.g. model=vit model.distill_token=true)")
    return cls.from_config(
        distill, getattr(student, "feature_dim", None), getattr(teacher, "feature_dim", None) if teacher else None
    )


#: keys every objective's config holds (conf/objective/), read only by objectives that
#: ``reads_temperature``, with the values conf/objective/ gives them
SOFT_TARGET_KEYS = ("temperature", "t_squared")


def identity_options(distill: dict, task: Mapping[str, Any]) -> dict:
    """``distill`` (a resolved config node) as a distilled run's identity holds it: the soft-target
    keys at their defaults (temperature: the task's ``kd.temperature``) for an objective that does
    not read them, so that a sweep over them trains one run, named as such runs always were."""
    if objective_class(distill).reads_temperature:
        return distill
    defaults = {"temperature": (task.get("kd") or {}).get("temperature"), "t_squared": True}
    return {**distill, **{k: defaults[k] for k in SOFT_TARGET_KEYS if k in distill}}


def objective_options(distill: Mapping[str, Any]) -> dict[str, Any]:
    """The effective options of the objective ``distill`` names, defaults filled in."""
    return objective_class(distill).config_options(distill)
