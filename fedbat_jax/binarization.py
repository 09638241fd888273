"""The FedBAT binarization operator Q(u, alpha) and its learnable step size.

REFERENCE.md section 2:

* forward:  ``alpha * b`` with ``b = +1`` with probability ``clip((u/alpha + 1)/2, 0, 1)``, else ``-1``,
  so ``E[Q(u, alpha)] = clip(u, -alpha, alpha)``;
* backward, with ``x = u / alpha`` and upstream gradient ``g``:
  ``dQ/du = g * 1[|x| <= 1]`` and ``dQ/dalpha = sum g * (+1 if x > 1, -1 if x < -1, b - x otherwise)``.

Section 1.5: ``alpha = clip(alpha0 * exp(rho * a), alpha_min, alpha_max)``, learnable through ``a``;
the gradient reaches ``a`` only while alpha lies inside the clip bounds (inclusive, as torch.clamp).
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

Params = Any


def _sum_to_shape(t: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Sum ``t`` over the axes that broadcasting to ``t.shape`` added to ``shape``."""
    lead = t.ndim - len(shape)
    t = t.sum(axis=tuple(range(lead))) if lead else t
    axes = tuple(i for i, d in enumerate(shape) if d == 1 and t.shape[i] != 1)
    return t.sum(axis=axes, keepdims=True) if axes else t


