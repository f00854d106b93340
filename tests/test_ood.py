"""OOD transforms: determinism, exact geometry, parameters, config expansion."""
from __future__ import annotations

import numpy as np
import pytest

from biaskd.data.ood import OOD_TRANSFORMS, expand_ood_config, make_ood, ood_seed
from biaskd.errors import ConfigError


def _blob_digits(n: int, seed: int = 0) -> np.ndarray:
    """Smooth uint8 'digits': a few Gaussian strokes placed well inside the frame."""
    rng = np.random.default_rng(seed)
    r, c = np.mgrid[0:28, 0:28]
    out = np.zeros((n, 28, 28))
    for i in range(n):
        for _ in range(3):
            cy, cx = rng.uniform(10, 18, size=2)
            sy, sx = rng.uniform(1.0, 2.5, size=2)
            out[i] += np.exp(-((r - cy) ** 2) / (2 * sy**2) - ((c - cx) ** 2) / (2 * sx**2))
    return np.clip(np.rint(255 * out / out.max(axis=(1, 2), keepdims=True)), 0, 255).astype(np.uint8)


def _centroid(images: np.ndarray) -> np.ndarray:
    """Intensity-weighted mean (row, col) per image."""
    r, c = np.mgrid[0 : images.shape[1], 0 : images.shape[2]]
    w = images.astype(np.float64)
    mass = w.sum(axis=(1, 2))
    return np.stack([(w * r).sum(axis=(1, 2)) / mass, (w * c).sum(axis=(1, 2)) / mass], axis=1)


def _spread(images: np.ndarray) -> np.ndarray:
    """Root mean squared distance of the ink from its centroid."""
    r, c = np.mgrid[0 : images.shape[1], 0 : images.shape[2]]
    w = images.astype(np.float64)
    mass = w.sum(axis=(1, 2))
    cen = _centroid(images)
    d2 = (r[None] - cen[:, 0, None, None]) ** 2 + (c[None] - cen[:, 1, None, None]) ** 2
    return np.sqrt((w * d2).sum(axis=(1, 2)) / mass)


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return _blob_digits(64)


@pytest.mark.parametrize("name", sorted(OOD_TRANSFORMS))
def test_deterministic_for_seed_and_shape_dtype_kept(digits, name):
    a, pa = make_ood(name, digits, severity=4, seed=7)
    b, pb = make_ood(name, digits, severity=4, seed=7)
    assert a.shape == digits.shape and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert pa.keys() == pb.keys()
    for key in pa:
        assert len(pa[key]) == len(digits)
        np.testing.assert_array_equal(pa[key], pb[key])
    np.testing.assert_array_equal(pa["severity"], 4)
    assert not np.array_equal(a, digits)


@pytest.mark.parametrize("name", ["translated", "rotated", "sheared"])
def test_other_seed_gives_other_images(digits, name):
    a, pa = make_ood(name, digits, 3, seed=1)
    b, pb = make_ood(name, digits, 3, seed=2)
    assert not np.array_equal(a, b)
    # both signs are used
    key = {"translated": "shift_x", "rotated": "angle", "sheared": "shear"}[name]
    assert set(np.sign(pa[key])) == {-1, 1}


def test_float_images_keep_float_dtype(digits):
    x = digits.astype(np.float32) / 255
    out, _ = make_ood("rotated", x, 2, 0)
    assert out.dtype == np.float32 and out.shape == x.shape


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_translated_moves_centroid_by_exact_shift(digits, severity):
    out, p = make_ood("translated", digits, severity, seed=3)
    np.testing.assert_array_equal(np.abs(p["shift_x"]), severity)
    np.testing.assert_array_equal(np.abs(p["shift_y"]), severity)
    in_frame = out.astype(np.int64).sum(axis=(1, 2)) == digits.astype(np.int64).sum(axis=(1, 2))
    assert in_frame.sum() >= 10  # enough digits stay fully in frame to test on
    moved = _centroid(out[in_frame]) - _centroid(digits[in_frame])
    np.testing.assert_allclose(moved[:, 0], p["shift_y"][in_frame], atol=1e-9)
    np.testing.assert_allclose(moved[:, 1], p["shift_x"][in_frame], atol=1e-9)


