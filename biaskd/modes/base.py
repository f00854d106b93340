"""What a distillation mode (``distill.mode``) says about its runs: how the teacher is obtained,
what of the ``distill`` / ``teacher`` config is part of a run's identity, how its runs are named
and labelled, and the Lightning module whose step trains a classifier. One file per mode
(mdistiller's one file per distiller); :data:`biaskd.modes.MODES` is their registry.

Imported by the config check and the analysis: the training stack is imported by :meth:`Mode.module`
when it is called.
"""
from __future__ import annotations

from typing import Any, ClassVar


class Mode:
    #: the value of ``distill.mode``
    name: ClassVar[str]
    #: the family its runs are drawn in by the analysis (analysis.style: a hue per kind)
    kind: ClassVar[str]
    #: how the teacher is obtained: None (no teacher), ``"trained"`` (a teacher run of its own, found
    #: or trained first: :func:`biaskd.run.train.ensure_teacher`) or ``"online"`` (a fresh model trained
    #: alongside the student)
    teacher: ClassVar[str | None] = None
    #: the values of ``distill.teacher_outputs`` it takes
    teacher_outputs: ClassVar[tuple[str, ...]] = ("cached", "forward")
    #: whether the teacher's architecture is the config's ``teacher.model`` (``model@teacher.model``);
    #: it is then part of the run's name (``-from-<model>``)
    teacher_from_config: ClassVar[bool] = False
    #: whether the teacher has the student's own architecture (``model``)
    teacher_is_student: ClassVar[bool] = False

    @property
    def distilled(self) -> bool:
        return self.teacher is not None

    @property
    def trained_teacher(self) -> bool:
        """Whether the teacher is a run of its own, trained before the student."""
        return self.teacher == "trained"

    @property
    def online(self) -> bool:
        """Whether the teacher trains alongside the student (part of its module, state and optimizer)."""
        return self.teacher == "online"

    @property
    def cross_distilled(self) -> bool:
        """Whether the student learns from a teacher of another model, trained before it as a run
        of its own (``cross``): neither self-distillation nor online. The runs the analysis asks
        whether a teacher's bias transferred to."""
        return self.trained_teacher and not self.teacher_is_student

    def teacher_model(self, cfg: Any) -> Any:
        """The config node of the teacher's model, or None."""
        return cfg.teacher.model if self.teacher_from_config else None

    def canonical_name(self, cfg: Any) -> str:
        """The mode a run of ``cfg`` is, whatever it was called (:func:`biaskd.config.canonical`)."""
        return self.name

    def trim_identity(self, c: dict) -> None:
        """Remove from ``c`` (a run's resolved config as a dict) what does not change a run of this mode."""

    def describe(self, model: str, teacher: str | None) -> str:
        """``mlp distilled from cnn``: a run of ``model`` in this mode (``teacher``: the teacher's model name)."""
        raise NotImplementedError

    def module(self, p: Any):
        """The Lightning module of a classification run (``p``: :class:`biaskd.run.recipes.Parts`): what its step does."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<mode {self.name}>"
