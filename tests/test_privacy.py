"""User-level DP (fedbat_jax/privacy.py): the clip of each decoded upload, the server's noise, adaptive clipping,
Poisson sampling in fixed slots, the accountant (dp-accounting), resume, and every bad DP setting in one line."""
from __future__ import annotations

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fedbat_jax as fb
from fedbat_jax import privacy
from fedbat_jax.compressors import COMPRESSORS
from fedbat_jax.errors import ConfigError
from fedbat_jax.federated import Sampling, plan_round, poisson_cohort
from fedbat_jax.main import main
from fedbat_jax.runner import build

from conftest import tiny

DP = dict(aggregation_weights="uniform", dp_clip=0.5, dp_noise_multiplier=1.0, model="logreg")  # (cnn4 has BatchNorm)


def results(records):
    return [{k: v for k, v in r.items() if k != "round_seconds"} for r in records]


# ---- the clip ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("jit", [False, True])
def test_the_clip_bounds_the_norm_over_every_leaf_and_leaves_a_small_update_bit_for_bit(jit):
    clip = jax.jit(privacy.clip_decoded) if jit else privacy.clip_decoded
    tree = {"a": jnp.array([3.0, 0.0]), "b": jnp.array([[4.0]])}  # norm 5
    out, within = clip(tree, jnp.float32(1.0))
    chex.assert_trees_all_close(out, {"a": jnp.array([0.6, 0.0]), "b": jnp.array([[0.8]])}, rtol=1e-6)
    assert float(within) == 0.0
    out, within = clip(tree, jnp.float32(5.5))
    assert float(within) == 1.0 and all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(out),
                                                                              jax.tree.leaves(tree)))


@pytest.mark.parametrize("compressor,feedback", [(c, "none") for c in sorted(COMPRESSORS)] + [("scaled_sign", "ef")])
def test_every_compressor_s_decoded_upload_is_clipped_to_the_clip(compressor, feedback):
    """What the server sums from one client has L2 norm at most dp_clip / E[K], whatever the payload: a sign or level
    payload's scale, top-k's kept values, a float32 update alike; with error feedback, the residual-corrected
    message (so a round's sensitivity stays dp_clip)."""
    algorithm = "fedbat" if compressor == "fedbat" else "fedavg"
    config = tiny(algorithm, compressor="auto" if compressor == "fedbat" else compressor, rounds=1,
                  error_feedback=feedback, **dict(DP, dp_clip=1e-3, dp_noise_multiplier=0.0))
    exp = build(config)
    from fedbat_jax.backends import one_client

    learner, fed = exp.federation.learner, exp.federation
    inputs = plan_round(jax.random.PRNGKey(0), 1, fed.roster, fed.data.index, fed.sampling)
    sent = learner.broadcast(exp.server)
    inp = one_client(inputs, 0)
    row = jax.tree.map(lambda x: x[int(inp.client)], exp.server.client_table)
    client = jax.jit(learner.client_init)(sent, row, inp)
    step = jax.jit(learner.client_step)
    for t in range(int(inp.num_steps)):
        client = step(client, sent, fed.data, inp, t)
    contribution, _ = jax.jit(learner.client_final)(sent, client, row, inp)
    norm = math.sqrt(sum(float(jnp.sum(x ** 2)) for x in jax.tree.leaves(contribution.update)))
    assert norm <= 1e-3 / config.clients_per_round * (1 + 1e-5)
    assert norm > 0.5e-3 / config.clients_per_round  # clipped, not zeroed
    assert float(contribution.unclipped) == 0.0


# ---- the run: off equals today, noise from (seed, round) ------------------------------------------------------------
@pytest.mark.parametrize("algorithm", ["fedbat", "fedavg"])
def test_no_noise_and_a_clip_never_reached_is_today_s_run_bit_for_bit(algorithm):
    plain = fb.run(tiny(algorithm, aggregation_weights="uniform", model="logreg"))
    dp = fb.run(tiny(algorithm, aggregation_weights="uniform", model="logreg", dp_clip=1e30, dp_noise_multiplier=0.0))
    assert [r.pop("dp_clip") for r in dp] == [float(np.float32(1e30))] * 2
    assert results(dp) == results(plain)


def test_noise_is_drawn_from_the_seed_and_round_so_a_rerun_is_identical_and_another_seed_differs():
    a, b = fb.run(tiny("fedavg", **DP)), fb.run(tiny("fedavg", **DP))
    assert results(a) == results(b)
    c = fb.run(tiny("fedavg", seed=1, **DP))
    assert results(c) != results(a)
    assert [r["epsilon"] for r in a] == [r["epsilon"] for r in c]  # the same mechanism, the same charge


