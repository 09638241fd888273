"""Client and server optimizers, learning-rate schedules and the theorem's alpha, against hand computations."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fedbat_jax as fb
from fedbat_jax.compressors import full_precision
from fedbat_jax.federated import Aggregate, Learner, ServerState, plan_round, make_roster
from fedbat_jax.local import (FederatedData, LocalConfig, binarized_mask, client_update, default_binarize_predicate,
                              epoch_orders, init_client, make_local_step)
from fedbat_jax.optimizers import learning_rate, server_optimizer
from fedbat_jax.workdir import leaf_names, read_checkpoint


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x, train=False, mask=None):
        x = nn.relu(nn.Dense(6)(x.reshape(x.shape[0], -1)))
        return nn.Dense(3)(x)


def _client(cfg: LocalConfig, steps: int):
    """``steps`` local steps of one client of a tiny MLP whose first kernel is binarized (after 1 step)."""
    model = MLP()
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 1)))["params"]
    mask = binarized_mask(params, lambda p, x: jax.tree_util.keystr(p) == "['Dense_0']['kernel']")
    rng = np.random.default_rng(0)
    data = FederatedData(jnp.asarray(rng.integers(0, 255, (16, 4, 4, 1)), jnp.uint8),
                         jnp.asarray(rng.integers(0, 3, 16)),
                         jnp.arange(24, dtype=jnp.int32)[None] % 16, jnp.array([16]), jnp.zeros(1), jnp.ones(1))
    orders = epoch_orders(jax.random.PRNGKey(1), data.index[0], data.sizes[0], steps)
    step = jax.jit(make_local_step(model, mask, cfg))
    states = [init_client(params, {}, mask, cfg)]
    for t in range(steps):
        states.append(step(states[-1], params, data, orders, data.sizes[0], 1, t, jax.random.PRNGKey(t), cfg.lr))
    return params, states


@pytest.mark.slow
def test_momentum_and_weight_decay_against_hand_computation():
    lr, beta, wd = 0.1, 0.9, 0.01
    params, plain = _client(LocalConfig(lr=lr, batch_size=8), 2)
    _, heavy = _client(LocalConfig(lr=lr, batch_size=8, momentum=beta), 2)
    g0 = jax.tree.map(lambda a, b: (a - b) / lr, plain[0].theta, plain[1].theta)  # the first gradient
    # Step 1 is plain SGD (the trace starts at 0); step 2 adds beta * g0 to its direction.
    chex_equal = lambda a, b, **kw: jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, **kw), a, b)  # noqa
    chex_equal(heavy[1].theta, plain[1].theta, rtol=0, atol=0)
    g1 = jax.tree.map(lambda a, b: (a - b) / lr, plain[1].theta, plain[2].theta)
    expected = jax.tree.map(lambda th, a, b: th - lr * (a + beta * b), heavy[1].theta, g1, g0)
    chex_equal(heavy[2].theta, expected, rtol=1e-4, atol=1e-6)
    # Weight decay acts on the full-precision weights: w + u on the binarized leaf (u = 0 at first).
    _, decayed = _client(LocalConfig(lr=lr, batch_size=8, weight_decay=wd), 1)
    full = {"Dense_0": {"kernel": params["Dense_0"]["kernel"], "bias": params["Dense_0"]["bias"]},
            "Dense_1": params["Dense_1"]}
    expected = jax.tree.map(lambda th, w: th - lr * wd * w, plain[1].theta, full)
    chex_equal(decayed[1].theta, expected, rtol=1e-5, atol=1e-7)


def test_schedules():
    assert learning_rate("constant", 0.1, 2.0, 3.0, 7, 100) == 0.1
    assert learning_rate("inverse_time", 0.1, 2.0, 3.0, 7, 100) == pytest.approx(2.0 / 10)
    assert float(learning_rate("cosine", 0.1, 2.0, 3.0, 0, 100)) == pytest.approx(0.1)
    assert float(learning_rate("cosine", 0.1, 2.0, 3.0, 50, 100)) == pytest.approx(0.05)
    assert float(learning_rate("cosine", 0.1, 2.0, 3.0, 100, 100)) == pytest.approx(0.0, abs=1e-9)
    # t counts the client's steps over the run: round r starts at (r - 1) * S_k.
    roster = make_roster(np.array([30, 50]), 2, 10, 0.5, "samples")
    inputs = plan_round(jax.random.PRNGKey(0), 4, roster, jnp.zeros((2, 60), jnp.int32), 2)
    np.testing.assert_array_equal(inputs.first_step, 3 * roster.num_steps[np.asarray(inputs.client)])


def _server_step(name, deltas, lr=0.5, b1=0.9, b2=0.99, eps=1e-3):
    params = {"w": jnp.array([1.0, -2.0])}
    c = fb.default_config()
    c.update(server_optimizer=name, server_lr=lr, server_b1=b1, server_b2=b2, server_eps=eps)
    learner = Learner(None, None, full_precision(), LocalConfig(0.1, 4), 1, server_optimizer(c))
    server = ServerState(params, {}, (), learner.server_optimizer.init(params))
    for d in deltas:
        agg = Aggregate({"w": jnp.asarray(d)}, {}, jnp.float32(0), jnp.float32(1), ())
        server, _ = jax.jit(learner.server_update)(server, agg, None)  # no server_step: no cohort read
    return np.asarray(server.params["w"])


def test_server_optimizers_against_hand_computation():
    d1, d2 = np.array([0.2, -0.1], np.float32), np.array([0.05, 0.3], np.float32)
    w0 = np.array([1.0, -2.0], np.float32)
    # sgd with server_lr 1 is plain averaging, bit for bit.
    np.testing.assert_array_equal(_server_step("sgd", [d1], lr=1.0), w0 + d1)
    # FedAvgM: v = g + b1 v, w -= lr v, with the pseudo-gradient g = -delta.
    v1 = -d1
    v2 = -d2 + 0.9 * v1
    np.testing.assert_allclose(_server_step("momentum", [d1, d2]), w0 - 0.5 * v1 - 0.5 * v2, rtol=1e-6)
    # FedAdam (optax's adam, bias-corrected).
    m = v = np.zeros(2)
    w = w0.astype(np.float64)
    for t, d in enumerate([d1, d2], 1):
        g = -d
        m, v = 0.9 * m + 0.1 * g, 0.99 * v + 0.01 * g * g
        w = w - 0.5 * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.99**t)) + 1e-3)
    np.testing.assert_allclose(_server_step("adam", [d1, d2]), w, rtol=1e-5)
    # FedYogi (optax's yogi: moments start at 1e-6, v -= (1 - b2) sign(v - g^2) g^2, both bias-corrected).
    m = v = np.full(2, 1e-6)
    w = w0.astype(np.float64)
    for t, d in enumerate([d1, d2], 1):
        g = -d.astype(np.float64)
        m, v = 0.9 * m + 0.1 * g, v - 0.01 * np.sign(v - g * g) * g * g
        w = w - 0.5 * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.99**t)) + 1e-3)
    np.testing.assert_allclose(_server_step("yogi", [d1, d2]), w, rtol=1e-5)


def test_alpha_rule_max_abs_is_the_largest_latent_value():
    cfg = LocalConfig(lr=0.1, batch_size=8, alpha_rule="max_abs")
    params, states = _client(cfg, 3)
    mask = binarized_mask(params, lambda p, x: jax.tree_util.keystr(p) == "['Dense_0']['kernel']")
    update, scales = client_update(params, states[-1], mask, cfg)
    assert float(scales["Dense_0"]["kernel"]) == float(jnp.max(jnp.abs(update["Dense_0"]["kernel"])))


def test_logreg_binarizes_its_weight_matrix_through_the_predicate():
    from fedbat_jax.models import make_model

    params = make_model("logreg", 10).init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))["params"]
    mask = binarized_mask(params, default_binarize_predicate)
    assert mask == {"Dense_0": {"kernel": True, "bias": False}}


@pytest.mark.slow
def test_resume_is_exact_with_server_optimizer_state(tmp_path):
    c = fb.default_config()
    c.update(dataset="mnist5k", model="logreg", num_clients=4, clients_per_round=2, rounds=3, local_epochs=1,
             batch_size=64, checkpoint_every=1, client_threads=1, server_optimizer="adam", server_lr=0.01,
             lr_schedule="inverse_time", lr_beta=2.0, lr_gamma=20.0, momentum=0.5)
    straight = fb.run(c, tmp_path / "a")
    c.rounds = 2
    fb.run(c, tmp_path / "b")
    names = read_checkpoint(tmp_path / "b" / "checkpoint.npz")[1].keys()
    assert any(n.startswith("opt_state/") for n in names)  # the server optimizer's moments are checkpointed
    c.rounds = 3
    resumed = fb.run(c, tmp_path / "b", allow_change=["rounds"])
    keys = ("round", "train_loss", "test_loss", "test_accuracy")
    assert [[r[k] for k in keys] for r in straight] == [[r[k] for k in keys] for r in resumed]
    assert len(leaf_names(fb.build(c).server.opt_state)) > 0


def test_alpha_bounds_follow_the_learning_rate():
    from fedbat_jax.local import step_sizes

    cfg = LocalConfig(lr=0.1, batch_size=8, lr_schedule="inverse_time", lr_beta=2.0, lr_gamma=4.0, alpha_bounds="lr")
    assert cfg.bounds_scale(cfg.lr_at(12, 1)) == pytest.approx((2.0 / 16) / (2.0 / 4))
    assert LocalConfig(lr=0.1, batch_size=8).bounds_scale(0.01) == 1.0  # the paper's fixed bounds
    a = {"k": jnp.float32(10.0)}  # exp(rho a) huge: alpha clips at the (scaled) upper bound
    alpha = step_sizes(a, {"k": jnp.float32(0.01)}, cfg, {"k": jnp.ones(3)}, scale=0.25)
    assert float(alpha["k"]) == pytest.approx(0.25 * cfg.alpha_max)
