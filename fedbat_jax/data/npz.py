"""Reader for image sets stored as .npz files: ``x`` uint8 [N,H,W,C] and ``y`` int [N], optionally in parts."""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from fedbat_jax.data.checks import one_line
from fedbat_jax.errors import DataError


class NpzImages(NamedTuple):
    """Arrays of one or more .npz parts, concatenated; ``lossy`` counts images flagged JPEG-decoded."""

    x: np.ndarray
    y: np.ndarray
    lossy: int


def read_npz_images(paths: Sequence[str | Path], fix: str) -> NpzImages:
    """Load ``x`` and ``y`` from each file (never unpickling: allow_pickle=False) and concatenate them in order.

    Extra keys are allowed; a bool ``lossy`` [N] key is counted. Shapes are checked by the caller, except that
    every part must hold arrays. Unreadable, truncated or non-npz files are one-line DataErrors naming the file.
    """
    xs, ys, lossy = [], [], 0
    for path in map(Path, paths):
        try:
            z = np.load(path, allow_pickle=False)
        except OSError as e:
            raise DataError(f"cannot read {path} ({one_line(e)}); {fix}") from e
        except (ValueError, EOFError, zipfile.BadZipFile, zlib.error, MemoryError) as e:
            raise DataError(f"{path} is not a readable .npz file ({type(e).__name__}: {one_line(e)}); {fix}") from e
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise DataError(f"{path} holds a single array, not an .npz archive with x and y; {fix}")
        try:
            with z:
                missing = [k for k in ("x", "y") if k not in z.files]
                if missing:
                    raise DataError(f"{path} has no {' / '.join(missing)} array (keys: {', '.join(z.files)}); {fix}")
                x, y = z["x"], z["y"]
                if "lossy" in z.files:
                    flags = z["lossy"]
                    if flags.dtype == np.bool_ and flags.shape == (len(x),):
                        lossy += int(flags.sum())
        except DataError:
            raise
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, KeyError, MemoryError) as e:
            raise DataError(f"{path} is not a readable .npz file (truncated or corrupt: {type(e).__name__}: "
                            f"{one_line(e)}); {fix}") from e
        xs.append(x)
        ys.append(y)
    try:
        return NpzImages(np.concatenate(xs), np.concatenate(ys), lossy)
    except ValueError as e:
        shapes = ", ".join(f"{Path(p).name} {x.shape}" for p, x in zip(paths, xs))
        raise DataError(f"the .npz parts do not fit together ({shapes}); {fix}") from e
