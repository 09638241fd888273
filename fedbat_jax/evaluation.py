"""Test loss and accuracy of a global model: one pure function, used by the run loop, ``make_train`` and the
experiments (``EVAL_CHUNK`` test examples at a time)."""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedbat_jax.data import Dataset

EVAL_CHUNK = 1000


class TestSet(NamedTuple):
    images: jax.Array  # uint8 [n + pad, H, W, C], zero-padded to a multiple of the chunk
    labels: jax.Array  # int32 [n + pad]
    mean: jax.Array
    std: jax.Array


def test_set(ds: Dataset, chunk: int = EVAL_CHUNK) -> TestSet:
    n = len(ds.y_test)
    pad = -n % chunk
    images = np.concatenate([ds.x_test, np.zeros((pad,) + ds.x_test.shape[1:], ds.x_test.dtype)])
    labels = np.concatenate([ds.y_test, np.zeros(pad, ds.y_test.dtype)]).astype(np.int32)
    return TestSet(jnp.asarray(images), jnp.asarray(labels), jnp.asarray(ds.mean, jnp.float32),
                   jnp.asarray(ds.std, jnp.float32))


def make_evaluate(model, n: int, chunk: int = EVAL_CHUNK, running_stats: bool = True,
                  ) -> Callable[[Any, Any, TestSet], jax.Array]:
    """``evaluate(params, batch_stats, test) -> [loss_sum, correct]`` over the ``n`` real test examples,
    ``chunk`` examples at a time (a ``lax.scan``: memory of one chunk). BatchNorm in inference mode (its
    running statistics), or with ``running_stats=False`` normalising each chunk with the chunk's own
    statistics (nothing written back; a diagnostic). Divide by ``n`` for the mean loss and the accuracy
    (on the host, the CLI's numbers are exact ratios)."""

    def evaluate(params, batch_stats, test: TestSet):
        num = test.labels.shape[0] // chunk

        def one(carry, i):
            x = jax.lax.dynamic_slice_in_dim(test.images, i * chunk, chunk)
            y = jax.lax.dynamic_slice_in_dim(test.labels, i * chunk, chunk)
            valid = i * chunk + jnp.arange(chunk) < n
            variables = {"params": params, "batch_stats": batch_stats}
            x = (x.astype(jnp.float32) / 255.0 - test.mean) / test.std
            if running_stats:
                logits = model.apply(variables, x, train=False)
            else:
                logits, _ = model.apply(variables, x, train=True, mask=valid, mutable=["batch_stats"])
            ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y)
            return carry + jnp.stack([jnp.sum(jnp.where(valid, ce, 0.0)),
                                      jnp.sum(valid & (logits.argmax(-1) == y))]), None

        total, _ = jax.lax.scan(one, jnp.zeros(2, jnp.float32), jnp.arange(num))
        return total

    return evaluate


def host_evaluator(model, ds: Dataset) -> Callable[[Any], tuple[float, float]]:
    """``evaluate(server) -> (test_loss, test_accuracy)`` as Python floats (the run loop's): the jitted
    ``make_evaluate`` over the whole test set, divided on the host."""
    test = test_set(ds)
    evaluate = jax.jit(make_evaluate(model, len(ds.y_test)))

    def evaluate_server(server) -> tuple[float, float]:
        loss_sum, correct = np.asarray(evaluate(server.params, server.batch_stats, test), np.float64)
        return float(loss_sum / len(ds.y_test)), float(correct / len(ds.y_test))

    return evaluate_server
