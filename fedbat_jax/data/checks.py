"""Checks shared by the dataset readers: file digests and the shape/range of image-label arrays."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from fedbat_jax.errors import DataError

_CHUNK = 1 << 20


def one_line(text: object, limit: int = 200) -> str:
    """A reader's own error text squeezed to one short line (for embedding in a DataError)."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def file_md5(path: str | Path) -> str:
    """md5 of a file, read in 1 MiB chunks (the official SVHN/CIFAR files are 100-200 MB)."""
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(_CHUNK), b""):
                digest.update(block)
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}; check the path and its permissions") from e
    return digest.hexdigest()


def verify_md5(path: str | Path, expected: str | None, fix: str) -> None:
    """Raise DataError naming ``path`` unless its md5 is ``expected`` (None: no published digest, skip)."""
    if expected is None:
        return
    got = file_md5(path)
    if got != expected.lower():
        raise DataError(
            f"{path} fails its md5 check (expected {expected}, got {got}); the file is corrupt or not the "
            f"official one: delete it and {fix}"
        )


def check_split(
    x: object,
    y: object,
    *,
    num_classes: int,
    image_shape: tuple[int, ...],
    what: str,
    fix: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Validate one split: images uint8 [N,*image_shape], labels 1-D integers in [0, num_classes), N > 0.

    ``what`` names the split and its source in messages (e.g. "cifar10 train from /d/cifar10_train.npz");
    ``fix`` says how to repair it. Returns C-contiguous images and int32 labels.
    """
    want = f"[N,{','.join(map(str, image_shape))}] uint8"
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 1 + len(image_shape) \
            or tuple(x.shape[1:]) != tuple(image_shape):
        got = f"{x.shape} {x.dtype}" if isinstance(x, np.ndarray) else type(x).__name__
        raise DataError(f"{what}: images are {got}, expected {want}; {fix}")
    if not isinstance(y, np.ndarray) or y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer)):
        got = f"{y.shape} {y.dtype}" if isinstance(y, np.ndarray) else type(y).__name__
        raise DataError(f"{what}: labels are {got}, expected a 1-D integer array [N]; {fix}")
    if len(x) != len(y):
        raise DataError(f"{what}: {len(x)} images but {len(y)} labels; {fix}")
    if len(x) == 0:
        raise DataError(f"{what}: holds no images; {fix}")
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= num_classes:
        raise DataError(f"{what}: labels span {lo}..{hi}, expected 0..{num_classes - 1}; {fix}")
    return np.ascontiguousarray(x), y.astype(np.int32)