def _signs(u: jax.Array, alpha: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``x = u / alpha`` and one draw of the signs ``b`` (+1 with probability clip((x + 1) / 2, 0, 1))."""
    x = u.astype(jnp.float32) / alpha.astype(jnp.float32)
    noise = jax.random.uniform(key, jnp.shape(u), jnp.float32)
    return x, noise < (x + 1.0) * 0.5  # noise in [0, 1): clipping the probability changes nothing


@jax.custom_vjp
def binarize(u: jax.Array, alpha: jax.Array, key: jax.Array) -> jax.Array:
    """Stochastic binarization ``Q(u, alpha)`` with the FedBAT derivatives.

    Args:
      u: latent update, any shape, float32 or bfloat16.
      alpha: positive step size, a scalar or an array broadcastable to ``u``.
      key: a ``jax.random`` key; a fresh key gives a fresh draw.

    Returns:
      ``alpha * b`` with ``b`` in {-1, +1}, in ``u``'s dtype and shape.
    """
    return _binarize_fwd(u, alpha, key)[0]


def _binarize_fwd(u, alpha, key):
    u, alpha = jnp.asarray(u), jnp.asarray(alpha)
    _, positive = _signs(u, alpha, key)
    out = jnp.where(positive, alpha.astype(jnp.float32), -alpha.astype(jnp.float32)).astype(u.dtype)
    return out, (u, alpha, positive)


def _binarize_bwd(res, g):
    u, alpha, positive = res
    x = u.astype(jnp.float32) / alpha.astype(jnp.float32)
    g32 = g.astype(jnp.float32)
    du = jnp.where(jnp.abs(x) <= 1.0, g32, 0.0)  # clipped straight-through
    b = jnp.where(positive, 1.0, -1.0)
    dalpha = _sum_to_shape(g32 * jnp.where(x > 1.0, 1.0, jnp.where(x < -1.0, -1.0, b - x)), jnp.shape(alpha))
    return du.astype(u.dtype), dalpha.astype(alpha.dtype), None


binarize.defvjp(_binarize_fwd, _binarize_bwd)


# ---- k bits: 2^k levels in [-alpha, alpha] (the paper leaves multi-bit open) ------------------------
def _levels(u: jax.Array, alpha: jax.Array, key: jax.Array, bits: int) -> tuple[jax.Array, jax.Array]:
    """``x = u / alpha`` and one draw of the level index ``q`` in ``0 .. 2^bits - 1``.

    ``y = (clip(x, -1, 1) + 1) / 2 * (2^bits - 1)`` is rounded up with probability ``frac(y)``, so the
    level value ``alpha * (2 q / (2^bits - 1) - 1)`` is unbiased for ``clip(u, -alpha, alpha)``. With
    ``bits = 1`` this is exactly the draw of ``binarize`` (the same key gives the same signs).
    """
    x = u.astype(jnp.float32) / alpha.astype(jnp.float32)
    top = 2**bits - 1
    y = (jnp.clip(x, -1.0, 1.0) + 1.0) * (0.5 * top)
    low = jnp.floor(y)
    noise = jax.random.uniform(key, jnp.shape(u), jnp.float32)
    return x, (low + (noise < y - low)).astype(jnp.uint8)


def level_values(q: jax.Array, alpha: jax.Array, bits: int) -> jax.Array:
    """The value of level index ``q``: ``alpha * (2 q / (2^bits - 1) - 1)``."""
    return alpha * (q.astype(jnp.float32) * (2.0 / (2**bits - 1)) - 1.0)


def level_indices(u: jax.Array, alpha: jax.Array, key: jax.Array, bits: int) -> jax.Array:
    """The uint8 level indices of one draw of ``quantize(u, alpha, key, bits)``: the k-bit payload."""
    return _levels(jnp.asarray(u), jnp.asarray(alpha), key, bits)[1]


STES = ("clipped", "identity")


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def quantize(u: jax.Array, alpha: jax.Array, key: jax.Array, bits: int = 1, ste: str = "clipped") -> jax.Array:
    """k-bit FedBAT operator: stochastic rounding to ``2^bits`` levels in ``[-alpha, alpha]``.

    The derivatives follow the 1-bit design: straight-through inside the range (``g * 1[|x| <= 1]``)
    and ``dQ/dalpha = sum g * (+1 if x > 1, -1 if x < -1, Q/alpha - x otherwise)``. ``bits = 1``
    reproduces ``binarize`` exactly, values and derivatives.

    ``ste``: the straight-through estimator of ``dQ/du``: ``clipped`` (the paper's, above: no data gradient
    reaches a coordinate with ``|u| > alpha``) or ``identity`` (``g`` everywhere); ``dQ/dalpha`` is the same.
    """
    return _quantize_fwd(u, alpha, key, bits, ste)[0]


def _quantize_fwd(u, alpha, key, bits, ste):
    u, alpha = jnp.asarray(u), jnp.asarray(alpha)
    _, q = _levels(u, alpha, key, bits)
    return level_values(q, alpha.astype(jnp.float32), bits).astype(u.dtype), (u, alpha, q)


def _quantize_bwd(bits, ste, res, g):
    u, alpha, q = res
    x = u.astype(jnp.float32) / alpha.astype(jnp.float32)
    g32 = g.astype(jnp.float32)
    du = g32 if ste == "identity" else jnp.where(jnp.abs(x) <= 1.0, g32, 0.0)
    v = level_values(q, 1.0, bits)
    dalpha = _sum_to_shape(g32 * jnp.where(x > 1.0, 1.0, jnp.where(x < -1.0, -1.0, v - x)), jnp.shape(alpha))
    return du.astype(u.dtype), dalpha.astype(alpha.dtype), None


quantize.defvjp(_quantize_fwd, _quantize_bwd)


def leaf_keys(key: jax.Array, tree) -> object:
    """One independent key per leaf of ``tree``, in the same tree structure."""
    leaves, treedef = jax.tree.flatten(tree)
    return jax.tree.unflatten(treedef, list(jax.random.split(key, len(leaves))))


def step_size(a: jax.Array, alpha0: jax.Array, rho: float, alpha_min: float, alpha_max: float) -> jax.Array:
    """``clip(alpha0 * exp(rho * a), alpha_min, alpha_max)`` with gradient to ``a`` only inside the bounds."""
    raw = alpha0 * jnp.exp(rho * a)
    return jnp.where(raw < alpha_min, alpha_min, jnp.where(raw > alpha_max, alpha_max, raw)).astype(raw.dtype)


def warmup_steps(phi: float, num_steps: int) -> int:
    """Local steps trained in full precision before binarization switches on.

    The reference warms up while ``s <= phi * S`` for step ``s = 1..S`` (in float64), so the first
    binarized step is ``floor(phi * S) + 1``; at that step ``alpha0 = mean|u|`` is taken.
    """
    return min(num_steps, max(0, math.floor(phi * num_steps)))


# ---- which leaves the operator acts on -------------------------------------------------------------------
def default_binarize_predicate(path: tuple, leaf: jax.Array) -> bool:
    """Binarize every conv and dense kernel (REFERENCE.md 1.3); norm scales and biases stay full precision."""
    last = path[-1]
    return getattr(last, "key", getattr(last, "name", None)) == "kernel" and leaf.ndim >= 2


def binarized_mask(params: Params, predicate: Callable[[tuple, jax.Array], bool] | None) -> Params:
    """A pytree of Python bools (static) marking the binarized leaves; ``predicate=None`` marks none."""
    if predicate is None:
        return jax.tree.map(lambda _: False, params)
    return jax.tree_util.tree_map_with_path(lambda p, x: bool(predicate(p, x)), params)
