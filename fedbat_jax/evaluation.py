"""Test loss and accuracy of a global model: one pure function, used by the run loop, ``make_train`` and the
experiments (``EVAL_CHUNK`` test examples at a time), pooled over the test set and, for a natural federation
(test data that belongs to clients), per test client.

The per-client summary (``client_summary``) is what natural-federation benchmarks report besides the pooled
accuracy: the mean of the clients' accuracies, unweighted and weighted by their test examples, the 10th percentile,
and the fraction of clients below a threshold (the ``eval_client_threshold`` setting).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fedbat_jax.data import Dataset
from fedbat_jax.objective import model_inputs, scores

EVAL_CHUNK = 1000
# The columns of ``make_evaluate``'s result.
LOSS, CORRECT, COUNTED, SCORED, EXAMPLES = range(5)


class TestSet(NamedTuple):
    inputs: jax.Array  # uint8 images [n + pad, H, W, C] or int32 sequences [n + pad, T], zero-padded to the chunk
    labels: jax.Array  # int32 [n + pad] (or [n + pad, T])
    clients: jax.Array  # int32 [n + pad]: each example's test client (all 0 for a centralised test set)
    mean: jax.Array
    std: jax.Array


def test_set(ds: Dataset, chunk: int = EVAL_CHUNK) -> TestSet:
    n = len(ds.y_test)
    pad = -n % chunk

    def padded(a, dtype):
        return jnp.asarray(np.concatenate([a, np.zeros((pad,) + a.shape[1:], a.dtype)]).astype(dtype))

    clients = ds.test_clients if ds.test_clients is not None else np.zeros(n, np.int32)
    return TestSet(padded(ds.x_test, ds.x_test.dtype), padded(ds.y_test, np.int32), padded(clients, np.int32),
                   jnp.asarray(ds.mean, jnp.float32), jnp.asarray(ds.std, jnp.float32))


def test_client_count(ds: Dataset) -> int:
    """Rows of ``make_evaluate``'s result: the dataset's clients for a natural test set, else 1."""
    return len(ds.test_client_ids) if ds.test_clients is not None else 1


def make_evaluate(model, n: int, chunk: int = EVAL_CHUNK, running_stats: bool = True, clients: int = 1,
                  pad_ids: tuple[int, ...] = (), unscored_ids: tuple[int, ...] = (),
                  ) -> Callable[[Any, Any, TestSet], jax.Array]:
    """``evaluate(params, batch_stats, test) -> float32 [clients, 5]``: per test client, the summed loss, correct
    predictions, targets in the loss, targets in the accuracy and examples (columns ``LOSS .. EXAMPLES``; one row
    for a centralised test set: ``clients=1``) over the ``n`` real test examples, ``chunk`` at a time (a
    ``lax.scan``: memory of one chunk). BatchNorm in inference mode (its running statistics), or with
    ``running_stats=False`` normalising each chunk with the chunk's own statistics (nothing written back; a
    diagnostic). Divide on the host (``pooled``): the CLI's numbers are exact ratios. Targets are counted as
    ``fedbat_jax.objective.scores`` does (``pad_ids``, ``unscored_ids``: the dataset's)."""

    def evaluate(params, batch_stats, test: TestSet):
        num = test.labels.shape[0] // chunk

        def one(carry, i):
            x = jax.lax.dynamic_slice_in_dim(test.inputs, i * chunk, chunk)
            y = jax.lax.dynamic_slice_in_dim(test.labels, i * chunk, chunk)
            valid = i * chunk + jnp.arange(chunk) < n
            variables = {"params": params, "batch_stats": batch_stats}
            x = model_inputs(x, test.mean, test.std)
            if running_stats:
                logits = model.apply(variables, x, train=False)
            else:
                logits, _ = model.apply(variables, x, train=True, mask=valid, mutable=["batch_stats"])
            s = scores(logits, y, valid, pad_ids, unscored_ids)
            columns = jnp.stack([s.loss, s.correct, s.counted, s.scored, valid.astype(jnp.float32)], axis=1)
            if clients == 1:
                return carry + jnp.sum(columns, axis=0, keepdims=True), None
            owner = jax.lax.dynamic_slice_in_dim(test.clients, i * chunk, chunk)
            return carry + jax.ops.segment_sum(columns, owner, clients), None

        total, _ = jax.lax.scan(one, jnp.zeros((clients, 5), jnp.float32), jnp.arange(num))
        return total

    return evaluate


def pooled(table) -> tuple[float, float]:
    """``(test_loss, test_accuracy)`` over the whole test set from ``make_evaluate``'s per-client sums."""
    total = np.asarray(table, np.float64).sum(axis=0)
    return float(total[LOSS] / max(total[COUNTED], 1.0)), float(total[CORRECT] / max(total[SCORED], 1.0))


def pooled_traced(table: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``pooled`` inside a traced program (``make_train``): the same ratios, in float32 on the device."""
    total = table.sum(axis=0)
    return total[LOSS] / jnp.maximum(total[COUNTED], 1.0), total[CORRECT] / jnp.maximum(total[SCORED], 1.0)


def client_summary(table, threshold: float) -> dict:
    """The distribution of the test clients' accuracies (clients with a scored target only): ``test_clients``,
    their unweighted and example-weighted means, the 10th percentile (linear interpolation), the fraction below
    ``threshold``."""
    t = np.asarray(table, np.float64)
    t = t[t[:, SCORED] > 0]
    if not len(t):
        return {}
    acc = t[:, CORRECT] / t[:, SCORED]
    return {"test_clients": int(len(t)), "client_accuracy_mean": float(acc.mean()),
            "client_accuracy_weighted": float(np.average(acc, weights=t[:, EXAMPLES])),
            "client_accuracy_p10": float(np.percentile(acc, 10)),
            "client_accuracy_below": float(np.mean(acc < threshold))}


def dataset_evaluate(model, ds: Dataset, **kwargs) -> Callable[[Any, Any, TestSet], jax.Array]:
    """``make_evaluate`` over ``ds``'s whole test set, per test client for a natural one."""
    return make_evaluate(model, len(ds.y_test), clients=test_client_count(ds), pad_ids=ds.pad_ids,
                         unscored_ids=ds.unscored_ids, **kwargs)


def host_evaluator(model, ds: Dataset, threshold: float = 0.5) -> Callable[[Any], dict]:
    """``evaluate(server) -> {"test_loss", "test_accuracy", ...}`` as Python numbers (the run loop's): the jitted
    ``make_evaluate`` over the whole test set, divided on the host; a natural test set adds ``client_summary``."""
    test = test_set(ds)
    evaluate = jax.jit(dataset_evaluate(model, ds))

    def evaluate_server(server) -> dict:
        table = np.asarray(evaluate(server.params, server.batch_stats, test))
        loss, acc = pooled(table)
        extra = client_summary(table, threshold) if ds.test_clients is not None else {}
        return {"test_loss": loss, "test_accuracy": acc, **extra}

    return evaluate_server
