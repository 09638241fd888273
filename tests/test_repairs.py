"""The settings that repair learned-alpha FedBAT (issue 23), each against hand numbers: the identity
straight-through estimator, the upload's alpha (max, the two-scale 2-bit levels, the float32 latent), EF21's
relative step size and its client momentum, EF21 only on the compressed leaves; and their one-line refusals."""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fedbat_jax as fb
from conftest import tiny
from fedbat_jax.binarization import binarize, quantize
from fedbat_jax.compressors import COMPRESSORS, stochastic_levels, with_error_feedback
from fedbat_jax.compressors.two_scale import TwoScale, learned_and_max, level_index, level_value
from fedbat_jax.config import default_config, validate
from fedbat_jax.errors import ConfigError
from fedbat_jax.payloads import Dense, Levels, payload_bits

KEY = jax.random.PRNGKey(3)
U = jnp.array([-0.3, -0.05, 0.0, 0.02, 0.08, 0.5], jnp.float32)
G = jnp.array([1.0, -2.0, 3.0, 0.5, -1.0, 2.0], jnp.float32)


class EstimatorTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_identity_ste_passes_the_gradient_everywhere_and_keeps_dalpha(self):
        alpha = jnp.float32(0.1)

        def grads(ste):
            return self.variant(jax.grad(lambda u, a: jnp.sum(G * quantize(u, a, KEY, 1, ste)), (0, 1)))(U, alpha)

        du_clip, da_clip = grads("clipped")
        du_id, da_id = grads("identity")
        np.testing.assert_array_equal(du_id, G)  # every coordinate, |u| > alpha too
        np.testing.assert_array_equal(du_clip, jnp.where(jnp.abs(U) <= alpha, G, 0.0))
        np.testing.assert_array_equal(da_id, da_clip)
        np.testing.assert_array_equal(quantize(U, alpha, KEY, 1, "identity"), binarize(U, alpha, KEY))


def test_two_scale_levels_are_unbiased_and_land_next_to_the_value():
    a, top = jnp.float32(0.1), jnp.float32(0.5)
    m = jnp.array([-0.5, -0.3, -0.1, -0.04, 0.0, 0.07, 0.1, 0.2, 0.5], jnp.float32)
    q = jax.vmap(lambda k: level_index(m, a, top, k))(jax.random.split(KEY, 40000))
    values = level_value(q, a, top)
    np.testing.assert_allclose(values.mean(axis=0), m, atol=4e-3)
    for x, col in zip(np.asarray(m), np.asarray(values).T):
        lo = -0.5 if x < -0.1 else (-0.1 if x <= 0.1 else 0.1)
        hi = -0.1 if x < -0.1 else (0.1 if x <= 0.1 else 0.5)
        assert np.all(np.isclose(col, lo) | np.isclose(col, hi)), (x, np.unique(col))


def test_two_scale_payload_is_two_bits_plus_two_floats_and_clips_alpha_to_max():
    tree = {"k": jnp.linspace(-0.2, 0.3, 40).reshape(8, 5), "b": jnp.ones(3)}
    comp = learned_and_max({"k": True, "b": False}, tree)
    payload, _ = comp.encode(tree, {"k": jnp.float32(0.9), "b": jnp.nan}, (), KEY)
    assert isinstance(payload["k"], TwoScale) and isinstance(payload["b"], Dense)
    assert payload_bits(payload["k"]) == 40 * 2 + 64
    np.testing.assert_allclose([payload["k"].alpha, payload["k"].top], [0.3, 0.3])  # alpha > max|m|: clipped
    np.testing.assert_allclose(np.abs(comp.decode(payload)["k"]), 0.3, rtol=1e-6)


@pytest.mark.parametrize("upload_alpha, kind, alpha", [("learned", Levels, 0.02), ("max", Levels, 0.5),
                                                       ("learned_max", TwoScale, 0.02), ("exact", Dense, None)])
def test_upload_alpha_chooses_the_wire_and_training_stays_binarized(upload_alpha, kind, alpha):
    c = default_config()
    c.update(upload_alpha=upload_alpha)
    validate(c)
    tree = {"k": U.reshape(2, 3)}
    comp = COMPRESSORS["fedbat"].make({"k": True}, tree, c)
    payload, _ = comp.encode(tree, {"k": jnp.float32(0.02)}, (), KEY)
    assert isinstance(payload["k"], kind)
    if alpha is not None:
        np.testing.assert_allclose(payload["k"].alpha, alpha)
    else:
        np.testing.assert_array_equal(comp.decode(payload)["k"], tree["k"])
    assert COMPRESSORS["fedbat"].learned_scale  # the kernels train binarized whatever the upload


