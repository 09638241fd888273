"""The EMNIST CNN of TFF and FedJAX (``create_conv_dropout_model``, Reddi et al. 2021): conv 32 3x3 (VALID, ReLU),
conv 64 3x3 (VALID, ReLU), 2x2 max-pool, dropout 0.25, flatten, dense 128 (ReLU), dropout 0.5, dense to the
classes (62 for EMNIST-62). With biases and Keras's initialisation (glorot-uniform kernels, zero biases).

Input ``[B, 28, 28, 1]`` float32; output logits ``[B, num_classes]``. Dropout is active only with ``train=True``,
drawing from the Flax rng stream ``"dropout"`` (``model.apply(..., train=True, rngs={"dropout": key})``); with
``train=False`` no rng is needed and the model is deterministic. ``width`` scales the first conv (the second has
twice as many channels).

At the defaults (62 classes, width 32) there are exactly 1,206,590 parameters: 1,206,304 in the four kernels
(conv 288, conv 18,432, dense 9,216 * 128 = 1,179,648, dense 7,936), which FedBAT's default predicate binarizes,
and 286 biases, which travel in float32. FedBAT's upload is then 1,206,304 + 32 * 4 + 32 * 286 = 1,215,584 bits a
client, FedAvg's 32 * 1,206,590 = 38,610,880.
"""
from __future__ import annotations

import flax.linen as nn
import jax

from fedbat_jax.errors import ConfigError
from fedbat_jax.models.layers import max_pool_2x2

kernel_init = nn.initializers.xavier_uniform()  # Keras's glorot_uniform


class EmnistCNN(nn.Module):
    num_classes: int = 62
    width: int = 32  # the first conv's channels; the second's are 2x

    def __post_init__(self):
        for field in ("num_classes", "width"):
            if getattr(self, field) < 1:
                raise ConfigError(f"model_{field} must be >= 1 for model=emnist_cnn, got {getattr(self, field)!r}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, mask: jax.Array | None = None) -> jax.Array:
        x = nn.relu(nn.Conv(self.width, (3, 3), padding="VALID", kernel_init=kernel_init, name="conv_0")(x))
        x = nn.relu(nn.Conv(2 * self.width, (3, 3), padding="VALID", kernel_init=kernel_init, name="conv_1")(x))
        x = max_pool_2x2(x)
        x = nn.Dropout(0.25, deterministic=not train)(x)
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(128, kernel_init=kernel_init, name="dense")(x))
        x = nn.Dropout(0.5, deterministic=not train)(x)
        return nn.Dense(self.num_classes, kernel_init=kernel_init, name="head")(x)
