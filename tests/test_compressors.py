"""Compressors: payloads bit-exact through encode/decode, sizes equal the formula, per-client state."""
from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fedbat_jax as fb
from conftest import tiny
from fedbat_jax.packing import pack_levels, unpack_levels
from fedbat_jax.payloads import payload_bits
from fedbat_jax.compressors import (full_precision, running_sum, scaled_sign, stochastic_levels,
                                   with_error_feedback)

TEMPLATE = {"conv": {"kernel": jnp.zeros((3, 3, 4, 5))}, "bn": {"scale": jnp.zeros((5,))},
            "dense": {"kernel": jnp.zeros((7, 3))}}
MASK = {"conv": {"kernel": True}, "bn": {"scale": False}, "dense": {"kernel": True}}
UPDATE = jax.tree.map(lambda x: jax.random.normal(jax.random.PRNGKey(x.size), x.shape) * 0.01, TEMPLATE)
SCALES = jax.tree.map(lambda x: jnp.float32(0.004), TEMPLATE)
KEY = jax.random.PRNGKey(0)


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_level_packing_round_trip(bits):
    q = jax.random.randint(KEY, (5, 9, 3), 0, 2**bits).astype(jnp.uint8)
    packed = pack_levels(q, bits)
    assert packed.dtype == jnp.uint8 and packed.size == math.ceil(q.size * bits / 8)
    np.testing.assert_array_equal(unpack_levels(packed, bits, q.shape), q)


class CompressorTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_scaled_sign_is_exact(self):
        comp = scaled_sign(MASK, TEMPLATE)
        payload, _ = self.variant(comp.encode)(UPDATE, SCALES, comp.init(TEMPLATE), KEY)
        got = comp.decode(payload)
        for m, d, b in zip(jax.tree.leaves(UPDATE), jax.tree.leaves(got), jax.tree.leaves(MASK)):
            expected = jnp.mean(jnp.abs(m)) * jnp.where(m >= 0, 1.0, -1.0) if b else m
            np.testing.assert_array_equal(d, expected)

    @chex.variants(with_jit=True, without_jit=True)
    def test_error_feedback_keeps_the_residual(self):
        comp = with_error_feedback(scaled_sign(MASK, TEMPLATE), "ef", MASK)
        state = comp.init(TEMPLATE)
        payload, state = self.variant(comp.encode)(UPDATE, SCALES, state, KEY)
        sent = comp.decode(payload)
        k = "kernel"
        np.testing.assert_allclose(state["conv"][k], UPDATE["conv"][k] - sent["conv"][k], atol=1e-7)
        payload2, _ = comp.encode(UPDATE, SCALES, state, KEY)  # the next round compresses m + e
        p = UPDATE["conv"][k] + state["conv"][k]
        np.testing.assert_allclose(comp.decode(payload2)["conv"][k],
                                   jnp.mean(jnp.abs(p)) * jnp.where(p >= 0, 1.0, -1.0), atol=1e-7)

    @chex.variants(with_jit=True, without_jit=True)
    def test_ef_on_fedbat_upload_keeps_what_the_draw_did_not_send(self):
        comp = with_error_feedback(stochastic_levels(MASK, TEMPLATE, 1, True), "ef", MASK)
        residual = jax.tree.map(lambda x: jnp.full_like(x, 0.003), TEMPLATE)
        residual["bn"]["scale"] = jnp.zeros(())  # leaves sent exactly keep no residual
        payload, new = self.variant(comp.encode)(UPDATE, SCALES, residual, KEY)
        plain, _ = stochastic_levels(MASK, TEMPLATE, 1, True).encode(
            jax.tree.map(lambda m, e, b: m + e if b else m, UPDATE, residual, MASK), SCALES, (), KEY)
        chex.assert_trees_all_equal(payload, plain)  # the inner compressor sees m + e, same scales and key
        sent = comp.decode(payload)
        for k in ("conv", "dense"):
            np.testing.assert_allclose(new[k]["kernel"], UPDATE[k]["kernel"] + 0.003 - sent[k]["kernel"], atol=1e-7)
            assert set(np.unique(np.abs(np.asarray(sent[k]["kernel"])))) == {np.float32(0.004)}  # +-alpha
        np.testing.assert_array_equal(new["bn"]["scale"], 0.0)
        np.testing.assert_array_equal(sent["bn"]["scale"], UPDATE["bn"]["scale"])

    @chex.variants(with_jit=True, without_jit=True)
    def test_ef21_sends_the_compressed_change_of_the_estimate(self):
        comp = with_error_feedback(scaled_sign(MASK, TEMPLATE), "ef21", MASK)
        g = jax.tree.map(lambda m, b: 0.5 * m if b else jnp.zeros(()), UPDATE, MASK)
        chex.assert_trees_all_equal_shapes(g, comp.init(TEMPLATE))
        payload, new = self.variant(comp.encode)(UPDATE, SCALES, g, KEY)
        d = UPDATE["conv"]["kernel"] - g["conv"]["kernel"]
        sent = comp.decode(payload)
        np.testing.assert_allclose(sent["conv"]["kernel"], jnp.mean(jnp.abs(d)) * jnp.where(d >= 0, 1.0, -1.0),
                                   rtol=1e-6)
        np.testing.assert_allclose(new["conv"]["kernel"], g["conv"]["kernel"] + sent["conv"]["kernel"], rtol=1e-6)
        # leaves sent exactly keep no estimate: m itself travels, averaged over the cohort like FedAvg's
        np.testing.assert_array_equal(sent["bn"]["scale"], UPDATE["bn"]["scale"])
        np.testing.assert_array_equal(new["bn"]["scale"], 0.0)
        assert comp.server is not None and comp.estimated == MASK

    def test_ef21_server_keeps_the_running_sum(self):
        t = running_sum({"w": True, "b": False})
        state = t.init({"w": jnp.zeros(2), "b": jnp.zeros(2)})
        out, state = t.update({"w": jnp.array([1.0, -2.0]), "b": jnp.array([1.0, 2.0])}, state)
        out, state = t.update({"w": jnp.array([0.5, 0.5]), "b": jnp.array([3.0, 4.0])}, state)
        np.testing.assert_array_equal(out["w"], [1.5, -1.5])
        np.testing.assert_array_equal(state["w"], [1.5, -1.5])
        np.testing.assert_array_equal(out["b"], [3.0, 4.0])  # a leaf sent exactly passes through: no estimate

    def test_error_feedback_leaves_the_payload_size_unchanged(self):
        for make in (lambda: scaled_sign(MASK, TEMPLATE), lambda: stochastic_levels(MASK, TEMPLATE, 1, True),
                     lambda: stochastic_levels(MASK, TEMPLATE, 4, False)):
            sizes = set()
            for kind in ("none", "ef", "ef21"):
                comp = with_error_feedback(make(), kind, MASK)
                payload, _ = comp.encode(UPDATE, SCALES, comp.init(TEMPLATE), KEY)
                sizes.add(payload_bits(payload))
            assert len(sizes) == 1

    @chex.variants(with_jit=True, without_jit=True)
    def test_stochastic_levels_decode_the_drawn_levels(self):
        for bits in (1, 2, 4, 8):
            for learned in (True, False):
                comp = stochastic_levels(MASK, TEMPLATE, bits, learned)
                payload, _ = self.variant(comp.encode)(UPDATE, SCALES, (), KEY)
                got = comp.decode(payload)
                m, d = UPDATE["conv"]["kernel"], got["conv"]["kernel"]
                alpha = 0.004 if learned else float(jnp.max(jnp.abs(m)))
                steps = (np.asarray(d) / alpha + 1) * (2**bits - 1) / 2  # level indices, as floats
                np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)
                assert float(jnp.abs(d).max()) <= alpha * (1 + 1e-6)
                np.testing.assert_array_equal(got["bn"]["scale"], UPDATE["bn"]["scale"])

    def test_max_scaled_levels_are_unbiased(self):
        comp = stochastic_levels(MASK, TEMPLATE, 2, learned_scale=False)
        dec = jax.jit(jax.vmap(lambda k: comp.decode(comp.encode(UPDATE, SCALES, (), k)[0])["dense"]["kernel"]))
        mean = dec(jax.random.split(KEY, 20000)).mean(0)
        alpha = float(jnp.max(jnp.abs(UPDATE["dense"]["kernel"])))
        np.testing.assert_allclose(mean, UPDATE["dense"]["kernel"], atol=5 * alpha / 3 / np.sqrt(20000))


@pytest.mark.parametrize("make,per_value,per_tensor", [
    (lambda: full_precision(), 32, 0),
    (lambda: scaled_sign(MASK, TEMPLATE), 1, 32),
    (lambda: stochastic_levels(MASK, TEMPLATE, 1), 1, 32),
    (lambda: stochastic_levels(MASK, TEMPLATE, 4, False), 4, 32),
    (lambda: stochastic_levels(MASK, TEMPLATE, 8, False), 8, 32),
])
def test_payload_size_formula(make, per_value, per_tensor):
    comp = make()
    payload, _ = comp.encode(UPDATE, SCALES, comp.init(TEMPLATE), KEY)
    compressed = [x.size for x, b in zip(jax.tree.leaves(TEMPLATE), jax.tree.leaves(MASK)) if b]
    full = sum(x.size for x, b in zip(jax.tree.leaves(TEMPLATE), jax.tree.leaves(MASK)) if not b)
    if per_value == 32:
        expected = 32 * sum(x.size for x in jax.tree.leaves(TEMPLATE))
    else:
        expected = sum(8 * math.ceil(n * per_value / 8) + per_tensor for n in compressed) + 32 * full
    assert payload_bits(payload) == expected


