"""DeiT's distillation (Touvron et al. 2021): the teacher's decision as the label, for the
student's only head (``hard``) or for its distillation token's head (``token``)."""
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


class DistillationToken(HardLabels):
    """``term = CE(argmax z_t, z_dist)`` on the student's distillation head, while the class head
    learns the labels: ``α·term + (1−α)·CE(y, z_cls)`` (DeiT: α = 0.5). The student
    (``model.heads(x)``, e.g. ``model=vit model.distill_token=true``) has a second token whose
    head learns from the teacher alone; it predicts with the mean of both heads' logits. At α = 1
    the class head would learn nothing, so α < 1 (``trains_logits``)."""

    name = "token"
    reads_heads = True
    trains_logits = False

    def term(self, student: Outputs, teacher: Outputs) -> torch.Tensor:
        return cross_entropy(student.distill_logits, teacher.logits.argmax(dim=-1))
