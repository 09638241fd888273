"""The engine: the aggregate against hand-computed numbers, backends against each other, make_train
against the CLI run, seeds and a float setting vmapped, and the lanes sharded over 4 CPU devices."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fedbat_jax as fb
from conftest import tiny
from fedbat_jax.compressors import full_precision
from fedbat_jax.errors import ConfigError
from fedbat_jax.backends import finish
from fedbat_jax.federated import Client, ClientInput, ClientRow, Learner, make_roster
from fedbat_jax.local import LocalConfig, binarized_mask
from fedbat_jax.whole_run import make_train

ROOT = Path(__file__).resolve().parents[1]



class Toy(nn.Module):
    @nn.compact
    def __call__(self, x, train=False, mask=None):
        return nn.Dense(2)(x)


@pytest.mark.parametrize("jit", [False, True])
def test_aggregate_is_the_weighted_sum_of_finished_clients(jit):
    """FedAvg on a toy model: two finished clients of three lanes (the third idle) against hand numbers."""
    params = {"Dense_0": {"kernel": jnp.ones((2, 2)), "bias": jnp.zeros(2)}}
    learner = Learner(Toy(), binarized_mask(params, None), full_precision(), LocalConfig(0.1, 4), 1)
    server = learner.server_init(params, {}, 3)
    theta = [jax.tree.map(lambda w: w + d, params) for d in (1.0, 3.0, 100.0)]  # each client's trained weights
    states = jax.vmap(learner.fresh_state, (None, None), axis_size=3)(params, {})
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *theta)
    states = states._replace(theta=stacked, loss_sum=jnp.array([2.0, 4.0, 9.0]), seen=jnp.array([4.0, 8.0, 9.0]))
    clients = Client(states, jnp.zeros((3, 1, 8), jnp.int32), ())
    inputs = ClientInput(jnp.arange(3), jnp.arange(3), jnp.zeros((3, 8), jnp.int32), jnp.array([4, 8, 9]),
                         jnp.ones(3, jnp.int32), jnp.zeros(3, jnp.int32), jnp.array([1 / 3, 2 / 3, 0.5]),
                         jnp.array([0.1, 0.2, 0.7]), jax.random.split(jax.random.PRNGKey(0), 3),
                         jnp.zeros(3, jnp.int32), jnp.ones(3, bool))
    sent = learner.broadcast(server)

    def f(acc, clients, inputs, done):
        return finish(learner, sent, acc, ClientRow((), ()), clients, inputs, done)

    f = jax.jit(f) if jit else f
    acc, _ = f(learner.empty_aggregate(sent), clients, inputs, jnp.array([True, True, False]))
    new, stats = learner.server_update(server, acc, inputs)
    # w + 1/3 * 1 + 2/3 * 3 = w + 7/3; the idle lane (update 100) contributes nothing.
    chex.assert_trees_all_close(new.params, jax.tree.map(lambda w: w + 7 / 3, params), rtol=1e-6)
    assert float(stats["train_loss"]) == pytest.approx(6.0 / 12.0)


def test_roster_steps_warmup_and_weights():
    roster = make_roster(np.array([64, 65, 10]), local_epochs=3, batch_size=64, phi=0.5, aggregation_weights="batches")
    np.testing.assert_array_equal(roster.num_steps, [3, 6, 3])
    np.testing.assert_array_equal(roster.n_warm, [1, 3, 1])
    np.testing.assert_array_equal(roster.weight, [1, 2, 1])


def test_python_lane_loop_with_several_devices_is_refused_before_data_loads(monkeypatch):
    from fedbat_jax.config import validate
    from fedbat_jax.distributed import start

    monkeypatch.setattr(jax, "device_count", lambda: 4)
    with pytest.raises(ConfigError, match="lane_loop=python runs on one device"):
        start(tiny(lane_loop="python"))
    start(tiny(lane_loop="python", num_devices=1))  # one of the four: fine
    with pytest.raises(ConfigError, match="lane_loop=host is now called lane_loop=python"):
        validate(tiny(lane_loop="host"))
    start(tiny(lane_loop="scan"))


def _leaves_close(a, b, rtol, atol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def test_one_lane_and_three_lanes_compute_the_same_round():
    """One lane (the cohort back to back, each client absorbed as it ends) and three lanes (side by side)
    give the same round: lanes are independent, and the aggregate adds each finished client once. On the
    convex logreg model, to rounding (CNN4 on mnist5k amplifies the different summation order of a vmapped
    step to a few percent of a round's update within a few steps: max-pool and ReLU ties on the digits'
    constant background; host against fused on CNN4: tests/test_round.py)."""
    runs = []
    for lanes in (1, 3):
        exp = fb.build(tiny("fedavg", model="logreg", lr=0.02, batch_size=128, backend="fused", lanes=lanes))
        runs.append(exp.run_round(exp.server, 1))
    w0 = exp.server.params

    def norm(t):
        return float(optax.tree.norm(t))

    a, b = runs[0][0].params, runs[1][0].params
    assert norm(jax.tree.map(jnp.subtract, a, b)) <= 1e-5 * norm(jax.tree.map(jnp.subtract, b, w0))
    assert float(runs[0][1]["train_loss"]) == pytest.approx(float(runs[1][1]["train_loss"]), rel=1e-6)


@pytest.fixture(scope="module")
def pure_and_cli():
    """A config, the CLI's run of it, and make_train's whole-run program run on it (one run, for both tests)."""
    c = tiny("fedbat", model_width=8, lr=0.02, rounds=2, padded_group=2)  # the cohort of 3 in 2 padded groups
    records = fb.run(c)
    _, metrics = jax.jit(make_train(c))(jax.random.PRNGKey(c.seed))
    return c, metrics, records


@pytest.mark.slow
def test_make_train_is_the_cli_run(pure_and_cli):
    c, metrics, records = pure_and_cli
    assert set(metrics) >= {"test_accuracy", "test_loss", "train_loss", "uplink_bits"}
    assert metrics["train_loss"].shape == (c.rounds,)
    np.testing.assert_allclose(metrics["uplink_bits"], [r["uplink_bits"] for r in records])
    np.testing.assert_allclose(metrics["test_loss"], [r["test_loss"] for r in records], rtol=1e-2)
    np.testing.assert_allclose(metrics["train_loss"], [r["train_loss"] for r in records], rtol=3e-2)
    np.testing.assert_allclose(metrics["test_accuracy"], [r["test_accuracy"] for r in records], atol=0.03)


@pytest.mark.slow
def test_the_padded_backend_in_the_run_loop_is_make_trains_round(pure_and_cli):
    c, metrics, _ = pure_and_cli
    padded = c.copy_and_resolve_references()
    padded.backend = "padded"
    records = fb.run(padded)
    np.testing.assert_allclose([r["train_loss"] for r in records], metrics["train_loss"], rtol=1e-4)
    np.testing.assert_allclose([r["test_accuracy"] for r in records], metrics["test_accuracy"], atol=2e-3)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["host", "fused", "debug"])
def test_make_train_refuses_a_backend_it_cannot_trace(backend):
    """A whole-run program runs the padded backend (``auto``); it never ignores another one silently."""
    with pytest.raises(ConfigError, match=f"^make_train traces the whole run as one program, and backend={backend} "
                                          "cannot be traced; use backend=auto or padded"):
        fb.make_train(tiny(backend=backend))


def test_make_train_vmaps_seeds_and_a_float_setting():
    c = tiny("fedbat", model="logreg", lr=0.02, rounds=2)  # a linear model: the lanes are what is tested
    train_fn = make_train(c)
    keys = jnp.stack([jax.random.PRNGKey(c.seed), jax.random.PRNGKey(c.seed + 1)])
    lrs = jnp.array([0.02, 0.05])
    _, many = jax.jit(jax.vmap(train_fn))(keys, {"lr": lrs})
    _, one = jax.jit(train_fn)(keys[1], {"lr": lrs[1]})
    assert many["train_loss"].shape == (2, c.rounds)
    np.testing.assert_allclose(many["train_loss"][1], one["train_loss"], rtol=2e-2)
    assert not np.allclose(many["train_loss"][0], many["train_loss"][1])  # different seeds and lr
    with pytest.raises(ConfigError, match="batch_size"):
        train_fn(keys[0], {"batch_size": 3})


MULTI_DEVICE = textwrap.dedent("""
    import json
    import jax, jax.numpy as jnp
    import fedbat_jax as fb
    c = fb.default_config()
    c.update(algorithm="ef_signsgd", dataset="mnist5k", num_clients=8, clients_per_round=4, rounds=1,
             local_epochs=1, batch_size=128, partition="dirichlet", dirichlet_beta=0.5, model="logreg",
             backend="fused", lanes=4, lr=0.02, lane_loop="scan")  # the same program, sharded or not
    out, servers = {"devices": jax.local_device_count()}, {}
    for n in (4, 1):
        c.num_devices = n
        lines = []
        records = fb.run(c, log=lines.append)
        exp = fb.build(c)
        servers[n] = exp.run_round(exp.server, 1)[0]
        out[n] = {"log": lines[0], "loss": records[0]["train_loss"], "test_loss": records[0]["test_loss"]}
    w0 = exp.server.params
    rel = lambda a, b, w: float(jnp.linalg.norm(a - b) / jnp.maximum(jnp.linalg.norm(b - w), 1e-12))
    out["params"] = [rel(a, b, w) for a, b, w in zip(*(jax.tree.leaves(t) for t in
                                                      (servers[4].params, servers[1].params, w0)))]
    ef = [jax.tree.leaves(servers[n].client_table.compressor) for n in (4, 1)]
    out["ef"] = [rel(a, b, 0.0) for a, b in zip(*ef)]
    big = max(range(len(ef[0])), key=lambda i: ef[0][i].size)  # a kernel's residuals
    out["ef_rows"] = [[int(i) for i in jnp.flatnonzero(jnp.abs(x[big]).reshape(x[big].shape[0], -1).sum(1))]
                      for x in ef]
    print("RESULT " + json.dumps(out))
