"""What a model is trained and scored on: the one normalisation and loss helper of local training and evaluation.

Two kinds of data share it, told apart by the inputs' dtype:

* images (uint8 ``[B, H, W, C]``, one integer label ``[B]`` each): scaled to [0, 1] and normalised per channel;
* token sequences (int32 ``[B, T]``, next-token targets ``[B, T]``): fed to the model as ids, every target scored.

``targets_mask`` says which targets count. For sequences (TFF's and FedJAX's Shakespeare recipe) a padding target
counts in neither the loss nor the accuracy, and an end-of-sequence target counts in the loss but not the accuracy
(the dataset names those ids: ``Dataset.pad_ids``, ``Dataset.unscored_ids``). For images every real example counts.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


def model_inputs(x: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
    """What the model reads: uint8 images scaled to [0, 1] and normalised per channel; token ids as they are."""
    if jnp.issubdtype(x.dtype, jnp.integer) and x.dtype != jnp.uint8:
        return x
    return (x.astype(jnp.float32) / 255.0 - mean) / std


class Scores(NamedTuple):
    """Per example of a batch: summed loss and correct predictions, and how many targets each counts."""

    loss: jax.Array  # float32 [B]: summed cross-entropy over the example's counted targets
    correct: jax.Array  # float32 [B]: correct predictions among its scored targets
    counted: jax.Array  # float32 [B]: targets in the loss (1 for an image)
    scored: jax.Array  # float32 [B]: targets in the accuracy (1 for an image)


def targets_mask(y: jax.Array, valid: jax.Array, ids: tuple[int, ...]) -> jax.Array:
    """True where a target counts: its example is real (``valid`` [B]) and the target is none of ``ids``."""
    return _without(valid.reshape(valid.shape + (1,) * (y.ndim - 1)), y, ids)


def _without(keep: jax.Array, y: jax.Array, ids: tuple[int, ...]) -> jax.Array:
    for i in ids:
        keep = keep & (y != i)
    return keep


def scores(logits: jax.Array, y: jax.Array, valid: jax.Array, pad_ids: tuple[int, ...] = (),
           unscored_ids: tuple[int, ...] = ()) -> Scores:
    """Cross-entropy and accuracy per example of a batch (``valid`` [B] marks the real examples of a padded one).

    ``logits`` [B, C] against labels [B], or [B, T, V] against targets [B, T]: the sequence's targets that are a
    ``pad_ids`` id count nowhere, an ``unscored_ids`` id counts in the loss only."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y)
    counted = targets_mask(y, valid, pad_ids)
    scored = _without(counted, y, unscored_ids)
    hit = scored & (logits.argmax(-1) == y)
    axes = tuple(range(1, y.ndim))

    def per_example(t):
        return t.astype(jnp.float32).sum(axes) if axes else t.astype(jnp.float32)

    return Scores(per_example(jnp.where(counted, ce, 0.0)), per_example(hit), per_example(counted),
                  per_example(scored))
