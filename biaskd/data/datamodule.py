"""One LightningDataModule shape for every task.

A task subclass implements :meth:`build` (load/generate data, return train/valid and named eval
splits); this base class turns them into index-sliced batches, picks the fixed probe set on
which features are recorded, and exposes a data fingerprint used to invalidate caches.
"""
from __future__ import annotations

import hashlib

import lightning as L
import torch

from biaskd.data.base import PAD_ID, Split, TensorBatches
from biaskd.errors import ConfigError


class TaskData(L.LightningDataModule):
    #: name of the task (``mnist``, ``sva``, ...), recorded in run dirs
    task: str = "task"
    #: ``image`` or ``tokens``; models check that they get what they expect
    input_kind: str = "image"
    #: the batches a run trains on (its training split, batch size and seed), set per run by
    #: :meth:`fit_on`; None: the task's training split in batches of ``batch_size``
    fit_batches: TensorBatches | None = None

    def __init__(
        self,
        batch_size: int = 128,
        eval_batch_size: int = 1024,
        seed: int = 0,
        probe_split: str = "test",
        probe_size: int = 1000,
    ) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.seed = seed
        self.probe_split = probe_split
        self.probe_size = probe_size
        self.train: Split | None = None
        self.valid: Split | None = None
        self.evals: dict[str, Split] = {}
        self.num_classes: int = 0
        self.vocab_size: int = 0  # token tasks only

    # -- to implement -------------------------------------------------------------------
    def build(self) -> tuple[Split, Split, dict[str, Split]]:
        """Return (train, valid, eval splits by name). Called once."""
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.train is None:
            self.train, self.valid, self.evals = self.build()
            if self.probe_split not in self.evals:
                raise ValueError(
                    f"probe_split {self.probe_split!r} is not an eval split of task {self.task!r} "
                    f"(have {sorted(self.evals)})"
                )

    def lengths(self, split: Split) -> torch.Tensor | None:
        if self.input_kind != "tokens":
            return None
        return (split.x != PAD_ID).sum(1)

    def fit_on(self, batches: TensorBatches) -> None:
        """Train on ``batches`` from now on: what ``trainer.fit(..., datamodule=self)`` iterates
        (the run's module re-seeds them every epoch)."""
        self.fit_batches = batches

    def train_dataloader(self) -> TensorBatches:
        if self.fit_batches is not None:
            return self.fit_batches
        self.setup()
        return TensorBatches(
            self.train, self.batch_size, shuffle=True, seed=self.seed, lengths=self.lengths(self.train)
        )

    def val_dataloader(self) -> TensorBatches:
        self.setup()
        return self.eval_batches(self.valid)

    def eval_batches(self, split: Split) -> TensorBatches:
        return TensorBatches(split, self.eval_batch_size, shuffle=False)

    @property
    def probe(self) -> Split:
        """The fixed probe set: the first ``probe_size`` examples of a seeded permutation of
        ``probe_split``. It depends on the data only (not on the run's seed), so every run on
        the same data records features on the same examples."""
        self.setup()
        split = self.evals[self.probe_split]
        g = torch.Generator().manual_seed(12345)
        index = torch.randperm(len(split), generator=g)[: self.probe_size].sort().values
        return split.subset(index, name="probe")

    def transfer_candidates(self, spec, n: int | None) -> Split:
        """Candidate transfer inputs for ``spec`` (a :class:`biaskd.data.transfer.TransferSpec`),
        in draw order, with gold labels; at least ``n`` when ``n`` is given. Image tasks offer
        ``augment``; tasks with other sources override this."""
        self.setup()
        if spec.source == "augment" and self.input_kind == "image":
            from biaskd.data.ood import random_pose

            x = self.train.x
            images, params = random_pose(x.reshape(-1, *x.shape[-2:]).numpy(), n, spec.seed, **spec.options)
            source = torch.as_tensor(params["source"])
            return Split("transfer", torch.as_tensor(images, dtype=x.dtype).reshape(-1, *x.shape[1:]),
                         self.train.y[source], self.train.ids[source], params)
        raise ConfigError(f"config key 'transfer.source': {spec.source!r} is not available for task {self.task!r} "
                          f"(input kind {self.input_kind!r})")

    def fingerprint(self) -> str:
        """Hash of the training data: cached teacher outputs are valid only for this value."""
        self.setup()
        h = hashlib.sha256(f"{self.task}:{self.train.fingerprint()}".encode())
        return h.hexdigest()[:16]
