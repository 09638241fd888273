"""FedProx: prox_mu = 0 is FedAvg bit for bit; a local step on logreg against numpy; it runs on every backend."""
from __future__ import annotations

import jax
import numpy as np
import pytest

import fedbat_jax as fb
from conftest import tiny
from fedbat_jax.federated import plan_round
from fedbat_jax.local import batch_at


@pytest.mark.slow
def test_prox_mu_zero_is_fedavg_bit_for_bit():
    a = fb.run(tiny("fedavg", model="logreg", rounds=2))
    b = fb.run(tiny("fedprox", model="logreg", rounds=2, prox_mu=0.0))

    def key(recs):
        return [{k: v for k, v in r.items() if k != "round_seconds"} for r in recs]

    assert key(a) == key(b)
    ta = jax.jit(fb.make_train(tiny("fedavg", model="logreg", rounds=2)))(jax.random.PRNGKey(0))[0].params
    tb = jax.jit(fb.make_train(tiny("fedprox", model="logreg", rounds=2, prox_mu=0.0)))(jax.random.PRNGKey(0))[0].params
    for x, y in zip(jax.tree.leaves(ta), jax.tree.leaves(tb)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _softmax_grad(w, b, x, y, valid, classes):
    """Mean cross-entropy gradient of logits = x w + b over the valid rows (float64)."""
    z = x @ w + b
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(len(y)), y] -= 1.0
    p *= valid[:, None]
    n = max(valid.sum(), 1)
    return x.T @ p / n, p.sum(0) / n


@pytest.mark.slow
def test_a_local_step_against_numpy():
    """Two local steps of one logreg client: the first at the broadcast model (the proximal gradient is 0 there),
    the second adding mu (w - w_global) to the cross-entropy gradient."""
    mu, lr = 0.5, 0.3
    exp = fb.build(tiny("fedprox", model="logreg", prox_mu=mu, lr=lr))
    learner, federation, server = exp.federation.learner, exp.federation, exp.server
    inputs = plan_round(jax.random.PRNGKey(0), 1, federation.roster, federation.data.index, 3)
    inp = jax.tree.map(lambda x: x[0], inputs)
    # a non-zero broadcast model, so the cross-entropy gradient and the proximal term both matter
    params = jax.tree.map(lambda x: 0.05 * jax.random.normal(jax.random.PRNGKey(x.size), x.shape), server.params)
    sent = learner.broadcast(server._replace(params=params))
    client = learner.client_init(sent, learner.fresh_row(params), inp)
    data = federation.data
    mean, std = np.asarray(data.mean, np.float64), np.asarray(data.std, np.float64)
    w0 = np.asarray(params["Dense_0"]["kernel"], np.float64)
    b0 = np.asarray(params["Dense_0"]["bias"], np.float64)
    w, b = w0.copy(), b0.copy()
    for t in range(2):
        idx, valid = (np.asarray(a) for a in batch_at(client.orders, inp.size, t, learner.local.batch_size))
        x = (np.asarray(data.inputs)[idx].astype(np.float64) / 255.0 - mean) / std
        x = x.reshape(len(idx), -1) / np.sqrt(x[0].size)
        gw, gb = _softmax_grad(w, b, x, np.asarray(data.labels)[idx], valid.astype(np.float64), 10)
        w, b = w - lr * (gw + mu * (w - w0)), b - lr * (gb + mu * (b - b0))
        client = learner.client_step(client, sent, data, inp, t)
    np.testing.assert_allclose(np.asarray(client.state.theta["Dense_0"]["kernel"]), w, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(client.state.theta["Dense_0"]["bias"]), b, rtol=1e-4, atol=1e-6)
    assert np.abs(w - w0).max() > 1e-3  # the steps moved the model: the comparison is not of zeros


@pytest.mark.slow
@pytest.mark.parametrize("compressor", ["stoch_binary", "fedbat"])
def test_fedprox_composes_with_compressors_on_every_backend(compressor):
    runs = [fb.run(tiny("fedprox", model="logreg", compressor=compressor, backend=e)) for e in ("host", "fused")]
    _, m = jax.jit(fb.make_train(tiny("fedprox", model="logreg", compressor=compressor)))(jax.random.PRNGKey(0))
    losses = [[r["train_loss"] for r in recs] for recs in runs] + [np.asarray(m["train_loss"]).tolist()]
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-4)
    np.testing.assert_allclose(losses[2], losses[0], rtol=1e-4)
    assert runs[0][0]["uplink_bits"] < fb.run(tiny("fedprox", model="logreg", rounds=1))[0]["uplink_bits"]


def test_bad_prox_mu_is_one_line():
    with pytest.raises(fb.ConfigError, match=r"^prox_mu must be >= 0, got -1.0$"):
        fb.validate(tiny("fedprox", prox_mu=-1.0))


def test_resume_is_exact(tmp_path):
    whole = fb.run(tiny("fedprox", model="logreg", rounds=3, backend="fused"))
    fb.run(tiny("fedprox", model="logreg", rounds=1, backend="fused"), tmp_path)
    resumed = fb.run(tiny("fedprox", model="logreg", rounds=3, backend="fused"), tmp_path, allow_change=["rounds"])
    assert [r["train_loss"] for r in resumed] == [r["train_loss"] for r in whole]