def test_the_server_noise_has_stddev_z_clip_over_the_expected_cohort():
    p = privacy.Privacy(clip=2.0, noise_multiplier=3.0, expected_cohort=10.0)
    state = privacy.init(p)
    update = {"w": jnp.full((200_000,), 0.25)}
    out, state2, stats = privacy.privatize(update, jnp.float32(4), state, jax.random.PRNGKey(3), p)
    noise = np.asarray(out["w"]) - 0.25
    assert abs(noise.std() / (3.0 * 2.0 / 10.0) - 1) < 0.01 and abs(noise.mean()) < 0.01
    assert int(state2.rounds) == 1 and float(state2.clip) == 2.0 and float(stats["dp_clip"]) == 2.0
    again, _, _ = privacy.privatize(update, jnp.float32(4), state, jax.random.PRNGKey(3), p)
    assert np.array_equal(again["w"], out["w"])


def test_adaptive_clipping_moves_the_clip_geometrically_toward_the_quantile():
    """C <- C exp(-eta (b - gamma)), b the noised unclipped fraction; the update's multiplier is raised to
    (z^-2 - (2 sigma_b)^-2)^-1/2 so the pair costs what z alone would."""
    p = privacy.Privacy(clip=1.0, noise_multiplier=1.0, expected_cohort=10.0, quantile=0.5, clip_lr=0.2,
                        count_stddev=1e-6)
    _, state, stats = privacy.privatize({"w": jnp.zeros(3)}, jnp.float32(9), privacy.init(p), jax.random.PRNGKey(0), p)
    assert float(stats["dp_unclipped"]) == pytest.approx(0.9, abs=1e-5)
    assert float(state.clip) == pytest.approx(math.exp(-0.2 * (0.9 - 0.5)), rel=1e-5)  # most within: the clip falls
    _, state, _ = privacy.privatize({"w": jnp.zeros(3)}, jnp.float32(1), state, jax.random.PRNGKey(1), p)
    assert float(state.clip) == pytest.approx(math.exp(-0.2 * 0.4) * math.exp(-0.2 * (0.1 - 0.5)), rel=1e-4)
    p = p._replace(count_stddev=1.0)
    assert float(privacy.update_noise_multiplier(p)) == pytest.approx((1 - 0.25) ** -0.5, rel=1e-6)


# ---- the accountant --------------------------------------------------------------------------------------------
def test_epsilon_is_the_library_s_own_calculation():
    import dp_accounting as dpa

    a = privacy.Accountant(1.1, True, 1000, 50, 1e-3)
    acc = dpa.rdp.RdpAccountant()
    acc.compose(dpa.PoissonSampledDpEvent(0.05, dpa.GaussianDpEvent(1.1)), 30)
    assert privacy.epsilon(a, 30) == acc.get_epsilon(1e-3)
    wor = dpa.rdp.RdpAccountant(neighboring_relation=dpa.NeighboringRelation.REPLACE_ONE)
    wor.compose(dpa.SampledWithoutReplacementDpEvent(1000, 50, dpa.GaussianDpEvent(1.1)), 30)
    assert privacy.epsilon(a._replace(poisson=False), 30) == wor.get_epsilon(1e-3)
    pld = dpa.pld.PLDAccountant()
    pld.compose(dpa.PoissonSampledDpEvent(0.05, dpa.GaussianDpEvent(1.1)), 30)
    assert privacy.epsilon(a._replace(kind="pld"), 30) == pytest.approx(pld.get_epsilon(1e-3), rel=1e-9)
    assert privacy.epsilon(a._replace(noise_multiplier=0.0), 3) == math.inf


def test_the_solved_noise_multiplier_meets_its_target_and_a_run_prints_it(capsys):
    a = privacy.Accountant(0.0, True, 1000, 50, 1e-3)
    z = privacy.solve_noise_multiplier(2.0, a, 40)
    assert privacy.epsilon(a._replace(noise_multiplier=z), 40) <= 2.0
    assert privacy.epsilon(a._replace(noise_multiplier=z * 0.99), 40) > 2.0  # the smallest, to the tolerance
    lines = []
    records = fb.run(tiny("fedavg", sampling="poisson", **dict(DP, dp_noise_multiplier=0.0, dp_target_epsilon=4.0)),
                     log=lines.append)
    assert any("user-level DP: clip 0.5, noise multiplier" in s and "(solved for epsilon 4.0)" in s for s in lines)
    eps = [r["epsilon"] for r in records]
    assert eps == sorted(eps) and eps[-1] == pytest.approx(4.0, rel=1e-3)


