"""Representational similarity between models: CKA (linear, RBF, minibatch) and RSA.

All measures compare two feature matrices X (n x d1) and Y (n x d2) whose rows are the same
probe examples in the same order; d1 and d2 may differ (an MLP vs a CNN). Accumulation is in
float64 throughout: features arrive as float32 and sums over 10^4 examples lose digits fast.

Run ``python -m analysis.similarity`` for the timing of :func:`linear_cka` against the n x n
Gram reference at n=10,000, d=512.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from biaskd.errors import ArtifactError
from biaskd.record.schema import Features
# linear CKA is shared with the training driver, which logs it per run (probe/teacher_cka)
from biaskd.pairwise import center as _center, cross_sq as _cross_sq, feature_pair as _as_pair, linear_cka
from biaskd.pairwise import hsic_biased as _hsic_biased, linear_cka_gram  # the O(n^2) reference, here too
from biaskd.pairwise import ratio_or_nan as _ratio, self_norm as _self_norm

from analysis.runs import Run


# --- unbiased HSIC / minibatch CKA --------------------------------------------------------------
def hsic_unbiased(K: np.ndarray, L: np.ndarray) -> float:
    """Unbiased HSIC estimator (Song et al. 2012), as used by Nguyen et al. 2021; needs n >= 4.

    ``[tr(K~L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3))`` with K~, L~ the
    Gram matrices with their diagonals set to zero.
    """
    n = K.shape[0]
    if n < 4:
        raise ValueError("unbiased HSIC needs at least 4 examples")
    K = K.copy()
    L = L.copy()
    np.fill_diagonal(K, 0.0)
    np.fill_diagonal(L, 0.0)
    k1, l1 = K.sum(0), L.sum(0)  # column sums; K, L symmetric
    trace = np.vdot(K, L)
    return float((trace + k1.sum() * l1.sum() / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * (k1 @ l1))
                 / (n * (n - 3)))


def minibatch_cka(X, Y, batch_size: int = 256, seed: int = 0, epochs: int = 1) -> float:
    """Minibatch linear CKA (Nguyen, Raghu & Kornblith 2021).

    Examples are shuffled with ``seed`` and cut into batches of ``batch_size``; the unbiased
    HSIC of each batch is summed and ``CKA = sum HSIC(K,L) / sqrt(sum HSIC(K,K) sum HSIC(L,L))``.
    Because every term is unbiased, the estimate does not inflate with d/n the way the full
    (biased) estimator does on few examples. A final batch of fewer than 4 examples is dropped.
    """
    X, Y = _as_pair(X, Y)
    n = X.shape[0]
    if batch_size < 4:
        raise ValueError("batch_size must be >= 4 for the unbiased HSIC")
    rng = np.random.default_rng(seed)
    kl = kk = ll = 0.0
    for _ in range(epochs):
        order = rng.permutation(n)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            if len(idx) < 4:
                continue
            xb, yb = X[idx], Y[idx]
            K, L = xb @ xb.T, yb @ yb.T
            kl += hsic_unbiased(K, L)
            kk += hsic_unbiased(K, K)
            ll += hsic_unbiased(L, L)
    if kk <= 0 or ll <= 0:
        return _ratio(kl, 0.0, "minibatch_cka")
    return _ratio(kl, math.sqrt(kk * ll), "minibatch_cka")


# --- RBF CKA ------------------------------------------------------------------------------------
def _rbf_gram(X: np.ndarray, sigma_frac: float) -> np.ndarray:
    sq = (X * X).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * X @ X.T, 0.0)
    iu = np.triu_indices(X.shape[0], k=1)
    median = float(np.median(np.sqrt(d2[iu])))
    if median == 0:
        raise ValueError("rbf_cka: median pairwise distance is 0 (constant features)")
    sigma = sigma_frac * median
    return np.exp(-d2 / (2.0 * sigma * sigma))


def rbf_cka(X, Y, sigma_frac: float = 0.8) -> float:
    """CKA with Gaussian kernels; bandwidth ``sigma = sigma_frac x median pairwise distance``
    (between distinct examples), set per representation (Kornblith et al. 2019 use 0.2-0.8).
    Forms n x n matrices: meant for probe sets of a few thousand examples.
    """
    X, Y = _as_pair(X, Y)
    K, L = _rbf_gram(X, sigma_frac), _rbf_gram(Y, sigma_frac)
    return _ratio(_hsic_biased(K, L), math.sqrt(_hsic_biased(K, K) * _hsic_biased(L, L)), "rbf_cka")


# --- RSA ----------------------------------------------------------------------------------------
def _row_normalise(X: np.ndarray, *, center: bool, what: str) -> np.ndarray:
    Z = X - X.mean(axis=1, keepdims=True) if center else X.copy()
    norms = np.linalg.norm(Z, axis=1, keepdims=True)
    zero = norms[:, 0] == 0
    if zero.any():
        if not center:
            raise ValueError(f"{what}: {int(zero.sum())} example(s) have all-zero features; "
                             "cosine similarity is undefined")
        warnings.warn(f"{what}: {int(zero.sum())} example(s) have constant features; their "
                      "correlation with every other example is taken as 0", RuntimeWarning,
                      stacklevel=3)
        norms[zero] = 1.0
    return Z / norms


def _rdm_ranks(X: np.ndarray) -> np.ndarray:
    """Standardised ranks of the RDM upper triangle, so that a dot product / length = Spearman."""
    Z = _row_normalise(X, center=True, what="rsa")
    iu = np.triu_indices(Z.shape[0], k=1)
    rdm = 1.0 - (Z @ Z.T)[iu]
    r = rankdata(rdm)
    r -= r.mean()
    s = np.linalg.norm(r)
    return r / s if s > 0 else r * math.nan


def rsa(X, Y) -> float:
    """RSA: Spearman correlation of the upper triangles of the two RDMs.

    RDM = 1 - Pearson correlation between examples' feature vectors (n x n, so this is
    O(n^2) in memory; meant for probe sets of a few thousand examples). Ties get average ranks.
    """
    X, Y = _as_pair(X, Y)
    if X.shape[0] < 3:
        raise ValueError("rsa needs at least 3 examples")
    return float(np.dot(_rdm_ranks(X), _rdm_ranks(Y)))


def _cosine_prep(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    Z = _row_normalise(X, center=False, what="rsa_cosine")
    # ||row i of Z Z^T||^2 = z_i^T (Z^T Z) z_i: no n x n matrix needed.
    row_sq = np.einsum("ij,ij->i", Z @ (Z.T @ Z), Z)
    return Z, np.sqrt(row_sq)


def _rsa_cosine_prepped(a, b) -> float:
    (Zx, nx), (Zy, ny) = a, b
    num = np.einsum("ij,ij->i", Zx @ (Zx.T @ Zy), Zy)  # <row i of Sx, row i of Sy>
    return float(np.mean(num / (nx * ny)))


def rsa_cosine(X, Y) -> float:
    """Abnar et al.'s RSA variant: per model the cosine-similarity matrix S of L2-normalised
    features; model similarity = mean over examples i of cos(S_x[i], S_y[i]).

    Computed as ``z_i^T (Z_x^T Z_y) w_i`` without forming the n x n matrices. Raises
    ``ValueError`` for all-zero feature vectors (cosine undefined).
    """
    X, Y = _as_pair(X, Y)
    return _rsa_cosine_prepped(_cosine_prep(X), _cosine_prep(Y))


# --- many representations at once ---------------------------------------------------------------
def pairwise_linear_cka(Xs: Sequence[np.ndarray], chunk_elems: int = 1 << 24) -> np.ndarray:
    """m x m linear CKA among m representations of the same n examples.

    Chooses the cheaper of two exact routes: pair by pair in feature space
    (~ sum_pairs n d_a d_b flops), or, for many representations on a modest probe set,
    as inner products of centred Gram matrices built block-row by block-row
    (~ m n^2 d + m^2 n^2 flops; at most ``chunk_elems`` float64 Gram entries held at once).
    """
    Xcs = [_center(np.asarray(X, dtype=np.float64)) for X in Xs]
    m = len(Xcs)
    if m == 0:
        return np.zeros((0, 0))
    n = Xcs[0].shape[0]
    dims = np.array([X.shape[1] for X in Xcs], dtype=float)
    cost_features = n * (np.outer(dims, dims).sum() / 2 + (dims ** 2).sum())
    cost_gram = n * n * (dims.sum() + m * m / 2)
    if cost_gram < cost_features:
        rows = max(1, chunk_elems // (n * m))
        G = np.zeros((m, m))
        for r0 in range(0, n, rows):
            M = np.stack([(X[r0:r0 + rows] @ X.T).ravel() for X in Xcs])
            G += M @ M.T
        norms = np.sqrt(np.clip(np.diag(G), 0, None))
    else:
        norms = np.array([_self_norm(X) for X in Xcs])
        G = np.zeros((m, m))
        for i in range(m):
            for j in range(i, m):
                G[i, j] = G[j, i] = _cross_sq(Xcs[i], Xcs[j])
    with np.errstate(invalid="ignore", divide="ignore"):
        S = G / np.outer(norms, norms)
    if np.any(norms == 0):
        warnings.warn("linear_cka: a representation has zero variance; its similarities are NaN",
                      RuntimeWarning, stacklevel=2)
        S[norms == 0, :] = np.nan
        S[:, norms == 0] = np.nan
    return S


def _pairwise_rsa(Xs: Sequence[np.ndarray]) -> np.ndarray:
    R = np.stack([_rdm_ranks(np.asarray(X, dtype=np.float64)) for X in Xs])
    return R @ R.T


def _pairwise_generic(Xs: Sequence[np.ndarray], fn: Callable, prep: Callable | None = None) -> np.ndarray:
    m = len(Xs)
    P = [prep(np.asarray(X, dtype=np.float64)) for X in Xs] if prep else Xs
    S = np.eye(m)
    for i in range(m):
        for j in range(i + 1, m):
            S[i, j] = S[j, i] = fn(P[i], P[j])
    if prep is None:
        for i in range(m):  # the diagonal is 1 only where the measure is defined
            S[i, i] = fn(P[i], P[i])
    return S


MEASURES: dict[str, Callable] = {
    "linear_cka": linear_cka,
    "linear_cka_gram": linear_cka_gram,
    "minibatch_cka": minibatch_cka,
    "rbf_cka": rbf_cka,
    "rsa": rsa,
    "rsa_cosine": rsa_cosine,
}


def pairwise_similarity(Xs: Sequence[np.ndarray], measure: str | Callable = "linear_cka") -> np.ndarray:
    """m x m similarity among representations of the same examples (rows already aligned)."""
    if callable(measure):
        return _pairwise_generic(Xs, measure)
    if measure not in MEASURES:
        raise ValueError(f"unknown similarity measure {measure!r}; choose from {sorted(MEASURES)}")
    if len({np.shape(X)[0] for X in Xs}) > 1:
        raise ValueError("representations have different numbers of examples")
    if measure == "linear_cka":
        return pairwise_linear_cka(Xs)
    if measure == "rsa":
        return _pairwise_rsa(Xs)
    if measure == "rsa_cosine":
        return _pairwise_generic(Xs, _rsa_cosine_prepped, prep=_cosine_prep)
    return _pairwise_generic(Xs, MEASURES[measure])


def check_same_probe(a: Features, b: Features) -> None:
    """Raise :class:`ArtifactError` unless both feature sets cover the same probe ids in order."""
    if a.ids.shape != b.ids.shape or not np.array_equal(a.ids, b.ids):
        raise ArtifactError(
            f"runs {a.run} (step {a.step}) and {b.run} (step {b.step}) have different probe sets "
            f"(n={len(a.ids)} vs n={len(b.ids)}, or different/reordered example ids); "
            "their features cannot be compared"
        )


def features_similarity(feats: Sequence[Features], labels: Sequence[str],
                        measure: str | Callable = "linear_cka") -> pd.DataFrame:
    """Similarity frame (labels x labels) of already-loaded feature sets, after checking probes."""
    for f in feats[1:]:
        check_same_probe(feats[0], f)
    S = pairwise_similarity([f.features for f in feats], measure)
    return pd.DataFrame(S, index=list(labels), columns=list(labels))


def similarity_matrix(runs: Iterable[Run], measure: str | Callable = "linear_cka",
                      step: int | str = "final") -> pd.DataFrame:
    """Pairwise similarity of the runs' probe features at ``step``, indexed by run_id.

    Every run must have features for the same probe examples in the same order; otherwise
    :class:`ArtifactError` names the two runs.
    """
    runs = list(runs)
    feats = [r.features(step) for r in runs]
    return features_similarity(feats, [r.run_id for r in runs], measure)


def _benchmark(n: int = 10_000, d: int = 512, repeats: int = 3) -> dict[str, float]:
    import time

    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, d)).astype(np.float32)
    Y = (X @ rng.standard_normal((d, d)) * 0.1 + rng.standard_normal((n, d))).astype(np.float32)
    out = {}
    for name, fn, reps in (("linear_cka", linear_cka, repeats), ("linear_cka_gram", linear_cka_gram, 1)):
        fn(X[:100], Y[:100])
        t0 = time.perf_counter()
        for _ in range(reps):
            value = fn(X, Y)
        out[name] = (time.perf_counter() - t0) / reps
        out[name + "_value"] = value
    return out


if __name__ == "__main__":
    r = _benchmark()
    print(f"n=10000, d=512 (float32 input, float64 accumulation)\n"
          f"  linear_cka       {r['linear_cka']:.3f} s  (CKA={r['linear_cka_value']:.8f})\n"
          f"  linear_cka_gram  {r['linear_cka_gram']:.3f} s  (CKA={r['linear_cka_gram_value']:.8f})")
