"""Update compressors: what a client puts on the wire, and how the server reads it back.

Modelled on optax: a ``Compressor`` is a NamedTuple of pure functions,

* ``init(params) -> state``: per-client state (e.g. an error-feedback residual; ``()`` if none), one row of
  the N-client table;
* ``encode(update, scales, state, key) -> (payload, state)``: ``update`` is the client's finished
  update pytree, ``scales`` a per-leaf scalar step size that the client learned (FedBAT) or NaN; the payload
  holds one typed payload per leaf (``fedbat_jax.payloads``: ``Dense``, ``Signs``, ``Levels``, or the
  compressor's own kind), whose exact size is ``payload_bits``;
* ``decode(payload) -> update``: what the server adds to the global model;
* ``server``: ``None`` (the server averages the cohort's decoded payloads, weights normalised over the
  cohort), or an optax transform with state that turns the sum of the payloads, each weighted by its
  client's share of the whole federation, into the server's update (EF21's running estimate);
* ``estimated``: with a ``server``, the leaves it keeps an estimate of (a pytree of bools; ``None``: all); the
  others are averaged over the cohort as without one.

The ``compressor`` setting names an entry of ``COMPRESSORS``: a ``CompressorSpec`` that builds the
``Compressor`` for a model (``make(mask, template, config)``; ``mask`` marks the compressed leaves, every conv
and dense kernel; the others travel as float32). ``error_feedback`` wraps it (``ERROR_FEEDBACK``) without
changing its payload. A new compressor is one file with its spec plus one line in ``COMPRESSORS``
(``fedbat_jax/compressors/topk.py`` shows it).
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedbat_jax.binarization import STES, default_binarize_predicate, leaf_keys, level_indices, level_values
from fedbat_jax.errors import ConfigError
from fedbat_jax.packing import pack_levels, pack_signs, unpack_levels, unpack_signs
from fedbat_jax.payloads import Dense, Levels, Signs, decoder
from fedbat_jax.registry import ABOVE_ZERO, FRACTION, NON_NEGATIVE, UNIT, Registry, Setting, declares

Params = Any


class Compressor(NamedTuple):
    init: Callable[[Params], Any]
    encode: Callable[[Params, Params, Any, jax.Array], tuple[Any, Any]]
    decode: Callable[[Any], Params]
    server: optax.GradientTransformation | None = None
    estimated: Params | None = None


class CompressorSpec(NamedTuple):
    """An entry of ``COMPRESSORS``: how to build the compressor, and what it asks of local training."""

    summary: str  # one line, for docs/methods.md and --help
    make: Callable[[Params, Params, Any], Compressor]  # (mask, template, config) -> Compressor
    compresses: Callable | None = default_binarize_predicate  # leaves sent compressed (None: none)
    learned_scale: bool = False  # the compressed leaves train binarized and their step size is learned (FedBAT)
    settings: tuple[Setting, ...] = ()  # settings this compressor brings (e.g. topk_fraction)
    check: Callable[[Any], None] | None = None  # check(config): its settings' ranges, one-line ConfigError


def _dense(m) -> Dense:
    return Dense(m.astype(jnp.float32))


def full_precision() -> Compressor:
    """FedAvg: every value as float32."""

    def encode(update, scales, state, key):
        return jax.tree.map(_dense, update), state

    return Compressor(lambda params: (), encode, decoder(None, {}))


def stochastic_levels(mask: Params, template: Params, bits: int = 1, learned_scale: bool = True,
                      bucket: int = 0) -> Compressor:
    """Stochastic rounding to ``2^bits`` levels in ``[-alpha, alpha]`` on the masked leaves: ``bits``-bit
    level indices, packed, plus one float32 alpha per tensor; other leaves float32.

    * ``learned_scale=True``: alpha is the step size the client learned (FedBAT, REFERENCE.md 1.6:
      a fresh draw of ``Q(u, alpha)``; ``bits > 1`` is k-bit FedBAT);
    * ``learned_scale=False``: alpha = ``max|m|`` per tensor, so the quantizer is unbiased
      (``bits = 1``: stochastic binarization; ``bits = k``: QSGD/FedPAQ-style k-bit, REFERENCE.md 4);
      ``bucket > 0``: alpha = ``max|m|`` per bucket of ``bucket`` consecutive values of the flattened tensor
      (the last one shorter), one float32 each: ``bits + 32 / bucket`` bits a value (Alistarh et al. 2017's
      buckets), and the variance falls with the bucket's ``max^2`` instead of the tensor's.
    """
    if bucket and learned_scale:
        raise ValueError("buckets scale by max|m| per bucket: they need learned_scale=False")

    def bucket_ids(size):
        return jnp.arange(size) // bucket

    def encode(update, scales, state, key):
        def leaf(m, alpha, compressed, k):
            if not compressed:
                return _dense(m)
            if bucket:
                flat = m.astype(jnp.float32).reshape(-1)
                ids = bucket_ids(flat.size)
                alphas = jnp.maximum(jax.ops.segment_max(jnp.abs(flat), ids, -(-flat.size // bucket)), 1e-12)
                return Levels(pack_levels(level_indices(flat, alphas[ids], k, bits), bits), alphas)
            alpha = alpha if learned_scale else jnp.maximum(jnp.max(jnp.abs(m)), 1e-12)
            alpha = alpha.astype(jnp.float32)
            return Levels(pack_levels(level_indices(m, alpha, k, bits), bits), alpha)

        return jax.tree.map(leaf, update, scales, mask, leaf_keys(key, update)), state

    def decode_leaf(p: Levels, shape):
        if bucket:
            size = math.prod(shape)
            flat = level_values(unpack_levels(p.levels, bits, (size,)), p.alpha[bucket_ids(size)], bits)
            return flat.reshape(shape)
        return level_values(unpack_levels(p.levels, bits, shape), p.alpha, bits)

    return Compressor(lambda params: (), encode, decoder(template, {Levels: decode_leaf}))


def scaled_sign(mask: Params, template: Params) -> Compressor:
    """SignSGD with a scale (REFERENCE.md 4): ``sign(m)`` packed 8 per byte plus ``mean|m|`` per tensor,
    decoded as ``mean|m| * sign(m)``. A value of exactly 0 is sent as +1 (one bit has no third state).
    ``ef_signsgd`` is this compressor with ``with_error_feedback(..., "ef", mask)``.
    """

    def encode(update, scales, state, key):
        def leaf(m, compressed):
            if not compressed:
                return _dense(m)
            p = m.astype(jnp.float32)
            return Signs(pack_signs(p >= 0), jnp.mean(jnp.abs(p)))

        return jax.tree.map(leaf, update, mask), state

    def decode_leaf(p: Signs, shape):
        return jnp.where(unpack_signs(p.signs, shape), p.scale, -p.scale)

    return Compressor(lambda params: (), encode, decoder(template, {Signs: decode_leaf}))


# ---- error feedback: a wrapper over any stateless compressor ---------------------------------------------
def _f32(x):
    return x.astype(jnp.float32)


def _zeros_on(mask: Params, params: Params) -> Params:
    """float32 zeros shaped like the ``mask`` leaves of ``params``, a scalar zero on the others."""
    return jax.tree.map(lambda x, b: jnp.zeros_like(x, jnp.float32) if b else jnp.zeros((), jnp.float32), params, mask)


def classic_ef(inner: Compressor, mask: Params) -> Compressor:
    """``ef`` (Karimireddy et al. 2019; Stich et al. 2018): the client compresses ``p = m + e`` on the
    compressed leaves (``mask``) and keeps the residual ``e = p - decode(payload)`` for the next round it is
    sampled in (zeros at first; other leaves travel exactly and keep no residual). State: one float32 copy of
    the compressed leaves."""

    def init(params):
        return _zeros_on(mask, params)

    def encode(update, scales, residual, key):
        p = jax.tree.map(lambda m, e, b: _f32(m) + e if b else m, update, residual, mask)
        payload, _ = inner.encode(p, scales, (), key)
        sent = inner.decode(payload)
        return payload, jax.tree.map(lambda p_, s, e, b: p_ - s if b else e, p, sent, residual, mask)

    return Compressor(init, encode, inner.decode)


@declares(
    Setting("ef21_alpha", "absolute", "ef21 with a learned step size (fedbat): absolute (the learned alpha on u - g) | "
                                      "relative (alpha = c rms(u - g), c = alpha / rms(u) as learned on u; "
                                      "contractive only for small c)", ("absolute", "relative")),
    Setting("ef21_momentum", 0.0, "ef21: client momentum beta on the update, v = beta v + (1 - beta) u, sending "
                                  "C(v - g) (EF21-SGDM; 0 = plain EF21; one more float32 copy of the kernels per "
                                  "client)", UNIT),
    Setting("ef21_cap", 0.0, "ef21 with ef21_alpha=relative: cap the learned multiplier c = alpha / rms(u) at this "
                             "value (0 = no cap; below 1 keeps stochastic rounding of u - g contractive on a "
                             "light-tailed difference)", NON_NEGATIVE),
    Setting("ef21_multiplier", 0.0, "ef21 with ef21_alpha=relative: a fixed multiplier c in place of the learned "
                                    "one (0 = learned; training keeps its learned alpha): the control that separates "
                                    "learning c from its level", NON_NEGATIVE))
def ef21(inner: Compressor, mask: Params, relative: bool = False, momentum: float = 0.0, cap: float = 0.0,
         multiplier: float = 0.0) -> Compressor:
    """``ef21`` (Richtarik et al. 2021; its partial-participation form, Fatkhullin et al. 2021): the client
    keeps its last estimate ``g`` of its update, sends the compressed difference ``c = C(m - g)`` and sets
    ``g = g + decode(c)``, on the compressed leaves (``mask``). The server keeps ``G = sum_i w_i g_i`` over *all* N
    clients (``w_i``: the client's share of the federation, stale for clients not sampled) as
    ``G += sum_k w_k decode(c_k)``; its update is ``G`` there. Leaves sent exactly (BatchNorm scales and biases)
    keep no estimate: the cohort's ``m`` are averaged as in FedAvg (a stale estimate of them would only lag).
    State: one float32 copy of the compressed leaves per client, and one on the server.

    * ``relative``: a learned step size (FedBAT's ``scales``) is applied to the difference relative to its size,
      ``alpha = c * rms(m - g)`` with ``c = alpha / rms(m)`` the ratio the client learned on ``m``, so the
      compressor's error scales with the difference; the absolute learned alpha on a small ``m - g`` does not.
      The error is ``E||Q(d) - d||^2 ~ c^2 ||d||^2`` from the small entries plus the clipped mass of the large
      ones, so it is contractive (below ``||d||^2``) only for ``c`` well below 1 on a light-tailed ``d``: about
      0.49 ``||d||^2`` at ``c = mean|d| / rms(d)`` on a Gaussian, 0.96 on a heavy-tailed one. On the convex study
      (docs/results/README.md) the learned ``c`` is not: F - F* blows up to about 200 before it falls back.
      ``cap`` > 0 caps ``c`` at that value (issue 40: whether a capped learned multiplier keeps the rate);
      ``multiplier`` > 0 replaces the learned ``c`` by that fixed value (its control: learning ``c``, or its level?).
    * ``momentum`` ``beta > 0`` (EF21-SGDM, Fatkhullin et al. 2023): the client sends ``C(v - g)`` for
      ``v = beta v + (1 - beta) m`` (``v`` starts at 0), one more float32 copy of the compressed leaves.
    """

    def encode(update, scales, state, key):
        estimate, velocity = state if momentum else (state, None)
        if momentum:
            velocity = jax.tree.map(lambda v, m, b: momentum * v + (1.0 - momentum) * _f32(m) if b else v,
                                    velocity, update, mask)
            target = jax.tree.map(lambda v, m, b: v if b else _f32(m), velocity, update, mask)
        else:
            target = jax.tree.map(_f32, update)
        diff = jax.tree.map(lambda t, g, b: t - g if b else t, target, estimate, mask)
        if relative:
            def relative_c(s, t):
                c = jnp.float32(multiplier) if multiplier else s / jnp.maximum(_rms(t), 1e-30)
                return jnp.minimum(c, cap) if cap else c

            scales = jax.tree.map(lambda s, t, d, b: relative_c(s, t) * _rms(d) if b else s, scales, target, diff, mask)
        payload, _ = inner.encode(diff, scales, (), key)
        estimate = jax.tree.map(lambda g, c, b: g + c if b else g, estimate, inner.decode(payload), mask)
        return payload, ((estimate, velocity) if momentum else estimate)

    def init(params):  # the estimate g (zeros of a scalar on the leaves sent exactly); with momentum (g, v)
        return (_zeros_on(mask, params), _zeros_on(mask, params)) if momentum else _zeros_on(mask, params)

    return Compressor(init, encode, inner.decode, running_sum(mask), mask)


def _rms(x):
    return jnp.sqrt(jnp.mean(jnp.square(x)))


def running_sum(mask: Params) -> optax.GradientTransformation:
    """The server's side of EF21: on the ``mask`` leaves its state is the running sum of what it receives, and its
    output; the other leaves pass through."""

    def init(params):
        return _zeros_on(mask, params)

    def update(updates, state, params=None):
        total = jax.tree.map(lambda s, u, b: s + u if b else s, state, updates, mask)
        return jax.tree.map(lambda t, u, b: t if b else u, total, updates, mask), total

    return optax.GradientTransformation(init, update)


def _no_feedback(inner: Compressor, mask: Params) -> Compressor:
    return inner


# The ``error_feedback`` setting: name -> (inner compressor, compressed-leaf mask) -> Compressor.
ERROR_FEEDBACK = Registry("error_feedback", {"none": _no_feedback, "ef": classic_ef, "ef21": ef21})


def with_error_feedback(inner: Compressor, kind: str, mask: Params, **options) -> Compressor:
    """``inner`` with error feedback of ``kind`` (``ERROR_FEEDBACK``); the payload (and so ``uplink_bits``) is
    ``inner``'s, unchanged. ``inner`` receives ``p`` (or ``m - g``) as the update and the same ``scales`` and key,
    so FedBAT's upload draws ``Q(p, alpha)`` with the step size it learned on ``m``. The paper's CNN4 keeps
    1.56 MB a client either way, ResNet-10 19.6 MB. ``options``: ``ef21``'s (``relative``, ``momentum``)."""
    return ERROR_FEEDBACK[kind](inner, mask, **options)


# ---- the registry: the ``compressor`` setting's values -----------------------------------------------------
def _none(mask, template, config) -> Compressor:
    return full_precision()


UPLOAD_ALPHAS = ("learned", "max", "learned_max", "exact")


def _fedbat(mask, template, config) -> Compressor:
    """FedBAT's upload (``upload_alpha``): ``Q(u, alpha)`` with the learned alpha (the paper), with ``max|u|`` (1 bit,
    unbiased), on the two scales ``{+-alpha, +-max|u|}`` (2 bits, unbiased: ``two_scale.py``), or the float32 latent
    itself (``exact``, a diagnosis: 32 bits a value)."""
    if config.upload_alpha == "learned_max":
        from fedbat_jax.compressors.two_scale import learned_and_max

        return learned_and_max(mask, template)
    if config.upload_alpha == "exact":
        return full_precision()
    return stochastic_levels(mask, template, config.bits, learned_scale=config.upload_alpha == "learned")


# FedBAT's settings (the learned operator's; ``bits`` is qsgd's too).
BITS = Setting("bits", 1, "fedbat: bits of the learned operator (1 = the paper); qsgd: bits per value", (1, 2, 4, 8))
FEDBAT_SETTINGS = (
    Setting("rho", 6.0, "fedbat: step-size learning-rate multiplier", NON_NEGATIVE),
    Setting("phi", 0.5, "[config] fedbat: fraction of local steps trained in full precision before binarizing",
            FRACTION),
    Setting("alpha_min", 5e-4, "[config] fedbat: lower clip of the learned step size", ABOVE_ZERO),
    Setting("alpha_max", 5e-2, "[config] fedbat: upper clip of the learned step size", ABOVE_ZERO),
    Setting("alpha_init_scale", 1.0, "fedbat: alpha0 = alpha_init_scale x mean|u| when warm-up ends (1 = the "
                                     "paper); with rho = 0 alpha stays at that level (issue 40's level control)",
            ABOVE_ZERO),
    Setting("alpha_rule", "learned", "fedbat: learned (the paper) | max_abs (alpha = max|u| per tensor, as in the "
                                     "convergence theorem)", ("learned", "max_abs")),
    Setting("alpha_bounds", "fixed", "fedbat: fixed (the paper) | lr (alpha_min and alpha_max scaled by lr_t / lr_0)",
            ("fixed", "lr")),
    Setting("ste", "clipped", "fedbat: straight-through estimator of dQ/du: clipped (the paper: no data gradient "
                              "where |u| > alpha) | identity (the data gradient everywhere)", STES),
    BITS,
    Setting("upload_alpha", "learned", "fedbat: the upload's alpha: learned (the paper) | max (max|u|: 1 bit, "
                                       "unbiased) | learned_max (2 bits on the levels +-alpha, +-max|u|, unbiased) | "
                                       "exact (the float32 latent: a diagnosis)", UPLOAD_ALPHAS),
    Setting("alpha_metrics", False, "fedbat: every round, per binarized layer L, log the cohort's mean learned alpha / "
                                    "mean|u| (alpha_ratio/L), alpha / alpha0 (alpha_gain/L), alpha / rms(u) "
                                    "(alpha_rms/L) and share of |u| > alpha (clipped/L); changes no number"),
)


def _check_fedbat(config) -> None:
    if config.alpha_min >= config.alpha_max:
        raise ConfigError(f"alpha_min ({config.alpha_min}) must be < alpha_max ({config.alpha_max})")
    if config.upload_alpha == "learned_max" and config.bits != 1:
        raise ConfigError(f"upload_alpha=learned_max sends 2 bits a value on its own levels; it needs bits=1 (the "
                          f"training operator's), got bits={config.bits}")


def _stoch_binary(mask, template, config) -> Compressor:
    return stochastic_levels(mask, template, 1, learned_scale=False, bucket=config.bucket_size)


def _qsgd(mask, template, config) -> Compressor:
    return stochastic_levels(mask, template, config.bits, learned_scale=False, bucket=config.bucket_size)


BUCKET = Setting("bucket_size", 0, "stoch_binary, qsgd: one alpha = max|m| per bucket of this many values (0 = one "
                                   "per tensor; 512: 1 + 32/512 = 1.06 bits a value at 1 bit)", NON_NEGATIVE)


def _scaled_sign(mask, template, config) -> Compressor:
    return scaled_sign(mask, template)


COMPRESSORS = Registry("compressor", {
    "none": CompressorSpec("every value as float32 (FedAvg's upload)", _none, compresses=None),
    "fedbat": CompressorSpec("FedBAT: the kernels train binarized and send Q(u, alpha) with the learned alpha, "
                             "bits-bit levels packed", _fedbat, learned_scale=True, check=_check_fedbat,
                             settings=FEDBAT_SETTINGS),
    "stoch_binary": CompressorSpec("stochastic binarization with alpha = max|m| per tensor, or per bucket of "
                                   "bucket_size values (unbiased)", _stoch_binary, settings=(BUCKET,)),
    "qsgd": CompressorSpec("bits-bit stochastic levels with alpha = max|m| per tensor, or per bucket of bucket_size "
                           "values (unbiased)", _qsgd, settings=(BITS, BUCKET)),
    "scaled_sign": CompressorSpec("sign(m) packed plus mean|m| per tensor (SignSGD)", _scaled_sign),
    "topk": "fedbat_jax.compressors.topk:TOPK",
    "eden": "fedbat_jax.compressors.rotation:EDEN",
    "drive": "fedbat_jax.compressors.rotation:DRIVE",
})
