"""``kd``: Hinton et al.'s soft-target loss, exactly :func:`biaskd.losses.kd_loss`."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from biaskd.losses import kd_loss, kd_loss_from_log_probs, soft_target_kl, teacher_log_probs
from biaskd.objectives.base import Objective, Outputs


class SoftTargets(Objective):
    name = "kd"

    def __init__(self, temperature: float = 1.0, t_squared: bool = True) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.t_squared = bool(t_squared)

    def term(self, student: Outputs, teacher: Outputs) -> torch.Tensor:
        scale = self.temperature**2 if self.t_squared else 1.0
        return scale * soft_target_kl(student.logits, teacher.logits, self.temperature)

    def forward(self, student: Outputs, teacher: Outputs, labels: torch.Tensor | None,
                alpha: float, mask: torch.Tensor | None = None) -> torch.Tensor:
        # kd_loss itself, so that the default objective is docs/design.md's definition to the bit;
        # ``mask``: word-level KD over the non-pad positions of next-token logits (B, L, V)
        return kd_loss(student.logits, teacher.logits, labels, temperature=self.temperature, alpha=alpha,
                       t_squared=self.t_squared, mask=mask)

    # -- offline KD: the teacher's side is a constant table -------------------------------------
    def teacher_log_probs(self, teacher_logits: torch.Tensor) -> torch.Tensor:
        """``log softmax(z_t / T)``: all this objective reads of the teacher (cacheable)."""
        return teacher_log_probs(teacher_logits, self.temperature)

    def from_log_probs(self, student_logits: torch.Tensor, teacher_log_p: torch.Tensor,
                       labels: torch.Tensor | None, alpha: float) -> torch.Tensor:
        """``forward`` given ``teacher_log_probs(z_t)`` instead of ``z_t``: the same loss and gradient."""
        return kd_loss_from_log_probs(student_logits, teacher_log_p, labels, temperature=self.temperature,
                                      alpha=alpha, t_squared=self.t_squared)

    @classmethod
    def from_config(cls, distill: Mapping[str, Any], student_dim: int | None, teacher_dim: int | None) -> "SoftTargets":
        return cls(temperature=float(distill.get("temperature", 1.0)), t_squared=bool(distill.get("t_squared", True)))

    @classmethod
    def config_options(cls, distill: Mapping[str, Any]) -> dict[str, Any]:
        return {"temperature": float(distill.get("temperature", 1.0)), "t_squared": bool(distill.get("t_squared", True))}
