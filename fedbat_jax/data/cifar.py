"""Reader for the CIFAR-10 / CIFAR-100 "python version" archives: pickled batches, read with a restricted unpickler.

Unpickling runs whatever callables a file names, so a plain ``pickle.load`` of a downloaded file can run code.
``CifarUnpickler`` resolves only the few numpy names an array needs and refuses every other global.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from fedbat_jax.data.checks import one_line, verify_md5
from fedbat_jax.errors import DataError

CIFAR_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
CIFAR_ARCHIVES = {"cifar10": "cifar-10-python.tar.gz", "cifar100": "cifar-100-python.tar.gz"}
CIFAR_URLS = {name: f"https://www.cs.toronto.edu/~kriz/{archive}" for name, archive in CIFAR_ARCHIVES.items()}
CIFAR_TRAIN_FILES = {"cifar10": tuple(f"data_batch_{i}" for i in range(1, 6)), "cifar100": ("train",)}
CIFAR_TEST_FILES = {"cifar10": ("test_batch",), "cifar100": ("test",)}
CIFAR_LABEL_KEYS = {"cifar10": "labels", "cifar100": "fine_labels"}
CIFAR_NUM_CLASSES = {"cifar10": 10, "cifar100": 100}

# md5 of the files inside the official archives (cs.toronto.edu/~kriz/cifar.html); the same values are listed
# in torchvision/datasets/cifar.py. Tests replace entries to exercise the check on small files of their own.
CIFAR_MD5: dict[str, dict[str, str]] = {
    "cifar10": {
        "data_batch_1": "c99cafc152244af753f735de768cd75f",
        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        "test_batch": "40351d587109b95175f43aff81a1287e",
    },
    "cifar100": {
        "train": "16019d7e3df5f24257cddd939b257f8d",
        "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
    },
}

_PIXELS = 32 * 32 * 3


def _latin1_encode(text: object, encoding: str = "utf-8") -> bytes:
    """Stand-in for ``_codecs.encode``: Python 3 writes bytes this way under pickle protocol < 3."""
    if not isinstance(text, str) or encoding.lower().replace("-", "") != "latin1":
        raise pickle.UnpicklingError(f"_codecs.encode({type(text).__name__}, {encoding!r}) is not a bytes literal")
    return text.encode("latin-1")


_RECONSTRUCT = np.zeros(0).__reduce__()[0]  # numpy's array-unpickling helper, wherever this numpy keeps it

# Everything a CIFAR batch needs: a numpy uint8 array (plus lists, numbers and strings, which need no globals).
_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,  # written by numpy < 2 (the official files)
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,  # written by numpy >= 2
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class CifarUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals of a numpy array; anything else is a DataError."""

    def __init__(self, file: Any, source: str | Path):
        super().__init__(file, encoding="bytes")  # the official batches are Python 2 pickles
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise DataError(
                f"refused to unpickle {module}.{name} from {self.source}: a CIFAR batch holds only numpy arrays, "
                "lists, numbers and strings, so this is not a CIFAR batch (and may be malicious); delete it and "
                "extract the official archive again"
            ) from None


def load_cifar_pickle(path: str | Path) -> Any:
    """Unpickle one file with CifarUnpickler; unreadable, truncated or refused content is a one-line DataError."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return CifarUnpickler(f, path).load()
    except DataError:
        raise
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}; check the path and its permissions") from e
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            MemoryError, OverflowError, UnicodeError, RecursionError) as e:
        raise DataError(
            f"{path} is not a readable CIFAR batch (truncated or corrupt: {type(e).__name__}: {one_line(e)}); "
            "delete it and extract the official archive again"
        ) from e


def read_cifar_batch(
    path: str | Path, label_key: str, expected_md5: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR batch: images uint8 [N,32,32,3] (HWC RGB) and labels int64 [N] (not range-checked).

    A batch is a dict with ``data`` uint8 [N,3072] (each row: the 1024 red, then green, then blue values of the
    image, row-major) and a list of N ints under ``label_key`` ("labels", or "fine_labels" for CIFAR-100).
    """
    path = Path(path)
    fix = "delete it and extract the official archive again"
    verify_md5(path, expected_md5, "extract it again from the official archive")
    obj = load_cifar_pickle(path)
    if not isinstance(obj, dict):
        raise DataError(f"{path} holds a {type(obj).__name__}, not the dict of a CIFAR batch; {fix}")
    entries = {(k.decode("latin-1") if isinstance(k, bytes) else k): v for k, v in obj.items()}
    missing = [k for k in ("data", label_key) if k not in entries]
    if missing:
        raise DataError(f"{path} has no {' / '.join(missing)} entry, so it is not a CIFAR batch of this dataset; {fix}")
    data, labels = entries["data"], entries[label_key]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _PIXELS:
        got = f"{data.shape} {data.dtype}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: data is {got}, expected [N,{_PIXELS}] uint8; {fix}")
    if isinstance(labels, np.ndarray):
        ok = labels.ndim == 1 and np.issubdtype(labels.dtype, np.integer)
    else:
        ok = isinstance(labels, (list, tuple)) and all(type(v) is int for v in labels)
    if not ok:
        raise DataError(f"{path}: {label_key} is not a list of integers; {fix}")
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(y) != len(data):
        raise DataError(f"{path}: {len(data)} images but {len(y)} labels; {fix}")
    x = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return x, y


def read_cifar_python(name: str, folder: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read an extracted ``cifar-10-batches-py`` / ``cifar-100-python`` folder: (x_train, y_train, x_test, y_test).

    Each file is checked against CIFAR_MD5 (where listed) before it is unpickled.
    """
    folder = Path(folder)
    digests = CIFAR_MD5.get(name, {})
    out = []
    for files in (CIFAR_TRAIN_FILES[name], CIFAR_TEST_FILES[name]):
        parts = []
        for f in files:
            x, y = read_cifar_batch(folder / f, CIFAR_LABEL_KEYS[name], digests.get(f))
            if y.size and (y.min() < 0 or y.max() >= CIFAR_NUM_CLASSES[name]):
                raise DataError(
                    f"{folder / f}: labels span {y.min()}..{y.max()}, expected 0..{CIFAR_NUM_CLASSES[name] - 1}; "
                    "delete it and extract the official archive again"
                )
            parts.append((x, y))
        out += [np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])]
    return out[0], out[1], out[2], out[3]
