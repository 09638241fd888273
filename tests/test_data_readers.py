"""Tests for the SVHN / CIFAR readers, the restricted unpickler, the .npz layouts and the tensorflow-datasets fallback.

Every reader is exercised on small files written here in the real formats; the md5 tables are pointed at these
files' digests (or left as published, to show a mismatch is caught).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from fedbat_jax.data import DATASETS, Dataset, load_dataset
from fedbat_jax.data import cifar as cifar_mod
from fedbat_jax.data import datasets as ds_mod
from fedbat_jax.data import svhn as svhn_mod
from fedbat_jax.data import tfds as tfds_mod
from fedbat_jax.data.cifar import load_cifar_pickle, read_cifar_batch
from fedbat_jax.errors import DataError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REAL_TFDS_AVAILABLE = tfds_mod.tfds_available
PSEUDO = "pseudo split (not the official CIFAR-100 test set"


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert isinstance(err.value, DataError)
    assert "\n" not in msg and msg.strip()
    return msg


@pytest.fixture(autouse=True)
def _isolated(monkeypatch):
    """No $FEDBAT_DATA_DIR and no tensorflow-datasets unless a test installs a fake one."""
    monkeypatch.delenv(ds_mod.DATA_DIR_ENV, raising=False)
    monkeypatch.setattr(tfds_mod, "tfds_available", lambda: False)


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _images(n: int, seed: int = 0) -> np.ndarray:
    """Known images: every pixel distinct per position and channel, plus per-image noise."""
    r, c, ch = np.meshgrid(np.arange(32), np.arange(32), np.arange(3), indexing="ij")
    base = (r * 7 + c * 3 + ch * 85) % 256
    noise = np.random.default_rng(seed).integers(0, 256, size=(n, 1, 1, 1))
    return ((base[None] + noise) % 256).astype(np.uint8)


# --------------------------------------------------------------------------- registry / Dataset


def test_registry_and_dataset_defaults():
    assert {"svhn", "cifar10", "cifar100"} <= set(DATASETS)
    d = Dataset("x", np.zeros((1, 2, 2, 1), np.uint8), np.zeros(1, np.int32), np.zeros((1, 2, 2, 1), np.uint8),
                np.zeros(1, np.int32), 10, (0.0,), (1.0,))
    assert d.augment == "" and d.note == "" and d.input_shape == (2, 2, 1)


# --------------------------------------------------------------------------- SVHN (.mat)


def _write_svhn(folder: Path, x: np.ndarray, y, name: str, **extra) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    scipy.io.savemat(path, {"X": np.transpose(x, (1, 2, 3, 0)), "y": np.asarray(y).reshape(-1, 1), **extra})
    return path


def _svhn_folder(folder: Path, monkeypatch, y_dtype=np.uint8) -> tuple[np.ndarray, np.ndarray]:
    x_tr, x_te = _images(5, 1), _images(3, 2)
    _write_svhn(folder, x_tr, np.array([10, 1, 5, 10, 9], y_dtype), "train_32x32.mat")
    _write_svhn(folder, x_te, np.array([2, 10, 3], y_dtype), "test_32x32.mat")
    for f in svhn_mod.SVHN_FILES:
        monkeypatch.setitem(svhn_mod.SVHN_MD5, f, _md5(folder / f))
    return x_tr, x_te


@pytest.mark.parametrize("y_dtype", [np.uint8, np.float64])
def test_svhn_round_trip(tmp_path, monkeypatch, y_dtype):
    x_tr, x_te = _svhn_folder(tmp_path / "svhn", monkeypatch, y_dtype)
    d = load_dataset("svhn", tmp_path)
    assert d.name == "svhn" and d.num_classes == 10 and d.augment == "" and d.note == ""
    assert d.mean == (0.4496,) * 3 and d.std == (0.1995,) * 3 and d.input_shape == (32, 32, 3)
    assert d.x_train.dtype == np.uint8 and d.y_train.dtype == np.int32 and d.x_train.flags.c_contiguous
    np.testing.assert_array_equal(d.x_train, x_tr)
    np.testing.assert_array_equal(d.x_test, x_te)
    assert d.y_train.tolist() == [0, 1, 5, 0, 9] and d.y_test.tolist() == [2, 0, 3]  # 10 is the digit 0
    assert d.x_train[0, 4, 9, 2] == (4 * 7 + 9 * 3 + 2 * 85 + int(x_tr[0, 0, 0, 0])) % 256


def test_svhn_md5_mismatch(tmp_path, monkeypatch):
    _svhn_folder(tmp_path, monkeypatch)
    monkeypatch.setitem(svhn_mod.SVHN_MD5, "train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d8373")  # published
    with pytest.raises(DataError) as e:
        load_dataset("svhn", tmp_path)
    msg = _one_line(e)
    assert "train_32x32.mat" in msg and "md5" in msg and "corrupt or not the official" in msg
    assert "ufldl.stanford.edu/housenumbers" in msg


def test_published_digests_are_the_documented_ones():
    assert svhn_mod.SVHN_MD5 == {"train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373",
                                 "test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3"}
    assert cifar_mod.CIFAR_MD5["cifar10"]["test_batch"] == "40351d587109b95175f43aff81a1287e"
    assert set(cifar_mod.CIFAR_MD5["cifar10"]) == {*cifar_mod.CIFAR_TRAIN_FILES["cifar10"], "test_batch"}
    assert cifar_mod.CIFAR_MD5["cifar100"] == {"train": "16019d7e3df5f24257cddd939b257f8d",
                                               "test": "f0ef6b0ae62326f3e7ffdfab6717acfc"}


@pytest.mark.parametrize(
    "case, expect",
    [
        ("garbage", "not a readable MATLAB file"),
        ("truncated", "train_32x32.mat"),
        ("label_11", "expected whole numbers 1..10"),
        ("label_0", "expected whole numbers 1..10"),
        ("grey", "expected (32, 32, 3, N) uint8"),
        ("no_y", "no y variable"),
        ("y_count", "to match X"),
    ],
)
def test_svhn_bad_files(tmp_path, monkeypatch, case, expect):
    _svhn_folder(tmp_path, monkeypatch)
    train = tmp_path / "train_32x32.mat"
    if case == "garbage":
        train.write_bytes(b"this is not a MATLAB file at all" * 10)
    elif case == "truncated":
        train.write_bytes(train.read_bytes()[:3000])
    elif case == "label_11":
        _write_svhn(tmp_path, _images(2), [11, 1], train.name)
    elif case == "label_0":
        _write_svhn(tmp_path, _images(2), [0, 1], train.name)
    elif case == "grey":
        scipy.io.savemat(train, {"X": np.zeros((28, 28, 1, 2), np.uint8), "y": np.ones((2, 1), np.uint8)})
    elif case == "no_y":
        scipy.io.savemat(train, {"X": np.zeros((32, 32, 3, 2), np.uint8)})
    elif case == "y_count":
        _write_svhn(tmp_path, _images(2), [1, 2, 3], train.name)
    monkeypatch.setitem(svhn_mod.SVHN_MD5, train.name, _md5(train))
    with pytest.raises(DataError) as e:
        load_dataset("svhn", tmp_path)
    msg = _one_line(e)
    assert expect in msg and str(train) in msg


def test_svhn_missing_file_names_every_place(tmp_path, monkeypatch):
    _svhn_folder(tmp_path / "svhn", monkeypatch)
    (tmp_path / "svhn" / "test_32x32.mat").unlink()
    env = tmp_path / "env"
    env.mkdir()
    monkeypatch.setenv(ds_mod.DATA_DIR_ENV, str(env))
    with pytest.raises(ds_mod.DataNotFoundError) as e:
        load_dataset("svhn", tmp_path)
    msg = _one_line(e)
    for part in (str(tmp_path), f"{tmp_path / 'svhn'} (missing test_32x32.mat)", str(env / "svhn"),
                 "ufldl.stanford.edu/housenumbers", "--config.data_dir=DIR", "pip install -r requirements-tfds.txt"):
        assert part in msg, part


# --------------------------------------------------------------------------- CIFAR python archives (pickles)


def _chw_rows(x: np.ndarray) -> np.ndarray:
    """The CIFAR row layout written out by hand: 1024 red values (row-major), then green, then blue."""
    return np.stack([np.concatenate([img[:, :, 0].ravel(), img[:, :, 1].ravel(), img[:, :, 2].ravel()])
                     for img in x]).astype(np.uint8)


def _write_batch(path: Path, x: np.ndarray, labels: list[int], *, cifar100: bool = False, protocol: int = 2) -> None:
    entry = {b"batch_label": b"testing batch", b"data": _chw_rows(x),
             b"filenames": [f"img_{i}.png".encode() for i in range(len(x))]}
    if cifar100:
        entry.update({b"fine_labels": list(labels), b"coarse_labels": [v // 5 for v in labels]})
    else:
        entry[b"labels"] = list(labels)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(entry, f, protocol=protocol)


def _cifar10_folder(root: Path, monkeypatch) -> tuple[np.ndarray, list[int], np.ndarray, list[int]]:
    folder = root / "cifar-10-batches-py"
    x_tr, y_tr = _images(10, 3), [i % 10 for i in range(10)]
    for b in range(5):
        _write_batch(folder / f"data_batch_{b + 1}", x_tr[2 * b: 2 * b + 2], y_tr[2 * b: 2 * b + 2])
    x_te, y_te = _images(3, 4), [3, 8, 8]
    _write_batch(folder / "test_batch", x_te, y_te)
    monkeypatch.setitem(cifar_mod.CIFAR_MD5, "cifar10", {f: _md5(folder / f) for f in os.listdir(folder)})
    return x_tr, y_tr, x_te, y_te


def test_cifar10_python_round_trip_and_pixel_layout(tmp_path, monkeypatch):
    x_tr, y_tr, x_te, y_te = _cifar10_folder(tmp_path / "cifar10", monkeypatch)
    d = load_dataset("cifar10", tmp_path)
    assert d.num_classes == 10 and d.augment == "crop_flip" and d.note == ""
    assert d.mean == (0.485, 0.456, 0.406) and d.std == (0.229, 0.224, 0.225)
    np.testing.assert_array_equal(d.x_train, x_tr)
    np.testing.assert_array_equal(d.x_test, x_te)
    assert d.y_train.tolist() == y_tr and d.y_test.tolist() == y_te and d.y_train.dtype == np.int32
    rows = _chw_rows(x_tr)
    for i, r, c, ch in [(0, 0, 0, 0), (0, 1, 2, 0), (3, 31, 0, 1), (9, 5, 17, 2)]:
        assert d.x_train[i, r, c, ch] == rows[i, ch * 1024 + r * 32 + c]
    # data_dir may also be the extracted folder itself
    d2 = load_dataset("cifar10", tmp_path / "cifar10" / "cifar-10-batches-py")
    np.testing.assert_array_equal(d2.x_test, x_te)


def test_cifar100_python_uses_fine_labels(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-100-python"
    x_tr, x_te = _images(4, 5), _images(2, 6)
    _write_batch(folder / "train", x_tr, [99, 0, 42, 7], cifar100=True)
    _write_batch(folder / "test", x_te, [13, 98], cifar100=True)
    monkeypatch.setitem(cifar_mod.CIFAR_MD5, "cifar100", {f: _md5(folder / f) for f in ("train", "test")})
    d = load_dataset("cifar100", tmp_path)
    assert d.num_classes == 100 and d.augment == "crop_flip" and d.note == ""
    assert d.mean == (0.5071, 0.4865, 0.4409) and d.std == (0.2673, 0.2564, 0.2762)
    assert d.y_train.tolist() == [99, 0, 42, 7] and d.y_test.tolist() == [13, 98]
    np.testing.assert_array_equal(d.x_train, x_tr)


def test_cifar_md5_mismatch(tmp_path, monkeypatch):
    _cifar10_folder(tmp_path, monkeypatch)
    monkeypatch.setitem(cifar_mod.CIFAR_MD5["cifar10"], "data_batch_3", "54ebc095f3ab1f0389bbae665268c751")
    with pytest.raises(DataError) as e:
        load_dataset("cifar10", tmp_path)
    msg = _one_line(e)
    assert "data_batch_3" in msg and "md5" in msg and "corrupt or not the official" in msg


def _evil_payloads(marker: Path):
    class SystemCall:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    class Eval:
        def __reduce__(self):
            return eval, (f"__import__('pathlib').Path({str(marker)!r}).touch()",)

    return {"os.system": SystemCall(), "builtins.eval": Eval()}


@pytest.mark.parametrize("which", ["os.system", "builtins.eval"])
def test_malicious_pickle_is_refused(tmp_path, monkeypatch, which):
    marker = tmp_path / "pwned"
    _cifar10_folder(tmp_path, monkeypatch)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    payload = _evil_payloads(marker)[which]
    for entry in ({b"data": payload, b"labels": [1]}, payload):
        with open(batch, "wb") as f:
            pickle.dump(entry, f, protocol=2)
        with pytest.raises(DataError) as e:
            read_cifar_batch(batch, "labels")
        msg = _one_line(e)
        assert "refused to unpickle" in msg and "not a CIFAR batch" in msg and str(batch) in msg
        assert not marker.exists()
    monkeypatch.setitem(cifar_mod.CIFAR_MD5["cifar10"], "data_batch_1", _md5(batch))
    with pytest.raises(DataError, match="refused to unpickle"):
        load_dataset("cifar10", tmp_path)
    assert not marker.exists()


def test_unpickler_refuses_other_globals_and_codecs(tmp_path):
    path = tmp_path / "p"
    path.write_bytes(pickle.dumps({b"data": Path("x")}, protocol=2))  # a harmless class, still not allowed
    with pytest.raises(DataError, match=r"refused to unpickle pathlib\.\w*Path"):
        load_cifar_pickle(path)
    # _codecs.encode is let through only as a latin-1 bytes literal
    path.write_bytes(b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x05\x00\x00\x00rot13\x86R.")
    with pytest.raises(DataError) as e:
        load_cifar_pickle(path)
    assert "rot13" in _one_line(e)
    # protocol 5 numpy pickles, the newer form, are not needed by CIFAR and are refused, not executed
    path.write_bytes(pickle.dumps(np.zeros(3, np.uint8), protocol=5))
    with pytest.raises(DataError, match="refused to unpickle"):
        load_cifar_pickle(path)
    # a Python 2 style pickle (str as bytes, numpy<2 module path) loads with encoding="bytes"
    arr = np.arange(6, dtype=np.uint8)
    p2 = pickle.dumps({b"data": arr}, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    path.write_bytes(p2)
    np.testing.assert_array_equal(load_cifar_pickle(path)[b"data"], arr)


@pytest.mark.parametrize(
    "case, expect",
    [
        ("truncated", "truncated or corrupt"),
        ("garbage", "truncated or corrupt"),
        ("empty", "truncated or corrupt"),
        ("not_dict", "not the dict of a CIFAR batch"),
        ("no_labels", "no labels entry"),
        ("wrong_width", "expected [N,3072] uint8"),
        ("float_data", "expected [N,3072] uint8"),
        ("label_count", "2 images but 3 labels"),
        ("label_range", "labels span 0..10, expected 0..9"),
        ("label_type", "labels is not a list of integers"),
    ],
)
def test_cifar_bad_batches(tmp_path, monkeypatch, case, expect):
    _cifar10_folder(tmp_path, monkeypatch)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    good = _chw_rows(_images(2))
    entry: object = {b"data": good, b"labels": [1, 2]}
    if case == "truncated":
        batch.write_bytes(batch.read_bytes()[:500])
    elif case == "garbage":
        batch.write_bytes(b"\x80\x02garbage" * 50)
    elif case == "empty":
        batch.write_bytes(b"")
    else:
        entry = {
            "not_dict": [good, [1, 2]],
            "no_labels": {b"data": good, b"fine_labels": [1, 2]},
            "wrong_width": {b"data": good[:, :1000], b"labels": [1, 2]},
            "float_data": {b"data": good.astype(np.float32), b"labels": [1, 2]},
            "label_count": {b"data": good, b"labels": [1, 2, 3]},
            "label_range": {b"data": good, b"labels": [0, 10]},
            "label_type": {b"data": good, b"labels": [1.0, 2.0]},
        }[case]
        with open(batch, "wb") as f:
            pickle.dump(entry, f, protocol=2)
    monkeypatch.setitem(cifar_mod.CIFAR_MD5["cifar10"], "data_batch_2", _md5(batch))
    with pytest.raises(DataError) as e:
        load_dataset("cifar10", tmp_path)
    msg = _one_line(e)
    assert expect in msg and "data_batch_2" in msg


def test_cifar_incomplete_folder_and_unextracted_archive(tmp_path, monkeypatch):
    _cifar10_folder(tmp_path / "cifar10", monkeypatch)
    (tmp_path / "cifar10" / "cifar-10-batches-py" / "data_batch_5").unlink()
    with pytest.raises(ds_mod.DataNotFoundError) as e:
        load_dataset("cifar10", tmp_path)
    msg = _one_line(e)
    assert "cifar-10-batches-py/ missing data_batch_5" in msg and "cifar-10-python.tar.gz" in msg
    assert "cifar10_train*.npz" in msg and "requirements-tfds.txt" in msg
    (tmp_path / "cifar10" / "cifar-10-python.tar.gz").write_bytes(b"archive")
    with pytest.raises(DataError) as e:
        load_dataset("cifar10", tmp_path)
    msg = _one_line(e)
    assert f"tar xzf {tmp_path / 'cifar10' / 'cifar-10-python.tar.gz'} -C {tmp_path / 'cifar10'}" in msg


# --------------------------------------------------------------------------- .npz layouts


def _npz(path: Path, x, y, **extra) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=x, y=y, **extra)
    return path


def test_cifar10_npz_parts_in_order_with_notes(tmp_path):
    folder = tmp_path / "cifar10"
    parts = {n: (_images(2, n), np.array([n % 10, n % 10])) for n in (0, 1, 2, 10)}
    for n, (x, y) in parts.items():
        _npz(folder / f"cifar10_train_part{n}.npz", x, y, class_names=np.array(["a"] * 10))
    x_te = _images(4, 20)
    _npz(folder / "cifar10_test.npz", x_te, np.array([1, 2, 3, 4]), lossy=np.array([False, True, False, True]))
    d = load_dataset("cifar10", tmp_path)
    assert d.y_train.tolist() == [0, 0, 1, 1, 2, 2, 0, 0]  # part0, part1, part2, part10
    np.testing.assert_array_equal(d.x_train[6:], parts[10][0])
    np.testing.assert_array_equal(d.x_test, x_te)
    assert d.note == ("partial train set: 8 of 50000 official images; partial test set: 4 of 10000 official images; "
                      "2 of 4 test images are JPEG-decoded (lossy)")
    assert d.augment == "crop_flip" and d.y_test.dtype == np.int32


def test_cifar100_pseudo_split_note_and_preference(tmp_path):
    x_tr, x_te = _images(3, 7), _images(2, 8)
    _npz(tmp_path / "cifar100_pseudotrain_part0.npz", x_tr, np.array([99, 0, 50]))
    _npz(tmp_path / "cifar100_pseudotest.npz", x_te, np.array([1, 2]))
    d = load_dataset("cifar100", tmp_path)
    assert PSEUDO in d.note and d.y_train.tolist() == [99, 0, 50] and d.num_classes == 100
    np.testing.assert_array_equal(d.x_test, x_te)
    # an official-split file set in the same folder wins over the pseudo split
    _npz(tmp_path / "cifar100_train.npz", x_tr[:1], np.array([5]))
    _npz(tmp_path / "cifar100_test.npz", x_te[:1], np.array([6]))
    d = load_dataset("cifar100", tmp_path)
    assert PSEUDO not in d.note and d.y_train.tolist() == [5] and "partial train set: 1 of 50000" in d.note


def test_first_complete_folder_wins(tmp_path, monkeypatch):
    _npz(tmp_path / "cifar10" / "cifar10_train.npz", _images(1), np.array([1]))  # incomplete: no test file
    env = tmp_path / "env"
    _npz(env / "cifar10_train.npz", _images(2), np.array([3, 4]))
    _npz(env / "cifar10_test.npz", _images(1), np.array([5]))
    _npz(env / "cifar10" / "cifar10_train.npz", _images(1), np.array([7]))
    _npz(env / "cifar10" / "cifar10_test.npz", _images(1), np.array([8]))
    monkeypatch.setenv(ds_mod.DATA_DIR_ENV, str(env))
    assert load_dataset("cifar10", tmp_path).y_train.tolist() == [3, 4]
    (env / "cifar10_test.npz").unlink()
    assert load_dataset("cifar10").y_train.tolist() == [7]


@pytest.mark.parametrize(
    "case, expect",
    [
        ("float_x", "expected [N,32,32,3] uint8"),
        ("grey_x", "expected [N,32,32,3] uint8"),
        ("y_2d", "expected a 1-D integer array"),
        ("y_float", "expected a 1-D integer array"),
        ("count", "2 images but 3 labels"),
        ("range", "labels span -1..3"),
        ("empty", "holds no images"),
        ("no_y", "has no y array"),
        ("object", "not a readable .npz file"),
        ("garbage", "not a readable .npz file"),
        ("truncated", "not a readable .npz file"),
        ("npy", "not an .npz archive"),
        ("mismatched_parts", "do not fit together"),
    ],
)
def test_npz_bad_files(tmp_path, case, expect):
    x, y = _images(2), np.array([1, 3])
    train = tmp_path / "cifar10_train_part0.npz"
    _npz(tmp_path / "cifar10_test.npz", x, y)
    kw = {
        "float_x": dict(x=x.astype(np.float32), y=y), "grey_x": dict(x=x[..., :1], y=y),
        "y_2d": dict(x=x, y=y[:, None]), "y_float": dict(x=x, y=y.astype(float)),
        "count": dict(x=x, y=np.array([1, 2, 3])), "range": dict(x=x, y=np.array([-1, 3])),
        "empty": dict(x=x[:0], y=y[:0]), "object": dict(x=x, y=np.array([1, "a"], dtype=object)),
    }.get(case)
    if kw is not None:
        np.savez(train, **kw)
    elif case == "no_y":
        np.savez(train, x=x)
    elif case == "garbage":
        train.write_bytes(b"not a zip file" * 100)
    elif case == "truncated":
        _npz(train, x, y)
        train.write_bytes(train.read_bytes()[:4000])
    elif case == "npy":
        with open(train, "wb") as f:
            np.save(f, x)
    elif case == "mismatched_parts":
        _npz(train, x, y)
        _npz(tmp_path / "cifar10_train_part1.npz", x[..., :2], y)
    with pytest.raises(DataError) as e:
        load_dataset("cifar10", tmp_path)
    msg = _one_line(e)
    assert expect in msg and "cifar10_train_part0.npz" in msg


# --------------------------------------------------------------------------- tensorflow-datasets fallback


def _fake_tfds(monkeypatch, arrays: dict[str, tuple[np.ndarray, np.ndarray]] | Exception) -> list[dict]:
    """Install a stand-in tensorflow_datasets module; returns the recorded tfds.load calls."""
    calls: list[dict] = []
    fake = types.ModuleType("tensorflow_datasets")

    def load(name, **kw):
        calls.append({"name": name, **kw})
        if isinstance(arrays, Exception):
            raise arrays
        return arrays[kw["split"]]

    fake.load = load
    fake.as_numpy = lambda ds: tuple(np.asarray(a) for a in ds)
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake)
    monkeypatch.setattr(tfds_mod, "tfds_available", REAL_TFDS_AVAILABLE)  # the real check must see the module
    return calls


def test_tfds_fallback_cifar100(tmp_path, monkeypatch, capsys):
    x_tr, x_te = _images(3, 9), _images(2, 10)
    calls = _fake_tfds(monkeypatch, {"train": (x_tr, np.array([99, 1, 2], np.int64)),
                                     "test": (x_te, np.array([0, 98], np.int64))})
    assert tfds_mod.tfds_available()
    d = load_dataset("cifar100", tmp_path)
    np.testing.assert_array_equal(d.x_train, x_tr)
    assert d.y_test.tolist() == [0, 98] and d.y_test.dtype == np.int32 and d.note == "" and d.num_classes == 100
    assert [c["split"] for c in calls] == ["train", "test"]
    for c in calls:
        assert c == {"name": "cifar100", "split": c["split"], "batch_size": -1, "as_supervised": True,
                     "data_dir": str(tmp_path / "tfds")}
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tensorflow-datasets" in err


@pytest.mark.parametrize("name, tfds_name, shape", [("svhn", "svhn_cropped", (32, 32, 3)),
                                                     ("fashion_mnist", "fashion_mnist", (28, 28, 1))])
def test_tfds_fallback_names_and_default_dir(tmp_path, monkeypatch, name, tfds_name, shape):
    x = np.zeros((2, *shape), np.uint8)
    calls = _fake_tfds(monkeypatch, {"train": (x, np.array([0, 9])), "test": (x, np.array([9, 0]))})
    monkeypatch.setitem(ds_mod._SYSTEM_DIRS, "fashion_mnist", ())
    d = load_dataset(name)
    assert d.x_train.shape == (2, *shape) and d.y_train.tolist() == [0, 9]
    assert {c["name"] for c in calls} == {tfds_name} and all(c["data_dir"] is None for c in calls)


def test_tfds_fallback_bad_data_and_failure(tmp_path, monkeypatch):
    x = np.zeros((2, 32, 32, 3), np.uint8)
    _fake_tfds(monkeypatch, {"train": (x, np.array([0, 10])), "test": (x, np.array([0, 1]))})
    with pytest.raises(DataError) as e:
        load_dataset("cifar10", tmp_path)
    assert "cifar10 train from tensorflow-datasets" in _one_line(e) and "labels span 0..10" in str(e.value)
    _fake_tfds(monkeypatch, ConnectionError("name resolution failed\nsecond line"))
    with pytest.raises(DataError) as e:
        load_dataset("svhn", tmp_path)
    msg = _one_line(e)
    assert "svhn_cropped" in msg and "ConnectionError" in msg and "second line" in msg


def test_local_files_win_over_tfds(tmp_path, monkeypatch):
    calls = _fake_tfds(monkeypatch, RuntimeError("must not be called"))
    _npz(tmp_path / "cifar10_train.npz", _images(1), np.array([2]))
    _npz(tmp_path / "cifar10_test.npz", _images(1), np.array([3]))
    assert load_dataset("cifar10", tmp_path).y_test.tolist() == [3] and calls == []


def test_library_does_not_import_tfds():
    """Loading data never imports tensorflow-datasets unless it falls back to it (the fakes above are removed)."""
    assert "tensorflow_datasets" not in sys.modules


# --------------------------------------------------------------------------- the real files in shared/data


@pytest.mark.skipif(not (SHARED_DATA / "cifar10" / "cifar10_test.npz").is_file(), reason="shared/data/cifar10 absent")
def test_real_cifar10_npz():
    d = load_dataset("cifar10", SHARED_DATA)
    assert d.x_train.shape == (20000, 32, 32, 3) and d.x_test.shape == (10000, 32, 32, 3)
    assert np.bincount(d.y_train).tolist() == [2000] * 10 and np.bincount(d.y_test).tolist() == [1000] * 10
    assert "partial train set: 20000 of 50000 official images" in d.note and d.augment == "crop_flip"
    assert abs(float(d.x_test[..., 0].mean()) / 255 - 0.4914) < 0.01  # CIFAR-10 red-channel mean


@pytest.mark.skipif(not (SHARED_DATA / "cifar100" / "cifar100_pseudotest.npz").is_file(),
                    reason="shared/data/cifar100 absent")
def test_real_cifar100_pseudo_split():
    d = load_dataset("cifar100", SHARED_DATA / "cifar100")
    assert d.x_train.shape == (10000, 32, 32, 3) and d.x_test.shape == (10000, 32, 32, 3)
    assert np.bincount(d.y_test, minlength=100).tolist() == [100] * 100
    assert PSEUDO in d.note and d.num_classes == 100
