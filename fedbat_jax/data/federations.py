"""The natural federations as ``Dataset``s: every example belongs to a client (a speaking role, a writer, ...).

* ``shakespeare``: TFF's federated Shakespeare (``shakespeare_{train,test}.h5``; 715 roles, next-character
  sequences of 80 by ``fedbat_jax.data.text``); the clients of both files.
* ``femnist``: FEMNIST / EMNIST-62 by writer, from LEAF's JSON (``train/*.json`` and ``test/*.json``, e.g. LEAF's
  5% sample) or TFF's ``fed_emnist_{train,test}.h5`` (3,400 writers); the writers with both training and test data.
  Pixels as the files hold them (ink dark on a background of 1.0), unnormalised, as TFF's and FedJAX's CNN read them.
* ``cifar100_fed``: TFF's CIFAR-100 (``fed_cifar100_{train,test}.h5``, the Pachinko split of Reddi et al.: 500
  training clients, 100 other test clients).

Each loader searches the places every dataset does (``--config.data_dir``, its subfolder of the dataset's name,
``$FEDBAT_DATA_DIR``), checks TFF's documented sizes, and otherwise raises a one-line DataError naming each place
it looked and how to get the files. ``from_clients`` builds a natural ``Dataset`` from per-client arrays (what a
new reader returns).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from fedbat_jax.data import text
from fedbat_jax.data.checks import check_split
from fedbat_jax.data.clients import keep_clients
from fedbat_jax.data.datasets import DATA_DIR_ENV, Dataset, DataNotFoundError, _candidate_dirs, _looked_extra
from fedbat_jax.data.natural import (LEAF_FEMNIST_COMMAND, LEAF_REPO, TFF_SIZES, TFF_URLS, ClientArrays,
                                     decode_snippets, join_splits, leaf_files, read_leaf_json, read_tff_h5)

CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)


def from_clients(name: str, train: ClientArrays, test: ClientArrays, to_xy: Callable, num_classes: int,
                 mean: tuple[float, ...] = (0.0,), std: tuple[float, ...] = (1.0,), **fields) -> Dataset:
    """A natural ``Dataset`` from per-client arrays: ``to_xy(arrays of one client) -> (x, y)`` for each client of
    each split; a client with no training example is left out (its test data too, if it is a test client)."""

    def stack(split: ClientArrays):
        xs, ys, owner = [], [], []
        for i in range(len(split.ids)):
            x, y = to_xy({k: v[i] for k, v in split.arrays.items()})
            xs.append(x), ys.append(y), owner.append(np.full(len(y), i, np.int32))
        return np.concatenate(xs), np.concatenate(ys), np.concatenate(owner)

    x_tr, y_tr, c_tr = stack(train)
    x_te, y_te, c_te = stack(test)
    ds = Dataset(name, x_tr, y_tr.astype(np.int32), x_te, y_te.astype(np.int32), num_classes, mean, std,
                 train_clients=c_tr, test_clients=c_te, client_ids=tuple(train.ids), test_client_ids=tuple(test.ids),
                 **fields)
    return keep_clients(ds, np.flatnonzero(np.bincount(c_tr, minlength=len(train.ids))))


def _find(name: str, folders: Sequence[str], data_dir, probes: list[tuple[str, Callable[[Path], bool]]], hint: str):
    """``(folder, layout)``: the first searched folder where a layout's probe finds its files."""
    looked = []
    for root, _label in _candidate_dirs(name, data_dir):
        for folder in [root] + [root / f for f in folders]:
            for layout, probe in probes:
                if folder.is_dir() and probe(folder):
                    return folder, layout
            looked.append(str(folder))
    looked = list(dict.fromkeys(looked)) + _looked_extra(data_dir)
    raise DataNotFoundError(f"{name} files not found; looked in: {'; '.join(looked)}. To fix: {hint}, into DIR/{name} "
                            f"and pass --config.data_dir=DIR or set {DATA_DIR_ENV}=DIR")


def _tff_pair(prefix: str) -> Callable[[Path], bool]:
    return lambda d: (d / f"{prefix}_train.h5").is_file() and (d / f"{prefix}_test.h5").is_file()


def _read_tff(folder: Path, prefix: str, dataset: str, fields) -> tuple[ClientArrays, ClientArrays]:
    return tuple(read_tff_h5(folder / f"{prefix}_{split}.h5", fields, expected=TFF_SIZES[dataset].get(split))
                 for split in ("train", "test"))


# --------------------------------------------------------------------------- Shakespeare

def shakespeare_dataset(train: ClientArrays, test: ClientArrays, note: str = "") -> Dataset:
    """Federated Shakespeare from the roles' snippets: each role's next-character sequences (``data.text``); loss
    without padding targets, accuracy without padding and end-of-snippet targets (TFF's and FedJAX's metric)."""
    train, test, _ = join_splits(train, test)

    def to_xy(arrays):
        return text.sequences(decode_snippets(arrays["snippets"]))

    return from_clients("shakespeare", train, test, to_xy, text.VOCAB_SIZE, note=note,
                        pad_ids=(text.PAD,), unscored_ids=(text.EOS,))


