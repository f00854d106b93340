"""``distill=online``: teacher (``model@teacher.model``, a fresh model seeded ``seed +
teacher.seed_offset``) and student train together. The step: the teacher learns from the labels,
the student the objective against the teacher's current, detached outputs."""
from __future__ import annotations

from biaskd.modes.base import Mode
from biaskd.modes.cross import _alpha


class OnlineDistillation(Mode):
    name = "online"
    kind = "online"
    teacher = "online"
    teacher_outputs = ("online",)
    teacher_from_config = True

    def describe(self, model: str, teacher: str | None) -> str:
        return f"{model} online-distilled" + (f" with {teacher}" if teacher else "")

    def module(self, p):
        from biaskd.modules.distill import OnlineDistillModule
        from biaskd.objectives import build_objective

        objective = build_objective(p.cfg.distill, p.model, p.teacher.model)
        return OnlineDistillModule(p.net, objective, p.teacher.model, **_alpha(p.cfg.distill), **p.optim)
