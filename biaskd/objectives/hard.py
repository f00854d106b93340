"""``hard``: the teacher's decision as the label (DeiT's hard-label distillation, Touvron et al. 2021)."""
from __future__ import annotations

import torch

from biaskd.losses import cross_entropy
from biaskd.objectives.base import Objective, Outputs


class HardLabels(Objective):
    """``term = CE(argmax z_t, z_s)``: cross-entropy against the teacher's top class. Only the
    teacher's decision reaches the student, not how confident it was or what it ranked second —
    DeiT found this carries a convnet teacher's knowledge to a ViT *better* than soft targets.
    DeiT mixes it half and half with the labels (α = 0.5); at α = 1 the student never sees them."""

    name = "hard"
    reads_temperature = False

    def term(self, student: Outputs, teacher: Outputs) -> torch.Tensor:
        return cross_entropy(student.logits, teacher.logits.argmax(dim=-1))