def load_shakespeare(data_dir: str | Path | None = None) -> Dataset:
    """TFF's federated Shakespeare (715 roles, 16,068 / 2,356 snippets; TFF_URLS['shakespeare'])."""
    folder, _ = _find("shakespeare", (), data_dir, [("tff", _tff_pair("shakespeare"))],
                      f"download {TFF_URLS['shakespeare']} (what tff.simulation.datasets.shakespeare.load_data() "
                      "fetches) and extract shakespeare_train.h5 and shakespeare_test.h5")
    return shakespeare_dataset(*_read_tff(folder, "shakespeare", "shakespeare", "snippets"))


# --------------------------------------------------------------------------- FEMNIST

def femnist_dataset(train: ClientArrays, test: ClientArrays, note: str = "") -> Dataset:
    """FEMNIST by writer from LEAF's (``x`` [n,784], ``y``) or TFF's (``pixels`` [n,28,28], ``label``) arrays:
    the writers with both splits, pixels to uint8 (k/255 exactly in both sources), 62 classes."""
    train, test, summary = join_splits(train, test)
    dropped = [f"{summary[k]} {w} writers dropped" for k, w in (("train_only", "train-only"),
                                                                 ("test_only", "test-only")) if summary[k]]

    def to_xy(arrays):
        x = arrays["x"] if "x" in arrays else arrays["pixels"]
        y = arrays["y"] if "y" in arrays else arrays["label"]
        x = np.rint(np.asarray(x, np.float32).reshape(-1, 28, 28, 1) * 255.0).clip(0, 255).astype(np.uint8)
        return x, np.asarray(y, np.int64)

    ds = from_clients("femnist", train, test, to_xy, 62, note="; ".join([note] * bool(note) + dropped))
    for split, (x, y) in (("train", (ds.x_train, ds.y_train)), ("test", (ds.x_test, ds.y_test))):
        check_split(x, y, num_classes=62, image_shape=(28, 28, 1), what=f"femnist {split} data",
                    fix="download the files again")
    return ds


def load_femnist(data_dir: str | Path | None = None) -> Dataset:
    """FEMNIST by writer: LEAF's JSON (``train/``, ``test/``; a sample is fine) or TFF's fed_emnist HDF5 files."""

    def leaf(d: Path) -> bool:
        return any((d / "train").glob("*.json")) and any((d / "test").glob("*.json"))

    folder, layout = _find("femnist", ("femnist_leaf", "femnist/data"), data_dir,
                           [("tff", _tff_pair("fed_emnist")), ("leaf", leaf)],
                           f"download {TFF_URLS['emnist']} and extract fed_emnist_train.h5 and fed_emnist_test.h5, "
                           f"or run LEAF's {LEAF_FEMNIST_COMMAND} in {LEAF_REPO}/data/femnist and copy its "
                           "data/train and data/test folders")
    if layout == "tff":
        return femnist_dataset(*_read_tff(folder, "fed_emnist", "emnist", ("pixels", "label")))
    train, test = read_leaf_json(leaf_files(folder / "train")), read_leaf_json(leaf_files(folder / "test"))
    full = TFF_SIZES["emnist"]["train"][0]
    note = f"LEAF sample: {len(train.ids)} writers with training data (the full FEMNIST has about {full:,})"
    return femnist_dataset(train, test, note if len(train.ids) < 3000 else "")


# --------------------------------------------------------------------------- CIFAR-100 (TFF)

def cifar100_fed_dataset(train: ClientArrays, test: ClientArrays) -> Dataset:
    """TFF's federated CIFAR-100: 500 training clients and 100 other test clients, fine labels, crop and flip."""

    def to_xy(arrays):
        return np.asarray(arrays["image"], np.uint8), np.asarray(arrays["label"], np.int64)

    return from_clients("cifar100_fed", train, test, to_xy, 100, CIFAR100_MEAN, CIFAR100_STD, augment="crop_flip")


def load_cifar100_fed(data_dir: str | Path | None = None) -> Dataset:
    """TFF's federated CIFAR-100 (fed_cifar100_{train,test}.h5)."""
    folder, _ = _find("cifar100_fed", ("fed_cifar100",), data_dir, [("tff", _tff_pair("fed_cifar100"))],
                      f"download {TFF_URLS['cifar100']} and extract fed_cifar100_train.h5 and fed_cifar100_test.h5")
    return cifar100_fed_dataset(*_read_tff(folder, "fed_cifar100", "cifar100", ("image", "label")))


for _loader in (load_shakespeare, load_femnist, load_cifar100_fed):
    _loader.natural = True  # what partition=auto reads (fedbat_jax.config.resolved): these carry their clients
