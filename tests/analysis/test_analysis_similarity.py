import math
import tracemalloc

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import spearmanr

from analysis.similarity import (
    linear_cka,
    linear_cka_gram,
    minibatch_cka,
    pairwise_linear_cka,
    pairwise_similarity,
    rbf_cka,
    rsa,
    rsa_cosine,
)


def _pair(n=200, d1=20, d2=30, noise=1.0, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d1))
    Y = X @ rng.standard_normal((d1, d2)) + noise * rng.standard_normal((n, d2))
    return X, Y


def _orthogonal(d, seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    return q


def test_linear_cka_of_identical_features_is_one():
    X, _ = _pair()
    assert linear_cka(X, X) == pytest.approx(1.0, abs=1e-12)


def test_linear_cka_invariant_to_orthogonal_transform_and_isotropic_scaling():
    X, Y = _pair()
    ref = linear_cka(X, Y)
    assert 0.2 < ref < 0.99
    assert linear_cka(X @ _orthogonal(20, 1), Y) == pytest.approx(ref, abs=1e-10)
    assert linear_cka(X, Y @ _orthogonal(30, 2)) == pytest.approx(ref, abs=1e-10)
    assert linear_cka(7.5 * X, Y) == pytest.approx(ref, abs=1e-10)
    assert linear_cka(X, 0.01 * Y) == pytest.approx(ref, abs=1e-10)
    # ...but not to a non-isotropic scaling of the features
    assert abs(linear_cka(X * np.linspace(0.1, 10, 20), Y) - ref) > 1e-3


@pytest.mark.parametrize("n,d1,d2", [(300, 20, 40), (50, 120, 200), (64, 64, 8)])
def test_linear_cka_equals_gram_reference(n, d1, d2):
    X, Y = _pair(n, d1, d2, seed=n)
    assert linear_cka(X, Y) == pytest.approx(linear_cka_gram(X, Y), abs=1e-6)


def test_linear_cka_accepts_float32_and_torch_and_accumulates_in_float64():
    X, Y = _pair(1000, 64, 64)
    x32, y32 = X.astype(np.float32) + 1000.0, Y.astype(np.float32) - 500.0  # large offsets
    ref = linear_cka_gram(x32.astype(np.float64), y32.astype(np.float64))
    # float32 arithmetic would be off by ~1e-7 here
    assert linear_cka(x32, y32) == pytest.approx(ref, abs=1e-10)
    assert linear_cka(torch.from_numpy(x32), torch.from_numpy(y32)) == pytest.approx(ref, abs=1e-10)


def test_linear_cka_never_forms_an_n_by_n_matrix():
    X, Y = _pair(4000, 64, 48)  # an n x n float64 matrix would be 128 MB
    tracemalloc.start()
    linear_cka(X, Y)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 16e6


def test_linear_cka_rejects_mismatched_examples():
    with pytest.raises(ValueError, match="same examples"):
        linear_cka(np.ones((10, 3)), np.ones((11, 3)))


def test_linear_cka_of_constant_features_is_nan_with_warning():
    X, _ = _pair()
    with pytest.warns(RuntimeWarning, match="zero variance"):
        assert math.isnan(linear_cka(X, np.ones((200, 4))))


@settings(max_examples=25, deadline=None)
@given(n=st.integers(5, 40), d1=st.integers(1, 12), d2=st.integers(1, 12), seed=st.integers(0, 10_000))
def test_linear_cka_is_symmetric_and_in_unit_interval(n, d1, d2, seed):
    rng = np.random.default_rng(seed)
    X, Y = rng.standard_normal((n, d1)), rng.standard_normal((n, d2))
    v = linear_cka(X, Y)
    assert -1e-12 <= v <= 1 + 1e-12
    assert v == pytest.approx(linear_cka(Y, X), abs=1e-12)
    assert v == pytest.approx(linear_cka_gram(X, Y), abs=1e-9)


def test_minibatch_cka_close_to_full_value_when_n_much_larger_than_batch():
    # Tolerance 0.02: the minibatch estimate is unbiased for the population CKA, and the full
    # (biased) estimate differs from that by O(d/n), tiny here (d=16, n=8000).
    X, Y = _pair(8000, 16, 16, noise=2.0, seed=3)
    full = linear_cka(X, Y)
    est = minibatch_cka(X, Y, batch_size=200, seed=0)
    assert abs(est - full) < 0.02
    assert minibatch_cka(X, Y, batch_size=200, seed=0) == est  # deterministic for a seed
    assert minibatch_cka(X, X, batch_size=200, seed=1) == pytest.approx(1.0, abs=1e-12)


def test_minibatch_cka_is_less_biased_than_full_cka_on_independent_features():
    # Independent features: population CKA is 0; the biased full estimate on few examples is
    # inflated by ~d/n, the unbiased minibatch estimate is not.
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((2000, 200)), rng.standard_normal((2000, 200))
    assert linear_cka(X, Y) > 0.05
    assert abs(minibatch_cka(X, Y, batch_size=250)) < 0.03


def test_rbf_cka_identical_is_one_and_independent_is_low():
    X, Y = _pair(150, 10, 10)
    assert rbf_cka(X, X) == pytest.approx(1.0, abs=1e-12)
    rng = np.random.default_rng(5)
    assert rbf_cka(X, rng.standard_normal((150, 10))) < 0.3
    assert rbf_cka(X, Y, sigma_frac=0.4) != pytest.approx(rbf_cka(X, Y, sigma_frac=0.8), abs=1e-6)


def test_rsa_matches_spearman_of_correlation_rdms():
    X, Y = _pair(60, 8, 12)
    iu = np.triu_indices(60, k=1)
    expected = spearmanr((1 - np.corrcoef(X))[iu], (1 - np.corrcoef(Y))[iu])[0]
    assert rsa(X, Y) == pytest.approx(expected, abs=1e-10)
    assert rsa(X, X) == pytest.approx(1.0, abs=1e-12)


def test_rsa_invariant_to_per_example_affine_changes():
    X, Y = _pair(60, 8, 12)
    rng = np.random.default_rng(1)
    X2 = X * rng.uniform(0.5, 3, (60, 1)) + rng.standard_normal((60, 1))
    assert rsa(X2, Y) == pytest.approx(rsa(X, Y), abs=1e-10)


def test_rsa_cosine_matches_explicit_similarity_matrices():
    X, Y = _pair(80, 6, 9)

    def explicit(A, B):
        a = A / np.linalg.norm(A, axis=1, keepdims=True)
        b = B / np.linalg.norm(B, axis=1, keepdims=True)
        Sa, Sb = a @ a.T, b @ b.T
        cos = (Sa * Sb).sum(1) / (np.linalg.norm(Sa, axis=1) * np.linalg.norm(Sb, axis=1))
        return cos.mean()

    assert rsa_cosine(X, Y) == pytest.approx(explicit(X, Y), abs=1e-12)
    assert rsa_cosine(X, X) == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError, match="all-zero"):
        rsa_cosine(np.vstack([X[:-1], np.zeros((1, 6))]), Y)