@pytest.mark.parametrize("bits", [1, 2])
def test_bucketed_levels_are_unbiased_cost_a_float_per_bucket_and_lower_the_variance(bits):
    """``bucket_size``: alpha = max|m| per bucket of consecutive values (the last one shorter): exactly
    ``bits`` a value plus 32 a bucket, unbiased, and on a heavy-tailed tensor a lower variance than one alpha."""
    x = {"k": jnp.asarray(np.random.default_rng(0).standard_t(3, (36, 20)), jnp.float32)}  # 720 = 5 x 128 + 80
    mask, scales = {"k": True}, {"k": jnp.float32(jnp.nan)}
    keys = jax.random.split(KEY, 4000)
    nmse, bias = {}, {}
    for bucket in (0, 128):
        comp = stochastic_levels(mask, x, bits, learned_scale=False, bucket=bucket)
        payload, _ = comp.encode(x, scales, (), KEY)
        assert payload_bits(payload) == 8 * math.ceil(720 * bits / 8) + 32 * (6 if bucket else 1)
        out = jax.jit(jax.vmap(lambda k: comp.decode(comp.encode(x, scales, (), k)[0])["k"]))(keys)
        err = np.asarray(out - x["k"]).reshape(len(keys), -1)
        nmse[bucket] = float(np.mean(np.sum(err**2, axis=1)) / np.sum(np.asarray(x["k"]) ** 2))
        bias[bucket] = float(np.linalg.norm(err.mean(axis=0)) / np.linalg.norm(x["k"]))
        assert bias[bucket] < 2.0 * math.sqrt(nmse[bucket] / len(keys)), (bucket, bias, nmse)
    assert nmse[128] < 0.7 * nmse[0], nmse


def test_bucket_size_zero_is_the_per_tensor_payload_bit_for_bit():
    a = stochastic_levels(MASK, TEMPLATE, 1, learned_scale=False).encode(UPDATE, SCALES, (), KEY)[0]
    b = stochastic_levels(MASK, TEMPLATE, 1, learned_scale=False, bucket=0).encode(UPDATE, SCALES, (), KEY)[0]
    chex.assert_trees_all_equal(a, b)
    with pytest.raises(ValueError, match="learned_scale=False"):
        stochastic_levels(MASK, TEMPLATE, 1, learned_scale=True, bucket=64)



@pytest.mark.slow
@pytest.mark.parametrize("algorithm,bits,per_value", [("signsgd", 1, 1), ("ef_signsgd", 1, 1),
                                                       ("stoch_binary", 1, 1), ("qsgd", 4, 4), ("fedbat", 2, 2)])
def test_every_algorithm_runs_and_reports_its_payload(algorithm, bits, per_value):
    exp = fb.build(tiny(algorithm, bits=bits, batch_size=128))
    server, metrics = exp.run_round(exp.server, 1)
    assert np.isfinite(float(metrics["train_loss"]))
    params, stats = exp.server.params, exp.server.batch_stats
    kernels = [x.size for p, x in jax.tree_util.tree_leaves_with_path(params) if p[-1].key == "kernel"]
    others = sum(x.size for p, x in jax.tree_util.tree_leaves_with_path(params) if p[-1].key != "kernel")
    n_stats = sum(x.size for x in jax.tree.leaves(stats))
    per_client = sum(8 * math.ceil(n * per_value / 8) + 32 for n in kernels) + 32 * (others + n_stats)
    assert metrics["uplink_bits"] == exp.config.clients_per_round * per_client
    moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), server.params, params)
    assert min(jax.tree.leaves(moved)) > 0


@pytest.mark.slow
def test_error_feedback_state_changes_only_for_sampled_clients():
    exp = fb.build(tiny("ef_signsgd", batch_size=128))
    n, k = exp.config.num_clients, exp.config.clients_per_round
    server, _ = exp.run_round(exp.server, 1)
    table = server.client_table.compressor["Conv_1"]["kernel"]
    assert isinstance(table, np.ndarray)  # the N-row table stays in host memory; only K rows visit the devices
    residual = table.copy()  # [num_clients, ...] (the next round updates the table in place)
    touched = np.asarray(jnp.abs(residual).reshape(residual.shape[0], -1).max(1) > 0)
    from fedbat_jax.rounds import cohort

    np.testing.assert_array_equal(np.flatnonzero(touched), cohort(exp.config.seed, 1, n, k))
    server2, _ = exp.run_round(server, 2)
    again = cohort(exp.config.seed, 2, n, k)
    untouched = np.array([c for c in range(n) if c not in again])
    np.testing.assert_array_equal(server2.client_table.compressor["Conv_1"]["kernel"][untouched], residual[untouched])
    moved = np.abs(server2.client_table.compressor["Conv_1"]["kernel"] - residual).reshape(n, -1).max(1) > 0
    np.testing.assert_array_equal(np.flatnonzero(moved), again)


