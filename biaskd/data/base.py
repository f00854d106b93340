"""What every task's data looks like to the training and evaluation code.

Datasets are in-memory tensors. Batches are dicts ``{"x", "y", "idx"}`` cut by index slicing
(no per-example Python in the hot loop); ``idx`` indexes the training set so that cached
teacher outputs can be looked up by it. Sequence inputs are padded with id 0 (``PAD_ID``) and
models derive their masks from that.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch


def setup_of(data) -> str:
    """The setup a task's data is in: ``lm`` or ``classification`` (task data that declares no
    ``setup_kind``). The one place that asks."""
    return getattr(data, "setup_kind", None) or "classification"


def is_lm(data) -> bool:
    """Whether a task's data is in the LM setup (``task.setup=lm``)."""
    return setup_of(data) == "lm"

PAD_ID = 0


@dataclass
class Split:
    """A named set of examples: inputs, integer labels, stable example ids and metadata.

    ``meta`` maps a name (e.g. ``attractors``, ``distance``, ``severity``) to an array with one
    entry per example; it is written beside the per-example outputs of the split.
    """

    name: str
    x: torch.Tensor
    y: torch.Tensor
    ids: torch.Tensor
    meta: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.y)
        if len(self.x) != n or len(self.ids) != n:
            raise ValueError(
                f"split {self.name!r}: x, y and ids differ in length ({len(self.x)}, {n}, {len(self.ids)})"
            )
        for key, value in self.meta.items():
            if len(value) != n:
                raise ValueError(f"split {self.name!r}: meta {key!r} has {len(value)} entries, expected {n}")

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, index: torch.Tensor | np.ndarray, name: str | None = None) -> "Split":
        index = torch.as_tensor(index, dtype=torch.long)
        np_index = index.numpy()
        return Split(
            name=name or self.name,
            x=self.x[index],
            y=self.y[index],
            ids=self.ids[index],
            meta={k: np.asarray(v)[np_index] for k, v in self.meta.items()},
        )

    def fingerprint(self) -> str:
        """Content hash of inputs and labels: changes whenever the data changes."""
        h = hashlib.sha256()
        for t in (self.x, self.y, self.ids):
            a = t.detach().cpu().contiguous().numpy()
            h.update(str(a.dtype).encode() + str(a.shape).encode())
            h.update(a.tobytes())
        return h.hexdigest()[:16]


class TensorBatches:
    """Shuffled minibatches of an in-memory :class:`Split`, by index slicing.

    An iterable with ``__len__`` that Lightning accepts as a train dataloader. The permutation
    comes from a generator seeded with ``seed + epoch`` so that runs are reproducible and a
    resumed run sees the same batch order. Optional ``buckets`` (an array of lengths) sorts
    each shuffled chunk of ``bucket_factor`` batches by length before slicing, so sequence
    batches hold similar lengths and can be trimmed to their longest member.

    ``shard=(rank, world)`` (a run trained by ``world`` processes): the order and the batches are
    those of ``batch_size * world`` examples that one process would draw, and this process gets
    its part of each (contiguous, sizes differing by at most one), so the processes together
    step on exactly the 1-process batches. A part that is not ``1/world`` of its batch (a short
    last batch) carries ``loss_scale = world * len(part) / len(batch)``: the loss multiplied by it,
    averaged over the processes, is the batch mean. A process left without examples gets one with
    scale 0.
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        lengths: torch.Tensor | None = None,
        bucket_factor: int = 50,
        shard: tuple[int, int] | None = None,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.split = split
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.lengths = lengths
        self.bucket_factor = bucket_factor
        self.shard = shard
        #: the examples of one step over all processes
        self.global_batch = batch_size * (shard[1] if shard else 1)
        self.epoch = 0

    def __len__(self) -> int:
        n = len(self.split)
        return n // self.global_batch if self.drop_last else -(-n // self.global_batch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> torch.Tensor:
        n = len(self.split)
        if not self.shuffle:
            return torch.arange(n)
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(n, generator=g)
        if self.lengths is not None:
            chunk = self.global_batch * self.bucket_factor
            parts = []
            for start in range(0, n, chunk):
                part = order[start : start + chunk]
                parts.append(part[torch.argsort(self.lengths[part], stable=True)])
            order = torch.cat(parts)
            # shuffle the batches themselves so lengths do not rise monotonically within a chunk
            nb = len(self)
            batch_order = torch.randperm(nb, generator=g)
            size = self.global_batch
            return torch.cat([order[b * size : (b + 1) * size] for b in batch_order.tolist()])
        return order

    def to(self, device: torch.device | str) -> "TensorBatches":
        """Hold the split's tensors on ``device`` (a GPU run: batches are then cut there, with no
        host-to-device copy or wait per step). The split object given to the constructor is left
        as it is; the order is still drawn on the CPU, so it does not depend on the device."""
        device = torch.device(device)
        s = self.split
        if s.x.device != device:
            self.split = Split(s.name, s.x.to(device), s.y.to(device), s.ids.to(device), s.meta)
        return self

    def __iter__(self):
        if self.shard is not None:
            yield from self._shard_batches()
            return
        order = self._order()
        x, y = self.split.x, self.split.y
        trim = self.lengths is not None and x.dim() == 2
        on_device = order.to(x.device) if x.device != order.device else order
        for b in range(len(self)):
            rows = slice(b * self.batch_size, (b + 1) * self.batch_size)
            idx = on_device[rows]
            xb = x[idx]
            if trim:  # lengths stay on the CPU: the width is known without waiting on the device
                xb = xb[:, : int(self.lengths[order[rows]].max())]
            yield {"x": xb, "y": y[idx], "idx": idx}
        self.epoch += 1

    def _shard_batches(self):
        """This process's part of every batch (see the class docstring)."""
        rank, world = self.shard
        order = self._order()
        x, y = self.split.x, self.split.y
        trim = self.lengths is not None and x.dim() == 2
        n = len(order)
        for b in range(len(self)):
            start = b * self.global_batch
            size = min(self.global_batch, n - start)
            part = torch.tensor_split(torch.arange(start, start + size), world)[rank]
            scale = world * len(part) / size
            if len(part) == 0:
                part, scale = torch.arange(start, start + 1), 0.0
            rows = order[part]
            idx = rows.to(x.device) if x.device != rows.device else rows
            xb = x[idx]
            if trim:
                xb = xb[:, : int(self.lengths[rows].max())]
            batch = {"x": xb, "y": y[idx], "idx": idx}
            if scale != 1.0:
                batch["loss_scale"] = scale
            yield batch
        self.epoch += 1


