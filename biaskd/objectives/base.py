"""What every distillation objective shares: the outputs it compares and the α mix with CE."""
from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, NamedTuple

import torch
from torch import nn

from biaskd.errors import ConfigError
from biaskd.losses import cross_entropy


class Outputs(NamedTuple):
    """A model's outputs on a batch: logits (B, C) and, for feature-based objectives, the
    representation ``features(x)`` (B, d) from the same forward pass; for objectives that read a
    student's second head (DeiT's distillation token), its logits ``distill_logits`` (B, C)."""

    logits: torch.Tensor | None
    features: torch.Tensor | None = None
    distill_logits: torch.Tensor | None = None


def features_and_logits(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(features(x), forward(x))`` from one forward pass of ``model``."""
    fn = getattr(model, "features_and_logits", None)
    if fn is None:
        raise ConfigError(f"{type(model).__name__} has no features_and_logits(x), which feature-based objectives need")
    return fn(x)


def mix(alpha: float, term: Callable[[], torch.Tensor], logits: torch.Tensor,
        labels: torch.Tensor | None) -> torch.Tensor:
    """``α·term + (1−α)·CE(labels, logits)``; a term whose weight is 0 is not computed."""
    loss = logits.new_zeros((), dtype=torch.float32)
    if alpha > 0:
        loss = loss + alpha * term()
    if alpha < 1:
        if labels is None:
            raise ValueError("the distillation loss needs labels when alpha < 1 (the CE term has weight 1 - alpha)")
        loss = loss + (1 - alpha) * cross_entropy(logits, labels)
    return loss


def check_options(name: str, known: Mapping[str, tuple | None], options: Mapping[str, Any], prefix: str) -> None:
    """Raise ConfigError naming ``prefix.key`` for an option ``name`` does not have, or a value
    outside ``known[key]`` (None: any value)."""
    for key, value in options.items():
        if key not in known:
            listed = ", ".join(known) or "none"
            raise ConfigError(f"config key '{prefix}.{key}': objective {name!r} has no option {key!r} (options: {listed})")
        allowed = known[key]
        if allowed is not None and value not in allowed:
            raise ConfigError(f"config key '{prefix}.{key}' must be one of {', '.join(allowed)}; got {value!r}")


class Objective(nn.Module):
    """A distillation objective: ``loss = α·term(student, teacher) + (1−α)·CE``.

    Subclasses set ``name`` (the config value of ``distill.objective``), ``reads_temperature``, ``needs_features``
    (whether ``term`` reads ``features``; if not, the student's step is a plain forward and the
    teacher cache holds logits only) and ``trains_logits`` (whether ``term`` reaches the
    classifier head; if not, α = 1 would leave the head untrained). Objectives are modules so
    that learned parts (the hint regressor) are saved in checkpoints and trained with the
    student.
    """

    name: ClassVar[str]
    needs_features: ClassVar[bool] = False
    #: whether it reads the student's two heads (``model.heads(x)``: the class head's logits and a
    #: distillation head's, as ``Outputs.distill_logits``) instead of ``model(x)``
    reads_heads: ClassVar[bool] = False
    trains_logits: ClassVar[bool] = True
    #: option name -> allowed values (None: any) under ``distill.<name>``
    options: ClassVar[dict[str, tuple | None]] = {}
    #: whether it reads the soft-target keys ``distill.temperature`` / ``distill.t_squared``
    #: (every objective's config holds them); if not, they are not part of the run's identity.
    #: True unless an objective says otherwise: an objective of one's own may read them.
    reads_temperature: ClassVar[bool] = True

    def term(self, student: Outputs, teacher: Outputs) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, student: Outputs, teacher: Outputs, labels: torch.Tensor | None,
                alpha: float, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The loss; ``mask`` (sequence outputs: the positions that count) only where the
        objective defines one."""
        if mask is not None:
            raise ConfigError(f"objective {self.name!r} has no per-position form (sequence outputs)")
        return mix(alpha, lambda: self.term(student, teacher), student.logits, labels)

    @classmethod
    def check_options(cls, options: Mapping[str, Any], prefix: str) -> None:
        """Raise ConfigError naming ``prefix.key`` for an unknown option or value."""
        check_options(cls.name, cls.options, options, prefix)

    @classmethod
    def from_config(cls, distill: Mapping[str, Any], student_dim: int | None,
                    teacher_dim: int | None) -> "Objective":
        return cls(**dict(distill.get(cls.name) or {}))

    @classmethod
    def config_options(cls, distill: Mapping[str, Any]) -> dict[str, Any]:
        """The options that define the objective ``distill`` asks for, defaults filled in
        (recorded in meta.json as ``objective_options``)."""
        given = distill.get(cls.name) or {}
        params = inspect.signature(cls.__init__).parameters
        return {k: given.get(k, params[k].default if k in params else None) for k in cls.options}
