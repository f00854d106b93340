"""Generated OOD sets kept on disk (``cache_dir``, default ``${runs_dir}/.cache``), so that a run
in another process — a sweep's next job, a later session — loads them instead of warping the
10,000 test digits again for each of the 20 sets (about 3 s of a lone run's start on 2 cores).

A set is filed under a key that digests everything it is computed from: the source images
(bytes, shape, dtype), the transform's name, severity and seed, the generator's source
(``biaskd/data/ood.py``) and numpy's version. A hit is the array a fresh build gives, bit for
bit (``tests/test_ood_cache.py``); editing the generator changes every key, so a stale set is
never read. Files are written whole (``biaskd.record.artifacts.atomic_write``), so
parallel jobs building the same set never read half a file. A file that cannot be read, or does
not hold a set of the right shape, is rebuilt and replaced, with a warning naming it; a folder
that cannot be written is used read-only, with one warning. The cache never fails a run.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import zipfile
from pathlib import Path

import numpy as np

from biaskd.data import ood
from biaskd.record.artifacts import atomic_write

log = logging.getLogger(__name__)

#: the on-disk layout; part of every key
FORMAT = 1
PARAM_PREFIX = "param_"


def images_digest(images: np.ndarray) -> str:
    """SHA-256 of an image stack's dtype, shape and bytes."""
    images = np.ascontiguousarray(images)
    h = hashlib.sha256(f"{images.dtype.str}{images.shape}".encode())
    h.update(memoryview(images).cast("B"))
    return h.hexdigest()


@functools.cache
def _generator_digest() -> str:
    return hashlib.sha256(Path(ood.__file__).read_bytes()).hexdigest()


def set_key(source_digest: str, name: str, severity: int | None, seed: int) -> str:
    """The file key of one OOD set (see the module docstring)."""
    parts = (f"format {FORMAT}", f"numpy {np.__version__}", _generator_digest(), source_digest, name,
             repr(severity), str(int(seed)))
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


class OodCache:
    """OOD sets of one source image stack, read from and written to ``folder/ood``."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder) / "ood"
        self._writable = True

    def make(self, name: str, images: np.ndarray, severity: int | None = None, seed: int = 0,
             source_digest: str | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """:func:`biaskd.data.ood.make_ood`'s result, from the cache when it holds it (and put there
        when it did not). ``source_digest``: :func:`images_digest` of ``images``, if known."""
        key = set_key(source_digest or images_digest(images), name, severity, seed)
        path = self.folder / f"{name}-{severity}-{key}.npz"
        hit = self._read(path, np.asarray(images))
        if hit is not None:
            return hit
        out, params = ood.make_ood(name, images, severity, seed)
        self._write(path, out, params)
        return out, params

    def _read(self, path: Path, images: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]] | None:
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as stored:
                out = stored["images"]
                params = {k[len(PARAM_PREFIX):]: stored[k] for k in stored.files if k.startswith(PARAM_PREFIX)}
            if out.shape != images.shape or out.dtype != images.dtype:
                raise ValueError(f"holds images {out.dtype} {out.shape}, expected {images.dtype} {images.shape}")
            wrong = [k for k, v in params.items() if len(v) != len(images)]
            if "severity" not in params or wrong:
                raise ValueError(f"its per-image parameters are incomplete ({', '.join(wrong) or 'no severity'})")
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            log.warning("OOD cache: cannot use %s (%s); building the set again and replacing it", path, exc)
            return None
        return out, params

    def _write(self, path: Path, out: np.ndarray, params: dict[str, np.ndarray]) -> None:
        if not self._writable:
            return
        arrays = {"images": out, **{PARAM_PREFIX + k: np.asarray(v) for k, v in params.items()}}
        try:
            atomic_write(path, lambda f: np.savez(f, **arrays))
        except OSError as exc:
            self._writable = False
            log.warning("OOD cache: cannot write to %s (%s); OOD sets are built in each process "
                        "(set cache_dir to a writable folder, or cache_dir=null)", self.folder, exc)