def content_hashes(split: Split) -> np.ndarray:
    """One hash per example of its input alone (padding stripped from token rows): equal inputs,
    equal hashes, whatever their label, id or split. Used to prove that no transfer-set input
    is also an evaluation input."""
    x = split.x.detach().cpu().contiguous()
    tokens = x.dim() == 2 and not x.is_floating_point()
    rows = x.numpy()
    out = []
    for row in rows:
        data = row[row != PAD_ID].tobytes() if tokens else row.tobytes()
        out.append(hashlib.blake2b(data, digest_size=12).hexdigest())
    return np.asarray(out, dtype="<U24")


def concat_splits(name: str, parts: list[Split]) -> Split:
    """One split from several of the same task: token inputs are right-padded to the widest
    part; only meta fields that every part has are kept."""
    parts = [p for p in parts if len(p)]
    if not parts:
        raise ValueError(f"split {name!r}: nothing to concatenate")
    xs = [p.x for p in parts]
    if xs[0].dim() == 2 and not xs[0].is_floating_point():
        width = max(x.shape[1] for x in xs)
        xs = [torch.nn.functional.pad(x, (0, width - x.shape[1]), value=PAD_ID) for x in xs]
    keys = set.intersection(*(set(p.meta) for p in parts))
    return Split(
        name=name,
        x=torch.cat(xs),
        y=torch.cat([p.y for p in parts]),
        ids=torch.cat([p.ids for p in parts]),
        meta={k: np.concatenate([np.asarray(p.meta[k]) for p in parts]) for k in sorted(keys)},
    )


def seeded_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a seeded random (1 - fraction, fraction) partition of ``range(n)``."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    k = int(round(n * fraction))
    return np.sort(perm[k:]), np.sort(perm[:k])


class StepGroups:
    """The batches of a :class:`TensorBatches` in lists of ``k`` consecutive ones (the last list
    of an epoch may be shorter): what a training module receives per ``training_step`` when it
    takes one optimizer step per batch of the list (``train.steps_per_call``), so that the
    training loop's fixed cost per call is paid once per ``k`` steps. The batches and their order
    are exactly those of ``batches``; ``steps_per_epoch`` counts batches, ``len`` counts lists."""

    def __init__(self, batches: TensorBatches, k: int) -> None:
        if k < 1:
            raise ValueError(f"steps per call must be >= 1, got {k}")
        self.batches = batches
        self.k = k

    def __len__(self) -> int:
        return -(-len(self.batches) // self.k)

    @property
    def steps_per_epoch(self) -> int:
        return len(self.batches)

    def set_epoch(self, epoch: int) -> None:
        self.batches.set_epoch(epoch)

    def to(self, device: torch.device | str) -> "StepGroups":
        self.batches.to(device)
        return self

    def __iter__(self):
        group: list[dict] = []
        for batch in self.batches:
            group.append(batch)
            if len(group) == self.k:
                yield group
                group = []
        if group:
            yield group
