"""Algorithms that own the server step (``Algorithm.server_step``, ``update_scale``): FedDyn and FedNova against
hand numbers on tiny quadratics with unequal client sizes, then end to end: every compressor (the uplink is the
compressor's payload alone), every backend and ``make_train`` equal to the host backend, and exact resume."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fedbat_jax as fb
from conftest import tiny
from fedbat_jax.algorithms import ALGORITHMS
from fedbat_jax.algorithms.feddyn import FEDDYN
from fedbat_jax.algorithms.fednova import FEDNOVA, local_work
from fedbat_jax.compressors import COMPRESSORS, full_precision
from fedbat_jax.federated import Aggregate, ClientInput, Learner, ServerState
from fedbat_jax.local import LocalConfig


class Settings:
    feddyn_alpha = 0.5
    momentum = 0.0


def _cohort(steps, weight, share):
    k = len(steps)
    z = jnp.zeros(k, jnp.int32)
    return ClientInput(jnp.arange(k), jnp.arange(k), jnp.zeros((k, 1), jnp.int32), z, jnp.asarray(steps, jnp.int32),
                       z, jnp.asarray(weight, jnp.float32), jnp.asarray(share, jnp.float32),
                       jax.random.split(jax.random.PRNGKey(0), k), z, jnp.ones(k, bool))


def _server_round(learner, server, updates, cohort):
    """The server's side of a round, from the clients' raw updates: each weighted as ``Learner.client_final``
    weights it (p_k times the algorithm's update_scale), summed, then ``Learner.server_update``."""
    lr_sums = np.asarray(learner.lr_sums(cohort))
    scale = [1.0] * len(updates) if learner.algorithm.update_scale is None else [
        float(learner.algorithm.update_scale(jax.tree.map(lambda x: x[i], cohort), lr_sums[i], learner.settings))
        for i in range(len(updates))]
    total = sum(float(cohort.weight[i]) * scale[i] * u for i, u in enumerate(updates))
    agg = Aggregate({"w": jnp.float32(total)}, {}, jnp.float32(0), jnp.float32(1), ())
    return jax.jit(learner.server_update)(server, agg, cohort)[0]


def test_feddyn_on_a_quadratic_against_hand_numbers():
    """Three clients of sizes 1, 3, 4 (samples weighting); clients 0 and 1 sampled, so p = (1/4, 3/4) and the
    federation shares w = (1/8, 3/8): the server's h uses sum_k w_k u_k = u_cohort / 2 exactly, not K/N = 2/3.
    f_i(w) = (w - b_i)^2 / 2, b = (1, -3); alpha 0.5, 2 local steps of lr 0.25; two rounds, by hand below."""
    alg, lr, b = FEDDYN, 0.25, {0: 1.0, 1: -3.0}
    learner = Learner(None, None, full_precision(), LocalConfig(lr, 4), 1, optax.sgd(1.0), alg, Settings)
    x = {"w": jnp.float32(0.0)}
    server = ServerState(x, {}, (), learner.server_transform().init(x))
    rows = {i: alg.row_init(x, Settings) for i in b}
    cohort = _cohort([2, 2], [0.25, 0.75], [0.125, 0.375])
    seen = []
    for _ in range(2):
        updates = []
        for i in b:
            ctx = alg.context((), rows[i], Settings)
            y = server.params
            for _ in range(2):
                d = alg.correct({"w": y["w"] - b[i]}, local=y, broadcast=server.params, context=ctx, config=Settings)
                y = {"w": y["w"] - lr * d["w"]}
            update = {"w": y["w"] - server.params["w"]}
            rows[i], message = alg.message(update, rows[i], ctx, jnp.float32(2 * lr), Settings)
            assert message == ()
            updates.append(float(update["w"]))
        server = _server_round(learner, server, updates, cohort)
        h = float(jax.tree.leaves(server.opt_state)[0])
        seen.append((float(server.params["w"]), h, float(rows[0]["w"]), float(rows[1]["w"])))
    # Round 1 (g = h = 0): client 0 follows 1.5 y - 1: y = 0 -> 0.25 -> 0.40625, g_0 = -0.5 * 0.40625 = -0.203125;
    # client 1 follows 1.5 y + 3: y = 0 -> -0.75 -> -1.21875, g_1 = 0.609375. Cohort sum 0.25 * 0.40625 +
    # 0.75 * -1.21875 = -0.8125, federation sum -0.40625: h = 0.203125, x = 0 - 0.8125 - 0.203125 / 0.5 = -1.21875.
    # Round 2: client 0 follows (y - 1) + 0.203125 + 0.5 (y + 1.21875) = 1.5 y - 0.1875: y = -1.21875 ->
    # -0.71484375 -> -0.39990234375, update 0.81884765625, g_0 = -0.612548828125; client 1 follows
    # (y + 3) - 0.609375 + 0.5 (y + 1.21875) = 1.5 y + 3: y -> -1.51171875 -> -1.69482421875, update -0.47607421875,
    # g_1 = 0.847412109375. Cohort sum -0.15234375, federation sum -0.076171875: h = 0.2412109375,
    # x = -1.21875 - 0.15234375 - 0.482421875 = -1.853515625.
    assert seen[0] == pytest.approx((-1.21875, 0.203125, -0.203125, 0.609375))
    assert seen[1] == pytest.approx((-1.853515625, 0.2412109375, -0.612548828125, 0.847412109375))


def test_fednova_normalises_by_local_work_against_hand_numbers():
    """Clients with 2 and 6 local steps of lr 0.1, p = (1/4, 3/4), updates 1 and -3: a = (0.2, 0.6), and FedNova
    moves by tau_eff sum_k p_k u_k / a_k = (0.25 * 0.2 + 0.75 * 0.6) * (0.25 * 1 / 0.2 - 0.75 * 3 / 0.6)
    = 0.5 * -2.5 = -1.25, where FedAvg moves by 0.25 - 2.25 = -2; with momentum 0.5,
    a = lr (S - 0.5 (1 - 0.5^S) / 0.5) / 0.5: 0.25 and 1.003125."""
    learner = Learner(None, None, full_precision(), LocalConfig(0.1, 4), 1, optax.sgd(1.0), FEDNOVA, Settings)
    x = {"w": jnp.float32(0.0)}
    server = ServerState(x, {}, (), learner.server_transform().init(x))
    cohort = _cohort([2, 6], [0.25, 0.75], [0.1, 0.3])
    assert float(_server_round(learner, server, [1.0, -3.0], cohort).params["w"]) == pytest.approx(-1.25)

    class Momentum(Settings):
        momentum = 0.5

    np.testing.assert_allclose(np.asarray(local_work(jnp.array([0.2, 0.6]), jnp.array([2, 6]), Momentum)),
                               [0.25, 1.003125], rtol=1e-6)
    # the heavy ball's total step after S constant gradients g: g (1 + (1 + rho) + ... ) = a g
    v, total = 0.0, 0.0
    for _ in range(6):
        v = 0.5 * v + 1.0
        total += v
    assert total == pytest.approx(10.03125)


def test_server_only_state_is_not_broadcast_or_counted():
    """FedDyn's h lives in the server step's state: nothing is broadcast beyond the model, and the wire is
    FedAvg's (FedNova's too), where SCAFFOLD's c doubles both directions."""
    bits = {a: fb.build(tiny(a, model="logreg", num_clients=4, clients_per_round=2)).wire
            for a in ("fedavg", "feddyn", "fednova", "scaffold")}
    assert bits["feddyn"] == bits["fedavg"] == bits["fednova"]
    assert bits["scaffold"]["downlink_bits"] == 2 * bits["fedavg"]["downlink_bits"]
    exp = fb.build(tiny("feddyn", model="logreg", num_clients=4, clients_per_round=2))
    assert exp.server.algorithm_state == () and exp.federation.learner.broadcast(exp.server).algorithm_state == ()


def test_feddyn_brings_its_setting_and_its_check():
    assert ALGORITHMS["feddyn"].server_step is not None and fb.default_config().feddyn_alpha == 0.01
    with pytest.raises(fb.ConfigError, match="feddyn_alpha must be > 0, got 0.0"):
        fb.build(tiny("feddyn", model="logreg", feddyn_alpha=0.0))


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["feddyn", "fednova"])
def test_every_compressor_costs_its_own_payload(algorithm):
    """Composed with each compressor, the uplink is that compressor's payload (FedAvg's with it), exactly, and
    a round trains (a finite loss, a moved model)."""
    for compressor in COMPRESSORS:
        if compressor == "none":
            continue
        c = dict(model="logreg", num_clients=4, clients_per_round=2, rounds=1, compressor=compressor,
                 partition="iid")
        if compressor == "fedbat":  # it binarizes conv kernels
            c.update(model="cnn4", model_width=4)
        mine, plain = fb.build(tiny(algorithm, **c)), fb.build(tiny("fedavg", **c))
        assert mine.wire == plain.wire, compressor
        server, metrics = mine.run_round(mine.server, 1)
        assert np.isfinite(float(metrics["train_loss"])), compressor


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["feddyn", "fednova"])
def test_every_backend_and_make_train_agree(algorithm):
    """Unequal clients (Dirichlet sizes): host, fused, padded, debug and make_train's whole-run program agree."""
    c = dict(model="logreg", rounds=3)
    runs = [fb.run(tiny(algorithm, backend=e, **c)) for e in ("host", "fused", "padded", "debug")]
    _, m = jax.jit(fb.make_train(tiny(algorithm, **c)))(jax.random.PRNGKey(0))
    base = [r["train_loss"] for r in runs[0]]
    assert base != [r["train_loss"] for r in fb.run(tiny("fedavg", **c))]  # it is not FedAvg here
    for other in [[r["train_loss"] for r in recs] for recs in runs[1:]] + [np.asarray(m["train_loss"]).tolist()]:
        np.testing.assert_allclose(other, base, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["feddyn", "fednova"])