def test_ef21_relative_scales_the_learned_alpha_by_the_difference():
    mask, tree = {"k": True}, {"k": U}
    inner = stochastic_levels(mask, tree, 1, True)
    g = {"k": 0.9 * U}
    rms = lambda x: float(jnp.sqrt(jnp.mean(x * x)))  # noqa: E731
    for relative, expected in ((False, 0.08), (True, 0.08 * rms(0.1 * U) / rms(U))):
        comp = with_error_feedback(inner, "ef21", mask, relative=relative)
        payload, new = comp.encode(tree, {"k": jnp.float32(0.08)}, g, KEY)
        np.testing.assert_allclose(payload["k"].alpha, expected, rtol=1e-6)
        np.testing.assert_allclose(new["k"], g["k"] + comp.decode(payload)["k"], rtol=1e-6)


def test_ef21_momentum_sends_the_change_of_the_averaged_update():
    mask, tree = {"k": True, "b": False}, {"k": U, "b": jnp.ones(2)}
    comp = with_error_feedback(COMPRESSORS["none"].make(mask, tree, None), "ef21", mask, momentum=0.75)
    g, v = comp.init(tree)
    assert g["b"].shape == () and v["k"].shape == U.shape and v["b"].shape == ()
    state = (g, v)
    for _ in range(2):
        payload, state = comp.encode(tree, {"k": jnp.nan, "b": jnp.nan}, state, KEY)
    # v_1 = 0.25 u, v_2 = 0.4375 u; g follows v exactly (no compression); the exact leaf sends itself
    np.testing.assert_allclose(state[1]["k"], 0.4375 * U, rtol=1e-6)
    np.testing.assert_allclose(state[0]["k"], 0.4375 * U, rtol=1e-6)
    np.testing.assert_allclose(comp.decode(payload)["k"], (0.4375 - 0.25) * U, rtol=1e-5)
    np.testing.assert_array_equal(comp.decode(payload)["b"], 1.0)


def test_ef21_averages_the_exact_leaves_over_the_cohort(tmp_path):
    """With EF21 only the compressed leaves go through the server's running estimate: BatchNorm's scales and
    biases are averaged over the cohort exactly as FedAvg's, so with the float32 upload on the kernels too
    (upload_alpha=exact) the round equals FedBAT's without error feedback."""
    exp_ef = fb.build(tiny("fedbat", upload_alpha="exact", error_feedback="ef21"))
    exp = fb.build(tiny("fedbat", upload_alpha="exact"))
    a, _ = exp_ef.run_round(exp_ef.server, 1)
    b, _ = exp.run_round(exp.server, 1)
    # round 1 (every estimate 0): G = sum_k w_k m_k on the kernels, against sum_k p_k m_k: a factor W_cohort / W
    for path in ("BatchNorm_0", "BatchNorm_1"):
        chex.assert_trees_all_close(a.params[path], b.params[path], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("overrides, message", [
    (dict(upload_alpha="maximum"), "unknown upload_alpha 'maximum'; choose one of: learned, max, learned_max, exact"),
    (dict(upload_alpha="learned_max", bits=2), "upload_alpha=learned_max sends 2 bits a value"),
    (dict(ste="none"), "unknown ste 'none'; choose one of: clipped, identity"),
    (dict(ef21_alpha="relativ"), "unknown ef21_alpha 'relativ'; choose one of: absolute, relative"),
    (dict(ef21_momentum=1.0, error_feedback="ef"), "ef21_momentum must be in [0, 1)"),  # ef21 not active
    (dict(ef21_momentum=1.0, error_feedback="ef21"), "ef21_momentum must be in [0, 1)"),
    (dict(algorithm="fedavg", compressor="eden", rotation_blocks="chunks"), "unknown rotation_blocks 'chunks'"),
])
def test_bad_settings_are_one_line(overrides, message):
    c = default_config()
    c.update(**overrides)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        validate(c)
