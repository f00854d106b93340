"""Evaluation metrics: one model's outputs against the labels, as docs/design.md defines them. How
alike two models are (agreement, JS, CKA) is :mod:`biaskd.pairwise`.

Accuracy and ECE come from torchmetrics (ECE: 15 equal-width confidence bins, L1). The
agreement-specific aggregates are written here because no library has them:

* μ-accuracy: accuracy over all examples;
* A-accuracy: mean over attractor-count bins of per-bin accuracy, using only homogeneous
  interventions (every intervening noun is an attractor);
* D-accuracy: mean over subject–verb distance bins of per-bin accuracy; empty bins are
  reported, not counted as 0.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_calibration_error

ECE_BINS = 15


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float(multiclass_accuracy(logits, labels, num_classes=logits.shape[-1], average="micro"))


def ece(scores: torch.Tensor, labels: torch.Tensor, n_bins: int = ECE_BINS, from_logits: bool = True) -> float:
    """Expected calibration error of logits (or, ``from_logits=False``, probabilities)."""
    probs = torch.softmax(scores.float(), dim=-1) if from_logits else scores
    return float(
        multiclass_calibration_error(probs, labels, num_classes=scores.shape[-1], n_bins=n_bins, norm="l1")
    )


def teacher_signal(logits, labels, temperature: float = 1.0) -> dict:
    """What soft targets at temperature T carry beyond the labels, over inputs with gold labels:

    * ``p_gold``: mean teacher probability of the gold class at T;
    * ``entropy``: mean entropy (nats) of the teacher's distribution at T;
    * ``top_not_gold``: share of inputs whose teacher top class is not the gold label (the
      teacher's "errors", which KD passes on; independent of T).

    Soft targets with ``p_gold`` near 1 are nearly the gold labels: distillation on such inputs
    can pass on little that the labels do not. Computed in float64.
    """
    z = np.asarray(logits.detach().cpu() if isinstance(logits, torch.Tensor) else logits, dtype=np.float64)
    y = np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels).astype(np.int64).ravel()
    if z.ndim != 2 or z.shape[0] != y.shape[0] or z.shape[0] == 0:
        raise ValueError(f"expected (n, C) logits and (n,) labels, got {z.shape} and {y.shape}")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    zt = z / float(temperature)
    logp = zt - zt.max(axis=1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(axis=1, keepdims=True))
    p = np.exp(logp)
    entropy = -np.sum(np.where(p > 0, p * logp, 0.0), axis=1)
    return {"n": int(len(y)), "temperature": float(temperature),
            "p_gold": float(p[np.arange(len(y)), y].mean()),
            "entropy": float(entropy.mean()),
            "top_not_gold": float(np.mean(np.argmax(z, axis=1) != y))}


def nll(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float(torch.nn.functional.cross_entropy(logits.float(), labels))


@dataclass
class BinnedAccuracy:
    """Mean of per-bin accuracies, with the per-bin values and the bins that had no example."""

    value: float
    per_bin: dict[int, float] = field(default_factory=dict)
    counts: dict[int, int] = field(default_factory=dict)
    empty_bins: list[int] = field(default_factory=list)


def binned_accuracy(correct: np.ndarray, bins: np.ndarray, bin_values: range | list[int]) -> BinnedAccuracy:
    correct = np.asarray(correct, dtype=bool)
    bins = np.asarray(bins)
    if correct.shape != bins.shape:
        raise ValueError(f"correct {correct.shape} and bins {bins.shape} differ in shape")
    per_bin, counts, empty = {}, {}, []
    for b in bin_values:
        sel = bins == b
        counts[int(b)] = int(sel.sum())
        if sel.any():
            per_bin[int(b)] = float(correct[sel].mean())
        else:
            empty.append(int(b))
    value = float(np.mean(list(per_bin.values()))) if per_bin else float("nan")
    return BinnedAccuracy(value, per_bin, counts, empty)


def a_accuracy(
    correct: np.ndarray, attractors: np.ndarray, homogeneous: np.ndarray | None = None, max_attractors: int = 4
) -> BinnedAccuracy:
    """Mean over attractor counts 0..max of per-count accuracy, homogeneous examples only.

    Examples with unknown attractor count (< 0) are ignored.
    """
    attractors = np.asarray(attractors)
    keep = attractors >= 0
    if homogeneous is not None:
        keep &= np.asarray(homogeneous).astype(bool)
    return binned_accuracy(np.asarray(correct)[keep], attractors[keep], range(0, max_attractors + 1))


def d_accuracy(correct: np.ndarray, distance: np.ndarray, max_distance: int = 16) -> BinnedAccuracy:
    """Mean over subject–verb distances 1..max of per-distance accuracy (unknown < 0 ignored)."""
    distance = np.asarray(distance)
    keep = distance >= 1
    return binned_accuracy(np.asarray(correct)[keep], distance[keep], range(1, max_distance + 1))


def split_metrics(logits: torch.Tensor, labels: torch.Tensor, meta: dict[str, np.ndarray] | None = None) -> dict:
    """All metrics of one eval split, as written to ``metrics.json``."""
    out = {
        "n": int(len(labels)),
        "accuracy": accuracy(logits, labels),
        "ece": ece(logits, labels),
        "loss": nll(logits, labels),
    }
    meta = meta or {}
    correct = (logits.argmax(-1) == labels).numpy()
    if "attractors" in meta and (np.asarray(meta["attractors"]) >= 0).any():
        a = a_accuracy(correct, meta["attractors"], meta.get("homogeneous"))
        out["a_accuracy"] = a.value
        out["accuracy_by_attractors"] = {str(k): v for k, v in a.per_bin.items()}
        out["a_accuracy_empty_bins"] = a.empty_bins
    if "distance" in meta and (np.asarray(meta["distance"]) >= 1).any():
        d = d_accuracy(correct, meta["distance"])
        out["d_accuracy"] = d.value
        out["accuracy_by_distance"] = {str(k): v for k, v in d.per_bin.items()}
        out["d_accuracy_empty_bins"] = d.empty_bins
    return out
