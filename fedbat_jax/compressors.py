"""Update compressors: what a client puts on the wire, and how the server reads it back.

Modelled on optax: a ``Compressor`` is a NamedTuple of pure functions,

* ``init(params) -> state``: per-client state (e.g. an error-feedback residual; ``()`` if none);
* ``encode(update, scales, state, key) -> (payload, state)``: ``update`` is the client's finished
  update pytree, ``scales`` a per-leaf scalar step size that the client learned (FedBAT) or NaN;
* ``decode(payload) -> update``: what the server adds to the global model;
* ``server``: ``None`` (the server averages the cohort's decoded payloads, weights normalised over the
  cohort), or an optax transform with state that turns the sum of the payloads, each weighted by its
  client's share of the whole federation, into the server's update (EF21's running estimate).

``with_error_feedback(compressor, kind, mask)`` wraps any stateless compressor in error feedback
(``ef``: the classic residual; ``ef21``: EF21's compressed differences) without changing its payload.

The payload is the real message: packed sign bytes, float32 scales and values. Its exact size is
``fedbat_jax.bits.payload_bits(payload)``. A new compressor is one constructor here plus one entry in
``fedbat_jax.algorithms.ALGORITHMS``.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedbat_jax.binarization import leaf_keys, level_indices, level_values
from fedbat_jax.bits import pack_levels, pack_signs, unpack_levels, unpack_signs

Params = Any


class Compressor(NamedTuple):
    init: Callable[[Params], Any]
    encode: Callable[[Params, Params, Any, jax.Array], tuple[Any, Any]]
    decode: Callable[[Any], Params]
    server: optax.GradientTransformation | None = None


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


def scaled_sign(mask: Params, template: Params) -> Compressor:
    """SignSGD with a scale (REFERENCE.md 4): ``sign(m)`` packed 8 per byte plus ``mean|m|`` per tensor,
    decoded as ``mean|m| * sign(m)``. A value of exactly 0 is sent as +1 (one bit has no third state).
    ``ef_signsgd`` is this compressor with ``with_error_feedback(..., "ef", mask)``.
    """

    def encode(update, scales, state, key):
        def leaf(m, compressed):
            if not compressed:
                return {"values": m.astype(jnp.float32)}
            p = m.astype(jnp.float32)
            return {"signs": pack_signs(p >= 0), "scale": jnp.mean(jnp.abs(p))}

        return jax.tree.map(leaf, update, mask), state

    def decode_leaf(p, shape):
        return jnp.where(unpack_signs(p["signs"], shape), p["scale"], -p["scale"])

    return Compressor(lambda params: (), encode, _decoder(template, decode_leaf))


# ---- error feedback: a wrapper over any stateless compressor ---------------------------------------------
ERROR_FEEDBACK = ("none", "ef", "ef21")


def with_error_feedback(inner: Compressor, kind: str, mask: Params) -> Compressor:
    """``inner`` with error feedback; the payload (and so ``uplink_bits``) is ``inner``'s, unchanged.

    * ``ef`` (Karimireddy et al. 2019; Stich et al. 2018): the client compresses ``p = m + e`` on the
      compressed leaves (``mask``) and keeps the residual ``e = p - decode(payload)`` for the next round
      it is sampled in (zeros at first; other leaves travel exactly and keep no residual).
    * ``ef21`` (Richtarik et al. 2021; its partial-participation form, Fatkhullin et al. 2021): the
      client keeps its last estimate ``g`` of its update, sends the compressed difference
      ``c = C(m - g)`` and sets ``g = g + decode(c)``, on every leaf (leaves sent exactly give ``g = m``).
      The server keeps ``G = sum_i w_i g_i`` over *all* N clients (``w_i``: the client's share of the
      federation, stale for clients not sampled) as ``G += sum_k w_k decode(c_k)``; its update is ``G``.

    State per client: ``ef`` one float32 copy of the compressed leaves; ``ef21`` one of every leaf, plus
    one on the server (the paper's CNN4: 1.56 MB a client either way, ResNet-10: 19.6 MB). ``inner`` receives ``p`` (or ``m - g``) as the update and the same ``scales``
    and key, so FedBAT's upload draws ``Q(p, alpha)`` with the step size it learned on ``m``.
    """
    if kind == "none":
        return inner
    if kind not in ("ef", "ef21"):
        raise ValueError(f"unknown error feedback {kind!r}; choose one of: {', '.join(ERROR_FEEDBACK)}")
    f32 = lambda x: x.astype(jnp.float32)  # noqa: E731

    if kind == "ef":
        def init(params):
            return jax.tree.map(lambda x, b: jnp.zeros_like(x, jnp.float32) if b else jnp.zeros((), jnp.float32),
                                params, mask)

        def encode(update, scales, residual, key):
            p = jax.tree.map(lambda m, e, b: f32(m) + e if b else m, update, residual, mask)
            payload, _ = inner.encode(p, scales, (), key)
            sent = inner.decode(payload)
            return payload, jax.tree.map(lambda p_, s, e, b: p_ - s if b else e, p, sent, residual, mask)

        return Compressor(init, encode, inner.decode)

    def encode21(update, scales, estimate, key):
        payload, _ = inner.encode(jax.tree.map(lambda m, g: f32(m) - g, update, estimate), scales, (), key)
        return payload, jax.tree.map(jnp.add, estimate, inner.decode(payload))

    return Compressor(lambda params: jax.tree.map(lambda x: jnp.zeros_like(x, jnp.float32), params), encode21,
                      inner.decode, running_sum())


def running_sum() -> optax.GradientTransformation:
    """The server's side of EF21: its state is the running sum of what it receives, and its output."""

    def init(params):
        return jax.tree.map(lambda x: jnp.zeros_like(x, jnp.float32), params)

    def update(updates, state, params=None):
        total = jax.tree.map(jnp.add, state, updates)
        return total, total

    return optax.GradientTransformation(init, update)
