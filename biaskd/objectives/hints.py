"""``hints``: FitNets (Romero et al. 2015) — a learned regressor from the student's
representation onto the teacher's."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from biaskd.errors import ConfigError
from biaskd.objectives.base import Objective, Outputs


class Hints(Objective):
    """``mean_{b,j} (W f_s(x_b) + c − f_t(x_b))_j²`` with ``W ∈ R^{d_t×d_s}``, ``c`` learned.

    The regressor maps student → teacher, as in FitNets: the teacher's features are a fixed
    target. (A learned map of the teacher's features onto the student's could shrink towards
    zero and let both sides collapse.)
    """

    name = "hints"
    reads_temperature = False
    needs_features = True
    trains_logits = False

    def __init__(self, student_dim: int, teacher_dim: int) -> None:
        super().__init__()
        self.regressor = nn.Linear(int(student_dim), int(teacher_dim))

    def term(self, student: Outputs, teacher: Outputs) -> torch.Tensor:
        t = teacher.features.float()
        return F.mse_loss(self.regressor(student.features.float()), t)

    @classmethod
    def from_config(cls, distill: Mapping[str, Any], student_dim: int | None, teacher_dim: int | None) -> "Hints":
        if not student_dim or not teacher_dim:
            raise ConfigError("distill.objective=hints needs the feature sizes of student and teacher (model.feature_dim)")
        return cls(student_dim, teacher_dim)