def test_resume_is_exact(tmp_path, algorithm):
    whole = fb.run(tiny(algorithm, model="logreg", rounds=4))
    fb.run(tiny(algorithm, model="logreg", rounds=2), tmp_path)
    resumed = fb.run(tiny(algorithm, model="logreg", rounds=4), tmp_path, allow_change=["rounds"])
    assert [r["train_loss"] for r in resumed] == [r["train_loss"] for r in whole]


def test_server_lr_sums_are_what_the_clients_add_up():
    """``Learner.lr_sums`` (the server's, from the plan) equals each sampled client's sum of its steps' rates
    under a decaying schedule, where FedNova's a_k is not proportional to S_k."""
    from fedbat_jax.federated import plan_round

    exp = fb.build(tiny("fednova", model="logreg", lr_schedule="inverse_time", lr_beta=20.0, lr_gamma=50.0))
    learner, roster = exp.federation.learner, exp.federation.roster
    cohort = plan_round(jax.random.PRNGKey(0), 3, roster, exp.federation.data.index, 3)
    want = [sum(float(learner.local.lr_at(int(f) + t, int(s))) for t in range(int(s)))
            for f, s in zip(cohort.first_step, cohort.num_steps)]
    np.testing.assert_allclose(np.asarray(learner.lr_sums(cohort)), want, rtol=1e-5)
    assert len(set(np.round(np.asarray(want) / np.asarray(cohort.num_steps), 6))) > 1  # unequal mean rates


def test_a_server_side_compressor_without_estimated_leaves_sums_every_leaf_by_share():
    """``Compressor.estimated=None`` with a ``server`` means every leaf is estimated (EF21's contract): each decoded
    update arrives weighted by the federation share w_k, not the cohort weight p_k, and ``sums`` divides back."""
    base = full_precision()
    comp = base._replace(server=optax.identity(), estimated=None)
    learner = Learner(None, None, comp, LocalConfig(0.1, 4), 1, optax.sgd(1.0), FEDDYN, Settings)
    cohort = _cohort([2, 2], [0.25, 0.75], [0.125, 0.375])
    one = jax.tree.map(lambda x: x[0], cohort)
    update = {"a": jnp.float32(2.0), "b": jnp.float32(4.0)}
    assert learner._weighted(update, one, jnp.float32(1.0)) == {"a": 0.25, "b": 0.5}  # w_0 = 0.125
    agg = Aggregate({"a": jnp.float32(1.0), "b": jnp.float32(1.0)}, {}, jnp.float32(0), jnp.float32(1), ())
    sums = learner.sums(agg, cohort)
    assert float(sums.federation["a"]) == 1.0 and float(sums.cohort["b"]) == pytest.approx(2.0)  # 1 / sum w = 2
