"""Two bits a value on two scales: the levels ``{-M, -a, +a, +M}`` with ``a`` the step size the client learned
(FedBAT's alpha, at most ``M``) and ``M = max|m|`` per tensor, and unbiased stochastic rounding between the two
levels around each value. FedBAT's 2-bit comparison (``compressor=fedbat`` with ``upload_alpha=learned_max``): the
learned alpha sets the inner levels, ``M`` keeps the quantizer unbiased where the 1-bit learned alpha clips.

Payload: the 2-bit level indices packed 4 to a byte, plus ``a`` and ``M`` as float32 (``d * 2 + 64`` bits a tensor).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from fedbat_jax.binarization import leaf_keys
from fedbat_jax.compressors import Compressor
from fedbat_jax.packing import pack_levels, unpack_levels
from fedbat_jax.payloads import Dense, decoder, payload_kind


@payload_kind
class TwoScale(NamedTuple):
    levels: jax.Array  # uint8 [ceil(size / 4)]: indices 0..3 of -M, -a, +a, +M
    alpha: jax.Array  # float32 scalar a: the inner levels
    top: jax.Array  # float32 scalar M = max|m|: the outer levels


def level_index(m: jax.Array, a: jax.Array, top: jax.Array, key: jax.Array) -> jax.Array:
    """One unbiased draw of the level index of each value of ``m`` in ``[-top, top]``, ``0 < a <= top``."""
    u = jax.random.uniform(key, m.shape, jnp.float32)
    x = jnp.clip(m, -top, top)
    outer = jnp.maximum(top - a, 1e-30)
    inner = jnp.where(u < (x + a) / (2.0 * a), 2, 1)  # |x| <= a: between -a and +a
    above = jnp.where(u < (x - a) / outer, 3, 2)  # x > a: between +a and +M
    below = jnp.where(u < (-a - x) / outer, 0, 1)  # x < -a: between -M and -a
    return jnp.where(x > a, above, jnp.where(x < -a, below, inner)).astype(jnp.uint8)


def level_value(q: jax.Array, a: jax.Array, top: jax.Array) -> jax.Array:
    return jnp.stack([-top, -a, a, top])[q.astype(jnp.int32)]


def learned_and_max(mask, template) -> Compressor:
    """The two-scale 2-bit quantizer on the masked leaves (``scales``: the learned alpha per leaf); others float32."""

    def encode(update, scales, state, key):
        def leaf(m, alpha, compressed, k):
            if not compressed:
                return Dense(m.astype(jnp.float32))
            m = m.astype(jnp.float32)
            top = jnp.maximum(jnp.max(jnp.abs(m)), 1e-12)
            a = jnp.minimum(alpha.astype(jnp.float32), top)
            return TwoScale(pack_levels(level_index(m, a, top, k), 2), a, top)

        return jax.tree.map(leaf, update, scales, mask, leaf_keys(key, update)), state

    def decode_leaf(p: TwoScale, shape):
        return level_value(unpack_levels(p.levels, 2, shape), p.alpha, p.top)

    return Compressor(lambda params: (), encode, decoder(template, {TwoScale: decode_leaf}))
