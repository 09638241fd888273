"""Bits on the wire: packing signs 8 to a byte, and the exact size of any payload pytree."""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def pack_signs(positive: jax.Array) -> jax.Array:
    """Pack a bool array (True = +1) into ``uint8[ceil(size / 8)]``, most significant bit first."""
    return jnp.packbits(positive.reshape(-1))


def unpack_signs(packed: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Inverse of ``pack_signs``: the bool array of the given shape."""
    size = math.prod(shape)
    return jnp.unpackbits(packed, count=size).astype(bool).reshape(shape)


def payload_bits(payload: Any) -> int:
    """Exact size in bits of a payload pytree: every array leaf as it is stored (no headers).

    Works on concrete arrays and on ``jax.ShapeDtypeStruct`` leaves alike, so sizes are known statically.
    """
    return sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize * 8 for x in jax.tree.leaves(payload))
