"""Distillation: a student learns from a teacher's outputs.

Where the teacher's outputs come from (the mode, :mod:`biaskd.modes`, picks):

* :class:`CachedOutputs` (offline KD, ``teacher_outputs=cached``, the default): the teacher's
  logits (and, for feature-based objectives, its ``features(x)``) on the whole training set are
  computed once, stored with the teacher's run dir and looked up by example index, so a student
  step costs no teacher forward — the same cost as training the student alone;
* :class:`FrozenTeacher` (``teacher_outputs=forward``): the frozen teacher runs on every batch
  (needed when inputs are augmented);
* :class:`OnlineDistillModule` (``distill=online``): teacher and student train together; the
  teacher learns from the labels and the student from the teacher's current, detached outputs.

What the student matches is the objective's business (:mod:`biaskd.objectives`, chosen by
``objective=``): ``α·term + (1−α)·CE``, α from config, optionally on a schedule over training.
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


class FrozenTeacher:
    """A trained teacher run on every batch (``teacher_outputs=forward``; word-level KD in the LM
    setup): frozen, hidden from the student module's state dict, and moved to the batch's device
    on first use (Lightning does not move it, as it is not a submodule)."""

    def __init__(self, model: nn.Module) -> None:
        self._model = [model.eval().requires_grad_(False)]  # a list: not a submodule

    def model_on(self, x: torch.Tensor) -> nn.Module:
        model = self._model[0]
        if next(model.parameters()).device != x.device:
            model.to(x.device)
        return model

    def outputs(self, batch: dict[str, torch.Tensor], needs_features: bool) -> Outputs:
        x = batch["x"]
        with torch.no_grad():
            if not needs_features:
                return Outputs(self.model_on(x)(x))
            features, logits = features_and_logits(self.model_on(x), x)
        return Outputs(logits, features)


class CachedOutputs:
    """Offline KD's default (``teacher_outputs=cached``): the teacher's logits (and features, for
    objectives that read them) on the training set, computed once and looked up by example index
    (``batch["idx"]``). A constant table, not module state: kept out of checkpoints."""

    def __init__(self, logits: torch.Tensor, features: torch.Tensor | None = None) -> None:
        self.logits = logits
        self.features = features

    def _rows(self, name: str, idx: torch.Tensor) -> torch.Tensor:
        table = getattr(self, name)
        if table.device != idx.device:
            table = table.to(idx.device, non_blocking=True)
            setattr(self, name, table)
        return table[idx]

    def outputs(self, batch: dict[str, torch.Tensor], needs_features: bool) -> Outputs:
        logits = self._rows("logits", batch["idx"])
        return Outputs(logits, self._rows("features", batch["idx"])) if needs_features else Outputs(logits)


class Schedule:
    """α and its schedule over training, for a student module (T belongs to the objective)."""

    def init_schedule(self, alpha: float, alpha_schedule: str, final_alpha: float) -> None:
        self.alpha = alpha
        self.alpha_schedule = alpha_schedule
        self.final_alpha = final_alpha

    def current_alpha(self) -> float:
        if self.alpha_schedule == "constant":
            return self.alpha
        return alpha_at(self.alpha_schedule, self.alpha, self.global_step / self.total_optimizer_steps(),
                        self.final_alpha)


class DistillModule(Schedule, ClassifierModule):
    """A student trained with ``objective`` against a trained teacher's outputs: a
    :class:`CachedOutputs` table or a :class:`FrozenTeacher` (offline KD, modes self and cross)."""

    def __init__(self, model: nn.Module, objective: Objective, teacher: CachedOutputs | FrozenTeacher,
                 alpha: float = 1.0, alpha_schedule: str = "constant", final_alpha: float = 0.0, **optim) -> None:
        super().__init__(model, **optim)
        self.objective = objective
        if isinstance(teacher, CachedOutputs) and objective.needs_features and teacher.features is None:
            raise ValueError(f"cached teacher outputs for objective {objective.name!r} need the teacher's features")
        self.teacher_outputs = teacher
        # soft targets read only log softmax(z_t / T) of a cached teacher: a table of it, made on first use
        self._teacher_log_p: torch.Tensor | None = None
        self._teacher_log_p_of: tuple = (None, None)  # (the logits table, T) it was made from
        self.init_schedule(alpha, alpha_schedule, final_alpha)

    # -- the teacher's side ------------------------------------------------------------------------
    def teacher_for(self, batch: dict[str, torch.Tensor]) -> Outputs:
        """The teacher's outputs on ``batch``: logits, plus features if the objective reads them."""
        return self.teacher_outputs.outputs(batch, self.objective.needs_features)

    def teacher_log_probs_for(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Cached soft targets: rows of the table ``log softmax(z_t / T)`` over the training set,
        computed once (per logits table, device and T) so that a step does not renormalise the
        teacher's logits."""
        idx, cached = batch["idx"], self.teacher_outputs
        table = self._teacher_log_p
        if (table is None or table.device != idx.device or self._teacher_log_p_of[0] is not cached.logits
                or self._teacher_log_p_of[1] != self.objective.temperature):
            if cached.logits.device != idx.device:
                cached.logits = cached.logits.to(idx.device)
            with torch.no_grad():
                table = self._teacher_log_p = self.objective.teacher_log_probs(cached.logits)
            self._teacher_log_p_of = (cached.logits, self.objective.temperature)
        return table[idx]

    # -- the student's side ------------------------------------------------------------------------
    def compute_loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        # objectives without features: ClassifierModule's plain step plus a table lookup
        if isinstance(self.teacher_outputs, CachedOutputs) and isinstance(self.objective, SoftTargets):
            return self.objective.from_log_probs(logits, self.teacher_log_probs_for(batch), batch.get("y"),
                                                 self.current_alpha())
        return self.objective(Outputs(logits), self.teacher_for(batch), batch.get("y"), self.current_alpha())

    def student_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The student's loss on ``batch`` (frozen teacher), features and logits from one forward."""
        features, logits = features_and_logits(self.model, batch["x"])
        return self.objective(Outputs(logits, features), self.teacher_for(batch), batch.get("y"), self.current_alpha())

    def loss_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if not (self.objective.needs_features or self.objective.reads_heads):
            return super().loss_step(batch, batch_idx)  # plain forward, as without distillation
        if self.objective.reads_heads:  # a second head learns from the teacher (DeiT's distillation token)
            logits, distill_logits = self.model.heads(batch["x"])
            loss = self.objective(Outputs(logits, None, distill_logits), self.teacher_for(batch), batch.get("y"),
                                  self.current_alpha())
        else:
            loss = self.student_loss(batch)
        self.log_train("train/loss", loss, prog_bar=True, batch_size=len(batch["x"]))
        return loss

    def trainable_parameters(self):
        return list(self.model.parameters()) + list(self.objective.parameters())  # e.g. the hint regressor


class OnlineDistillModule(DistillModule):
    """Online KD: ``teacher`` (a model, trained and saved with the student) learns from the labels
    and the student ``objective`` against the teacher's current, detached outputs."""

    def __init__(self, model: nn.Module, objective: Objective, teacher: nn.Module, alpha: float = 1.0,
                 alpha_schedule: str = "constant", final_alpha: float = 0.0, **optim) -> None:
        super().__init__(model, objective, None, alpha, alpha_schedule, final_alpha, **optim)
        self.teacher = teacher  # trained: part of state and optimizer

    def loss_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x = batch["x"]
        if self.objective.needs_features:
            t_features, t_logits = features_and_logits(self.teacher, x)
            s_features, s_logits = features_and_logits(self.model, x)
            student, teacher = Outputs(s_logits, s_features), Outputs(t_logits.detach(), t_features.detach())
        elif self.objective.reads_heads:
            t_logits = self.teacher(x)
            s_logits, s_distill = self.model.heads(x)
            student, teacher = Outputs(s_logits, None, s_distill), Outputs(t_logits.detach())
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
        return super().trainable_parameters() + list(self.teacher.parameters())
