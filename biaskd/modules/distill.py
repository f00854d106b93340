"""Distillation: a student learns from a teacher's outputs.

Where the teacher's outputs come from:

* ``cached`` (offline KD, the default): the teacher's logits (and, for feature-based
  objectives, its ``features(x)``) on the whole training set are computed once, stored with the
  teacher's run dir and looked up by example index, so a student step costs no teacher
  forward — the same cost as training the student alone;
* ``forward``: the frozen teacher runs on every batch (needed when inputs are augmented);
* ``online``: teacher and student train together; the teacher learns from the labels and the
  student from the teacher's current, detached outputs.

What the student matches is the objective's business (:mod:`biaskd.objectives`, chosen by
``distill.objective``; default ``kd``): ``α·term + (1−α)·CE``, α from config, optionally on a
schedule over training.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from biaskd.losses import cross_entropy
from biaskd.modules.classifier import ClassifierModule
from biaskd.objectives import Objective, Outputs, features_and_logits
from biaskd.objectives.kd import SoftTargets


def alpha_at(schedule: str, alpha: float, progress: float, final_alpha: float = 0.0, decay: float = 5.0) -> float:
    """α at training progress in [0, 1]: constant, linear (to final_alpha) or exponential decay."""
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "constant":
        return alpha
    if schedule == "linear":
        return alpha + (final_alpha - alpha) * progress
    if schedule == "exponential":
        return final_alpha + (alpha - final_alpha) * math.exp(-decay * progress)
    raise ValueError(f"unknown alpha schedule {schedule!r} (constant, linear, exponential)")


class TeacherMixin:
    """A teacher held by a student's module: ``online`` → a submodule, trained and saved with
    the student; otherwise frozen, hidden from the state dict, and moved to the batch's device
    on first use (Lightning does not move it). Plus α and its schedule (T belongs to the
    objective)."""

    def init_teacher(self, teacher: nn.Module | None, teacher_outputs: str | None) -> None:
        if teacher_outputs == "online":
            self.teacher = teacher  # trained: part of state and optimizer
        else:
            self._frozen_teacher = [teacher] if teacher is not None else []  # hidden from state_dict
            if teacher is not None:
                teacher.eval().requires_grad_(False)

    def init_schedule(self, alpha: float, alpha_schedule: str, final_alpha: float) -> None:
        self.alpha = alpha
        self.alpha_schedule = alpha_schedule
        self.final_alpha = final_alpha

    def current_alpha(self) -> float:
        if self.alpha_schedule == "constant":
            return self.alpha
        total = max(1, int(self.trainer.estimated_stepping_batches))
        return alpha_at(self.alpha_schedule, self.alpha, self.global_step / total, self.final_alpha)

    def _frozen(self, x: torch.Tensor) -> nn.Module:
        teacher = self._frozen_teacher[0]
        if next(teacher.parameters()).device != x.device:
            teacher.to(x.device)  # not a submodule, so Lightning does not move it
        return teacher


class DistillModule(TeacherMixin, ClassifierModule):
    """A student trained with ``objective`` (default: soft targets at ``temperature``, with
    ``t_squared``; these two only build that default).

    ``teacher_logits`` / ``teacher_features``: the cached tables (rows = training-set example
    index) for ``teacher_outputs="cached"``; features only when the objective reads them.
    """

    def __init__(
        self,
        model: nn.Module,
        teacher_logits: torch.Tensor | None = None,
        teacher: nn.Module | None = None,
        teacher_outputs: str = "cached",
        alpha: float = 1.0,
        temperature: float = 1.0,
        t_squared: bool = True,
        alpha_schedule: str = "constant",
        final_alpha: float = 0.0,
        objective: Objective | None = None,
        teacher_features: torch.Tensor | None = None,
        **optim,
    ) -> None:
        super().__init__(model, **optim)
        self.objective = objective if objective is not None else SoftTargets(temperature, t_squared)
        if teacher_outputs == "cached" and teacher_logits is None:
            raise ValueError("teacher_outputs='cached' needs teacher_logits")
        if teacher_outputs == "cached" and self.objective.needs_features and teacher_features is None:
            raise ValueError(f"teacher_outputs='cached' with objective {self.objective.name!r} needs teacher_features")
        if teacher_outputs in ("forward", "online") and teacher is None:
            raise ValueError(f"teacher_outputs={teacher_outputs!r} needs a teacher model")
        self.teacher_outputs = teacher_outputs
        # cached outputs are a constant lookup table, not module state: keep them out of checkpoints
        self._teacher_logits = teacher_logits
        # soft targets read only log softmax(z_t / T) of a cached teacher: a table of it, made on first use
        self._teacher_log_p: torch.Tensor | None = None
        self._teacher_log_p_of: tuple = (None, None)  # (the logits table, T) it was made from
        self._teacher_features = teacher_features if self.objective.needs_features else None
        self.init_teacher(teacher, teacher_outputs)
        self.init_schedule(alpha, alpha_schedule, final_alpha)

    # -- the teacher's side ------------------------------------------------------------------------
    def teacher_logits_for(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.teacher_outputs == "cached":
            table = self._teacher_logits
            if table.device != batch["idx"].device:
                table = self._teacher_logits = table.to(batch["idx"].device, non_blocking=True)
            return table[batch["idx"]]
        if self.teacher_outputs == "forward":
            with torch.no_grad():
                return self._frozen(batch["x"])(batch["x"])
        raise AssertionError("online logits are computed in loss_step")

    def teacher_for(self, batch: dict[str, torch.Tensor]) -> Outputs:
        """The frozen teacher's outputs on ``batch``: logits, plus features if the objective reads them."""
        if not self.objective.needs_features:
            return Outputs(self.teacher_logits_for(batch))
        if self.teacher_outputs == "cached":
            table = self._teacher_features
            if table.device != batch["idx"].device:
                table = self._teacher_features = table.to(batch["idx"].device, non_blocking=True)
            return Outputs(self.teacher_logits_for(batch), table[batch["idx"]])
        if self.teacher_outputs == "forward":
            with torch.no_grad():
                features, logits = features_and_logits(self._frozen(batch["x"]), batch["x"])
            return Outputs(logits, features)
        raise AssertionError("online outputs are computed in loss_step")

    def teacher_log_probs_for(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Cached soft targets: rows of the table ``log softmax(z_t / T)`` over the training set,
        computed once (per logits table, device and T) so that a step does not renormalise the
        teacher's logits."""
        idx = batch["idx"]
        table = self._teacher_log_p
        if (table is None or table.device != idx.device or self._teacher_log_p_of[0] is not self._teacher_logits
                or self._teacher_log_p_of[1] != self.objective.temperature):
            if self._teacher_logits.device != idx.device:
                self._teacher_logits = self._teacher_logits.to(idx.device)
            with torch.no_grad():
                table = self._teacher_log_p = self.objective.teacher_log_probs(self._teacher_logits)
            self._teacher_log_p_of = (self._teacher_logits, self.objective.temperature)
        return table[idx]

    # -- the student's side ------------------------------------------------------------------------
    def compute_loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        # objectives without features: ClassifierModule's plain step plus a table lookup
        if self.teacher_outputs == "cached" and isinstance(self.objective, SoftTargets):
            return self.objective.from_log_probs(logits, self.teacher_log_probs_for(batch), batch.get("y"),
                                                 self.current_alpha())
        return self.objective(Outputs(logits), Outputs(self.teacher_logits_for(batch)), batch.get("y"),
                              self.current_alpha())

    def student_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The student's loss on ``batch`` (frozen teacher), features and logits from one forward."""
        features, logits = features_and_logits(self.model, batch["x"])
        return self.objective(Outputs(logits, features), self.teacher_for(batch), batch.get("y"), self.current_alpha())

    def loss_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if self.teacher_outputs == "online":
            return self._online_step(batch)
        if not self.objective.needs_features:
            return super().loss_step(batch, batch_idx)  # plain forward, as without distillation
        loss = self.student_loss(batch)
        self.log_train("train/loss", loss, prog_bar=True, batch_size=len(batch["x"]))
        return loss

    def _online_step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = batch["x"]
        if self.objective.needs_features:
            t_features, t_logits = features_and_logits(self.teacher, x)
            s_features, s_logits = features_and_logits(self.model, x)
            student, teacher = Outputs(s_logits, s_features), Outputs(t_logits.detach(), t_features.detach())
        else:
            t_logits = self.teacher(x)
            s_logits = self.model(x)
            student, teacher = Outputs(s_logits), Outputs(t_logits.detach())
        teacher_loss = cross_entropy(t_logits, batch["y"])
        student_loss = self.objective(student, teacher, batch["y"], self.current_alpha())
        n = len(batch["y"])
        self.log_train("train/loss", student_loss, prog_bar=True, batch_size=n)
        self.log_train("train/teacher_loss", teacher_loss, batch_size=n)
        return student_loss + teacher_loss

    def trainable_parameters(self):
        params = list(self.model.parameters()) + list(self.objective.parameters())  # e.g. the hint regressor
        if self.teacher_outputs == "online":
            params += list(self.teacher.parameters())
        return params
