"""Reader for the gzipped IDX files of MNIST and Fashion-MNIST, with checksums."""

from __future__ import annotations

import gzip
import hashlib
import zlib
from pathlib import Path

import numpy as np

from fedbat_jax.errors import DataError

# sha256 of the original .gz files.
# Fashion-MNIST: computed from shared/data/fashion_mnist (byte-identical to the files Zalando publishes);
#   they equal tensorflow/datasets tensorflow_datasets/url_checksums/fashion_mnist.txt.
# MNIST: as registered in tensorflow/datasets tensorflow_datasets/url_checksums/mnist.txt (files mirrored from
#   yann.lecun.com at storage.googleapis.com/cvdf-datasets/mnist, sizes 9912422 / 28881 / 1648877 / 4542);
#   the same digests appear in several independent projects that download from yann.lecun.com.
#   No MNIST copy was available here to recompute them.
FILE_SHA256: dict[str, dict[str, str]] = {
    "fashion_mnist": {
        "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
    },
    "mnist": {
        "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    },
}

# sha256 of the decompressed IDX bytes. Debian's dataset-fashion-mnist ships the same deflate streams with a
# gzip header lacking file name and mtime, so its .gz digests differ while the content is identical.
# Computed from shared/data/fashion_mnist. For MNIST no verified copy was at hand, so none is listed
# (an MNIST file whose .gz digest differs is rejected).
CONTENT_SHA256: dict[str, dict[str, str]] = {
    "fashion_mnist": {
        "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
    "mnist": {},
}

# IDX type code -> big-endian numpy dtype.
_IDX_DTYPES: dict[int, str] = {
    0x08: "u1",
    0x09: "i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


def read_idx_gz(
    path: str | Path,
    expected_sha256: str | None = None,
    *,
    content_sha256: str | None = None,
) -> np.ndarray:
    """Read a gzipped IDX file into a native-endian array.

    With ``expected_sha256`` the file's sha256 must match. If it does not and ``content_sha256`` is given,
    the file is still accepted when its decompressed bytes hash to ``content_sha256`` (same data, other gzip
    header). Any mismatch, truncation, bad magic or size mismatch raises DataError naming the file.
    """
    path = Path(path)
    try:
        blob = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}; check the path and its permissions") from e

    file_ok = expected_sha256 is None or hashlib.sha256(blob).hexdigest() == expected_sha256.lower()
    try:
        raw = gzip.decompress(blob)
    except (EOFError, OSError, zlib.error) as e:
        reason = "truncated" if isinstance(e, EOFError) else f"not a valid gzip file ({e})"
        raise DataError(f"{path} is {reason}; delete it and download it again") from e

    if not file_ok:
        got = hashlib.sha256(blob).hexdigest()
        if content_sha256 is None or hashlib.sha256(raw).hexdigest() != content_sha256.lower():
            raise DataError(
                f"{path} fails its sha256 check (expected {expected_sha256}, got {got}); "
                "the file is corrupt or not the official one: delete it and download it again"
            )
    return _parse_idx(raw, path)


def _parse_idx(raw: bytes, path: Path) -> np.ndarray:
    """Parse decompressed IDX bytes: 0x00 0x00, type code, ndim, ndim big-endian uint32 sizes, data."""
    redo = "delete it and download it again"
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic {raw[:4].hex()}); {redo}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated inside its IDX header; {redo}")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"{path} holds {len(raw) - header} data bytes but its header {dims} needs {expected}; {redo}"
        )
    arr = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)