def test_translated_zero_fills_instead_of_wrapping():
    img = np.zeros((1, 28, 28), np.uint8)
    img[0, 27, 27] = 255  # bottom-right corner
    out, p = make_ood("translated", np.repeat(img, 16, 0), 1, seed=0)
    for o, sx, sy in zip(out, p["shift_x"], p["shift_y"]):
        if sx > 0 or sy > 0:
            assert o.sum() == 0  # pushed out of the frame, not wrapped round
        else:
            assert o[26, 26] == 255


def test_scaled_half_halves_spread_about_centre(digits):
    out, p = make_ood("scaled", digits, severity=5, seed=0)
    np.testing.assert_array_equal(p["scale"], 0.5)
    ratio = _spread(out) / _spread(digits)
    assert 0.45 < ratio.mean() < 0.56
    # zoom is about the image centre: centroids move halfway towards (13.5, 13.5)
    expected = 13.5 + 0.5 * (_centroid(digits) - 13.5)
    np.testing.assert_allclose(_centroid(out), expected, atol=0.3)


def test_scaled_default_is_0_7(digits):
    _, p = make_ood("scaled", digits, None, 0)
    np.testing.assert_array_equal(p["scale"], 0.7)
    np.testing.assert_array_equal(p["severity"], 3)


def test_rotation_is_counterclockwise_about_centre(digits):
    out, p = make_ood("rotated", digits, severity=5, seed=0)
    np.testing.assert_array_equal(np.abs(p["angle"]), 1.0)
    rel = _centroid(digits) - 13.5  # (row, col), rows down
    x, y = rel[:, 1], -rel[:, 0]
    a = p["angle"]
    xr, yr = x * np.cos(a) - y * np.sin(a), x * np.sin(a) + y * np.cos(a)
    expected = np.stack([13.5 - yr, 13.5 + xr], axis=1)
    np.testing.assert_allclose(_centroid(out), expected, atol=0.3)
    # rotation keeps the ink's spread
    np.testing.assert_allclose(_spread(out), _spread(digits), rtol=0.1)


def test_shear_moves_points_as_documented(digits):
    out, p = make_ood("sheared", digits, severity=2, seed=0)
    np.testing.assert_array_equal(np.abs(p["shear"]), 0.4)
    cen = _centroid(digits)
    expected = np.stack([cen[:, 0], cen[:, 1] - p["shear"] * (cen[:, 0] - 13.5)], axis=1)
    np.testing.assert_allclose(_centroid(out), expected, atol=0.3)


def test_default_severities():
    assert {n: t.default_severity for n, t in OOD_TRANSFORMS.items()} == {
        "translated": 3,
        "scaled": 3,
        "rotated": 2,
        "sheared": 2,
    }


@pytest.mark.parametrize("severity", [0, 6, 2.5, True, "3"])
def test_bad_severity_names_allowed_values(digits, severity):
    with pytest.raises(ValueError, match=r"\[1, 2, 3, 4, 5\]"):
        make_ood("rotated", digits, severity, 0)


def test_unknown_transform_names_allowed(digits):
    with pytest.raises(ValueError, match="translated"):
        make_ood("blurred", digits, 1, 0)



# -- config expansion -------------------------------------------------------------------------------
def test_default_config_expands_to_four_default_splits():
    splits = expand_ood_config(None)
    assert [(s.split, s.severity) for s in splits] == [
        ("translated", 3),
        ("scaled", 3),
        ("rotated", 2),
        ("sheared", 2),
    ]


def test_severity_sweep_naming_and_fixed_seeds():
    splits = expand_ood_config([{"name": "translated", "severity": [1, 2, 3, 4, 5]}, {"name": "scaled", "severity": 4}])
    assert [s.split for s in splits] == [f"translated_s{i}" for i in range(1, 6)] + ["scaled"]
    assert [s.severity for s in splits] == [1, 2, 3, 4, 5, 4]
    # a sweep member and a single split at the same severity are the very same images
    (single,) = expand_ood_config({"translated": 3})
    assert single.seed == splits[2].seed == ood_seed("translated", 3)
    assert len({s.seed for s in splits}) == len(splits)


