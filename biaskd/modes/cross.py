"""``distill=cross``: offline KD from a teacher of another architecture (``model@teacher.model``),
trained first as a run of its own. The student's step: the objective against the teacher's
outputs, looked up in a table computed once (``teacher_outputs=cached``) or from the frozen
teacher run on every batch (``forward``)."""
from __future__ import annotations

from biaskd.modes.base import Mode


class CrossDistillation(Mode):
    name = "cross"
    kind = "distilled"
    teacher = "trained"
    teacher_from_config = True

    def canonical_name(self, cfg) -> str:
        """Cross-distillation from a teacher with the student's own model config *is* self-distillation."""
        from omegaconf import OmegaConf

        same = OmegaConf.to_container(cfg.teacher.model, resolve=True) == OmegaConf.to_container(cfg.model, resolve=True)
        return "self" if same else self.name

    def describe(self, model: str, teacher: str | None) -> str:
        return f"{model} distilled" + (f" from {teacher}" if teacher else "")

    def module(self, p):
        from biaskd.modules.distill import CachedOutputs, DistillModule, FrozenTeacher
        from biaskd.objectives import build_objective, objective_class
        from biaskd.run.teacher import teacher_cache

        distill = p.cfg.distill
        if distill.teacher_outputs == "cached":
            cached = teacher_cache(p.teacher.run, p.teacher.model, p.data, split=p.fit,
                                   features=objective_class(distill).needs_features)
            outputs = CachedOutputs(cached.logits, cached.features)
        else:
            outputs = FrozenTeacher(p.teacher.model)
        return DistillModule(p.net, build_objective(distill, p.model, p.teacher.model), outputs, **_alpha(distill),
                             **p.optim)


def _alpha(distill) -> dict:
    """α and its schedule, from the ``distill`` config node."""
    return dict(alpha=float(distill.alpha), alpha_schedule=distill.alpha_schedule,
                final_alpha=float(distill.final_alpha))
