"""Pairwise measures: how alike two models are (their outputs, their features), one implementation
for the training driver and for ``analysis``. One model against the labels is :mod:`biaskd.metrics`.

A run logs its agreement with its teacher and the CKA of its probe features with the teacher's
(:mod:`biaskd.run.versus_teacher`); the analysis recomputes the same quantities from run dirs
(:mod:`analysis.agreement`, :mod:`analysis.similarity`). Both call these functions, so a number
on the dashboard and the number in the report are one definition (docs/design.md):

* :func:`top1_agreement` -- how often two models predict the same class;
* :func:`js_divergence` -- mean Jensen–Shannon divergence of their output distributions (nats);
* :func:`linear_cka` -- linear CKA of two feature matrices (Kornblith et al. 2019);
  :func:`linear_cka_gram` -- the same through n x n Gram matrices, the reference it is checked
  and timed against (:mod:`biaskd.bench`).

Pure numpy/scipy, float64 throughout (features arrive as float32; sums over 10^4 examples lose
digits fast).
"""
from __future__ import annotations

import math
import warnings

import numpy as np
from scipy.special import rel_entr

LN2 = math.log(2.0)


# --- prediction agreement ------------------------------------------------------------------------
def as_array(x) -> np.ndarray:
    """numpy view of a numpy array or (CPU/GPU, grad or not) torch tensor."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def check_pair(p: np.ndarray, q: np.ndarray) -> None:
    if p.ndim != 2 or p.shape != q.shape:
        raise ValueError(f"expected two (n, C) arrays of equal shape, got {p.shape} and {q.shape}")
    if p.shape[0] == 0:
        raise ValueError("no examples")


def from_logits(logits, temperature: float = 1.0) -> np.ndarray:
    """Softmax over the last axis in float64, shifted by the row max so it cannot overflow."""
    z = as_array(logits).astype(np.float64) / float(temperature)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def top1_agreement(p, q) -> float:
    """Fraction of examples where ``argmax p == argmax q``.

    Works on probabilities or logits alike (softmax keeps the argmax).
    """
    p, q = as_array(p), as_array(q)
    check_pair(p, q)
    return float(np.mean(np.argmax(p, axis=1) == np.argmax(q, axis=1)))


def js_divergence(p, q, *, per_example: bool = False, atol: float = 1e-4):
    """Jensen-Shannon divergence of two (n, C) probability arrays, natural log.

    ``JS(p, q) = KL(p || m)/2 + KL(q || m)/2`` with ``m = (p + q)/2``; in [0, ln 2]. Zero
    probabilities are handled exactly (``0 log 0 = 0``), so one-hot rows are fine. Returns the
    mean over examples, or the per-example values with ``per_example=True``.

    Rows must be probability vectors (non-negative, summing to 1 within ``atol``); pass logits
    through :func:`from_logits` first -- silently treating logits as probabilities would give a
    meaningless number, so that raises ``ValueError``.
    """
    p = as_array(p).astype(np.float64)
    q = as_array(q).astype(np.float64)
    check_pair(p, q)
    for name, a in (("p", p), ("q", q)):
        if np.any(a < 0) or not np.allclose(a.sum(axis=1), 1.0, atol=atol, rtol=0):
            raise ValueError(
                f"{name} rows are not probability distributions (use from_logits for logits)"
            )
    m = 0.5 * (p + q)
    js = 0.5 * rel_entr(p, m).sum(axis=1) + 0.5 * rel_entr(q, m).sum(axis=1)
    js = np.clip(js, 0.0, LN2)
    return js if per_example else float(js.mean())


# --- linear CKA ----------------------------------------------------------------------------------
def feature_pair(X, Y) -> tuple[np.ndarray, np.ndarray]:
    """Two (n, d) float64 feature matrices of the same n >= 2 examples (ValueError otherwise)."""
    if hasattr(X, "detach"):
        X = X.detach().cpu().numpy()
    if hasattr(Y, "detach"):
        Y = Y.detach().cpu().numpy()
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    if X.ndim != 2 or Y.ndim != 2:
        raise ValueError(f"features must be 2-d (n, d), got {X.shape} and {Y.shape}")
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"X and Y must have the same examples (rows): {X.shape[0]} != {Y.shape[0]}")
    if X.shape[0] < 2:
        raise ValueError("need at least 2 examples")
    return X, Y


def center(X: np.ndarray) -> np.ndarray:
    return X - X.mean(axis=0, keepdims=True)


def ratio_or_nan(num: float, den: float, what: str) -> float:
    """``num / den``; NaN with a warning when ``den`` is 0 (a constant representation)."""
    if not den > 0 or not math.isfinite(den):
        warnings.warn(f"{what}: a representation has zero variance; similarity undefined (NaN)",
                      RuntimeWarning, stacklevel=3)
        return math.nan
    return float(num / den)


def self_norm(Xc: np.ndarray) -> float:
    """||Xc^T Xc||_F = ||Xc Xc^T||_F, through whichever product is smaller."""
    n, d = Xc.shape
    G = Xc @ Xc.T if n < d else Xc.T @ Xc
    return float(np.linalg.norm(G))


def cross_sq(Xc: np.ndarray, Yc: np.ndarray) -> float:
    """||Yc^T Xc||_F^2 = <Xc Xc^T, Yc Yc^T>, through whichever products are smaller."""
    n = Xc.shape[0]
    if n < min(Xc.shape[1], Yc.shape[1]):
        return float(np.vdot(Xc @ Xc.T, Yc @ Yc.T))
    return float(np.linalg.norm(Yc.T @ Xc) ** 2)


def linear_cka(X, Y) -> float:
    """Linear CKA (Kornblith et al. 2019): ``||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)``.

    X, Y are column-centred here. The products are d x d (feature space), so memory and time
    grow with n only linearly; only when n is smaller than both feature dims is the (then
    smaller) n x n Gram form used instead. Invariant to orthogonal transforms and isotropic
    scaling of either side; 1 for identical representations; NaN (with a warning) if one side
    is constant.
    """
    X, Y = feature_pair(X, Y)
    Xc, Yc = center(X), center(Y)
    return ratio_or_nan(cross_sq(Xc, Yc), self_norm(Xc) * self_norm(Yc), "linear_cka")


def hsic_biased(K: np.ndarray, L: np.ndarray) -> float:
    """tr(KHLH) up to the constant 1/(n-1)^2, which cancels in CKA."""
    Kc = K - K.mean(0, keepdims=True) - K.mean(1, keepdims=True) + K.mean()
    return float(np.vdot(Kc, L))


def linear_cka_gram(X, Y) -> float:
    """Reference linear CKA through n x n centred Gram matrices (HSIC form); O(n^2) memory.

    Columns are centred before the Gram products (the same as centring the Gram matrices,
    but without cancelling large numbers when features have a large common offset).
    """
    X, Y = feature_pair(X, Y)
    X, Y = center(X), center(Y)
    K, L = X @ X.T, Y @ Y.T
    return ratio_or_nan(hsic_biased(K, L), math.sqrt(max(hsic_biased(K, K), 0) * max(hsic_biased(L, L), 0)),
                        "linear_cka_gram")
