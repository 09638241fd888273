"""Top-k sparsification (Stich et al. 2018; Aji and Heafield 2017): per compressed tensor, the ``k`` entries of
largest magnitude, ``k = max(1, round(topk_fraction * size))``, sent as their indices plus their float32 values;
every other entry is decoded as 0. With ``error_feedback=ef`` it is the classic EF-top-k (the dropped mass is
kept as the client's residual and added to its next update).

Its payload kind is ``Sparse``: indices in the smallest unsigned integer type that holds every position of the
tensor (uint8 up to 256 entries, uint16 up to 65,536, uint32 beyond; exact, since each index is below the size)
plus the values, so a tensor of ``n`` entries costs ``k * (index bits + 32)`` bits.

    python -m fedbat_jax.main --config.algorithm=fedavg --config.compressor=topk --config.topk_fraction=0.01
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fedbat_jax.compressors import Compressor, CompressorSpec
from fedbat_jax.payloads import Dense, decoder, payload_kind
from fedbat_jax.registry import Range, Setting


@payload_kind
class Sparse(NamedTuple):
    indices: jax.Array  # unsigned int [k]: flat positions, the smallest type that holds size - 1
    values: jax.Array  # float32 [k]: the entries there


def index_dtype(size: int) -> np.dtype:
    """The smallest unsigned integer type that holds every index of a tensor of ``size`` entries."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if size - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.uint64)


def kept(size: int, fraction: float) -> int:
    """Entries sent of a tensor of ``size``: ``max(1, round(fraction * size))``, at most ``size``."""
    return min(size, max(1, round(fraction * size)))


def topk(mask, template, fraction: float) -> Compressor:
    """Top-k of ``fraction`` of each masked leaf; other leaves float32."""

    def encode(update, scales, state, key):
        def leaf(m, compressed):
            if not compressed:
                return Dense(m.astype(jnp.float32))
            flat = m.astype(jnp.float32).reshape(-1)
            _, idx = jax.lax.top_k(jnp.abs(flat), kept(flat.size, fraction))
            return Sparse(idx.astype(index_dtype(flat.size)), flat[idx])

        return jax.tree.map(leaf, update, mask), state

    def decode_leaf(p: Sparse, shape):
        size = math.prod(shape)
        return jnp.zeros(size, jnp.float32).at[p.indices.astype(jnp.int32)].set(p.values).reshape(shape)

    return Compressor(lambda params: (), encode, decoder(template, {Sparse: decode_leaf}))


TOPK = CompressorSpec(
    "top-k: the topk_fraction largest-magnitude entries per tensor, as indices plus float32 values",
    lambda mask, template, config: topk(mask, template, config.topk_fraction),
    settings=(Setting("topk_fraction", 0.01, "topk compressor: fraction of each kernel's entries sent "
                                             "(at least one)", Range(0, 1, low_open=True)),))