def test_a_resumed_dp_run_equals_an_uninterrupted_one_epsilon_and_adaptive_clip_included(tmp_path):
    config = tiny("fedbat", rounds=4, sampling="poisson", dp_adaptive_quantile=0.5, dp_count_stddev=1.0, **DP)
    straight = fb.run(config, tmp_path / "straight")
    first = fb.run(tiny("fedbat", rounds=2, sampling="poisson", dp_adaptive_quantile=0.5, dp_count_stddev=1.0, **DP),
                   tmp_path / "resumed")
    resumed = fb.run(config, tmp_path / "resumed", allow_change=["rounds"])
    assert results(resumed) == results(straight) and results(first) == results(straight[:2])
    eps = [r["epsilon"] for r in straight]
    assert all(b > a for a, b in zip(eps, eps[1:]))  # every round charged once
    assert len({r["dp_clip"] for r in straight}) == 4  # the clip moved every round


# ---- Poisson sampling --------------------------------------------------------------------------------------------
def test_poisson_draws_each_client_with_probability_q_into_fixed_slots():
    s = Sampling(slots=40, expected=10.0, poisson=True)
    drawn = np.zeros(100)
    for r in range(1, 401):
        clients, valid, overflow = poisson_cohort(jax.random.PRNGKey(0), r, 100, s)
        clients, valid = np.asarray(clients), np.asarray(valid)
        assert int(overflow) == 0 and len(set(clients)) == 40  # distinct: padding never collides with the drawn
        assert np.all(valid[:valid.sum()]) and not np.any(valid[valid.sum():])  # drawn first
        assert np.all(np.diff(clients[valid]) > 0)
        drawn[clients[valid]] += 1
    assert abs(drawn.mean() / 400 - 0.1) < 0.005  # q = 10 / 100
    c1, v1, _ = poisson_cohort(jax.random.PRNGKey(0), 7, 100, s)
    c2, v2, _ = poisson_cohort(jax.random.PRNGKey(0), 7, 100, s)
    assert np.array_equal(c1, c2) and np.array_equal(v1, v2)


def test_a_poisson_round_aggregates_exactly_its_drawn_clients():
    """The padding slots train nothing and weigh nothing: the round's aggregate equals the same clients run as a
    cohort of their own."""
    from fedbat_jax.rounds import make_round

    exp = build(tiny("fedavg", model="logreg", sampling="poisson", clients_per_round=3))
    fed = exp.federation
    inputs = plan_round(jax.random.PRNGKey(0), 1, fed.roster, fed.data.index, fed.sampling)
    k = int(np.sum(inputs.valid))
    assert 0 < k < fed.sampling.slots
    drawn = jax.tree.map(lambda x: x[:k], inputs)._replace(slot=jnp.arange(k, dtype=jnp.int32))
    rows = jax.tree.map(lambda t: jnp.asarray(t)[np.asarray(drawn.client)], exp.server.client_table)
    sent = fed.learner.broadcast(exp.server)
    own, _ = exp.backend.run(sent, fed.data, drawn, rows)
    all_rows = jax.tree.map(lambda t: jnp.asarray(t)[np.asarray(inputs.client)], exp.server.client_table)
    padded, _ = exp.backend.run(sent, fed.data, inputs, all_rows)
    chex.assert_trees_all_close(padded.update, own.update, rtol=1e-6)
    assert float(padded.seen) == float(own.seen)
    assert make_round  # the round the run loop calls


def test_a_poisson_run_reports_its_cohort_and_uplink_and_stops_on_an_overflow(tmp_path):
    records = fb.run(tiny("fedavg", model="logreg", sampling="poisson", rounds=3))
    per_client = build(tiny("fedavg", model="logreg")).wire["uplink_bits"] // 3
    assert all(r["uplink_bits"] == r["cohort_size"] * per_client for r in records)
    with pytest.raises(ConfigError, match=r"more than poisson_slots=1.*--config.poisson_slots"):
        fb.run(tiny("fedavg", model="logreg", sampling="poisson", poisson_slots=1, clients_per_round=4, rounds=5))


@functools.lru_cache(maxsize=None)
def _dp_poisson_run(backend: str) -> tuple:
    return tuple(fb.run(tiny("fedbat", sampling="poisson", backend=backend, **DP)))