@pytest.mark.parametrize("chunk", [1 << 24, 1000])
def test_pairwise_linear_cka_both_routes_match_pairwise_calls(chunk):
    rng = np.random.default_rng(0)
    many_small = [rng.standard_normal((30, 40)) @ rng.standard_normal((40, 40)) for _ in range(12)]
    few_large = [rng.standard_normal((300, 10)) for _ in range(3)]
    for Xs in (many_small, few_large):
        S = pairwise_linear_cka(Xs, chunk_elems=chunk)
        expected = np.array([[linear_cka(a, b) for b in Xs] for a in Xs])
        np.testing.assert_allclose(S, expected, atol=1e-10)


@pytest.mark.parametrize("measure", ["rsa", "rsa_cosine", "rbf_cka", "linear_cka_gram"])
def test_pairwise_similarity_matches_measure(measure):
    from analysis.similarity import MEASURES

    rng = np.random.default_rng(2)
    Xs = [rng.standard_normal((40, 5)) for _ in range(3)]
    S = pairwise_similarity(Xs, measure)
    assert S[0, 1] == pytest.approx(MEASURES[measure](Xs[0], Xs[1]), abs=1e-10)
    assert S[2, 1] == S[1, 2]
    np.testing.assert_allclose(np.diag(S), 1.0, atol=1e-10)
