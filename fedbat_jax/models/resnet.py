"""ResNet-10 for CIFAR (REFERENCE.md section 3): a 3x3 stem, one BasicBlock per stage, 4x4 average pool.

Stages have widths ``width * (1, 2, 4, 8)`` (64, 128, 256, 512 in the paper) and strides 1, 2, 2, 2;
a block whose shape changes gets a 1x1 conv + BatchNorm shortcut. No conv or dense layer has a bias,
so FedBAT's default predicate (every ``kernel``) binarizes every conv, shortcut and dense kernel.
``width`` is there for the reduced CPU variants; the paper's model is ``width=64``.
"""
from __future__ import annotations

import flax.linen as nn
import jax

from fedbat_jax.models.layers import BatchNorm, kernel_init


def conv(features: int, size: int, stride: int = 1) -> nn.Conv:
    pad = (size - 1) // 2
    return nn.Conv(features, (size, size), strides=stride, padding=pad, use_bias=False, kernel_init=kernel_init)


class BasicBlock(nn.Module):
    features: int
    stride: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, mask: jax.Array | None) -> jax.Array:
        y = nn.relu(BatchNorm()(conv(self.features, 3, self.stride)(x), train, mask))
        y = BatchNorm()(conv(self.features, 3)(y), train, mask)
        if self.stride != 1 or x.shape[-1] != self.features:
            x = BatchNorm()(conv(self.features, 1, self.stride)(x), train, mask)
        return nn.relu(y + x)


class ResNet10(nn.Module):
    num_classes: int = 10
    width: int = 64

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, mask: jax.Array | None = None) -> jax.Array:
        x = nn.relu(BatchNorm()(conv(self.width, 3)(x), train, mask))
        for i, stride in enumerate((1, 2, 2, 2)):
            x = BasicBlock(self.width * 2**i, stride)(x, train, mask)
        x = nn.avg_pool(x, (4, 4), strides=(4, 4))  # 4x4 -> 1x1 on 32x32 inputs
        x = x.reshape(x.shape[0], -1)
        return nn.Dense(self.num_classes, use_bias=False, kernel_init=kernel_init)(x)
