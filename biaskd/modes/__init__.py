"""Distillation modes, ``distill.mode``: one file each (:mod:`.none`, :mod:`.self`, :mod:`.cross`,
:mod:`.online`), what they share in :mod:`.base`. Every consumer asks the mode object
(:func:`mode_of`) instead of comparing the mode's name. Adding one: a file with a :class:`Mode`
subclass and its line in :data:`MODES`.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from biaskd.errors import ConfigError
from biaskd.modes.base import Mode
from biaskd.modes.cross import CrossDistillation
from biaskd.modes.none import Independent
from biaskd.modes.online import OnlineDistillation
from biaskd.modes.self import SelfDistillation

#: ``distill.mode`` -> its mode
MODES: dict[str, Mode] = {m.name: m for m in (Independent(), SelfDistillation(), CrossDistillation(),
                                              OnlineDistillation())}

__all__ = ["MODES", "Mode", "mode_named", "mode_of", "run_label"]


def mode_named(name: Any) -> Mode:
    """The mode called ``name``; a ConfigError naming ``distill.mode`` and the modes otherwise."""
    if isinstance(name, str) and name in MODES:
        return MODES[name]
    raise ConfigError(f"config key 'distill.mode' must be one of {', '.join(MODES)}; got {name!r}")


def mode_of(cfg: Mapping) -> Mode:
    """The mode of the run config ``cfg`` (a config node or a dict; none without a ``distill`` node)."""
    return mode_named((cfg.get("distill") or {}).get("mode", "none"))


def run_label(model: str, mode: str | None = "none", teacher: str | None = None, objective: str | None = None,
              role: str | None = "student") -> str:
    """How a run is called wherever it is shown (summary lines, sweep tables, the analysis):
    ``cnn teacher``, ``mlp independent``, ``mlp self-distilled``, ``mlp distilled from cnn``,
    ``mlp online-distilled with cnn``, and `` (hints)`` after a distilled run's objective other
    than ``kd`` (an import path's class name)."""
    if role == "teacher":
        return f"{model} teacher"
    chosen = MODES.get(mode or "none")
    if chosen is None:
        return f"{model} {mode}"
    text = chosen.describe(model, teacher)
    if chosen.distilled and objective and objective != "kd":
        text += f" ({objective.rsplit('.', 1)[-1]})"
    return text
