"""How each kind of run is made: where its teacher comes from, what it trains on, which Lightning
module trains it. One recipe per (setup, distillation mode, objective level) in :data:`RECIPES`;
a new mode or setup is one recipe and its entries there: the modes a config may ask for
(:data:`DISTILL_MODES`, checked by :func:`biaskd.config.check`) are read off the table.

The config check imports this module before anything trains, so the training stack (Lightning
modules, teacher caches) is imported by the recipe that uses it, when it is used.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf
from torch import nn

from biaskd.artifacts import RunDir
from biaskd.data.base import Split
from biaskd.errors import ConfigError
from biaskd.models import check_model
from biaskd.objectives import Outputs, build_objective, objective_class

if TYPE_CHECKING:
    from biaskd.data.datamodule import TaskData
    from biaskd.modules.classifier import ClassifierModule
    from biaskd.modules.distill import DistillModule


@dataclass
class Teacher:
    """A student's teacher: a trained run (``run``) or, for online KD, a model trained alongside."""

    model: nn.Module
    run: RunDir | None = None


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
    """Independent training: no teacher, cross-entropy on the training split."""

    #: ``trained``: a teacher run, found or trained first; ``online``: trained alongside; None: no teacher
    teacher: str | None = None
    #: record what the teacher's soft targets carried (``metrics.json``'s ``teacher_signal``)
    records_teacher_signal = False

    def check(self, cfg: DictConfig, data: TaskData) -> None:
        """What the config asks that this kind of run cannot do (before anything trains)."""
        if cfg.distill.mode in ("cross", "online"):
            check_model(cfg.teacher.model, data)

    def training_split(self, cfg: DictConfig, fit: Split, teacher: Teacher | None) -> Split:
        return fit

    def module(self, p: Parts) -> ClassifierModule:
        from biaskd.modules.classifier import ClassifierModule

        return ClassifierModule(p.net, **p.optim)


class Distilled(Recipe):
    """Offline (self/cross, teacher outputs cached or run every step) or online KD of a classifier
    with any output objective."""

    def __init__(self, teacher: str) -> None:
        self.teacher = teacher
        self.records_teacher_signal = teacher == "trained"

    def module(self, p: Parts) -> DistillModule:
        from biaskd.modules.distill import DistillModule
        from biaskd.teachers import teacher_cache

        distill = p.cfg.distill
        cached = Outputs(None)
        if distill.teacher_outputs == "cached":
            cached = teacher_cache(p.teacher.run, p.teacher.model, p.data, split=p.fit,
                                   features=objective_class(distill).needs_features)
        return DistillModule(
            p.net,
            teacher_logits=cached.logits,
            teacher_features=cached.features,
            objective=build_objective(distill, p.model, p.teacher.model),
            teacher=p.teacher.model,
            teacher_outputs=distill.teacher_outputs,
            alpha=float(distill.alpha),
            alpha_schedule=distill.alpha_schedule,
            final_alpha=float(distill.final_alpha),
            **p.optim,
        )


class LanguageModel(Recipe):
    """The LM setup: next-token CE alone, or word-level KD (a teacher run or an online teacher)."""

    def __init__(self, teacher: str | None = None) -> None:
        self.teacher = teacher

    def check(self, cfg: DictConfig, data: TaskData) -> None:
        from biaskd.modules.lm import check_lm_config

        super().check(cfg, data)
        check_lm_config(cfg)

    def module(self, p: Parts) -> ClassifierModule:
        from biaskd.modules.lm import lm_module

        return lm_module(p.cfg, p.net, p.teacher.model if p.teacher else None, p.data, **p.optim)


class SequenceLevel(LanguageModel):
    """Sequence-level KD: the student trains on sentences its teacher run generates, no teacher forward."""

    def __init__(self) -> None:
        super().__init__("trained")

    def training_split(self, cfg: DictConfig, fit: Split, teacher: Teacher | None) -> Split:
        from biaskd.modules.seqkd import sequence_level_split

        return sequence_level_split(OmegaConf.to_container(cfg.distill, resolve=True), fit, teacher.model,
                                    cache_dir=teacher.run / "teacher_cache")

    def module(self, p: Parts) -> ClassifierModule:
        from biaskd.modules.seqkd import sequence_level_module

        return sequence_level_module(p.cfg, p.net, p.data, p.fit, **p.optim)


#: (setup, distill.mode, objective level) -> recipe
RECIPES: dict[tuple[str, str, str], Recipe] = {
    ("classification", "none", "output"): Recipe(),
    ("classification", "self", "output"): Distilled("trained"),
    ("classification", "cross", "output"): Distilled("trained"),
    ("classification", "online", "output"): Distilled("online"),
    ("lm", "none", "output"): LanguageModel(),
    ("lm", "self", "output"): LanguageModel("trained"),
    ("lm", "cross", "output"): LanguageModel("trained"),
    ("lm", "online", "output"): LanguageModel("online"),
    ("lm", "self", "sequence"): SequenceLevel(),
    ("lm", "cross", "sequence"): SequenceLevel(),
}
#: the values of ``distill.mode``: those some recipe trains, in the table's order
DISTILL_MODES = tuple(dict.fromkeys(mode for _, mode, _ in RECIPES))


def recipe_for(cfg: DictConfig, data: TaskData) -> Recipe:
    """The recipe of the run ``cfg`` describes on ``data`` (whose ``setup_kind`` names its setup;
    ``classification`` without one)."""
    from biaskd.modules.lm import check_lm_config
    from biaskd.modules.seqkd import is_sequence_level

    setup = getattr(data, "setup_kind", "classification")
    level = "sequence" if is_sequence_level(cfg.distill) else "output"
    recipe = RECIPES.get((setup, cfg.distill.mode, level))
    if recipe is None:
        if setup == "lm":
            check_lm_config(cfg)  # names what the LM setup cannot run
        raise ConfigError(f"no way to train setup {setup!r} with distill.mode={cfg.distill.mode} and a "
                          f"{level}-level objective ({cfg.distill.get('objective') or 'kd'})")
    return recipe
