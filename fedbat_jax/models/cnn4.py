"""CNN4 (REFERENCE.md section 3): 4 x [conv3x3 -> BatchNorm -> ReLU -> max-pool 2x2] -> dense."""
from __future__ import annotations

import flax.linen as nn
import jax

from fedbat_jax.models.layers import BatchNorm, kernel_init, max_pool_2x2


class CNN4(nn.Module):
    num_classes: int = 10
    width: int = 32  # channels width * (1, 2, 4, 8); the paper's is 32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, mask: jax.Array | None = None) -> jax.Array:
        for i in range(4):
            x = nn.Conv(self.width * 2**i, (3, 3), padding=1, use_bias=False, kernel_init=kernel_init)(x)
            x = BatchNorm()(x, train, mask)
            x = max_pool_2x2(nn.relu(x))
        x = x.reshape(x.shape[0], -1)
        return nn.Dense(self.num_classes, use_bias=False, kernel_init=kernel_init)(x)
