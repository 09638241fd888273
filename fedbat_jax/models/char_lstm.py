"""The Shakespeare next-character LSTM of TFF, FedJAX and Reddi et al. (2021, "Adaptive Federated Optimization"):
an 8-dimensional character embedding, two LSTM layers of 256 units, a dense layer to the vocabulary on every step.

Input: int tokens ``[B, T]``; output: float32 logits ``[B, T, num_classes]``, position ``t`` predicting token
``t + 1`` from tokens ``<= t`` only (the LSTM runs left to right). The vocabulary is ``num_classes``: 90 for
TFF's Shakespeare (86 characters plus pad, out-of-vocabulary, beginning and end of snippet).

Parameters (``flax.linen.OptimizedLSTMCell``'s layout, the same as ``nn.LSTMCell``'s): per layer ``l`` and gate
``g`` in ``i, f, g, o`` an input kernel ``lstm_l/i{g}/kernel`` (in, width), a recurrent kernel
``lstm_l/h{g}/kernel`` (width, width) and one bias ``lstm_l/h{g}/bias`` (width,); the embedding table
``embed/embedding`` (num_classes, embed); the output ``head/kernel`` (width, num_classes) and ``head/bias``.
FedBAT's default predicate (every ``kernel`` of ndim >= 2) binarizes all 8 LSTM kernels of each layer and the
output kernel (17 tensors at depth 2); the embedding table and the biases travel in float32.

At the defaults (90 classes, width 256, depth 2, embed 8) there are exactly 820,522 parameters: 817,664
binarized (8 * 256 * 4 + 256 * 256 * 4 + 2 * 256 * 256 * 4 + 256 * 90) and 2,858 in float32 (the 720-value
table, 2 * 4 * 256 gate biases and 90 output biases). FedBAT's upload is then 817,664 + 32 * 17 + 32 * 2,858 =
909,664 bits a client, FedAvg's 32 * 820,522 = 26,256,704.

Initialisation as Keras's LSTM for the kernels: glorot-uniform input kernels, orthogonal recurrent kernels
(flax's own defaults are lecun-normal and orthogonal), zero biases. Keras also starts the forget gate's bias at
1 (``unit_forget_bias``) and Haiku's LSTM (FedJAX's) adds a constant 1 there; flax's cells have one
``bias_init`` for all four gates, so here, as in PyTorch's ``nn.LSTM`` (LEAF's Shakespeare model), it starts at
0. The embedding is flax's default (normal, variance 1 / embed: a std of 0.35 at 8), the head glorot-uniform.
``OptimizedLSTMCell`` (one matmul for the four gates' kernels, concatenated) is used: a jitted forward and backward
at B=4, T=80 took 46 ms against ``LSTMCell``'s (four matmuls) 47-50 ms (best of 10-step blocks, a shared 2-core
CPU; the scan's 2 x 80 sequential steps dominate, so the margin is small). Both cells have the same parameters.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from fedbat_jax.errors import ConfigError

kernel_init = nn.initializers.xavier_uniform()  # Keras's glorot_uniform


class CharLSTM(nn.Module):
    num_classes: int = 90  # the vocabulary: tokens in and logits out
    width: int = 256  # LSTM units per layer
    depth: int = 2  # LSTM layers
    embed: int = 8  # the character embedding's dimension

    def __post_init__(self):
        for field in ("num_classes", "width", "depth", "embed"):
            if getattr(self, field) < 1:
                raise ConfigError(f"model_{field} must be >= 1 for model=char_lstm, got {getattr(self, field)!r}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, mask: jax.Array | None = None) -> jax.Array:
        if x.ndim != 2:
            raise ConfigError(f"model=char_lstm reads int tokens [batch, time], got shape {tuple(x.shape)}")
        h = nn.Embed(self.num_classes, self.embed, name="embed")(x)
        for layer in range(self.depth):
            cell = nn.OptimizedLSTMCell(self.width, kernel_init=kernel_init,
                                        recurrent_kernel_init=nn.initializers.orthogonal(), name=f"lstm_{layer}")
            h = nn.RNN(cell)(h)  # scans the cell over time; its parameters are the cell's
        return nn.Dense(self.num_classes, kernel_init=kernel_init, name="head")(h).astype(jnp.float32)
