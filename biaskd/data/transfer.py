"""Transfer sets: the inputs a student is distilled on beyond the labelled training set (``transfer``
config group: source, size, mixing, labels, seed), drawn so that no eval input leaks into
training. Every option: ``docs/transfer-sets.md``.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from biaskd.data.base import Split, concat_splits, content_hashes
from biaskd.errors import ConfigError
from biaskd.losses import UNLABELLED
from biaskd.modes import mode_of

#: source -> its own options and their defaults (None: taken from the task)
SOURCE_OPTIONS: dict[str, dict[str, Any]] = {
    "train": {},
    "heldout": {},
    "grammar": {"min_depth": None, "max_depth": None, "attractor_prob": None},
    "augment": {"max_shift": 4, "scales": [0.6, 0.7, 0.8, 0.9, 1.0]},
}
COMMON = ("source", "size", "mix_with_train", "labels", "seed")
LABELS = ("auto", "teacher", "gold")
#: a generated source makes this many candidates per requested input (some fail the overlap check)
GENERATE_FACTOR = 1.5


@dataclass(frozen=True)
class TransferSpec:
    source: str = "train"
    size: int | None = None
    mix_with_train: bool = True
    labels: str = "auto"
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def is_train(self) -> bool:
        return self.source == "train" or self.size == 0

    @classmethod
    def from_config(cls, node: Mapping | None) -> "TransferSpec":
        """Validate a ``transfer`` config node; errors name the key."""
        node = dict(node or {})
        source = node.get("source", "train")
        if source not in SOURCE_OPTIONS:
            raise ConfigError(f"config key 'transfer.source' must be one of {', '.join(SOURCE_OPTIONS)}; got {source!r}")
        allowed = SOURCE_OPTIONS[source]
        unknown = sorted(set(node) - set(COMMON) - set(allowed))
        if unknown:
            raise ConfigError(f"config key 'transfer.{unknown[0]}': not an option of transfer source {source!r} "
                              f"(options: {', '.join(list(COMMON) + list(allowed))})")
        size = node.get("size")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
            raise ConfigError(f"config key 'transfer.size' must be a non-negative integer or null, got {size!r}")
        if source in ("grammar", "augment") and size is None:
            raise ConfigError(f"config key 'transfer.size': transfer source {source!r} generates inputs; give a number")
        mix = node.get("mix_with_train", True)
        if not isinstance(mix, bool):
            raise ConfigError(f"config key 'transfer.mix_with_train' must be true or false, got {mix!r}")
        labels = node.get("labels", "auto")
        if labels not in LABELS:
            raise ConfigError(f"config key 'transfer.labels' must be one of {', '.join(LABELS)}; got {labels!r}")
        seed = node.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"config key 'transfer.seed' must be a non-negative integer, got {seed!r}")
        options = {k: node.get(k, default) for k, default in allowed.items()}
        if source != "train" and size == 0 and not mix:
            raise ConfigError("config key 'transfer.size': 0 transfer inputs with mix_with_train=false leaves nothing to train on")
        return cls(source, size, mix, labels, seed, options)

    def gold_labels(self, distilled: bool) -> bool:
        return self.labels == "gold" or (self.labels == "auto" and not distilled)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "size": self.size, "mix_with_train": self.mix_with_train,
                "labels": self.labels, "seed": self.seed, **self.options}


def spec_of(cfg: Mapping) -> TransferSpec:
    node = cfg.get("transfer")
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    return TransferSpec.from_config(node)


def check(cfg: Mapping) -> None:
    """Config-time checks of the ``transfer`` node against the run's distillation mode."""
    spec = spec_of(cfg)
    distilled = mode_of(cfg).distilled
    if not spec.is_train and not distilled and spec.labels == "teacher":
        raise ConfigError("config key 'transfer.labels': a run without a teacher cannot learn from unlabelled "
                          "transfer inputs; use labels=gold (the control) or auto")


def eval_hashes(data) -> set[str]:
    """Content hashes of every input the task evaluates on (eval splits and ``valid``)."""
    out: set[str] = set()
    for split in [data.valid, *data.evals.values()]:
        out.update(content_hashes(split).tolist())
    return out


def build(spec: TransferSpec, data) -> Split | None:
    """The transfer inputs ``spec`` asks for (gold labels in ``y`` where they exist), free of
    any eval input, or ``None`` for ``source=train``. Deterministic in ``spec`` and the data."""
    if spec.is_train:
        return None
    want = spec.size
    n_candidates = None if want is None else int(np.ceil(want * GENERATE_FACTOR)) + 16
    candidates = data.transfer_candidates(spec, n_candidates)
    hashes = content_hashes(candidates)
    keep = ~np.isin(hashes, np.fromiter(eval_hashes(data), dtype=hashes.dtype))
    index = np.flatnonzero(keep)
    if want is not None:
        if len(index) < want:
            raise ConfigError(f"config key 'transfer.size': asked for {want} transfer inputs, but source "
                              f"{spec.source!r} has only {len(index)} that are not eval inputs")
        index = index[:want]
    split = candidates.subset(index, name="transfer")
    split.meta["content_hash"] = hashes[index]
    return split


def fit_split(train: Split, transfer: Split | None, spec: TransferSpec, distilled: bool) -> Split:
    """The split a run trains on: the training set, the transfer inputs, or both. Transfer
    inputs keep their gold label only when :meth:`TransferSpec.gold_labels` says so."""
    if transfer is None:
        return train
    if not spec.gold_labels(distilled):
        transfer = Split("transfer", transfer.x, torch.full_like(transfer.y, UNLABELLED), transfer.ids,
                         dict(transfer.meta))
    if not spec.mix_with_train:
        return Split("fit", transfer.x, transfer.y, transfer.ids, dict(transfer.meta))
    return concat_splits("fit", [train, transfer])


def record(transfer: Split | None, spec: TransferSpec, distilled: bool) -> dict[str, Any]:
    """What meta.json says about the transfer set (``transfer.npz`` holds the inputs' ids)."""
    info: dict[str, Any] = spec.to_dict()
    info["n"] = 0 if transfer is None else len(transfer)
    info["gold_labels"] = transfer is not None and spec.gold_labels(distilled)
    return info


def run_name_part(spec: TransferSpec) -> str | None:
    """``tr-SOURCE-SIZE`` (``-only`` without the training set) for run names; None for train."""
    if spec.is_train:
        return None
    return f"tr-{spec.source}-{'all' if spec.size is None else spec.size}{'' if spec.mix_with_train else '-only'}"
