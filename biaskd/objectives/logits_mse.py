"""``logits_mse``: regress the teacher's logits (Ba & Caruana 2014)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from biaskd.objectives.base import Objective, Outputs


class LogitsMSE(Objective):
    """Mean over examples *and* classes of ``(z_s − z_t)²`` — independent of the number of
    classes; equal to 2 × the T → ∞ limit of ``T²·KL`` for zero-mean logits."""

    name = "logits_mse"
    reads_temperature = False

    def term(self, student: Outputs, teacher: Outputs) -> torch.Tensor:
        s, t = student.logits.float(), teacher.logits.float()
        if s.shape != t.shape:
            raise ValueError(f"student logits {tuple(s.shape)} and teacher logits {tuple(t.shape)} differ in shape")
        return F.mse_loss(s, t)
