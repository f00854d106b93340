"""OOD sets kept on disk (biaskd.data.ood_cache): a hit is the fresh build bit for bit, every
input of a set is in its key, and a bad file or folder costs a rebuild and a warning, never a run."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from biaskd.data import ood, ood_cache
from biaskd.data.mnist import MnistData
from biaskd.data.ood_cache import OodCache, images_digest, set_key


@pytest.fixture
def digits():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(40, 28, 28), dtype=np.uint8)


@pytest.fixture
def builds(monkeypatch):
    """Count the sets actually computed."""
    calls = []
    real = ood.make_ood
    monkeypatch.setattr(ood, "make_ood", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    return calls


def _same(a, b):
    out_a, params_a = a
    out_b, params_b = b
    assert out_a.dtype == out_b.dtype and np.array_equal(out_a, out_b)
    assert params_a.keys() == params_b.keys()
    for k in params_a:
        assert params_a[k].dtype == params_b[k].dtype and np.array_equal(params_a[k], params_b[k]), k


@pytest.mark.parametrize("name,severity", [("translated", 3), ("rotated", 2), ("scaled", None)])
def test_a_hit_is_the_fresh_build_bit_for_bit(tmp_path, digits, builds, name, severity):
    fresh = ood.make_ood(name, digits, severity, seed=7)
    builds.clear()
    first = OodCache(tmp_path).make(name, digits, severity, 7)
    again = OodCache(tmp_path).make(name, digits, severity, 7)  # a new process's cache object
    assert builds == [name]  # built once, then read
    _same(first, fresh)
    _same(again, fresh)
    assert len(list((tmp_path / "ood").glob("*.npz"))) == 1
    assert not list((tmp_path / "ood").glob(".*.tmp"))


def test_every_input_of_a_set_is_in_its_key(digits, monkeypatch):
    d = images_digest(digits)
    base = set_key(d, "translated", 3, 0)
    other = digits.copy()
    other[0, 0, 0] ^= 1  # one bit of one pixel
    assert images_digest(other) != d
    assert images_digest(digits[:, :, :27].copy()) != images_digest(digits[:, :, :27].reshape(40, 27, 28).copy())
    variants = {set_key(images_digest(other), "translated", 3, 0), set_key(d, "scaled", 3, 0),
                set_key(d, "translated", 4, 0), set_key(d, "translated", None, 0), set_key(d, "translated", 3, 1)}
    assert base not in variants and len(variants) == 5
    monkeypatch.setattr(ood_cache, "_generator_digest", lambda: "an edited generator")
    assert set_key(d, "translated", 3, 0) != base
    monkeypatch.setattr(ood_cache.np, "__version__", "0.0")
    assert set_key(d, "translated", 3, 0) != base


def test_a_corrupt_file_is_rebuilt_and_replaced_with_a_warning(tmp_path, digits, builds, caplog):
    cache = OodCache(tmp_path)
    cache.make("translated", digits, 3)
    (path,) = (tmp_path / "ood").glob("*.npz")
    path.write_bytes(path.read_bytes()[:1000])  # a file cut short
    builds.clear()
    with caplog.at_level(logging.WARNING, logger="biaskd.data.ood_cache"):
        got = OodCache(tmp_path).make("translated", digits, 3)
    assert builds == ["translated"] and str(path) in caplog.text and "building the set again" in caplog.text
    _same(got, ood.make_ood("translated", digits, 3))
    builds.clear()
    _same(OodCache(tmp_path).make("translated", digits, 3), got)  # the replaced file reads again
    assert builds == []


def test_a_file_of_the_wrong_shape_is_not_used(tmp_path, digits, builds, caplog):
    cache = OodCache(tmp_path)
    cache.make("translated", digits, 3)
    (path,) = (tmp_path / "ood").glob("*.npz")
    np.savez(path, images=np.zeros((3, 28, 28), np.uint8), param_severity=np.full(3, 3))
    builds.clear()
    with caplog.at_level(logging.WARNING, logger="biaskd.data.ood_cache"):
        got = OodCache(tmp_path).make("translated", digits, 3)
    assert builds == ["translated"] and "expected uint8 (40, 28, 28)" in caplog.text
    _same(got, ood.make_ood("translated", digits, 3))


def test_an_unwritable_cache_warns_once_and_the_sets_are_still_built(tmp_path, digits, caplog):
    blocked = tmp_path / "cache"
    blocked.write_text("a file where the cache folder should be")
    cache = OodCache(blocked)
    with caplog.at_level(logging.WARNING, logger="biaskd.data.ood_cache"):
        got = [cache.make(name, digits, 2) for name in ("translated", "scaled")]
    assert caplog.text.count("cannot write") == 1 and "cache_dir" in caplog.text
    _same(got[1], ood.make_ood("scaled", digits, 2))
    assert blocked.read_text() == "a file where the cache folder should be"


def test_mnist_ood_splits_are_the_same_with_and_without_the_cache(tmp_path, builds):
    ood_cfg = [{"name": "translated", "severity": 2}, {"name": "rotated", "severity": 1}]
    plain = MnistData(data_dir=None, ood=ood_cfg, n_test_fallback=200)
    plain.setup()
    builds.clear()
    for _ in range(2):  # cold, then warm
        cached = MnistData(data_dir=None, ood=ood_cfg, n_test_fallback=200, cache_dir=tmp_path)
        cached.setup()
        assert cached.evals.keys() == plain.evals.keys()
        for name, split in plain.evals.items():
            other = cached.evals[name]
            assert split.x.dtype == other.x.dtype and bool((split.x == other.x).all()), name
            assert bool((split.y == other.y).all()) and split.meta.keys() == other.meta.keys()
            for k in split.meta:
                assert np.array_equal(np.asarray(split.meta[k]), np.asarray(other.meta[k])), (name, k)
    assert len(builds) == 2  # the two sets, built by the cold setup only
