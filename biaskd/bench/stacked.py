"""Several seeds of one cell trained as one vectorised model: the other lever against Lightning's
fixed per-step cost, measured beside grouped steps (``lightning_stacked_vs_plain``).

K copies of a model (one per seed, each with its own initialisation and batch order) have their
parameters stacked (``torch.func.stack_module_state``) and one forward runs them all
(``torch.func.vmap`` over ``functional_call``). The loss is the sum of the copies' batch means, so
each copy's gradient is the one it would get alone, and Adam, elementwise, updates each copy as
its own optimizer would: the stack trains the K models a hand loop would, within float rounding
(``tests/test_bench.py``). One Lightning step then carries K models' steps, so the loop's fixed
cost is paid once per K. The run driver still trains one seed per run (its run dirs,
checkpoints and measures are per run); this module is what the bench times, to tell whether
stacking is worth wiring into sweeps.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from biaskd.data.base import Split, TensorBatches


class StackedBatches:
    """One :class:`TensorBatches` per seed, their batches stacked: ``x`` (K, B, ...), ``y`` (K, B).
    Copy k sees exactly the batches ``TensorBatches(split, batch_size, seed=seeds[k])`` yields."""

    def __init__(self, split: Split, batch_size: int, seeds: Sequence[int]) -> None:
        self.parts = [TensorBatches(split, batch_size, seed=s) for s in seeds]

    def __len__(self) -> int:
        return len(self.parts[0])

    def set_epoch(self, epoch: int) -> None:
        for part in self.parts:
            part.set_epoch(epoch)

    def __iter__(self):
        for batches in zip(*self.parts):
            yield {"x": torch.stack([b["x"] for b in batches]), "y": torch.stack([b["y"] for b in batches])}


class StackedSeeds(L.LightningModule):
    """``models`` (same architecture, different initialisations) trained as one by Adam at ``lr``
    on :class:`StackedBatches`. :meth:`unstacked` gives them back as separate modules."""

    def __init__(self, models: Sequence[nn.Module], lr: float = 1e-3) -> None:
        super().__init__()
        if len(models) < 1:
            raise ValueError("StackedSeeds needs at least one model")
        self.automatic_optimization = False
        self.lr = lr
        params, buffers = stack_module_state(list(models))
        self.param_names = list(params)
        self.stacked = nn.ParameterList([nn.Parameter(params[n].detach().clone()) for n in self.param_names])
        self.buffer_names = list(buffers)
        for i, n in enumerate(self.buffer_names):
            self.register_buffer(f"stacked_buffer_{i}", buffers[n].clone())
        # the architecture, without weights of its own (a tuple: not a registered submodule)
        self._template = (copy.deepcopy(models[0]).to("meta"),)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (K, B, C) of the K copies on their batches ``x`` (K, B, ...)."""
        params = dict(zip(self.param_names, self.stacked))
        buffers = {n: getattr(self, f"stacked_buffer_{i}") for i, n in enumerate(self.buffer_names)}
        template = self._template[0]

        def one(p, b, xs):
            return functional_call(template, (p, b), (xs,))

        return vmap(one, randomness="different")(params, buffers, x)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        opt = self.optimizers()
        opt.zero_grad(set_to_none=True)
        logits = self(batch["x"])
        k, b = batch["y"].shape
        per_example = F.cross_entropy(logits.reshape(k * b, -1).float(), batch["y"].reshape(-1), reduction="none")
        loss = per_example.view(k, b).mean(dim=1).sum()  # each copy's batch mean: its own gradient
        self.manual_backward(loss)
        opt.step()
        return loss.detach()

    def on_train_epoch_start(self) -> None:
        loader = self.trainer.train_dataloader
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(self.current_epoch)

    def configure_optimizers(self):
        return torch.optim.Adam(self.stacked, lr=self.lr)

    def unstacked(self, make: callable) -> list[nn.Module]:
        """The K trained models, each a ``make()`` with copy k's weights."""
        out = []
        for k in range(len(self.stacked[0])):
            model = make()
            state = {n: w[k].detach().clone() for n, w in zip(self.param_names, self.stacked)}
            state |= {n: getattr(self, f"stacked_buffer_{i}")[k].clone() for i, n in enumerate(self.buffer_names)}
            model.load_state_dict(state)
            out.append(model)
        return out
