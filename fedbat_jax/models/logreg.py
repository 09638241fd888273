"""Multinomial logistic regression on flattened inputs: a convex model for convergence-rate studies."""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp


class LogReg(nn.Module):
    """``logits = (x / sqrt(d)) W + b`` over the flattened input of ``d`` values.

    The fixed ``1/sqrt(d)`` keeps ``E||x||^2`` near 1 for standardised inputs, so the smoothness constant
    (at most ``lambda_max(X^T X) / (2n)`` plus the L2 term) is of order 1 whatever the image size. With
    ``weight_decay = lambda > 0`` the objective is ``lambda``-strongly convex. ``width`` is unused (one layer).
    """

    num_classes: int

    @nn.compact
    def __call__(self, x, train: bool = False, mask=None):
        x = x.reshape(x.shape[0], -1)
        x = x / jnp.sqrt(jnp.float32(x.shape[1]))
        return nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros)(x)
