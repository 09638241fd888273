"""Update compressors: what a client puts on the wire, and how the server reads it back.

Modelled on optax: a ``Compressor`` is a NamedTuple of pure functions,

* ``init(params) -> state``: per-client state (e.g. an error-feedback residual; ``()`` if none);
* ``encode(update, scales, state, key) -> (payload, state)``: ``update`` is the client's finished
  update pytree, ``scales`` a per-leaf scalar step size that the client learned (FedBAT) or NaN;
* ``decode(payload) -> update``: what the server adds to the global model.

The payload is the real message: packed sign bytes, float32 scales and values. Its exact size is
``fedbat_jax.bits.payload_bits(payload)``. A new compressor is one constructor here plus one entry in
``fedbat_jax.algorithms.ALGORITHMS``.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from fedbat_jax.binarization import leaf_keys, level_indices, level_values
from fedbat_jax.bits import pack_levels, pack_signs, unpack_levels, unpack_signs

Params = Any


class Compressor(NamedTuple):
    init: Callable[[Params], Any]
    encode: Callable[[Params, Params, Any, jax.Array], tuple[Any, Any]]
    decode: Callable[[Any], Params]


def full_precision() -> Compressor:
    """FedAvg: every value as float32."""

    def encode(update, scales, state, key):
        return jax.tree.map(lambda m: {"values": m.astype(jnp.float32)}, update), state

    def decode(payload):
        return jax.tree.map(lambda p: p["values"], payload, is_leaf=_is_payload)

    return Compressor(lambda params: (), encode, decode)


def _is_payload(p) -> bool:
    return isinstance(p, dict) and bool({"values", "levels", "signs"} & set(p))


def _decoder(template: Params, decode_leaf: Callable) -> Callable[[Any], Params]:
    shapes = jax.tree.map(lambda x: tuple(x.shape), template)

    def decode(payload):
        return jax.tree.map(lambda p, shape: p["values"] if "values" in p else decode_leaf(p, shape), payload,
                            shapes, is_leaf=_is_payload)

    return decode


def stochastic_levels(mask: Params, template: Params, bits: int = 1, learned_scale: bool = True) -> Compressor:
    """Stochastic rounding to ``2^bits`` levels in ``[-alpha, alpha]`` on the masked leaves: ``bits``-bit
    level indices, packed, plus one float32 alpha per tensor; other leaves float32.

    * ``learned_scale=True``: alpha is the step size the client learned (FedBAT, REFERENCE.md 1.6:
      a fresh draw of ``Q(u, alpha)``; ``bits > 1`` is k-bit FedBAT);
    * ``learned_scale=False``: alpha = ``max|m|`` per tensor, so the quantizer is unbiased
      (``bits = 1``: stochastic binarization; ``bits = k``: QSGD/FedPAQ-style k-bit, REFERENCE.md 4).
    """

    def encode(update, scales, state, key):
        def leaf(m, alpha, compressed, k):
            if not compressed:
                return {"values": m.astype(jnp.float32)}
            alpha = alpha if learned_scale else jnp.maximum(jnp.max(jnp.abs(m)), 1e-12)
            alpha = alpha.astype(jnp.float32)
            return {"levels": pack_levels(level_indices(m, alpha, k, bits), bits), "alpha": alpha}

        return jax.tree.map(leaf, update, scales, mask, leaf_keys(key, update)), state

    def decode_leaf(p, shape):
        return level_values(unpack_levels(p["levels"], bits, shape), p["alpha"], bits)

    return Compressor(lambda params: (), encode, _decoder(template, decode_leaf))


def scaled_sign(mask: Params, template: Params, error_feedback: bool = False) -> Compressor:
    """SignSGD with a scale (REFERENCE.md 4): ``sign(p)`` packed 8 per byte plus ``mean|p|`` per tensor,
    decoded as ``mean|p| * sign(p)``; ``p = m`` or, with error feedback, ``p = m + e`` and the client
    keeps the residual ``e = p - decoded`` (zeros at first) for the next round it is sampled in.
    A value of exactly 0 is sent as +1 (one bit has no third state).
    """

    def init(params):
        if not error_feedback:
            return ()
        return jax.tree.map(lambda x, b: jnp.zeros_like(x, jnp.float32) if b else jnp.zeros((), jnp.float32),
                            params, mask)

    def encode(update, scales, state, key):
        residual = state if error_feedback else jax.tree.map(lambda m: 0.0, update)

        def leaf(m, e, compressed):
            if not compressed:
                return {"values": m.astype(jnp.float32)}, e
            p = m.astype(jnp.float32) + e
            scale = jnp.mean(jnp.abs(p))
            positive = p >= 0
            return {"signs": pack_signs(positive), "scale": scale}, p - jnp.where(positive, scale, -scale)

        out = jax.tree.map(leaf, update, residual, mask)
        pair = lambda x: isinstance(x, tuple)  # noqa: E731
        payload = jax.tree.map(lambda t: t[0], out, is_leaf=pair)
        return payload, (jax.tree.map(lambda t: t[1], out, is_leaf=pair) if error_feedback else state)

    def decode_leaf(p, shape):
        return jnp.where(unpack_signs(p["signs"], shape), p["scale"], -p["scale"])

    return Compressor(init, encode, _decoder(template, decode_leaf))
