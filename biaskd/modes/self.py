"""``distill=self``: offline KD from a teacher of the student's own architecture (``model``),
trained first as a run of its own with its own seed; the student's step is cross-distillation's."""
from __future__ import annotations

from biaskd.modes.cross import CrossDistillation


class SelfDistillation(CrossDistillation):
    name = "self"
    kind = "self-distilled"
    teacher_from_config = False
    teacher_is_student = True

    def canonical_name(self, cfg) -> str:
        return self.name

    def teacher_model(self, cfg):
        return cfg.model

    def trim_identity(self, c: dict) -> None:
        c.get("teacher", {}).pop("model", None)  # the student's own: already in the identity

    def describe(self, model: str, teacher: str | None) -> str:
        return f"{model} self-distilled"
