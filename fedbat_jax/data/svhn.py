"""Reader for the SVHN cropped-digit files train_32x32.mat / test_32x32.mat (MATLAB v5), with md5 checks."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from fedbat_jax.data.checks import one_line, verify_md5
from fedbat_jax.errors import DataError

SVHN_URL = "http://ufldl.stanford.edu/housenumbers/"
SVHN_FILES = ("train_32x32.mat", "test_32x32.mat")  # extra_32x32.mat is not used

# md5 of the files published at SVHN_URL; the same values are listed in torchvision/datasets/svhn.py.
# Tests replace entries to exercise the check on small files of their own.
SVHN_MD5: dict[str, str] = {
    "train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373",
    "test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3",
}


def read_svhn_mat(path: str | Path, expected_md5: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read one SVHN .mat file: images uint8 [N,32,32,3] (HWC RGB) and labels int64 [N] in 0..9.

    The file stores ``X`` as (32, 32, 3, N) and ``y`` as (N, 1) with labels 1..10, where 10 is the digit 0.
    With ``expected_md5`` the file must match it. Every problem is a one-line DataError naming the file.
    """
    import scipy.io  # lazily: only SVHN needs scipy
    from scipy.io.matlab import MatReadError

    path = Path(path)
    fix = f"download {path.name} again from {SVHN_URL}"
    verify_md5(path, expected_md5, fix)
    try:
        mat = scipy.io.loadmat(path, variable_names=["X", "y"])
    except NotImplementedError as e:  # MATLAB v7.3 (HDF5) files
        raise DataError(f"{path} is a MATLAB v7.3 file, not the MATLAB v5 file SVHN publishes; {fix}") from e
    except (MatReadError, OSError, ValueError, TypeError, EOFError, KeyError, IndexError, MemoryError,
            zlib.error) as e:
        raise DataError(f"{path} is not a readable MATLAB file ({type(e).__name__}: {one_line(e)}); {fix}") from e
    missing = [k for k in ("X", "y") if k not in mat]
    if missing:
        raise DataError(f"{path} has no {' / '.join(missing)} variable, so it is not an SVHN file; {fix}")
    x, y = mat["X"], mat["y"]
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise DataError(f"{path}: X is {x.shape} {x.dtype}, expected (32, 32, 3, N) uint8; {fix}")
    if y.ndim not in (1, 2) or y.shape[0] != x.shape[3] or (y.ndim == 2 and y.shape[1] != 1):
        raise DataError(f"{path}: y is {y.shape}, expected ({x.shape[3]}, 1) to match X; {fix}")
    y = y.reshape(-1)
    if y.dtype.kind not in "uif" or (y.dtype.kind == "f" and not np.all(np.isfinite(y))):
        raise DataError(f"{path}: y is {y.dtype}, expected finite numeric labels 1..10; {fix}")
    if y.size and (np.any(y != np.round(y)) or y.min() < 1 or y.max() > 10):
        raise DataError(f"{path}: labels span {y.min()}..{y.max()}, expected whole numbers 1..10; {fix}")
    labels = y.astype(np.int64) % 10  # SVHN writes the digit 0 as class 10
    images = np.ascontiguousarray(np.transpose(x, (3, 0, 1, 2)))
    return images, labels
