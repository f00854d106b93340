"""Synthetic run dirs shared by the analysis tests (written once per session)."""

import warnings

import matplotlib
import pytest

matplotlib.use("Agg")

from synthetic import make_sweep  # noqa: E402


@pytest.fixture(scope="session")
def mnist_sweep(tmp_path_factory):
    """Per seed 0..2: CNN teacher, independent MLP, MLP distilled from the CNN (closeness 0.8)."""
    return make_sweep(tmp_path_factory.mktemp("mnist"), task="mnist", seeds=(0, 1, 2),
                      closeness={"cross": 0.8}, n=150, n_probe=50)


@pytest.fixture(scope="session")
def sva_sweep(tmp_path_factory):
    """LSTM teacher, independent and distilled Transformers, two seeds, with attractor metadata."""
    return make_sweep(tmp_path_factory.mktemp("sva"), task="sva", teacher_model="lstm",
                      student_model="transformer", seeds=(0, 1), closeness={"cross": 0.7},
                      n=120, n_probe=40, with_checkpoints=True)


@pytest.fixture
def quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
