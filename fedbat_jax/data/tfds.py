"""Optional fallback: load a dataset through tensorflow-datasets (which downloads it) when no local files exist.

tensorflow-datasets is not a dependency (requirements-tfds.txt); nothing here imports it unless it is installed
and a dataset was not found locally.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np

from fedbat_jax.data.checks import one_line
from fedbat_jax.errors import DataError

TFDS_MODULE = "tensorflow_datasets"
TFDS_INSTALL = "pip install -r requirements-tfds.txt"

# fedbat dataset name -> tensorflow-datasets name. With as_supervised=True, cifar100 yields the fine label.
TFDS_NAMES = {
    "mnist": "mnist",
    "fashion_mnist": "fashion_mnist",
    "svhn": "svhn_cropped",
    "cifar10": "cifar10",
    "cifar100": "cifar100",
}


def tfds_available() -> bool:
    """Whether tensorflow-datasets can be imported (found without importing it: importing TensorFlow is slow)."""
    if sys.modules.get(TFDS_MODULE) is not None:
        return True
    try:
        return importlib.util.find_spec(TFDS_MODULE) is not None
    except (ImportError, ValueError):
        return False


def tfds_dir(data_dir: str | Path | None) -> str | None:
    """Where tensorflow-datasets keeps its files: DATA_DIR/tfds, or its own default (~/tensorflow_datasets)."""
    return None if data_dir is None else str(Path(data_dir).expanduser() / "tfds")


def load_tfds(name: str, data_dir: str | Path | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test) of ``name`` through tensorflow-datasets, downloading it if needed.

    Arrays come back as tensorflow-datasets gives them; the caller checks shapes and label ranges.
    """
    if name not in TFDS_NAMES:
        raise DataError(f"dataset {name} has no tensorflow-datasets counterpart; put its files in a data folder")
    tfds_name, where = TFDS_NAMES[name], tfds_dir(data_dir)
    import tensorflow_datasets as tfds  # optional dependency, only when installed (see tfds_available)

    out: list[np.ndarray] = []
    for split in ("train", "test"):
        try:
            ds = tfds.load(tfds_name, split=split, batch_size=-1, as_supervised=True, data_dir=where)
            x, y = tfds.as_numpy(ds)
        except Exception as e:  # noqa: BLE001 - any failure inside TF/tfds (network, disk, format) is a data problem
            raise DataError(
                f"tensorflow-datasets could not load {tfds_name} split {split} into {where or '~/tensorflow_datasets'} "
                f"({type(e).__name__}: {one_line(e)}); check network access, or put the {name} files in a data "
                "folder (see docs/data.md)"
            ) from e
        out += [np.asarray(x), np.asarray(y)]
    print(f"fedbat: {name} loaded through tensorflow-datasets ({tfds_name}, {where or '~/tensorflow_datasets'})",
          file=sys.stderr, flush=True)
    return out[0], out[1], out[2], out[3]
