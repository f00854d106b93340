"""Loss basins: evaluate models along the straight line between two solutions.

``theta(lambda) = (1 - lambda) theta_A + lambda theta_B``. If two solutions sit in one basin the
loss stays low along the line; a bump (the *barrier*) means the line leaves the basin. Used to
ask whether a distilled student ends up in its teacher's basin (same architecture, e.g.
self-distillation) or in the one its independent twin finds.

The functions take a ``model_factory()`` returning a fresh model and an
``eval_fn(model) -> (loss, accuracy)``, so any model and any eval data fit; state dicts come
from :meth:`analysis.runs.Run.state_dict`. :func:`run_linear_path` wires both to two run dirs
through :func:`biaskd.run.rebuild.rebuild` (the model and the eval data from the run's config).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterable, Mapping

import numpy as np
import pandas as pd
import torch

from biaskd.errors import ArtifactError

if TYPE_CHECKING:
    from analysis.runs import Run

DEFAULT_LAMBDAS = tuple(np.linspace(0.0, 1.0, 11))


def interpolate_state_dicts(sd_a: Mapping[str, torch.Tensor], sd_b: Mapping[str, torch.Tensor],
                            lam: float) -> dict[str, torch.Tensor]:
    """``(1 - lam) A + lam B`` for floating-point tensors; other entries (integer buffers such
    as BatchNorm's ``num_batches_tracked``, boolean masks) are taken from A unchanged.

    Keys and shapes must match (``ValueError`` otherwise): a silent partial interpolation
    would give a model that is neither A nor B.
    """
    if set(sd_a) != set(sd_b):
        only_a, only_b = sorted(set(sd_a) - set(sd_b)), sorted(set(sd_b) - set(sd_a))
        raise ValueError(f"state dicts have different keys: only in A {only_a}, only in B {only_b}")
    out = {}
    for k, a in sd_a.items():
        b = sd_b[k]
        if a.shape != b.shape:
            raise ValueError(f"state dict entry {k!r}: shape {tuple(a.shape)} vs {tuple(b.shape)}")
        if a.is_floating_point() or a.is_complex():
            out[k] = torch.lerp(a, b.to(a.dtype), float(lam)) if a.is_floating_point() else (1 - lam) * a + lam * b
        else:
            out[k] = a.clone()
    return out


def linear_path(model_factory: Callable[[], torch.nn.Module], sd_a: Mapping, sd_b: Mapping,
                eval_fn: Callable[[torch.nn.Module], tuple[float, float]],
                lambdas: Iterable[float] = DEFAULT_LAMBDAS,
                prepare_fn: Callable[[torch.nn.Module], None] | None = None) -> pd.DataFrame:
    """Loss and accuracy at each ``lambda`` along the line from A (0) to B (1).

    Each point loads the interpolated state dict strictly into ``model_factory()``, switches to
    eval mode and calls ``eval_fn`` under ``torch.no_grad()``. ``prepare_fn(model)`` runs before
    evaluation -- the place to re-estimate BatchNorm statistics, since interpolated running
    statistics are not those of the interpolated weights.
    """
    rows = []
    for lam in lambdas:
        model = model_factory()
        model.load_state_dict(interpolate_state_dicts(sd_a, sd_b, lam), strict=True)
        if prepare_fn is not None:
            prepare_fn(model)
        model.eval()
        with torch.no_grad():
            loss, acc = eval_fn(model)
        rows.append({"lambda": float(lam), "loss": float(loss), "accuracy": float(acc)})
    return pd.DataFrame(rows, columns=["lambda", "loss", "accuracy"])


def barrier(lambdas, losses) -> float:
    """``max over lambda of loss(lambda) - [(1 - lambda) loss(0) + lambda loss(1)]``.

    ``lambdas`` must include 0 and 1. The endpoints contribute 0, so the barrier is >= 0;
    0 means the path never rises above the straight line between the end losses.
    """
    lam = np.asarray(lambdas, dtype=float)
    loss = np.asarray(losses, dtype=float)
    if lam.shape != loss.shape or lam.ndim != 1:
        raise ValueError("lambdas and losses must be 1-d and of equal length")
    i0, i1 = np.flatnonzero(np.isclose(lam, 0.0)), np.flatnonzero(np.isclose(lam, 1.0))
    if not len(i0) or not len(i1):
        raise ValueError("lambdas must include 0 and 1")
    l0, l1 = loss[i0[0]], loss[i1[0]]
    return float(np.max(loss - ((1 - lam) * l0 + lam * l1)))


def run_linear_path(run_a: "Run", run_b: "Run", split: str = "test",
                    lambdas: Iterable[float] = DEFAULT_LAMBDAS, step_a: int | None = None,
                    step_b: int | None = None, batch_size: int = 1024) -> pd.DataFrame:
    """:func:`linear_path` between two runs of one task and architecture, on eval ``split``.

    The model and the eval data are rebuilt from run A's ``config.yaml`` with biaskd (so the
    data must be where it was at training time); the rebuilt split's example ids must equal
    those in A's ``outputs/<split>.npz``. ``step_a``/``step_b`` pick checkpoints
    (default: the final ``model.pt``). Loss is the mean cross-entropy of the task's logits
    (for the LM setup: of the 2-way verb-number logits).
    """
    import torch.nn.functional as F

    from biaskd.run.rebuild import rebuild  # the training stack, loaded only when a path is asked for

    if (run_a.task, run_a.model) != (run_b.task, run_b.model):
        raise ArtifactError(f"runs {run_a.run_id} ({run_a.task}/{run_a.model}) and {run_b.run_id} "
                            f"({run_b.task}/{run_b.model}): weights interpolate only within one "
                            "task and architecture")
    rebuilt = rebuild(run_a.path)
    if split not in rebuilt.data.evals:
        raise ArtifactError(f"run {run_a.run_id}: task has no eval split {split!r} (have {sorted(rebuilt.data.evals)})")
    ev = rebuilt.data.evals[split]
    if split in run_a.output_splits() and not np.array_equal(run_a.outputs(split).ids, ev.ids.numpy()):
        raise ArtifactError(f"run {run_a.run_id}: rebuilt split {split!r} has other example ids than "
                            "the run's outputs; the data changed since training")
    y = torch.as_tensor(ev.y).long()

    def eval_fn(model):
        logits = torch.as_tensor(rebuilt.logits(model, split, batch_size)).float()
        return float(F.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())

    path = linear_path(rebuilt.new_model, run_a.state_dict(step_a), run_b.state_dict(step_b), eval_fn, lambdas)
    return path.assign(run_a=run_a.run_id, run_b=run_b.run_id, split=split)


#: the interpolation axis of every basin figure
LAMBDA_LABEL = "interpolation λ (0 = run A, 1 = run B)"


def plot_linear_paths(paths: pd.DataFrame, hue: str | None = None, ax=None, metric: str = "loss",
                      colours: dict | None = None):
    """Loss (or accuracy) against λ; ``paths`` may hold several paths told apart by ``hue``
    (``colours``: hue value -> colour; otherwise one colour-blind palette in order)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    from analysis.style import metric_label

    if ax is None:
        _, ax = plt.subplots(figsize=(4, 3), layout="constrained")
    groups = list(paths.groupby(hue, sort=True)) if hue else [(None, paths)]
    palette = sns.color_palette("colorblind", max(1, len(groups)))
    for i, (name, g) in enumerate(groups):
        g = g.sort_values("lambda")
        ax.plot(g["lambda"], g[metric], marker="o", ms=3, lw=1.5, label=None if name is None else str(name),
                color=(colours or {}).get(name, palette[i % len(palette)]))
    ax.set_xlabel(LAMBDA_LABEL)
    ax.set_ylabel(metric_label(metric))
    ax.grid(alpha=0.3)
    return ax
