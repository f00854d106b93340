"""Calibration: expected calibration error and reliability diagrams from per-example outputs.

The ECE is the training code's own (:func:`biaskd.metrics.ece`: torchmetrics, 15 equal-width
bins, L1). The reliability diagram bins confidences exactly as torchmetrics does: bin k holds
``[k/15, (k+1)/15)`` and a confidence of exactly 1.0 (frequent: float32 softmax saturates)
falls in a separate bin ``[1, 1]``; its ``sum(fraction * |gap|)`` is the ECE.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import torch

from analysis.runs import Run
from biaskd.metrics import ece

N_BINS = 15

RELIABILITY_COLUMNS = ["bin", "lower", "upper", "count", "fraction", "confidence", "accuracy", "gap"]


def _confidences(probs, labels, from_logits: bool) -> tuple[torch.Tensor, torch.Tensor]:
    p = torch.as_tensor(probs)
    if not p.is_floating_point():
        p = p.float()
    y = torch.as_tensor(labels).long()
    if p.ndim != 2 or y.ndim != 1 or p.shape[0] != y.shape[0] or p.shape[0] == 0:
        raise ValueError(f"expected probs (n, C) and labels (n,), got {tuple(p.shape)} and {tuple(y.shape)}")
    if from_logits:
        p = p.softmax(dim=1)
    elif (p < 0).any() or (p > 1).any():
        raise ValueError("probs outside [0, 1]; pass from_logits=True for logits")
    conf, pred = p.max(dim=1)
    return conf, (pred == y).to(conf.dtype)


def reliability_data(probs, labels, n_bins: int = N_BINS, *, from_logits: bool = False) -> pd.DataFrame:
    """Per-bin count, mean confidence, accuracy and gap; empty bins are kept (count 0, NaN).

    A last row ``bin == n_bins`` (``[1, 1]``) appears only if some confidence is exactly 1.
    ``sum(fraction * |gap|)`` over the rows is the ECE.
    """
    conf, acc = _confidences(probs, labels, from_logits)
    bounds = torch.linspace(0, 1, n_bins + 1, dtype=conf.dtype)
    idx = torch.bucketize(conf, bounds, right=True) - 1
    size = n_bins + 1
    count = torch.zeros(size, dtype=torch.float64).scatter_add_(0, idx, torch.ones_like(conf, dtype=torch.float64))
    csum = torch.zeros(size, dtype=torch.float64).scatter_add_(0, idx, conf.double())
    asum = torch.zeros(size, dtype=torch.float64).scatter_add_(0, idx, acc.double())
    count, csum, asum = count.numpy(), csum.numpy(), asum.numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence, accuracy = csum / count, asum / count
    b = bounds.double().numpy()
    frame = pd.DataFrame({
        "bin": np.arange(size),
        "lower": np.append(b[:-1], 1.0),
        "upper": np.append(b[1:], 1.0),
        "count": count.astype(int),
        "fraction": count / count.sum(),
        "confidence": confidence,
        "accuracy": accuracy,
        "gap": accuracy - confidence,
    })
    if count[-1] == 0:
        frame = frame.iloc[:-1]
    return frame


def expected_calibration_error(probs, labels, n_bins: int = N_BINS, *, from_logits: bool = False) -> float:
    """ECE = sum over bins of (fraction of examples) x |accuracy - mean confidence| (L1): the
    training code's own (:func:`biaskd.metrics.ece`), on the same checked inputs as
    :func:`reliability_data`."""
    _confidences(probs, labels, from_logits)  # shapes and probability range checked as there
    p = torch.as_tensor(probs)
    return ece(p if p.is_floating_point() else p.float(), torch.as_tensor(labels).long(), n_bins, from_logits)


def reliability_frame(runs: Iterable[Run], splits: Sequence[str] | None = None,
                      n_bins: int = N_BINS) -> pd.DataFrame:
    """Reliability data of every run and split (default: the splits each run has outputs for),
    with run columns (run, task, model, role, distill, seed, split) and ``ece`` repeated per row.
    """
    parts = []
    for run in runs:
        for split in (splits if splits is not None else run.output_splits()):
            out = run.outputs(split)
            r = reliability_data(out.logits, out.labels, n_bins, from_logits=True)
            parts.append(r.assign(run=run.run_id, task=run.task, model=run.model, role=run.role,
                                  distill=run.distill, seed=run.seed, split=split,
                                  ece=expected_calibration_error(out.logits, out.labels, n_bins, from_logits=True)))
    cols = ["run", "task", "model", "role", "distill", "seed", "split", "ece"] + RELIABILITY_COLUMNS
    if not parts:
        return pd.DataFrame(columns=cols)
    return pd.concat(parts, ignore_index=True)[cols]


def plot_reliability(data: pd.DataFrame, ax=None, title: str | None = None, color: str = "tab:blue"):
    """Reliability diagram: accuracy per confidence bin (bars) against the diagonal.

    ``data`` is one :func:`reliability_data` frame (or the rows of one run and split from
    :func:`reliability_frame`). Bar width is the bin width; the gap between a bin's accuracy and
    its mean confidence is hatched (above the bar: over-confident; inside it: under-confident).
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(3.2, 3.2))
    d = data[(data["count"] > 0) & (data["upper"] > data["lower"])]
    width = (d["upper"] - d["lower"]).to_numpy()
    centers = ((d["upper"] + d["lower"]) / 2).to_numpy()
    ax.bar(centers, d["accuracy"], width=width, color=color, edgecolor="white", lw=0.5, label="accuracy in the bin")
    ax.bar(centers, d["confidence"] - d["accuracy"], bottom=d["accuracy"], width=width,
           facecolor="none", edgecolor="#c0392b", hatch="////", lw=0.6, label="gap to its mean confidence")
    ax.plot([0, 1], [0, 1], "--", color="#333333", lw=1, label="perfectly calibrated")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy", xticks=[0, 0.5, 1], yticks=[0, 0.5, 1])
    if "ece" in data.columns and len(data):
        ax.text(0.04, 0.9, f"ECE {data['ece'].iloc[0]:.3f}", transform=ax.transAxes, fontsize=8,
                bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1.5})
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def plot_reliability_grid(frame: pd.DataFrame, row: str = "run", col: str = "split",
                          row_labels: dict | None = None, row_order: list | None = None,
                          colors: dict | None = None):
    """Grid of reliability diagrams, one per (``row``, ``col``) value, e.g. per configuration and
    split; rows named on the left, columns on top, one legend for the whole grid (bars, the
    hatched gap, the diagonal). ``colors`` maps row values to bar colours (the configuration's
    colour elsewhere). Cells without data are left blank; returns the figure."""
    import matplotlib.pyplot as plt

    from analysis.runs import order_splits
    from analysis.style import split_label

    rows = row_order or sorted(frame[row].unique(), key=str)
    cols = order_splits(frame[col].unique()) if col == "split" else sorted(frame[col].unique(), key=str)
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(2.5 * len(cols) + 2.2, 2.3 * len(rows) + 0.8),
                             squeeze=False, sharex=True, sharey=True, layout="constrained")
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            ax = axes[i, j]
            cell = frame[(frame[row] == r) & (frame[col] == c)]
            if cell.empty:
                ax.set_axis_off()
                continue
            plot_reliability(cell, ax=ax, color=(colors or {}).get(r, "tab:blue"))
            ax.set(xlabel="confidence" if i == len(rows) - 1 else "", ylabel="")
            if i == 0:
                ax.set_title(split_label(c) if col == "split" else str(c), fontsize=10)
            if j == 0:
                name = (row_labels or {}).get(r, r)
                ax.set_ylabel(f"{name}\naccuracy", fontsize=8)
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [Patch(facecolor="#8c8c8c", label="accuracy in the bin (the configuration's colour)"),
               Patch(facecolor="none", edgecolor="#c0392b", hatch="////", label="gap to the bin's mean confidence"),
               Line2D([], [], ls="--", color="#333333", label="perfectly calibrated")]
    fig.legend(handles=handles, loc="outside lower center", ncols=3, frameon=False, fontsize=8)
    return fig