""")


@pytest.mark.slow
def test_lanes_sharded_over_four_devices_match_one_device(xla_cache_env):
    """The same config on 4 (forced) CPU devices and on 1: same round up to rounding, the EF residuals of
    the sampled clients merged from the devices that trained them, and the mesh in the run's first line."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), **xla_cache_env)
    env["XLA_FLAGS"] += " --xla_force_host_platform_device_count=4"
    done = subprocess.run([sys.executable, "-c", MULTI_DEVICE], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(next(line[7:] for line in done.stdout.splitlines() if line.startswith("RESULT ")))
    assert out["devices"] == 4
    four, one = out["4"], out["1"]
    assert "devices: 4" in four["log"] and "devices: 1" in one["log"]
    assert four["loss"] == pytest.approx(one["loss"], rel=1e-3)
    assert four["test_loss"] == pytest.approx(one["test_loss"], rel=1e-3)
    # relative to the round's update, per leaf. The upload is a sign a value: where an entry sits near 0 a
    # rounding-level difference flips it, so a kernel gets the looser bound of tests/test_round.py. (The lanes
    # are sharded, not the model: a linear model tests them; with CNN4 at XLA:CPU's unoptimised compilation
    # (LLVM level 0), one machine measured 0.14 on the first conv, 0.02 optimised.)
    assert max(out["params"]) < 0.3 and np.median(out["params"]) < 0.05, out["params"]
    assert max(out["ef"]) < 0.3 and np.median(out["ef"]) < 0.05, out["ef"]
    assert out["ef_rows"][0] == out["ef_rows"][1] and len(out["ef_rows"][0]) == 4  # the 4 sampled clients
