"""A small MobileNet-style net: a 3x3 stem of stride 2, then depthwise-separable blocks (a 3x3 depthwise conv and
a 1x1 pointwise conv, each with BatchNorm and ReLU), global average pooling and a dense classifier.

Blocks have widths ``width * (2, 4, 4, 8, 8)`` and strides 1, 2, 1, 2, 1 after a stem of ``width`` (32)
channels: 28x28 inputs go 14, 7, 4; 32x32 inputs 16, 8, 4. (A stride-1 stem keeps 28x28x64 activations and
makes a local step 4x slower on a CPU.) The depthwise and pointwise convs are written as shifted products and a
matrix product (``layers.py``): the same functions and kernel shapes as ``nn.Conv``'s, whose gradients XLA:CPU
computes several times slower. No conv or dense layer has a bias, so FedBAT's default
predicate binarizes every stem, depthwise, pointwise and dense kernel; BatchNorm parameters and statistics
travel in float32.
"""
from __future__ import annotations

import flax.linen as nn
import jax

from fedbat_jax.models.layers import BatchNorm, DepthwiseConv3x3, PointwiseConv

# He-normal kernels: with the reference's N(0, 0.01^2) (layers.kernel_init) the depthwise filters (9 weights each)
# are so small that BatchNorm's scale invariance turns lr 0.1 into huge effective steps, and a round amplifies
# float rounding to O(1) differences between backends.
kernel_init = nn.initializers.he_normal()
BLOCKS = ((2, 1), (4, 2), (4, 1), (8, 2), (8, 1))  # (width multiplier, stride)


class SeparableBlock(nn.Module):
    features: int
    stride: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, mask: jax.Array | None) -> jax.Array:
        x = DepthwiseConv3x3(self.stride, kernel_init, name="depthwise")(x)
        x = nn.relu(BatchNorm()(x, train, mask))
        x = PointwiseConv(self.features, kernel_init, name="pointwise")(x)
        return nn.relu(BatchNorm()(x, train, mask))


class MobileNet(nn.Module):
    num_classes: int = 10
    width: int = 32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, mask: jax.Array | None = None) -> jax.Array:
        x = nn.Conv(self.width, (3, 3), strides=2, padding=1, use_bias=False, kernel_init=kernel_init, name="stem")(x)
        x = nn.relu(BatchNorm()(x, train, mask))
        for multiplier, stride in BLOCKS:
            x = SeparableBlock(self.width * multiplier, stride)(x, train, mask)
        x = x.mean(axis=(1, 2))
        return nn.Dense(self.num_classes, use_bias=False, kernel_init=kernel_init)(x)
