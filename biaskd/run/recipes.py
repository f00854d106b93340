"""How each kind of run is made, per setup and objective level: where its teacher comes from (the
mode's :attr:`~biaskd.modes.Mode.teacher`), what it trains on, which Lightning module trains it.
One recipe per (setup, objective level) in :data:`RECIPES`; the mode (:mod:`biaskd.modes`) says
the rest. A new setup is one recipe and its entries there.

The config check imports this module before anything trains, so the training stack (Lightning
modules, teacher caches) is imported by the recipe that uses it, when it is used.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf
from torch import nn

from biaskd.data.base import Split, setup_of
from biaskd.errors import ConfigError
from biaskd.models import check_model
from biaskd.modes import Mode, mode_of

if TYPE_CHECKING:
    from biaskd.data.datamodule import TaskData
    from biaskd.modules.classifier import ClassifierModule
    from biaskd.run.teacher import Teacher


@dataclass
class Parts:
    """What a recipe builds a module from."""

    cfg: DictConfig
    data: TaskData
    model: nn.Module  # the student as saved
    net: nn.Module  # the student as stepped: ``model`` or its torch.compile wrapper
    teacher: Teacher | None
    fit: Split  # what the student trains on
    optim: dict  # optimizer options of ClassifierModule


class Recipe:
    """A classifier, trained as its mode says (:meth:`biaskd.modes.Mode.module`)."""

    def __init__(self, mode: Mode) -> None:
        self.mode = mode

    @property
    def teacher(self) -> str | None:
        """``trained``: a teacher run, found or trained first; ``online``: trained alongside; None: no teacher."""
        return self.mode.teacher

    @property
    def records_teacher_signal(self) -> bool:
        """Record what the teacher's soft targets carried (``metrics.json``'s ``teacher_signal``)."""
        return self.mode.trained_teacher

    def check(self, cfg: DictConfig, data: TaskData) -> None:
        """What the config asks that this kind of run cannot do (before anything trains)."""
        if self.mode.teacher_from_config:
            check_model(cfg.teacher.model, data)

    def training_split(self, cfg: DictConfig, fit: Split, teacher: Teacher | None) -> Split:
        return fit

    def module(self, p: Parts) -> ClassifierModule:
        return self.mode.module(p)


class LanguageModel(Recipe):
    """The LM setup: next-token CE alone, or word-level KD (a teacher run or an online teacher)."""

    records_teacher_signal = False

    def check(self, cfg: DictConfig, data: TaskData) -> None:
        super().check(cfg, data)
        check_lm_config(cfg)

    def module(self, p: Parts) -> ClassifierModule:
        from biaskd.modules.lm import lm_module

        return lm_module(p.cfg, p.net, p.teacher.model if p.teacher else None, p.data, online=self.mode.online,
                         **p.optim)


class SequenceLevel(LanguageModel):
    """Sequence-level KD: the student trains on sentences its teacher run generates, no teacher forward."""

    def training_split(self, cfg: DictConfig, fit: Split, teacher: Teacher | None) -> Split:
        from biaskd.run.teacher_sentences import sequence_level_split

        return sequence_level_split(OmegaConf.to_container(cfg.distill, resolve=True), fit, teacher.model,
                                    cache_dir=teacher.run / "teacher_cache")

    def module(self, p: Parts) -> ClassifierModule:
        from biaskd.modules.lm import sequence_level_module

        return sequence_level_module(p.cfg, p.net, p.data, p.fit, **p.optim)


def check_lm_config(cfg) -> None:
    """Raise ConfigError for what the LM setup cannot run (checked before any training)."""
    objective = cfg.distill.get("objective") or "kd"
    mode = mode_of(cfg)
    if not mode.distilled:
        return
    if objective not in ("kd", "seqkd"):
        raise ConfigError(f"distill.objective={objective!r}: the LM setup supports word-level KD (objective=kd) "
                          f"and sequence-level KD (objective=seqkd) only")
    if objective == "seqkd" and not mode.trained_teacher:
        raise ConfigError(f"distill.objective=seqkd with distill.mode={mode.name}: sequence-level KD trains on "
                          f"sentences a trained teacher generates before the student starts; use distill=cross or self")


#: (setup, objective level) -> the recipe class
RECIPES: dict[tuple[str, str], type[Recipe]] = {
    ("classification", "output"): Recipe,
    ("lm", "output"): LanguageModel,
    ("lm", "sequence"): SequenceLevel,
}


def recipe_for(cfg: DictConfig, data: TaskData) -> Recipe:
    """The recipe of the run ``cfg`` describes on ``data``."""
    from biaskd.run.teacher_sentences import is_sequence_level

    setup = setup_of(data)
    mode = mode_of(cfg)
    level = "sequence" if mode.distilled and is_sequence_level(cfg.distill) else "output"
    recipe = RECIPES.get((setup, level))
    if recipe is None or (level == "sequence" and not mode.trained_teacher):
        if setup == "lm":
            check_lm_config(cfg)  # names what the LM setup cannot run
        raise ConfigError(f"no way to train setup {setup!r} with distill.mode={mode.name} and a "
                          f"{level}-level objective ({cfg.distill.get('objective') or 'kd'})")
    return recipe(mode)
