"""SCAFFOLD (option II): the hooks against hand numbers on a tiny quadratic; end to end, one client is FedAvg
bit for bit, the server's control variate is the clients' average one, rows are scattered to the sampled clients
only, and it runs on every backend with exact resume."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fedbat_jax as fb
from conftest import tiny
from fedbat_jax.algorithms.scaffold import SCAFFOLD
from fedbat_jax.rounds import cohort


def test_hooks_on_a_quadratic_against_hand_numbers():
    """Two clients, f_i(w) = (w - b_i)^2 / 2 with b = (1, -3), 2 local steps of lr 0.25, equal shares,
    full participation, two rounds; every number below is worked by hand from the option-II formulas."""
    alg, lr, steps = SCAFFOLD, 0.25, 2
    b = {0: 1.0, 1: -3.0}
    x = {"w": jnp.float32(0.0)}
    c = alg.state_init(x, None)
    rows = {i: alg.row_init(x, None) for i in b}
    seen = []
    for _ in range(2):
        changes, updates = [], []
        for i in b:
            ctx = alg.context(c, rows[i], None)
            y = x
            for _ in range(steps):
                g = {"w": y["w"] - b[i]}
                d = alg.correct(g, local=y, broadcast=x, context=ctx, config=None)
                y = {"w": y["w"] - lr * d["w"]}
            update = {"w": y["w"] - x["w"]}
            rows[i], change = alg.message(update, rows[i], ctx, jnp.float32(steps * lr), None)
            changes.append(change["w"])
            updates.append(update["w"])
        c = alg.state_update(c, {"w": 0.5 * changes[0] + 0.5 * changes[1]}, None)
        x = {"w": x["w"] + 0.5 * (updates[0] + updates[1])}
        seen.append((float(x["w"]), float(c["w"]), float(rows[0]["w"]), float(rows[1]["w"])))
    # Round 1 (c = c_i = 0): client 0: y = 0 -> 0.25 -> 0.4375, update 0.4375, c_0 = -0.4375 / 0.5 = -0.875;
    # client 1: y = 0 -> -0.75 -> -1.3125, c_1 = 2.625; c = (-0.875 + 2.625) / 2 = 0.875; x = -0.4375.
    # Round 2: client 0 steps along (y - 1) + (c - c_0) = y + 0.75: y = -0.4375 -> -0.515625 -> -0.57421875,
    # update -0.13671875, c_0 = (c_0 - c) - update / 0.5 = -1.75 + 0.2734375 = -1.4765625; client 1 along
    # (y + 3) - 1.75 = y + 1.25: y = -0.4375 -> -0.640625 -> -0.79296875, update -0.35546875,
    # c_1 = 1.75 + 0.7109375 = 2.4609375; c = 0.875 + ((-1.4765625 + 0.875) + (2.4609375 - 2.625)) / 2
    # = 0.4921875; x = -0.4375 + (-0.13671875 - 0.35546875) / 2 = -0.68359375.
    assert seen[0] == pytest.approx((-0.4375, 0.875, -0.875, 2.625))
    assert seen[1] == pytest.approx((-0.68359375, 0.4921875, -1.4765625, 2.4609375))


def _params(server):
    return [np.asarray(x) for x in jax.tree.leaves(server.params)]


@pytest.mark.slow
def test_one_client_is_fedavg_bit_for_bit():
    """With a single client, c equals its c_i after every round, so the correction c - c_i is 0."""
    one = dict(model="logreg", num_clients=1, clients_per_round=1, partition="iid", rounds=3)
    a, b = fb.run(tiny("fedavg", **one)), fb.run(tiny("scaffold", **one))
    assert [r["train_loss"] for r in a] == [r["train_loss"] for r in b]
    assert b[0]["uplink_bits"] == 2 * a[0]["uplink_bits"] and b[0]["downlink_bits"] == 2 * a[0]["downlink_bits"]


@pytest.mark.slow
def test_control_variates_after_the_first_round():
    """Round 1 trains as FedAvg (every c is 0), so c_i = -(y_i - x) / (S_i lr) for the sampled clients, their rows
    only; the server's c = sum_k w_k c_k, the share-weighted sum of the rows."""
    cfg = tiny("scaffold", model="logreg", num_clients=6, clients_per_round=3, partition="iid", lr=0.05)
    exp = fb.build(cfg)
    server, _ = exp.run_round(exp.server, 1)
    table = np.asarray(server.client_table.algorithm["Dense_0"]["kernel"])
    sampled = cohort(cfg.seed, 1, 6, 3)
    others = np.setdiff1d(np.arange(6), sampled)
    assert np.all(table[others] == 0) and np.all(np.abs(table[sampled]).reshape(3, -1).max(1) > 0)
    roster = exp.federation.roster
    shares = roster.weight / roster.weight.sum()
    expected = np.tensordot(shares[sampled], table[sampled], axes=1)
    np.testing.assert_allclose(np.asarray(server.algorithm_state["Dense_0"]["kernel"]), expected, rtol=1e-5,
                               atol=1e-7)
    # and the model moved by the weighted mean of the same updates: x1 - x0 = sum_k p_k (y_k - x0), with
    # y_k - x0 = -S_k lr c_k
    p = roster.weight[sampled] / roster.weight[sampled].sum()
    moved = -np.tensordot(p * roster.num_steps[sampled] * cfg.lr, table[sampled], axes=1)
    delta = np.asarray(server.params["Dense_0"]["kernel"]) - np.asarray(exp.server.params["Dense_0"]["kernel"])
    np.testing.assert_allclose(delta, moved, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("compressor", ["auto", "stoch_binary"])
def test_scaffold_on_every_backend_and_make_train(compressor):
    c = dict(model="logreg", compressor=compressor, rounds=3)
    runs = [fb.run(tiny("scaffold", backend=e, **c)) for e in ("host", "fused", "padded")]
    _, m = jax.jit(fb.make_train(tiny("scaffold", **c)))(jax.random.PRNGKey(0))
    base = [r["train_loss"] for r in runs[0]]
    for other in [[r["train_loss"] for r in recs] for recs in runs[1:]] + [np.asarray(m["train_loss"]).tolist()]:
        np.testing.assert_allclose(other, base, rtol=1e-4)


@pytest.mark.slow
def test_resume_is_exact(tmp_path):
    whole = fb.run(tiny("scaffold", model="logreg", rounds=4))
    fb.run(tiny("scaffold", model="logreg", rounds=2), tmp_path)
    resumed = fb.run(tiny("scaffold", model="logreg", rounds=4), tmp_path, allow_change=["rounds"])
    assert [r["train_loss"] for r in resumed] == [r["train_loss"] for r in whole]


SHARDED = textwrap.dedent("""
    import json
    import jax, numpy as np
    import fedbat_jax as fb
    c = fb.default_config()
    c.update(algorithm="scaffold", model="logreg", dataset="mnist5k", num_clients=8, clients_per_round=4, rounds=2,
             local_epochs=1, batch_size=64, partition="dirichlet", dirichlet_beta=0.5, backend="fused", lanes=4,
             lane_loop="scan")
    out = {}
    for n in (4, 1):
        c.num_devices = n
        exp = fb.build(c)
        server = exp.server
        for r in (1, 2):
            server, _ = exp.run_round(server, r)
        out[n] = {"params": [np.asarray(x).tolist() for x in jax.tree.leaves(server.params)],
                  "c": [np.asarray(x).tolist() for x in jax.tree.leaves(server.algorithm_state)],
                  "rows": [np.asarray(x).tolist() for x in jax.tree.leaves(server.client_table.algorithm)]}
    print("RESULT " + json.dumps(out))
""")


@pytest.mark.slow
def test_control_variates_merge_across_four_devices(xla_cache_env):
    """Lanes sharded over 4 (forced) CPU devices: each sampled client's control variate comes from the device that
    trained it, and the model, c and the table equal one device's to rounding."""
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root), **xla_cache_env)
    env["XLA_FLAGS"] += " --xla_force_host_platform_device_count=4"
    done = subprocess.run([sys.executable, "-c", SHARDED], cwd=root, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(next(line[7:] for line in done.stdout.splitlines() if line.startswith("RESULT ")))
    for name in ("params", "c", "rows"):
        for a, b in zip(out["4"][name], out["1"][name]):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    rows = np.asarray(out["4"]["rows"][0])
    assert 4 <= np.count_nonzero(np.abs(rows).reshape(len(rows), -1).sum(1)) <= 8  # two cohorts' rows written
