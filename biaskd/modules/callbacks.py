"""Lightning callbacks, plugins and the CSV logger the training driver attaches to every run (those
a run needs to be correct; the progress bar and other optional callbacks come from the config:
conf/callbacks/)."""
from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from biaskd.data.base import Split
from biaskd.errors import ArtifactError, TrainingError
from biaskd.record import artifacts, schema


@torch.no_grad()
def batched_features(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = [model.features(x[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)]
    model.train(was_training)
    return torch.cat(out)


class TrainingPathRecorder(L.Callback):
    """Saves probe-set features and the model's state dict at the configured global steps.

    Step 0 is the initialisation. Files already present (a resumed run) are kept. With several
    processes, global rank 0 records (their weights are the same).
    """

    def __init__(self, run: artifacts.RunDir, probe: Split, steps: list[int]) -> None:
        self.run = run
        self.probe = probe
        self.steps = sorted({int(s) for s in steps})
        self._step_set = frozenset(self.steps)  # checked before every batch

    def record(self, model: torch.nn.Module, step: int) -> None:
        model = getattr(model, "_orig_mod", model)  # a torch.compile wrapper saves the plain keys
        if (self.run / schema.features_file(step)).exists():
            return
        feats = batched_features(model, self.probe.x)
        self.run.write_weights(step, model.state_dict())
        self.run.write_features(step, feats, self.probe.ids, step)

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        # before every optimizer step, the weights still those of step global_step (also with
        # several steps per training_step, where a hook per batch would miss the inner steps)
        if trainer.global_step in self._step_set and trainer.is_global_zero:
            self.record(pl_module.model, trainer.global_step)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self.record(pl_module.model, trainer.global_step)


class FiniteLossGuard(L.Callback):
    """Stops training with a clear error when the loss becomes NaN or infinite.

    Checked every ``every`` steps so that a GPU step does not wait on the host each time. With
    several processes they decide together (a loss that is not finite in any of them stops all).
    Not Lightning's ``detect_anomaly``: that traces the backward pass for NaN (slow, every step)
    and raises a RuntimeError; this reads the loss only and raises the TrainingError that marks the
    run FAILED. Nor ``EarlyStopping(check_finite=True)``, which looks at a logged metric once per
    validation and ends training as if it had finished.
    """

    def __init__(self, every: int = 1) -> None:
        self.every = max(1, int(every))
        self._checked_up_to = -1  # the last multiple of ``every`` checked (steps per call may skip one)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        due = trainer.global_step - trainer.global_step % self.every
        if due <= self._checked_up_to:
            return
        self._checked_up_to = due
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        value = float(loss.detach())  # ~0.3 µs on a CPU; torch.isfinite + bool costs ~10 µs
        bad = not math.isfinite(value)
        if trainer.world_size > 1:
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad:
            what = value if not math.isfinite(value) else f"not finite in another process (here {value})"
            raise TrainingError(
                f"loss became {what} at step {trainer.global_step} (epoch {trainer.current_epoch}); "
                "lower the learning rate or check the inputs"
            )


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temp file and renamed (a kill never leaves a partial
    ``last.ckpt``) with a SHA-256 sidecar, checked and loaded with ``weights_only=True``; a
    corrupt or altered file raises ArtifactError."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        artifacts.atomic_write(Path(path), lambda f: torch.save(checkpoint, f), digest=True)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        path = Path(path)
        if not path.exists():
            raise ArtifactError(f"{path}: checkpoint is missing")
        artifacts.check_file(path)
        try:
            return torch.load(path, map_location=map_location or "cpu", weights_only=True)
        except Exception as exc:
            raise ArtifactError(
                f"{path}: corrupt or unsafe checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
            ) from None

    def remove_checkpoint(self, path: Any) -> None:
        for p in (Path(path), Path(str(path) + artifacts.DIGEST_SUFFIX)):
            p.unlink(missing_ok=True)


# -- the CSV log ------------------------------------------------------------------------------------
def csv_text(columns: list[str], rows: list[dict], header: bool = True) -> str:
    """``rows`` as CSV under ``columns`` (empty where a row has no value), as Lightning writes them."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


class AtomicLogWriter(ExperimentWriter):
    """Lightning's CSV experiment writer, with every save written whole to a temporary file and
    renamed into place (:func:`biaskd.record.artifacts.atomic_write`). Lightning's own writer appends,
    and rewrites the file in place when a column appears (the final evaluation's): a kill there
    left part of the log. The file is the same, byte for byte."""

    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        self.rows: list[dict] = []  # every row saved so far
        self._text = ""

    @property
    def text(self) -> str:
        """The log as saved so far (CSV, header first)."""
        return self._text

    def save(self) -> None:
        if not self.metrics:
            return
        new, self.metrics = self.metrics, []
        self.rows.extend(new)
        columns = sorted(set(self.metrics_keys).union(*new))
        if columns != self.metrics_keys:  # a new column: the whole log under the new header
            self.metrics_keys = columns
            self._text = csv_text(columns, self.rows)
        else:
            self._text += csv_text(columns, new, header=False)
        data = self._text.encode()
        artifacts.atomic_write(self.metrics_file_path, lambda f: f.write(data))


class RunLogger(CSVLogger):
    """The run's CSV log, ``logs/metrics.csv``, written atomically (:class:`AtomicLogWriter`)."""

    def __init__(self, run: artifacts.RunDir) -> None:
        super().__init__(save_dir=str(run.path), name="logs", version="")
        self._writer: AtomicLogWriter | None = None

    @property
    @rank_zero_experiment
    def experiment(self) -> AtomicLogWriter:
        if self._writer is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._writer = AtomicLogWriter(log_dir=self.log_dir)
        return self._writer

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if self._writer is not None:
            self.save()


class LogInCheckpoint(L.Callback):
    """Puts the run's CSV log, as logged so far, into every checkpoint (``schema.CHECKPOINT_LOG``):
    a resumed run continues the log its checkpoint goes with, whatever became of the file."""

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            if isinstance(logger, RunLogger):
                logger.save()  # rows logged but not yet saved, if any
                checkpoint[schema.CHECKPOINT_LOG] = logger.experiment.text


class EpochProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar, whose epoch line says how many epochs the run has: ``Epoch 3/100``
    (counted from 1) where Lightning writes ``Epoch 2``."""

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        total = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else "?"
        self.train_progress_bar.set_description(f"Epoch {trainer.current_epoch + 1}/{total}")
