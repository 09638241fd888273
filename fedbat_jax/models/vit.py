"""A small vision transformer: patch embedding, pre-norm blocks of multi-head self-attention and an MLP, a class
token read out through a final LayerNorm.

Sized for 28x28x1 and 32x32x3 inputs: patches of 4 (49 or 64 tokens), width 64, 4 blocks of 4 heads, an MLP of
twice the width. Every projection is a ``kernel`` (the patch embedding's conv, the attention's query, key, value
and output ``DenseGeneral`` kernels, both MLP kernels, the classifier), so FedBAT's default predicate binarizes
them all; the class token, the position embedding, the biases and the LayerNorm parameters travel in float32.
No dropout: a round is a deterministic function of its keys.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from fedbat_jax.errors import ConfigError

kernel_init = nn.initializers.xavier_uniform()


class Block(nn.Module):
    heads: int
    mlp_dim: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = nn.LayerNorm()(x)
        x = x + nn.MultiHeadDotProductAttention(num_heads=self.heads, kernel_init=kernel_init)(y, y)
        y = nn.LayerNorm()(x)
        y = nn.Dense(self.mlp_dim, kernel_init=kernel_init)(y)
        return x + nn.Dense(x.shape[-1], kernel_init=kernel_init)(nn.gelu(y))


class ViT(nn.Module):
    num_classes: int = 10
    width: int = 64  # the tokens' dimension
    depth: int = 4  # transformer blocks
    heads: int = 4  # attention heads (they divide the width)
    patch: int = 4  # square patches (they tile the image)
    mlp_ratio: int = 2

    def __post_init__(self):
        for field in ("width", "depth", "heads", "patch"):
            if getattr(self, field) < 1:
                raise ConfigError(f"model_{field} must be >= 1 for model=vit, got {getattr(self, field)!r}")
        if self.width % self.heads:
            raise ConfigError(f"model_heads={self.heads} must divide model_width={self.width} (the vit's width)")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, mask: jax.Array | None = None) -> jax.Array:
        n, h, w, _ = x.shape
        if h % self.patch or w % self.patch:
            raise ConfigError(f"model_patch={self.patch} must divide the image size {h}x{w}")
        x = nn.Conv(self.width, (self.patch, self.patch), strides=self.patch, padding="VALID",
                    kernel_init=kernel_init, name="patch_embed")(x)
        x = x.reshape(n, -1, self.width)
        cls = self.param("cls", nn.initializers.zeros, (1, 1, self.width), jnp.float32)
        x = jnp.concatenate([jnp.broadcast_to(cls, (n, 1, self.width)).astype(x.dtype), x], axis=1)
        x = x + self.param("pos_embedding", nn.initializers.normal(0.02), (1,) + x.shape[1:], jnp.float32)
        for _ in range(self.depth):
            x = Block(self.heads, self.mlp_ratio * self.width)(x)
        x = nn.LayerNorm()(x[:, 0])
        return nn.Dense(self.num_classes, kernel_init=kernel_init, name="head")(x)
