"""Compressors: payloads bit-exact through encode/decode, sizes equal the formula, per-client state."""
from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedbat_jax import train
from fedbat_jax.bits import pack_levels, payload_bits, unpack_levels
from fedbat_jax.compressors import full_precision, scaled_sign, stochastic_levels

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
        comp = scaled_sign(MASK, TEMPLATE, error_feedback=True)
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


def tiny(algorithm, **kw):
    c = train.default_config()
    c.update(algorithm=algorithm, dataset="mnist5k", num_clients=6, clients_per_round=2, rounds=1, local_epochs=1,
             batch_size=128, client_threads=1)
    c.update(**kw)
    return c


@pytest.mark.parametrize("algorithm,bits,per_value", [("signsgd", 1, 1), ("ef_signsgd", 1, 1),
                                                       ("stoch_binary", 1, 1), ("qsgd", 4, 4), ("fedbat", 2, 2)])
def test_every_algorithm_runs_and_reports_its_payload(algorithm, bits, per_value):
    exp = train.build(tiny(algorithm, bits=bits))
    server, metrics = exp.round.run(exp.server, 1)
    assert np.isfinite(float(metrics["train_loss"]))
    params, stats = exp.server.params, exp.server.batch_stats
    kernels = [x.size for p, x in jax.tree_util.tree_leaves_with_path(params) if p[-1].key == "kernel"]
    others = sum(x.size for p, x in jax.tree_util.tree_leaves_with_path(params) if p[-1].key != "kernel")
    n_stats = sum(x.size for x in jax.tree.leaves(stats))
    per_client = sum(8 * math.ceil(n * per_value / 8) + 32 for n in kernels) + 32 * (others + n_stats)
    assert metrics["uplink_bits"] == 2 * per_client
    moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), server.params, params)
    assert min(jax.tree.leaves(moved)) > 0


def test_error_feedback_state_changes_only_for_sampled_clients():
    exp = train.build(tiny("ef_signsgd"))
    server, _ = exp.round.run(exp.server, 1)
    residual = np.asarray(server.client_states["Conv_1"]["kernel"])  # [num_clients, ...] (the next round donates it)
    touched = np.asarray(jnp.abs(residual).reshape(residual.shape[0], -1).max(1) > 0)
    from fedbat_jax.round import cohort

    np.testing.assert_array_equal(np.flatnonzero(touched), cohort(exp.config.seed, 1, 6, 2))
    server2, _ = exp.round.run(server, 2)
    again = cohort(exp.config.seed, 2, 6, 2)
    untouched = np.array([c for c in range(6) if c not in again])
    np.testing.assert_array_equal(server2.client_states["Conv_1"]["kernel"][untouched], residual[untouched])
