"""A finished run's model and data rebuilt from its run dir: the one way other code (teachers,
analysis) gets a trained model back."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from biaskd.data.build import build_data
from biaskd.data.datamodule import TaskData
from biaskd.errors import ArtifactError
from biaskd.models import build_model
from biaskd.record.artifacts import RunDir
from biaskd.run.predict import split_logits


@dataclass
class Rebuilt:
    """A run's config and data, its architecture and how its eval outputs are computed."""

    run: RunDir
    cfg: DictConfig
    data: TaskData

    def new_model(self) -> torch.nn.Module:
        """The run's architecture, untrained."""
        return build_model(self.cfg.model, self.data)

    def model(self, step: int | str = "final") -> torch.nn.Module:
        """The run's model with its weights at the end (or at a training-path ``step``), in eval mode."""
        model = self.new_model()
        try:
            model.load_state_dict(self.run.state_dict(step))
        except RuntimeError as exc:
            raise ArtifactError(f"{self.run / 'model.pt'}: does not fit model {self.cfg.model.name!r} ({exc})") from None
        return model.eval()

    def logits(self, model: torch.nn.Module, split: str, batch_size: int = 1024) -> torch.Tensor:
        """``model``'s logits on eval ``split``, as ``outputs/<split>.npz`` holds them."""
        if split not in self.data.evals:
            raise ArtifactError(f"{self.run.path}: task has no eval split {split!r} (have {sorted(self.data.evals)})")
        return split_logits(model, self.data, self.data.evals[split], batch_size)[0]


def rebuild(run: RunDir | str | Path, data: TaskData | None = None) -> Rebuilt:
    """Rebuild a complete run from its ``config.yaml`` (the data must be where it was when the
    run trained); ``data`` skips rebuilding data the caller already has."""
    run = run if isinstance(run, RunDir) else RunDir(run)
    run.require_complete()
    cfg = OmegaConf.load(run / "config.yaml")
    return Rebuilt(run, cfg, data or build_data(cfg))


def load_model(run: RunDir | str | Path, data: TaskData | None = None) -> torch.nn.Module:
    """A complete run's final model (see :func:`rebuild`)."""
    return rebuild(run, data).model()
