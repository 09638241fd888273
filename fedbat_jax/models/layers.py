"""Layers with the reference's (PyTorch's) semantics, written for speed on every backend."""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import flax.linen as nn

# Conv and dense kernels start from N(0, 0.01^2) (REFERENCE.md section 3).
kernel_init = nn.initializers.normal(stddev=0.01)


class BatchNorm(nn.Module):
    """BatchNorm as PyTorch's default, with an optional per-example mask.

    Training normalises with the (masked) batch mean and biased variance and updates the running
    statistics as ``momentum * running + (1 - momentum) * batch`` with the *unbiased* batch variance,
    exactly as ``torch.nn.BatchNorm2d``. Padded examples (mask 0) neither contribute to the statistics
    nor to the running averages, so a padded last batch behaves as the reference's short last batch.
    """

    momentum: float = 0.9
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, mask: jax.Array | None = None) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        if train:
            axes = tuple(range(x.ndim - 1))
            xf = x.astype(jnp.float32)
            if mask is None:
                count = jnp.float32(x.size // c)
                mean = xf.mean(axes)
                var = jnp.square(xf - mean).mean(axes)
            else:
                w = mask.astype(jnp.float32).reshape(mask.shape + (1,) * (x.ndim - 1))
                count = w.sum() * (x.size // (c * x.shape[0]))
                mean = (xf * w).sum(axes) / count
                var = (jnp.square(xf - mean) * w).sum(axes) / count
            if not self.is_initializing():
                unbiased = var * count / jnp.maximum(count - 1.0, 1.0)
                ra_mean.value = self.momentum * ra_mean.value + (1.0 - self.momentum) * mean
                ra_var.value = self.momentum * ra_var.value + (1.0 - self.momentum) * unbiased
        else:
            mean, var = ra_mean.value, ra_var.value
        inv = jax.lax.rsqrt(var + self.epsilon) * scale
        return (x - mean.astype(x.dtype)) * inv.astype(x.dtype) + bias.astype(x.dtype)


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max-pool, stride 2, floor (7x7 -> 3x3), as a reshape and three pairwise selects.

    The gradient goes to exactly one element per window, the first maximum in row-major order, as
    PyTorch's MaxPool2d. (A ``max`` reduction's gradient, shared among ties, came out wrong under
    jit on XLA:CPU; ``reduce_window`` and its gradient are slow there.)
    """
    n, h, w, c = x.shape
    h2, w2 = h // 2, w // 2
    x = x[:, : 2 * h2, : 2 * w2, :].reshape(n, h2, 2, w2, 2, c)
    a, b, c_, d = x[:, :, 0, :, 0], x[:, :, 0, :, 1], x[:, :, 1, :, 0], x[:, :, 1, :, 1]
    top = jnp.where(a >= b, a, b)
    bottom = jnp.where(c_ >= d, c_, d)
    return jnp.where(top >= bottom, top, bottom)


class DepthwiseConv3x3(nn.Module):
    """A 3x3 depthwise convolution (padding 1, no bias) as nine shifted multiply-adds.

    The same function and parameter (``kernel``, shape ``(3, 3, 1, C)``) as ``nn.Conv(C, (3, 3), padding=1,
    feature_group_count=C)``, whose gradient XLA:CPU computes about 15x slower than the whole CNN4 step.
    """

    stride: int = 1
    kernel_init: Callable = kernel_init

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        n, h, w, c = x.shape
        kernel = self.param("kernel", self.kernel_init, (3, 3, 1, c), jnp.float32).astype(x.dtype)
        s = self.stride
        ho, wo = (h - 1) // s + 1, (w - 1) // s + 1
        xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        out = 0.0
        for i in range(3):
            for j in range(3):
                out = out + xp[:, i: i + s * (ho - 1) + 1: s, j: j + s * (wo - 1) + 1: s, :] * kernel[i, j, 0]
        return out


class PointwiseConv(nn.Module):
    """A 1x1 convolution (no bias) as a matrix product over the channels: the same function and parameter
    (``kernel``, shape ``(1, 1, C, features)``) as ``nn.Conv(features, (1, 1))``, whose input gradient is a
    transposed convolution that XLA:CPU computes about 2x slower."""

    features: int
    kernel_init: Callable = kernel_init

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", self.kernel_init, (1, 1, x.shape[-1], self.features), jnp.float32)
        return jnp.einsum("nhwc,cf->nhwf", x, kernel[0, 0].astype(x.dtype))
