"""Packing on the wire: signs 8 to a byte, ``bits``-bit level indices ``8 // bits`` to a byte (their exact size:
``fedbat_jax.payloads.payload_bits``)."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def pack_signs(positive: jax.Array) -> jax.Array:
    """Pack a bool array (True = +1) into ``uint8[ceil(size / 8)]``, most significant bit first."""
    return jnp.packbits(positive.reshape(-1))


def unpack_signs(packed: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Inverse of ``pack_signs``: the bool array of the given shape."""
    size = math.prod(shape)
    return jnp.unpackbits(packed, count=size).astype(bool).reshape(shape)


def pack_levels(q: jax.Array, bits: int) -> jax.Array:
    """Pack uint8 level indices of ``bits`` in {1, 2, 4, 8} bits each, 8 // bits per byte."""
    if bits == 8:
        return q.reshape(-1).astype(jnp.uint8)
    if bits == 1:
        return pack_signs(q.astype(bool))
    per = 8 // bits
    flat = q.reshape(-1).astype(jnp.uint8)
    flat = jnp.pad(flat, (0, -flat.size % per)).reshape(-1, per)
    shifts = jnp.arange(per, dtype=jnp.uint8) * bits
    return jnp.bitwise_or.reduce(flat << shifts, axis=1).astype(jnp.uint8)


def unpack_levels(packed: jax.Array, bits: int, shape: tuple[int, ...]) -> jax.Array:
    """Inverse of ``pack_levels``: uint8 level indices of the given shape."""
    size = math.prod(shape)
    if bits == 8:
        return packed[:size].reshape(shape)
    if bits == 1:
        return unpack_signs(packed, shape).astype(jnp.uint8)
    per = 8 // bits
    shifts = jnp.arange(per, dtype=jnp.uint8) * bits
    q = (packed[:, None] >> shifts) & jnp.uint8(2**bits - 1)
    return q.reshape(-1)[:size].reshape(shape)
