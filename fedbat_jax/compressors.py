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

from fedbat_jax.binarize import binary_signs
from fedbat_jax.bits import pack_signs, unpack_signs

Params = Any


class Compressor(NamedTuple):
    init: Callable[[Params], Any]
    encode: Callable[[Params, Params, Any, jax.Array], tuple[Any, Any]]
    decode: Callable[[Any], Params]


def _leaf_keys(key: jax.Array, tree: Params) -> Params:
    leaves, treedef = jax.tree.flatten(tree)
    return jax.tree.unflatten(treedef, list(jax.random.split(key, len(leaves))))


def full_precision() -> Compressor:
    """FedAvg: every value as float32."""

    def encode(update, scales, state, key):
        return jax.tree.map(lambda m: {"values": m.astype(jnp.float32)}, update), state

    def decode(payload):
        return jax.tree.map(lambda p: p["values"], payload, is_leaf=lambda p: isinstance(p, dict) and "values" in p)

    return Compressor(lambda params: (), encode, decode)


def learned_signs(mask: Params, template: Params) -> Compressor:
    """FedBAT's upload (REFERENCE.md 1.6): on binarized leaves a fresh draw of ``Q(u, alpha)`` with the
    learned ``alpha``, sent as packed signs plus one float32 alpha; other leaves in float32."""
    shapes = jax.tree.map(lambda x: tuple(x.shape), template)
    is_payload = lambda p: isinstance(p, dict) and ("values" in p or "signs" in p)  # noqa: E731

    def encode(update, scales, state, key):
        def leaf(m, alpha, binarized, k):
            if not binarized:
                return {"values": m.astype(jnp.float32)}
            alpha = alpha.astype(jnp.float32)
            return {"signs": pack_signs(binary_signs(m, alpha, k)), "alpha": alpha}

        return jax.tree.map(leaf, update, scales, mask, _leaf_keys(key, update)), state

    def decode(payload):
        def leaf(p, shape):
            if "values" in p:
                return p["values"]
            return p["alpha"] * jnp.where(unpack_signs(p["signs"], shape), 1.0, -1.0)

        return jax.tree.map(leaf, payload, shapes, is_leaf=is_payload)

    return Compressor(lambda params: (), encode, decode)
