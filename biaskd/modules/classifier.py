"""Lightning module for training one classifier, alone or as a distilled student.

The module is deliberately thin: a forward, one loss from an objective, Adam/AdamW/SGD, and
Lightning's public API only. Where the teacher's outputs come from is the objective's business
(see :mod:`biaskd.modules.distill`), so independent training and offline KD share this loop and
cost the same per step.
"""
from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from torch import nn

from biaskd.errors import ConfigError
from biaskd.losses import cross_entropy


def _on_device(batch: Any, device: torch.device) -> bool:
    """A flat dict of tensors all on ``device`` (what TensorBatches yields on a CPU run), or a list
    of them (what StepGroups yields)."""
    if type(batch) is list:
        return all(_on_device(b, device) for b in batch)
    return type(batch) is dict and all(isinstance(v, torch.Tensor) and v.device == device for v in batch.values())


class ClassifierModule(L.LightningModule):
    def __init__(
        self,
        model: nn.Module,
        optimizer: str = "adam",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        lr_schedule: str = "constant",
        grad_clip: float | None = None,
    ) -> None:
        super().__init__()
        # The step is ours (see train_on_batch): Lightning's automatic-optimisation closure costs
        # as much as a small model's step on a CPU; we keep its loop, precision and checkpoints.
        self.automatic_optimization = False
        self.grad_clip = grad_clip
        self.model = model
        self.optimizer_name = optimizer
        self.lr = lr
        self.weight_decay = weight_decay
        self.lr_schedule = lr_schedule
        # several optimizer steps per training_step (biaskd.data.base.StepGroups): whether the
        # current inner step logs (None: one step per call), and whether calls are grouped at all
        self._log_now: bool | None = None
        self._grouped = False
        self._total_steps: int | None = None

    # -- hooks subclasses override -------------------------------------------------------------
    def compute_loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return cross_entropy(logits, batch["y"])

    # -- Lightning ---------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def attached_trainer(self) -> L.Trainer | None:
        """The Trainer running this module, or None (a step called directly, e.g. in a test)."""
        try:
            return self.trainer
        except RuntimeError:  # Lightning's answer for a module not attached to a Trainer
            return None

    def log_train(self, name: str, value: torch.Tensor, **kw) -> None:
        """Log a training value only on the steps whose metrics the logger writes.

        ``self.log`` costs ~0.3 ms a call, as much as a small model's whole step on a CPU, and
        Lightning writes step metrics after steps with ``(step + 1) % log_every_n_steps == 0``;
        logging on exactly those steps makes the written value the one of the step it is written
        for. Progress-bar values are requested only when there is a progress bar (Lightning
        converts them to Python numbers after every step, a device sync on a GPU).
        """
        trainer = self.attached_trainer()
        every = trainer.log_every_n_steps if trainer is not None else 1
        write = self._log_now if self._log_now is not None else (self.global_step + 1) % max(1, every) == 0
        if write:
            if kw.get("prog_bar") and trainer is not None and trainer.progress_bar_callback is None:
                kw["prog_bar"] = False
            if trainer is not None and trainer.world_size > 1:
                kw["sync_dist"] = True  # the mean over the processes' parts of the batch
            self.log(name, value, on_step=True, on_epoch=False, **kw)
            if self._log_now:
                self.log_step_axis(self.global_step, on_step=True, on_epoch=False)

    def log_step_axis(self, step: int, **kw) -> None:
        """With several optimizer steps per call, a row's step is the index of the last optimizer
        step taken, as with one step per call (Lightning would write its count of calls): a logged
        ``step`` is the documented way to set it, and Lightning then leaves ``epoch`` to us."""
        if self._grouped:
            self.log("step", float(max(0, step)), **kw)
            self.log("epoch", float(self.current_epoch), **kw)

    def loss_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """The loss of one training batch (subclasses override this, not training_step)."""
        logits = self.model(batch["x"])
        loss = self.compute_loss(logits, batch)
        self.log_train("train/loss", loss, prog_bar=True, batch_size=len(batch["y"]))
        return loss

    def on_train_start(self) -> None:
        loader = self.trainer.train_dataloader
        if hasattr(loader, "to") and self.device.type != "cpu":
            loader.to(self.device)  # in-memory data: cut batches on the device, not copy each one

    def on_train_epoch_start(self) -> None:
        # Reproducible, resumable shuffling: the batch order is a function of (seed, epoch).
        loader = self.trainer.train_dataloader
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(self.current_epoch)

    def training_step(self, batch: dict[str, torch.Tensor] | list[dict[str, torch.Tensor]],
                      batch_idx: int) -> torch.Tensor | None:
        if type(batch) is list:  # train.steps_per_call > 1: one optimizer step per batch of the list
            return self.train_on_group(batch, batch_idx)
        return self.train_on_batch(batch, batch_idx)

    def train_on_group(self, group: list[dict[str, torch.Tensor]], batch_idx: int) -> torch.Tensor | None:
        """One optimizer step on each batch of ``group``, in order: the same updates as one call per
        batch, with the loop's fixed cost per call (hooks, logging, progress bar) paid once.
        Lightning writes step metrics after calls whose count is a multiple of
        ``log_every_n_steps``; the last step of such a call logs. Returns the mean loss (NaN if
        any step's loss was), or None when ``max_steps`` was reached before the first step."""
        trainer = self.trainer
        self._grouped = True
        calls_before = self.current_epoch * trainer.num_training_batches + batch_idx
        write = (calls_before + 1) % max(1, trainer.log_every_n_steps) == 0
        losses = []
        try:
            for i, batch in enumerate(group):
                if 0 < trainer.max_steps <= self.global_step:
                    break
                self._log_now = write and i == len(group) - 1
                losses.append(self.train_on_batch(batch, batch_idx))
        finally:
            self._log_now = None
        return torch.stack(losses).mean() if losses else None

    def total_optimizer_steps(self) -> int:
        """The optimizer steps of the whole fit (Lightning's ``estimated_stepping_batches`` counts
        training_step calls, which are fewer with several steps per call)."""
        if self._total_steps is None:
            calls = self.trainer.estimated_stepping_batches
            loader = self.trainer.train_dataloader
            per_epoch = getattr(loader, "steps_per_epoch", None)
            if per_epoch is not None and len(loader) and math.isfinite(calls):
                calls = round(calls * per_epoch / len(loader))
                if self.trainer.max_steps > 0:
                    calls = min(calls, self.trainer.max_steps)
            self._total_steps = max(1, int(calls))
        return self._total_steps

    def train_on_batch(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """One optimizer step on ``batch``; returns the detached loss."""
        opt = self.optimizers()
        opt.zero_grad(set_to_none=True)
        loss = self.loss_step(batch, batch_idx)
        # a process's share of a short last batch (several processes: biaskd.data.base.TensorBatches)
        scale = batch.get("loss_scale")
        self.manual_backward(loss if scale is None else loss * scale)
        if self.grad_clip:
            self.clip_gradients(opt, gradient_clip_val=self.grad_clip, gradient_clip_algorithm="norm")
        opt.step()
        sched = self.lr_schedulers()
        if sched is not None:
            sched.step()
        return loss.detach()

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        # batches are flat dicts of tensors; already on the device (a CPU run), there is nothing to move
        if _on_device(batch, device):
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        logits = self.model(batch["x"])
        n = len(batch["y"])
        self.log("valid/loss", cross_entropy(logits, batch["y"]), batch_size=n, prog_bar=False)
        self.log("valid/accuracy", (logits.argmax(-1) == batch["y"]).float().mean(), batch_size=n, prog_bar=True)
        self.log_step_axis(self.global_step - 1, batch_size=n)  # after the epoch's last step

    def trainable_parameters(self):
        return self.model.parameters()

    def configure_optimizers(self) -> Any:
        params = [p for p in self.trainable_parameters() if p.requires_grad]
        name = self.optimizer_name.lower()
        if name == "adam":
            opt = torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        elif name == "adamw":
            opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        elif name == "sgd":
            opt = torch.optim.SGD(params, lr=self.lr, momentum=0.9, weight_decay=self.weight_decay)
        else:
            raise ConfigError(f"train.optimizer: unknown optimizer {self.optimizer_name!r} (adam, adamw, sgd)")
        if self.lr_schedule == "constant":
            return opt
        if self.lr_schedule == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.total_optimizer_steps())
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        raise ConfigError(f"train.lr_schedule: unknown schedule {self.lr_schedule!r} (constant, cosine)")
