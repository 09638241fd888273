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

import math

import jax
import jax.numpy as jnp


def _sum_to_shape(t: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Sum ``t`` over the axes that broadcasting to ``t.shape`` added to ``shape``."""
    lead = t.ndim - len(shape)
    t = t.sum(axis=tuple(range(lead))) if lead else t
    axes = tuple(i for i, d in enumerate(shape) if d == 1 and t.shape[i] != 1)
    return t.sum(axis=axes, keepdims=True) if axes else t


@jax.custom_vjp
def _q(u: jax.Array, alpha: jax.Array, noise: jax.Array) -> jax.Array:
    return _q_fwd(u, alpha, noise)[0]


def _signs(u, alpha, noise):
    x = u.astype(jnp.float32) / alpha.astype(jnp.float32)
    p_plus = jnp.clip((x + 1.0) * 0.5, 0.0, 1.0)
    b = jnp.where(noise < p_plus, 1.0, -1.0)
    return x, b


def _q_fwd(u, alpha, noise):
    x, b = _signs(u, alpha, noise)
    out = (alpha.astype(jnp.float32) * b).astype(u.dtype)
    return out, (x, b, alpha, noise)


def _q_bwd(res, g):
    x, b, alpha, noise = res
    u_dtype, g = g.dtype, g.astype(jnp.float32)
    inside = jnp.abs(x) <= 1.0
    du = jnp.where(inside, g, 0.0)
    dalpha_elem = g * jnp.where(x > 1.0, 1.0, jnp.where(x < -1.0, -1.0, b - x))
    dalpha = _sum_to_shape(dalpha_elem, jnp.shape(alpha))
    return du.astype(u_dtype), dalpha.astype(alpha.dtype), jnp.zeros_like(noise)


_q.defvjp(_q_fwd, _q_bwd)


def binarize(u: jax.Array, alpha: jax.Array, key: jax.Array) -> jax.Array:
    """Stochastic binarization ``Q(u, alpha)`` with the FedBAT derivatives.

    Args:
      u: latent update, any shape, float32 or bfloat16.
      alpha: positive step size, a scalar or an array broadcastable to ``u``.
      key: a ``jax.random`` key; a fresh key gives a fresh draw.

    Returns:
      ``alpha * b`` with ``b`` in {-1, +1}, in ``u``'s dtype and shape.
    """
    u = jnp.asarray(u)
    alpha = jnp.asarray(alpha)
    noise = jax.random.uniform(key, u.shape, jnp.float32)
    return _q(u, alpha, noise)


def binary_signs(u: jax.Array, alpha: jax.Array, key: jax.Array) -> jax.Array:
    """The signs ``b`` of one draw of ``Q(u, alpha)`` as a bool array (True = +1): the 1-bit payload.

    Uses exactly the same draw as ``binarize(u, alpha, key)``, so
    ``binarize(u, alpha, key) == alpha * where(binary_signs(u, alpha, key), 1, -1)``.
    """
    noise = jax.random.uniform(key, jnp.shape(u), jnp.float32)
    return _signs(jnp.asarray(u), jnp.asarray(alpha), noise)[1] > 0


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
