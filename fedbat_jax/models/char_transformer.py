"""A small causal (decoder-only) transformer for next-character prediction, sized as the Shakespeare LSTM
(``char_lstm.py``): a token embedding and a learned position embedding of ``width``, ``depth`` pre-norm blocks
of causal multi-head self-attention and a GELU MLP of 4x the width, a final LayerNorm, a dense layer to the
vocabulary on every position.

Input: int tokens ``[B, T]`` with ``T <= max_len``; output: float32 logits ``[B, T, num_classes]``, position ``t``
attending to positions ``<= t`` only. No dropout: a round is a deterministic function of its keys.

Parameters: ``embed/embedding`` (num_classes, width), ``pos_embedding`` (1, max_len, width); per block the
LayerNorms' scales and biases, the attention's ``query``/``key``/``value`` kernels (width, heads, width / heads)
and ``out`` kernel (heads, width / heads, width) with their biases, the MLP's two kernels and biases; the final
LayerNorm; ``head/kernel`` (width, num_classes) and ``head/bias``. FedBAT's default predicate (every ``kernel`` of
ndim >= 2) binarizes the 4 attention and 2 MLP kernels of every block and the output kernel (``6 * depth + 1``
tensors); the embedding tables, the LayerNorms and the biases travel in float32.

At the defaults (90 classes, width 128, depth 4, 4 heads, max_len 80) there are exactly 826,714 parameters
(12 w^2 + 13 w per block, (90 + 80) w for the embeddings, 2 w for the final LayerNorm, 90 w + 90 for the head),
within 1% of the LSTM's 820,522: 797,952 binarized (12 w^2 per block and 90 w) and 28,762 in float32, of which
the two embedding tables are 21,760. FedBAT's upload is then 797,952 + 32 * 25 + 32 * 28,762 = 1,719,136 bits a
client, FedAvg's 32 * 826,714 = 26,454,848.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from fedbat_jax.errors import ConfigError

kernel_init = nn.initializers.xavier_uniform()


class CausalBlock(nn.Module):
    heads: int
    mlp_dim: int

    @nn.compact
    def __call__(self, x: jax.Array, causal: jax.Array) -> jax.Array:
        y = nn.LayerNorm(name="attention_norm")(x)
        x = x + nn.MultiHeadDotProductAttention(num_heads=self.heads, kernel_init=kernel_init,
                                                name="attention")(y, y, mask=causal)
        y = nn.LayerNorm(name="mlp_norm")(x)
        y = nn.Dense(self.mlp_dim, kernel_init=kernel_init, name="mlp_in")(y)
        return x + nn.Dense(x.shape[-1], kernel_init=kernel_init, name="mlp_out")(nn.gelu(y))


class CharTransformer(nn.Module):
    num_classes: int = 90  # the vocabulary: tokens in and logits out
    width: int = 128  # the tokens' dimension
    depth: int = 4  # transformer blocks
    heads: int = 4  # attention heads (they divide the width)
    max_len: int = 80  # the longest sequence (the position embedding's length)
    mlp_ratio: int = 4

    def __post_init__(self):
        for field in ("num_classes", "width", "depth", "heads", "max_len", "mlp_ratio"):
            if getattr(self, field) < 1:
                raise ConfigError(f"model_{field} must be >= 1 for model=char_transformer, got "
                                  f"{getattr(self, field)!r}")
        if self.width % self.heads:
            raise ConfigError(f"model_heads={self.heads} must divide model_width={self.width} "
                              f"(the char_transformer's width)")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, mask: jax.Array | None = None) -> jax.Array:
        if x.ndim != 2:
            raise ConfigError(f"model=char_transformer reads int tokens [batch, time], got shape {tuple(x.shape)}")
        t = x.shape[1]
        if t > self.max_len:
            raise ConfigError(f"sequences of {t} tokens are longer than the char_transformer's max_len={self.max_len}")
        h = nn.Embed(self.num_classes, self.width, name="embed")(x)
        pos = self.param("pos_embedding", nn.initializers.normal(0.02), (1, self.max_len, self.width), jnp.float32)
        h = h + pos[:, :t].astype(h.dtype)
        causal = nn.make_causal_mask(x)  # [B, 1, T, T]: position t sees positions <= t
        for i in range(self.depth):
            h = CausalBlock(self.heads, self.mlp_ratio * self.width, name=f"block_{i}")(h, causal)
        h = nn.LayerNorm(name="final_norm")(h)
        return nn.Dense(self.num_classes, kernel_init=kernel_init, name="head")(h).astype(jnp.float32)
