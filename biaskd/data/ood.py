"""Out-of-distribution image sets in the spirit of MNIST-C (Mu & Gilmer 2019): translated, scaled,
rotated and sheared test images, seeded per (transform, severity). Conventions and the parameter
of each severity: ``docs/ood.md``.
"""
from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from biaskd.errors import ConfigError

SEVERITIES = (1, 2, 3, 4, 5)

Params = dict[str, np.ndarray]


@dataclass(frozen=True)
class OodTransform:
    """One registered transform: its levels by severity and the function applying it."""

    name: str
    levels: tuple[float, ...]
    default_severity: int
    apply: Callable[[np.ndarray, float, np.random.Generator], tuple[np.ndarray, Params]]
    description: str


# -- geometry helpers ---------------------------------------------------------------------------
#: images warped at a time by :func:`_warp` (its buffers, h·w × this many float64, stay in cache)
_WARP_BLOCK = 128


def _shift(images: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Integer shift of a stack by (dy, dx) pixels with zero fill."""
    n, h, w = images.shape
    out = np.zeros_like(images)
    if abs(dy) >= h or abs(dx) >= w:
        return out
    out[:, max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = images[
        :, max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)
    ]
    return out


def _warp(images: np.ndarray, inverse: np.ndarray) -> np.ndarray:
    """Apply one 2×2 map about the image centre to every image of a stack (bilinear, zero fill).

    ``inverse`` maps output (row, col) offsets from the centre to input offsets (inverse
    mapping, as in ``scipy.ndimage.affine_transform`` with ``order=1, mode="grid-constant"``).
    The map is the same for the whole stack, so the four source pixels and weights of each output
    pixel are computed once and every image is warped by four gathers. scipy's function gives the
    same values up to ~1e-12, not to the bit, so using it would change the eval images (and the
    results) of existing runs (``tests/test_ood.py`` compares the two).
    """
    n, h, w = images.shape
    centre = np.array([(h - 1) / 2.0, (w - 1) / 2.0])
    grid = np.stack(np.mgrid[0:h, 0:w], axis=-1).reshape(-1, 2).astype(np.float64)
    src = (grid - centre) @ np.asarray(inverse, dtype=np.float64).T + centre
    base = np.floor(src)
    frac = src - base
    base = base.astype(np.int64)
    corners = []
    for dr in (0, 1):
        for dc in (0, 1):
            rr, cc = base[:, 0] + dr, base[:, 1] + dc
            weight = (frac[:, 0] if dr else 1 - frac[:, 0]) * (frac[:, 1] if dc else 1 - frac[:, 1])
            ok = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w) & (weight > 0)
            # a source outside the image gets weight 0 (and any in-range index): adding 0 * p
            # leaves the sum's bits as skipping it did, in the same order of additions
            corners.append((np.where(ok, rr * w + cc, 0), np.where(ok, weight, 0.0)[:, None]))
    # (h·w, n): each output pixel gathers whole rows; uint8 stays uint8 until the multiply (its
    # float64 value is exact). Blocks of _WARP_BLOCK images keep the buffers in the CPU's cache;
    # every image's sum is the same four products added in the same order, whatever the block
    kind = np.uint8 if images.dtype == np.uint8 else np.float64
    pixels = np.ascontiguousarray(images.reshape(n, h * w).T, dtype=kind)
    out = np.empty(pixels.shape, dtype=np.float64)
    width = min(n, _WARP_BLOCK)
    gathered = np.empty((h * w, width), dtype=kind)
    term = np.empty((h * w, width), dtype=np.float64)
    acc = np.empty((h * w, width), dtype=np.float64)
    for j in range(0, n, width):
        k = min(width, n - j)
        g, t, a = gathered[:, :k], term[:, :k], acc[:, :k]
        a.fill(0.0)
        for index, weight in corners:
            np.take(pixels[:, j:j + k], index, axis=0, out=g)
            np.multiply(g, weight, out=t)
            a += t
        out[:, j:j + k] = a
    return out.T.reshape(n, h, w)


def _warp_by_group(images: np.ndarray, values: np.ndarray, inverse_of: Callable[[float], np.ndarray]) -> np.ndarray:
    """Warp each image with the map for its parameter value; one call per distinct value."""
    out = np.zeros(images.shape, dtype=np.float64)
    for value in np.unique(values):
        mask = values == value
        out[mask] = _warp(images[mask], inverse_of(float(value)))
    return out


def _random_signs(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.choice(np.array([-1, 1]), size=n)


# -- transforms ---------------------------------------------------------------------------------
def _translated(images: np.ndarray, level: float, rng: np.random.Generator) -> tuple[np.ndarray, Params]:
    c = int(level)
    n = len(images)
    shift_x = _random_signs(rng, n) * c
    shift_y = _random_signs(rng, n) * c
    out = np.zeros_like(images)
    for sy in (-c, c):
        for sx in (-c, c):
            mask = (shift_y == sy) & (shift_x == sx)
            if mask.any():
                out[mask] = _shift(images[mask], sy, sx)
    return out, {"shift_x": shift_x.astype(np.int64), "shift_y": shift_y.astype(np.int64)}


def _scaled(images: np.ndarray, level: float, rng: np.random.Generator) -> tuple[np.ndarray, Params]:
    s = float(level)
    out = _warp(images, np.eye(2) / s)
    return out, {"scale": np.full(len(images), s)}


def _rotation_inverse(angle: float) -> np.ndarray:
    # counter-clockwise on screen by ``angle``; in (row-down, col) coordinates the inverse map
    # (output offset -> input offset) is this matrix
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, s], [-s, c]])


def _rotated(images: np.ndarray, level: float, rng: np.random.Generator) -> tuple[np.ndarray, Params]:
    angle = _random_signs(rng, len(images)) * float(level)
    out = _warp_by_group(images, angle, _rotation_inverse)
    return out, {"angle": angle.astype(np.float64)}


def _shear_inverse(k: float) -> np.ndarray:
    # forward: (r, c) -> (r, c - k r); inverse: (r, c) -> (r, c + k r)
    return np.array([[1.0, 0.0], [k, 1.0]])


def _sheared(images: np.ndarray, level: float, rng: np.random.Generator) -> tuple[np.ndarray, Params]:
    shear = _random_signs(rng, len(images)) * float(level)
    out = _warp_by_group(images, shear, _shear_inverse)
    return out, {"shear": shear.astype(np.float64)}


OOD_TRANSFORMS: dict[str, OodTransform] = {
    t.name: t
    for t in (
        OodTransform("translated", (1, 2, 3, 4, 5), 3, _translated, "shift by ±c px in x and y"),
        OodTransform("scaled", (0.9, 0.8, 0.7, 0.6, 0.5), 3, _scaled, "zoom about the centre by s"),
        OodTransform("rotated", (0.2, 0.4, 0.6, 0.8, 1.0), 2, _rotated, "rotate by ±a radians"),
        OodTransform("sheared", (0.2, 0.4, 0.6, 0.8, 1.0), 2, _sheared, "horizontal shear by ±k"),
    )
}


def _transform(name: str) -> OodTransform:
    try:
        return OOD_TRANSFORMS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown OOD transform {name!r}; allowed: {sorted(OOD_TRANSFORMS)}") from None


def _check_severity(name: str, severity) -> int:
    ok = isinstance(severity, (int, np.integer)) and not isinstance(severity, (bool, np.bool_))
    if not ok or int(severity) not in SEVERITIES:
        raise ConfigError(f"OOD {name!r}: severity must be one of {list(SEVERITIES)}, got {severity!r}")
    return int(severity)


def make_ood(name: str, images: np.ndarray, severity: int | None = None, seed: int = 0) -> tuple[np.ndarray, Params]:
    """Apply OOD transform ``name`` at ``severity`` (1..5; ``None`` = its default) to ``images``.

    Returns the transformed images (same shape and dtype) and a dict of per-example arrays: the
    transform's parameters (see the module table) and ``severity``. Raises ``ConfigError`` (a
    ``ValueError``) for an unknown name or a severity outside 1..5.
    """
    transform = _transform(name)
    severity = transform.default_severity if severity is None else _check_severity(name, severity)
    images = np.asarray(images)
    if images.ndim != 3:
        raise ValueError(f"OOD {name!r}: images must have shape (n, H, W), got {images.shape}")
    rng = np.random.default_rng(seed)
    out, params = transform.apply(images, transform.levels[severity - 1], rng)
    if out.dtype != images.dtype:
        if images.dtype == np.uint8:
            # in place (a float array the transform made, not the input): no second 60 MB array
            out = np.clip(np.rint(out, out=out), 0, 255, out=out).astype(np.uint8)
        else:
            out = out.astype(images.dtype)
    params["severity"] = np.full(len(images), severity, dtype=np.int64)
    return out, params


def random_pose(images: np.ndarray, n: int, seed: int, max_shift: int = 4,
                scales: Sequence[float] = (0.6, 0.7, 0.8, 0.9, 1.0)) -> tuple[np.ndarray, Params]:
    """``n`` new images, each a random source image zoomed about the centre by a scale drawn
    uniformly from ``scales`` and then shifted by integers (dy, dx), each uniform in
    ``[-max_shift, max_shift]`` (zero fill). The transfer-set augmentation of image tasks: its
    support covers the ``translated``/``scaled`` OOD poses at moderate severity, so a control
    student trained on the same images tells the teacher's bias apart from the inputs.

    Returns float64 images ``(n, H, W)`` and per-image params ``source`` (index into
    ``images``), ``scale``, ``shift_y``, ``shift_x``.
    """
    images = np.asarray(images, dtype=np.float64)
    if images.ndim != 3 or not len(images):
        raise ValueError(f"random_pose: images must be a non-empty (n, H, W) stack, got {images.shape}")
    if max_shift < 0 or not scales or min(scales) <= 0:
        raise ConfigError(f"random_pose: need max_shift >= 0 and positive scales, got {max_shift}, {list(scales)}")
    rng = np.random.default_rng(seed)
    source = rng.integers(0, len(images), n)
    scale = rng.choice(np.asarray(scales, dtype=np.float64), n)
    shift_y = rng.integers(-max_shift, max_shift + 1, n)
    shift_x = rng.integers(-max_shift, max_shift + 1, n)
    out = _warp_by_group(images[source], scale, lambda s: np.eye(2) / s)
    for sy, sx in {(int(a), int(b)) for a, b in zip(shift_y, shift_x)}:
        mask = (shift_y == sy) & (shift_x == sx)
        out[mask] = _shift(out[mask], sy, sx)
    return out, {"source": source.astype(np.int64), "scale": scale, "shift_y": shift_y.astype(np.int64),
                 "shift_x": shift_x.astype(np.int64)}


def ood_seed(name: str, severity: int) -> int:
    """The fixed seed of OOD set (``name``, ``severity``): the same in every run and independent
    of the training seed, so all models are compared on the very same images."""
    return zlib.crc32(f"biaskd-ood:{name}:{severity}".encode())


@dataclass(frozen=True)
class OodSplit:
    """A named eval split to generate: split name, transform, severity, seed."""

    split: str
    transform: str
    severity: int
    seed: int


DEFAULT_OOD: dict[str, int] = {name: t.default_severity for name, t in OOD_TRANSFORMS.items()}


def expand_ood_config(config=None) -> list[OodSplit]:
    """Turn an OOD config into the list of splits to generate.

    Accepted shapes (Hydra dict/list configs work the same way):

    - ``None``: every transform at its default severity;
    - a mapping ``{transform: severity}`` where severity is ``None`` (default), an int, or a list
      of ints; or ``{transform: {"severity": ...}}``;
    - a list of transform names or of ``{"name": transform, "severity": ...}`` entries.

    A scalar severity gives a split named after the transform (``translated``); a list of
    severities is a sweep and gives ``translated_s1``, ``translated_s2``, ... An empty mapping or
    list means no OOD splits.
    """
    if config is None:
        config = DEFAULT_OOD
    entries: list[tuple[str, object]] = []
    if isinstance(config, Mapping):
        for name, value in config.items():
            if isinstance(value, Mapping):
                value = value.get("severity")
            entries.append((name, value))
    elif isinstance(config, Sequence) and not isinstance(config, (str, bytes)):
        for item in config:
            if isinstance(item, str):
                entries.append((item, None))
            elif isinstance(item, Mapping) and "name" in item:
                entries.append((item["name"], item.get("severity")))
            else:
                raise ConfigError(f"ood entry {item!r}: expected a transform name or {{name, severity}}")
    else:
        raise ConfigError(f"ood config must be a mapping or a list, got {type(config).__name__}")

    splits: list[OodSplit] = []
    for name, severity in entries:
        transform = _transform(name)
        if severity is None:
            severity = transform.default_severity
        if isinstance(severity, Sequence) and not isinstance(severity, (str, bytes)):
            levels = [_check_severity(name, s) for s in severity]
            splits.extend(OodSplit(f"{name}_s{s}", name, s, ood_seed(name, s)) for s in levels)
        else:
            s = _check_severity(name, severity)
            splits.append(OodSplit(name, name, s, ood_seed(name, s)))
    names = [s.split for s in splits]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"ood config names split(s) {duplicates} more than once")
    return splits
