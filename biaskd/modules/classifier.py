"""Lightning module for training one classifier, alone or as a distilled student.

The module is deliberately thin: a forward, one loss from an objective, Adam/AdamW/SGD. Where the
teacher's outputs come from is the objective's business (see :mod:`biaskd.modules.distill`), so
independent training and offline KD share this loop and cost the same per step.
"""
from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.strategies import SingleDeviceStrategy
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import nn

from biaskd.losses import cross_entropy
from biaskd.errors import ConfigError


def _on_device(batch: Any, device: torch.device) -> bool:
    """A flat dict of tensors all on ``device`` (what TensorBatches yields on a CPU run)."""
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
        # The step is ours (see training_step): Lightning's automatic-optimisation closure costs
        # as much as a small model's step on a CPU; we keep its loop, precision and checkpoints.
        self.automatic_optimization = False
        self.grad_clip = grad_clip
        self.model = model
        self.optimizer_name = optimizer
        self.lr = lr
        self.weight_decay = weight_decay
        self.lr_schedule = lr_schedule
        self._direct_step = False  # decided per fit in on_train_start
        self._batch_hooks = True  # likewise

    def __setattr__(self, name: str, value: Any) -> None:
        # Lightning sets _current_fx_name (a str or None) around every hook it calls, ~12 times a
        # step; nn.Module.__setattr__ would first look for it among parameters, buffers and
        # submodules (~2 µs a call), where a plain attribute never is
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    # -- hooks subclasses override -------------------------------------------------------------
    def compute_loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return cross_entropy(logits, batch["y"])

    # -- Lightning ---------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def log_train(self, name: str, value: torch.Tensor, **kw) -> None:
        """Log a training value only on the steps whose metrics the logger writes.

        ``self.log`` costs ~0.3 ms a call, as much as a small model's whole step on a CPU, and
        Lightning writes step metrics after steps with ``(step + 1) % log_every_n_steps == 0``;
        logging on exactly those steps makes the written value the one of the step it is written
        for. Progress-bar values are requested only when there is a progress bar (Lightning
        converts them to Python numbers after every step, a device sync on a GPU).
        """
        trainer = self._trainer
        every = trainer.log_every_n_steps if trainer is not None else 1
        if (self.global_step + 1) % max(1, every) == 0:
            if kw.get("prog_bar") and trainer is not None and trainer.progress_bar_callback is None:
                kw["prog_bar"] = False
            self.log(name, value, on_step=True, on_epoch=False, **kw)

    def loss_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """The loss of one training batch (subclasses override this, not training_step)."""
        logits = self.model(batch["x"])
        loss = self.compute_loss(logits, batch)
        self.log_train("train/loss", loss, prog_bar=True, batch_size=len(batch["y"]))
        return loss

    # hooks that manual_backward / LightningOptimizer.step call around backward and the optimizer step
    _STEP_HOOKS = ("on_before_backward", "on_after_backward", "on_before_optimizer_step")

    def _can_step_directly(self) -> bool:
        """Whether ``loss.backward()`` and the torch optimizer's ``step()`` do all that
        ``manual_backward`` and ``LightningOptimizer.step`` would: one device, 32-bit or bf16
        precision (no loss scaling), and no hook around backward or the step in this module or in
        any callback. Lightning's wrappers then only dispatch empty hooks (~50 µs a step)."""
        trainer = self._trainer
        if trainer is None or self._fabric is not None:
            return False
        precision = trainer.precision_plugin
        if not (type(precision) is Precision or (type(precision) is MixedPrecision and precision.scaler is None)):
            return False
        if type(trainer.strategy) is not SingleDeviceStrategy:
            return False
        if any(is_overridden(hook, self, L.LightningModule) for hook in self._STEP_HOOKS):
            return False
        if any(is_overridden(hook, cb, L.Callback) for cb in trainer.callbacks for hook in self._STEP_HOOKS):
            return False
        opt = self.optimizers()
        return not isinstance(opt, list) and all(hasattr(opt, a) for a in ("_on_before_step", "_on_after_step", "optimizer"))

    # hooks Lightning's loop calls between fetching a training batch and training_step
    _BATCH_HOOKS = ("on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer")

    def _has_batch_hooks(self) -> bool:
        """Whether a batch-transfer hook does anything beyond ours: one overridden in a subclass
        or in the datamodule (ClassifierModule's own transfer_batch_to_device only short-cuts)."""
        if any(is_overridden(hook, self, ClassifierModule) for hook in self._BATCH_HOOKS):
            return True
        dm = self._trainer.datamodule if self._trainer is not None else None
        return dm is not None and any(is_overridden(hook, dm, L.LightningDataModule) for hook in self._BATCH_HOOKS)

    def on_train_start(self) -> None:
        self._direct_step = self._can_step_directly()
        self._batch_hooks = self._has_batch_hooks()
        loader = self._train_batches()
        if loader is not None and self.device.type != "cpu":
            loader.to(self.device)  # in-memory data: cut batches on the device, not copy each one

    def _train_batches(self):
        """The run's TensorBatches (the training driver attaches it to the datamodule), or None."""
        dm = self.trainer.datamodule
        return getattr(dm, "_train_batches", None) if dm is not None else None

    def next_batch(self, dataloader_iter) -> tuple[dict[str, torch.Tensor], int]:
        """The next training batch, ready for the step: what Lightning's loop does between
        fetching a batch and calling ``training_step`` (the precision plugin's input conversion,
        the batch-transfer hooks, the move to the device), with the hooks skipped when none is
        overridden and the batch is already on the device."""
        batch, batch_idx, _ = next(dataloader_iter)
        trainer = self.trainer
        batch = trainer.precision_plugin.convert_input(batch)
        if self._batch_hooks or not _on_device(batch, self.device):
            batch = self._on_before_batch_transfer(batch, dataloader_idx=0)
            batch = trainer.strategy.batch_to_device(batch, dataloader_idx=0)
        return batch, batch_idx

    def training_step(self, dataloader_iter) -> torch.Tensor:
        # Taking the iterator (Lightning's documented ``dataloader_iter`` step) skips the loop's
        # per-batch transfer hooks and its inspection of this method's signature: ~40% of what
        # Lightning's loop adds to a step; next_batch does the same work when it is needed.
        batch, batch_idx = self.next_batch(dataloader_iter)
        return self.train_on_batch(batch, batch_idx)

    def train_on_batch(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """One optimizer step on ``batch``; returns the detached loss."""
        opt = self.optimizers()
        if self._direct_step:
            # what manual_backward / opt.step() do here, without dispatching hooks nobody implements;
            # _on_before_step / _on_after_step advance the trainer's step count as opt.step() does
            opt.optimizer.zero_grad(set_to_none=True)
            loss = self.loss_step(batch, batch_idx)
            loss.backward()
            if self.grad_clip:
                self.clip_gradients(opt, gradient_clip_val=self.grad_clip, gradient_clip_algorithm="norm")
            opt._on_before_step()
            opt.optimizer.step()
            opt._on_after_step()
        else:
            opt.zero_grad(set_to_none=True)
            loss = self.loss_step(batch, batch_idx)
            self.manual_backward(loss)
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
        self.log("valid/acc", (logits.argmax(-1) == batch["y"]).float().mean(), batch_size=n, prog_bar=True)

    def on_train_epoch_start(self) -> None:
        # Reproducible, resumable shuffling: the batch order is a function of (seed, epoch).
        loader = self._train_batches()
        if loader is not None:
            loader.set_epoch(self.current_epoch)

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
            total = self.trainer.estimated_stepping_batches
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, int(total)))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        raise ConfigError(f"train.lr_schedule: unknown schedule {self.lr_schedule!r} (constant, cosine)")
