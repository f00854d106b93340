"""``distill=none``: independent training, cross-entropy on the labels; no teacher."""
from __future__ import annotations

from biaskd.modes.base import Mode


class Independent(Mode):
    name = "none"
    kind = "independent"

    def trim_identity(self, c: dict) -> None:
        c.pop("teacher", None)  # nothing distillation-related makes an independent run
        c["distill"] = {"mode": "none"}

    def describe(self, model: str, teacher: str | None) -> str:
        return f"{model} independent"

    def module(self, p):
        from biaskd.modules.classifier import ClassifierModule

        return ClassifierModule(p.net, **p.optim)
