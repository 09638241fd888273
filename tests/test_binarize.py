"""The operator Q(u, alpha): forward distribution, both derivatives, step size, warm-up switch."""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedbat_jax.binarization import binarize, level_indices, level_values, quantize, step_size, warmup_steps

KEY = jax.random.PRNGKey(0)


class ForwardTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_values_are_plus_minus_alpha(self):
        u = jax.random.normal(KEY, (5, 7, 3)) * 0.02
        out = self.variant(binarize)(u, jnp.float32(0.01), jax.random.PRNGKey(1))
        assert out.shape == u.shape and out.dtype == u.dtype
        np.testing.assert_allclose(np.abs(np.asarray(out)), 0.01, rtol=1e-6)

    def test_bfloat16(self):
        u = (jax.random.normal(KEY, (64,)) * 0.02).astype(jnp.bfloat16)
        out = binarize(u, jnp.bfloat16(0.02), KEY)
        g = jax.grad(lambda u: binarize(u, jnp.bfloat16(0.02), KEY).astype(jnp.float32).sum())(u)
        assert out.dtype == jnp.bfloat16 and g.dtype == jnp.bfloat16
        assert set(np.unique(np.abs(np.asarray(out, np.float32)))) == {np.float32(jnp.bfloat16(0.02))}

    def test_unbiased_inside_interval_and_clipped_outside(self):
        alpha = 0.01
        u = jnp.linspace(-0.02, 0.02, 41)
        draws = jax.vmap(lambda k: binarize(u, alpha, k))(jax.random.split(KEY, 20000))
        mean = np.asarray(draws.mean(0))
        expected = np.clip(np.asarray(u), -alpha, alpha)
        # std of the mean of 20000 draws is at most alpha / sqrt(20000) = 7e-5; allow 5 sigma.
        np.testing.assert_allclose(mean, expected, atol=5 * alpha / np.sqrt(20000))

    def test_fresh_key_fresh_draw_same_key_same_draw(self):
        u = jnp.zeros(1000)
        a = binarize(u, 0.01, jax.random.PRNGKey(1))
        assert jnp.array_equal(a, binarize(u, 0.01, jax.random.PRNGKey(1)))
        assert not jnp.array_equal(a, binarize(u, 0.01, jax.random.PRNGKey(2)))

    def test_payload_indices_match_the_forward_draw(self):
        u = jax.random.normal(KEY, (300,)) * 0.01
        out = binarize(u, 0.01, jax.random.PRNGKey(3))
        q = level_indices(u, 0.01, jax.random.PRNGKey(3), 1)
        np.testing.assert_array_equal(np.asarray(out) > 0, np.asarray(q) == 1)


class KBitTest(chex.TestCase):
    def test_one_bit_is_fedbat_exactly(self):
        u = jax.random.normal(KEY, (500,)) * 0.02
        g = jax.random.normal(jax.random.PRNGKey(1), u.shape)
        k, alpha = jax.random.PRNGKey(7), jnp.float32(0.015)
        np.testing.assert_array_equal(quantize(u, alpha, k, 1), binarize(u, alpha, k))
        gq = jax.grad(lambda u, a: jnp.sum(g * quantize(u, a, k, 1)), (0, 1))(u, alpha)
        gb = jax.grad(lambda u, a: jnp.sum(g * binarize(u, a, k)), (0, 1))(u, alpha)
        for a, b in zip(gq, gb):
            np.testing.assert_array_equal(a, b)

    @chex.variants(with_jit=True, without_jit=True)
    def test_k_bits_levels_unbiased_and_derivatives(self):
        alpha, bits = 0.01, 2
        u = jnp.linspace(-0.015, 0.015, 31)
        draws = jax.vmap(lambda k: quantize(u, alpha, k, bits))(jax.random.split(KEY, 20000))
        levels = np.asarray(level_values(jnp.arange(4), alpha, bits))
        np.testing.assert_allclose(levels, [-0.01, -0.01 / 3, 0.01 / 3, 0.01], rtol=1e-6)
        assert np.all(np.min(np.abs(np.asarray(draws)[..., None] - levels), -1) < 1e-8)
        # the spacing is alpha * 2/3, so the std of one draw is at most alpha / 3
        np.testing.assert_allclose(draws.mean(0), np.clip(u, -alpha, alpha), atol=5 * alpha / 3 / np.sqrt(20000))
        g = jax.random.normal(jax.random.PRNGKey(2), u.shape)
        k = jax.random.PRNGKey(4)
        grad = jax.grad(lambda u, a: jnp.sum(g * quantize(u, a, k, bits)), (0, 1))
        du, da = self.variant(grad)(u, jnp.float32(alpha))
        x = np.asarray(u) / alpha
        v = np.asarray(quantize(u, alpha, k, bits)) / alpha
        np.testing.assert_allclose(du, np.asarray(g) * (np.abs(x) <= 1), rtol=1e-6)
        expected = np.sum(np.asarray(g) * np.where(x > 1, 1.0, np.where(x < -1, -1.0, v - x)))
        np.testing.assert_allclose(da, expected, rtol=1e-4)


class BackwardTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_both_derivatives_match_the_formulas(self):
        k1, k2, k3 = jax.random.split(KEY, 3)
        u = jax.random.normal(k1, (6, 5, 4)) * 0.02  # |x| on both sides of 1
        g = jax.random.normal(k2, u.shape)
        alpha = jnp.float32(0.015)

        def f(u, alpha):
            return jnp.sum(g * binarize(u, alpha, k3))

        du, dalpha = self.variant(jax.grad(f, argnums=(0, 1)))(u, alpha)
        b = np.sign(np.asarray(binarize(u, alpha, k3)))
        x = np.asarray(u) / 0.015
        gn = np.asarray(g)
        np.testing.assert_allclose(du, gn * (np.abs(x) <= 1), rtol=1e-6)
        expected = np.sum(gn * np.where(x > 1, 1.0, np.where(x < -1, -1.0, b - x)))
        np.testing.assert_allclose(dalpha, expected, rtol=1e-5)
        assert 0 < (np.abs(x) > 1).sum() < x.size  # both branches exercised

    def test_broadcast_alpha_gets_its_own_sums(self):
        u = jax.random.normal(KEY, (3, 3, 4, 8)) * 0.02
        g = jax.random.normal(jax.random.PRNGKey(5), u.shape)
        alpha = jnp.full((1, 1, 1, 8), 0.01)
        key = jax.random.PRNGKey(6)
        dalpha = jax.grad(lambda a: jnp.sum(g * binarize(u, a, key)))(alpha)
        assert dalpha.shape == alpha.shape
        b = np.sign(np.asarray(binarize(u, alpha, key)))
        x = np.asarray(u) / 0.01
        per = np.asarray(g) * np.where(x > 1, 1.0, np.where(x < -1, -1.0, b - x))
        np.testing.assert_allclose(dalpha.reshape(-1), per.sum((0, 1, 2)), rtol=1e-5)

    def test_vmap_of_grad(self):
        us = jax.random.normal(KEY, (4, 10)) * 0.01
        grads = jax.vmap(jax.grad(lambda u, k: binarize(u, 0.01, k).sum()))(us, jax.random.split(KEY, 4))
        np.testing.assert_array_equal(grads, (jnp.abs(us / 0.01) <= 1).astype(jnp.float32))


class StepSizeTest(chex.TestCase):
    def test_value_and_clip(self):
        assert float(step_size(0.0, 0.01, 6.0, 5e-4, 5e-2)) == pytest.approx(0.01)
        assert float(step_size(0.1, 0.01, 6.0, 5e-4, 5e-2)) == pytest.approx(0.01 * np.exp(0.6), rel=1e-6)
        assert float(step_size(1.0, 0.01, 6.0, 5e-4, 5e-2)) == pytest.approx(5e-2)
        assert float(step_size(-1.0, 0.01, 6.0, 5e-4, 5e-2)) == pytest.approx(5e-4)
        assert float(step_size(0.0, 0.0, 6.0, 5e-4, 5e-2)) == pytest.approx(5e-4)  # phi = 0: alpha0 = 0

    def test_gradient_reaches_a_only_inside_bounds(self):
        rho, a0 = 6.0, 0.01
        da = jax.grad(lambda a: step_size(a, a0, rho, 5e-4, 5e-2))(0.05)
        np.testing.assert_allclose(da, rho * a0 * np.exp(rho * 0.05), rtol=1e-5)  # = rho * alpha
        assert float(jax.grad(lambda a: step_size(a, a0, rho, 5e-4, 5e-2))(1.0)) == 0.0
        assert float(jax.grad(lambda a: step_size(a, a0, rho, 5e-4, 5e-2))(-1.0)) == 0.0

    def test_chain_rule_through_q(self):
        """``a`` receives ``rho * alpha * dL/dalpha`` (REFERENCE.md section 2)."""
        u = jax.random.normal(KEY, (50,)) * 0.01
        key, rho, a0 = jax.random.PRNGKey(9), 6.0, 0.008

        def loss(alpha):
            return jnp.sum(jnp.sin(binarize(u, alpha, key)))

        a = 0.02
        alpha = step_size(a, a0, rho, 5e-4, 5e-2)
        da = jax.grad(lambda a: loss(step_size(a, a0, rho, 5e-4, 5e-2)))(a)
        np.testing.assert_allclose(da, rho * alpha * jax.grad(loss)(alpha), rtol=1e-5)


@pytest.mark.parametrize("phi,steps,expected", [(0.5, 100, 50), (0.5, 7, 3), (0.3, 10, 3), (0.0, 10, 0),
                                                (1.0, 10, 10), (0.99, 3, 2)])
def test_warmup_steps(phi, steps, expected):
    assert warmup_steps(phi, steps) == expected
