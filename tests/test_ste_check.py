"""experiments/ste_check.py's estimator of the true gradient of FedBAT's expected loss, where it is exact.

A linear model with a squared loss: ``F(u, alpha) = E_Q mean_n (x_n . (w + Q) - t_n)^2`` is
``mean_n (x_n . (w + c) - t_n)^2 + sum_i x_ni^2 (alpha^2 - c_i^2)`` with ``c = clip(u, -alpha, alpha)``, so
``dF/du_i = 1[|u_i| < alpha] mean_n (2 r_n x_ni - 2 x_ni^2 u_i)`` (``r_n = x_n . (w + c) - t_n``) and
``dF/dalpha = mean_n (sum_inside 2 alpha x_ni^2 + sum_outside 2 r_n x_ni sign(u_i))``. The clipped
estimator's expectation is the first term of ``dF/du`` only: it does not see the variance of ``Q``.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from fedbat_jax.binarization import quantize

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("ste_check", ROOT / "experiments" / "ste_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_estimator_recovers_the_exact_gradient_of_a_linear_model():
    d, n, alpha = 256, 8, 0.1
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((n, d)), jnp.float32)
    w = jnp.asarray(rng.standard_normal(d) * 0.02, jnp.float32)
    u = jnp.asarray(rng.standard_normal(d) * 0.08, jnp.float32)  # about 21% of |u| above alpha
    t = x @ (w + jnp.clip(u, -alpha, alpha)) + jnp.asarray(rng.standard_normal(n) * 0.1, jnp.float32)

    def loss(theta, al, key, ste="clipped"):
        q = quantize(theta["k"], al["k"], key, 1, ste)
        return jnp.mean((x @ (w + q) - t) ** 2)

    def ste_grad(theta, al, key, ste):
        return jax.grad(lambda a, b: loss(a, b, key, ste), argnums=(0, 1))(theta, al)

    estimate = _script().make_estimator(loss, ste_grad)
    (rec,) = estimate({"k": u}, {"k": jnp.float32(alpha)}, [0], jax.random.split(jax.random.key(0), 4096), 32,
                      np.random.default_rng(1))
    # the exact answers
    un, xn, tn, wn = (np.asarray(a, np.float64) for a in (u, x, t, w))
    c = np.clip(un, -alpha, alpha)
    inside = np.abs(un) < alpha
    r = xn @ (wn + c) - tn
    true = inside * np.mean(2 * r[:, None] * xn - 2 * xn**2 * un, axis=0)
    clipped = inside * np.mean(2 * r[:, None] * xn, axis=0)
    identity = np.mean(2 * r[:, None] * xn, axis=0)
    d_alpha = np.mean(np.sum(np.where(inside, 2 * alpha * xn**2, 2 * r[:, None] * xn * np.sign(un)), axis=1))

    def cos(a, b):
        return a @ b / np.linalg.norm(a) / np.linalg.norm(b)

    assert abs(rec["clipped_fraction"] - np.mean(~inside)) < 1e-6
    assert abs(rec["true_norm"] / np.linalg.norm(true) - 1) < 0.1
    for ste, exact in (("clipped", cos(clipped, true)), ("identity", cos(identity, true))):
        assert abs(rec[f"{ste}_cos"] - exact) < 0.08
        assert rec[f"{ste}_cos_lo"] <= exact <= rec[f"{ste}_cos_hi"]
    assert cos(clipped, true) < 0.9  # the case distinguishes the estimators from the true gradient
    assert abs(rec["clipped_norm_ratio"] - np.linalg.norm(clipped) / np.linalg.norm(true)) < 0.1
    assert abs(rec["alpha_true"] / d_alpha - 1) < 0.1