@pytest.mark.parametrize("backend", ["fused", "padded"])
def test_dp_with_poisson_sampling_runs_on_every_backend_alike(backend):
    for a, b in zip(_dp_poisson_run(backend), _dp_poisson_run("host")):
        assert a["epsilon"] == b["epsilon"] and a["cohort_size"] == b["cohort_size"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)


def test_a_privacy_utility_curve_is_one_vmapped_program_with_epsilon_per_point():
    config = tiny("fedavg", sampling="poisson", **DP)
    records = fb.sweep(config, [0], grid={"dp_noise_multiplier": [0.5, 2.0], "dp_clip": [0.5]})
    eps = [r["metrics"]["epsilon"] for r in records]
    assert eps[0][-1] > eps[1][-1] > 0 and np.all(np.diff(eps[0]) > 0)
    run = fb.run(tiny("fedavg", sampling="poisson", backend="padded", **dict(DP, dp_noise_multiplier=2.0)))
    assert [r["epsilon"] for r in run] == list(eps[1])
    np.testing.assert_allclose(records[1]["metrics"]["train_loss"], [r["train_loss"] for r in run], rtol=1e-4)
    with pytest.raises(ConfigError, match="needs a config with DP on"):
        fb.sweep(tiny("fedavg", model="logreg"), [0], grid={"dp_noise_multiplier": [1.0]})


# ---- bad settings: one line, before data loads ---------------------------------------------------------------------
@pytest.mark.parametrize("override,needle", [
    ("--config.dp_noise_multiplier=1", "dp_noise_multiplier=1.0 needs dp_clip > 0"),
    ("--config.dp_clip=-1", "dp_clip must be >= 0"),
    ("--config.dp_clip=1", "dp_clip needs aggregation_weights=uniform"),
    ("--config.dp_clip=1 --config.aggregation_weights=uniform --config.algorithm=scaffold",
     "dp_clip does not compose with algorithm=scaffold: its message"),
    ("--config.dp_clip=1 --config.aggregation_weights=uniform --config.algorithm=fednova",
     "dp_clip does not compose with algorithm=fednova: its update_scale"),
    ("--config.dp_clip=1 --config.aggregation_weights=uniform --config.error_feedback=ef21",
     "dp_clip does not compose with error_feedback=ef21"),
    ("--config.dp_clip=1 --config.aggregation_weights=uniform --config.dp_accountant=pld",
     "dp_accountant=pld has no sampling-without-replacement event"),
    ("--config.dp_clip=1 --config.aggregation_weights=uniform --config.dp_target_epsilon=1 "
     "--config.dp_noise_multiplier=1", "set dp_target_epsilon or dp_noise_multiplier, not both"),
    ("--config.dp_clip=1 --config.aggregation_weights=uniform --config.dp_adaptive_quantile=0.5 "
     "--config.dp_noise_multiplier=1", "adaptive clipping needs dp_noise_multiplier < 2 x dp_count_stddev"),
    ("--config.dp_delta=1", "dp_delta must be in [0, 1)"),
    ("--config.sampling=bernoulli", "unknown sampling 'bernoulli'; choose one of: uniform, poisson"),
    ("--config.dp_clip=1 --config.aggregation_weights=uniform --config.model=mobilenet",
     "model=mobilenet uploads its BatchNorm statistics"),
    ("--config.dp_clip=1 --config.aggregation_weights=uniform --config.dataset=fashion_mnist "
     "--config.data_dir=/nonexistent", "model=cnn4 uploads its BatchNorm statistics"),  # before any data loads
])
def test_every_bad_dp_setting_is_one_line_and_exit_2(tmp_path, capsys, override, needle):
    code = main(["fedbat_jax.main", f"--workdir={tmp_path / 'w'}", "--config=experiments/configs/mnist5k.py",
                 "--config.rounds=1", *override.split()])
    out, err = capsys.readouterr()
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err


def test_dp_hparams_without_dp_and_a_zero_clip_in_a_grid_are_one_line():
    train = fb.make_train(tiny("fedavg", model="logreg"))
    with pytest.raises(ConfigError, match=r"hparams \['dp_clip'\] need a config with DP on \(dp_clip > 0\)"):
        train(jax.random.PRNGKey(0), {"dp_clip": 1.0})
    with pytest.raises(ConfigError, match=r"grid\['dp_clip'\] holds 0.0: a DP program's clip must be > 0"):
        fb.sweep(tiny("fedavg", **DP), [0], grid={"dp_clip": [0.0, 1.0]})