@pytest.mark.slow
def test_client_table_is_checkpointed_and_resumes_exactly(tmp_path):
    """The host-held table of EF residuals goes into the checkpoint; 2 rounds, then 2 more from it, equal 4."""
    straight = fb.run(tiny("ef_signsgd", rounds=4), tmp_path / "a")
    fb.run(tiny("ef_signsgd", rounds=2), tmp_path / "b")
    resumed = fb.run(tiny("ef_signsgd", rounds=4), tmp_path / "b", allow_change=["rounds"])

    def strip(recs):
        return [{k: v for k, v in r.items() if k != "round_seconds"} for r in recs]

    assert strip(resumed) == strip(straight)
    from fedbat_jax.workdir import read_checkpoint

    (_, a), (_, b) = (read_checkpoint(tmp_path / run / "checkpoint.npz") for run in ("a", "b"))
    assert a.keys() == b.keys() and any(k.startswith("client_table/compressor/") for k in a)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["ef", "ef21"])
def test_fedbat_with_error_feedback_sends_the_same_bits_as_fedbat(kind):
    plain = fb.build(tiny("fedbat", batch_size=128))
    fed = fb.build(tiny("fedbat", batch_size=128, error_feedback=kind))
    _, m_plain = plain.run_round(plain.server, 1)
    server, m = fed.run_round(fed.server, 1)
    assert m["uplink_bits"] == m_plain["uplink_bits"]
    state = np.asarray(server.client_table.compressor["Conv_1"]["kernel"])  # [num_clients, ...]
    touched = np.flatnonzero(np.abs(state).reshape(state.shape[0], -1).max(1) > 0)
    from fedbat_jax.rounds import cohort

    np.testing.assert_array_equal(touched, cohort(0, 1, 8, 3))


@pytest.mark.slow
def test_ef21_server_estimate_is_the_federation_weighted_sum_of_client_estimates():
    exp = fb.build(tiny("signsgd", batch_size=128, error_feedback="ef21"))
    server, _ = exp.run_round(exp.server, 1)
    server, _ = exp.run_round(server, 2)
    shares = exp.federation.roster.weight / exp.federation.roster.weight.sum()
    estimate = server.opt_state[0]  # (EF21's running sum, then the server optimizer's state)
    for name in ("Conv_1", "Dense_0"):
        g = np.asarray(server.client_table.compressor[name]["kernel"], np.float64)
        expected = -np.tensordot(shares, g, axes=1)  # the running sum of the pseudo-gradient: -G
        np.testing.assert_allclose(estimate[name]["kernel"], expected, atol=1e-6)


@pytest.mark.slow
def test_ef_signsgd_is_signsgd_with_ef_bit_for_bit():
    a, b = fb.build(tiny("ef_signsgd", batch_size=128)), fb.build(tiny("signsgd", batch_size=128, error_feedback="ef"))
    (sa, ma), (sb, mb) = a.run_round(a.server, 1), b.run_round(b.server, 1)
    chex.assert_trees_all_equal(sa, sb)
    assert float(ma["train_loss"]) == float(mb["train_loss"]) and ma["uplink_bits"] == mb["uplink_bits"]


def test_relative_ef21_caps_the_learned_multiplier():
    """``ef21_cap``: the relative step size ``c rms(u - g)`` with ``c = alpha / rms(u)`` capped (first round: g = 0,
    so the upload's alpha is ``min(c, cap) rms(u)``); ``ef21_multiplier`` fixes ``c`` in place of the learned one."""
    from fedbat_jax.compressors import ef21

    inner = stochastic_levels(MASK, TEMPLATE, 1)
    big = jax.tree.map(lambda x: jnp.float32(10.0), TEMPLATE)  # c = 10 / rms(u): far above any cap
    for cap, fixed, factor in ((0.5, 0.0, lambda u: 0.5), (0.0, 0.0, lambda u: 10.0 / _rms(u)),
                               (0.0, 0.4, lambda u: 0.4), (0.3, 0.4, lambda u: 0.3)):  # ef21_multiplier: c fixed
        comp = ef21(inner, MASK, relative=True, cap=cap, multiplier=fixed)
        payload, _ = comp.encode(UPDATE, big, comp.init(TEMPLATE), KEY)
        for name in ("conv", "dense"):
            u = UPDATE[name]["kernel"]
            assert float(payload[name]["kernel"].alpha) == pytest.approx(float(factor(u) * _rms(u)), rel=1e-5)


def _rms(x):
    return jnp.sqrt(jnp.mean(jnp.square(x)))