def test_mapping_config_forms():
    splits = expand_ood_config({"rotated": None, "sheared": {"severity": [2, 5]}})
    assert [(s.split, s.transform, s.severity) for s in splits] == [
        ("rotated", "rotated", 2),
        ("sheared_s2", "sheared", 2),
        ("sheared_s5", "sheared", 5),
    ]
    assert expand_ood_config({}) == []


@pytest.mark.parametrize(
    "config",
    [{"blurred": 1}, {"translated": 9}, [{"severity": 2}], "translated", [{"name": "scaled"}, "scaled"]],
)
def test_bad_configs_raise_config_error(config):
    with pytest.raises(ConfigError):
        expand_ood_config(config)


def test_warp_is_scipy_affine_transform_up_to_rounding():
    # the bilinear warp computes what scipy.ndimage.affine_transform(order=1, mode="grid-constant")
    # does; it is kept because the two differ in the last bits (~1e-12), which would change
    # the generated eval images of existing runs
    from scipy import ndimage

    from biaskd.data.ood import _rotation_inverse, _shear_inverse, _warp

    images = np.random.default_rng(0).random((6, 28, 28)) * 255
    centre = np.array([13.5, 13.5])
    for inverse in (_rotation_inverse(0.4), _shear_inverse(-0.6), np.eye(2) / 0.7):
        scipy = np.stack([ndimage.affine_transform(im, inverse, offset=centre - inverse @ centre, order=1,
                                                   mode="grid-constant", prefilter=False) for im in images])
        np.testing.assert_allclose(_warp(images, inverse), scipy, rtol=0, atol=1e-9)


def _warp_reference(images: np.ndarray, inverse: np.ndarray) -> np.ndarray:
    """The bilinear warp one output pixel at a time: the in-image sources with positive weight,
    added to 0.0 in the order (r, c), (r, c+1), (r+1, c), (r+1, c+1). The source coordinates
    are computed as the module does (one matrix product: its rounding is the geometry's, which
    the scipy comparison above checks)."""
    n, h, w = images.shape
    centre = np.array([(h - 1) / 2.0, (w - 1) / 2.0])
    grid = np.stack(np.mgrid[0:h, 0:w], axis=-1).reshape(-1, 2).astype(np.float64)
    sources = (grid - centre) @ inverse.T + centre
    out = np.zeros((n, h, w))
    for r in range(h):
        for c in range(w):
            src = sources[r * w + c]
            base = np.floor(src)
            fr, fc = src - base
            for dr, dc in ((0, 0), (0, 1), (1, 0), (1, 1)):
                sr, sc = int(base[0]) + dr, int(base[1]) + dc
                weight = (fr if dr else 1 - fr) * (fc if dc else 1 - fc)
                if 0 <= sr < h and 0 <= sc < w and weight > 0:
                    out[:, r, c] += weight * images[:, sr, sc].astype(np.float64)
    return out


@pytest.mark.parametrize("dtype", [np.uint8, np.float64])
def test_warp_blocks_keep_every_bit_of_the_pixelwise_sum(monkeypatch, dtype):
    # the eval images of existing runs depend on these bits: blocking, gathering uint8 and
    # adding zero-weight terms must not change them
    import biaskd.data.ood as ood

    monkeypatch.setattr(ood, "_WARP_BLOCK", 4)  # 11 images: blocks of 4, 4 and 3
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (11, 28, 28)).astype(dtype)
    if dtype == np.float64:
        images = images + rng.random(images.shape)
    for inverse in (ood._rotation_inverse(0.6), ood._shear_inverse(1.0), np.eye(2) / 0.5):
        np.testing.assert_array_equal(ood._warp(images, inverse), _warp_reference(images, inverse))
