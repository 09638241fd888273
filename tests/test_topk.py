"""Top-k sparsification: its typed payload, exact decode and bit count, EF-top-k, and runs on every backend."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fedbat_jax as fb
from conftest import tiny
from fedbat_jax.compressors import with_error_feedback
from fedbat_jax.compressors.topk import Sparse, index_dtype, kept, topk
from fedbat_jax.payloads import Dense, payload_bits


def _tree():
    rng = np.random.default_rng(0)
    return {"conv": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 4, 5)), jnp.float32),
                     "bias": jnp.asarray(rng.normal(size=5), jnp.float32)},
            "big": {"kernel": jnp.asarray(rng.normal(size=(300, 300)), jnp.float32)}}


MASK = {"conv": {"kernel": True, "bias": False}, "big": {"kernel": True}}


@pytest.mark.slow
@pytest.mark.parametrize("jit", [False, True])
def test_payload_is_indices_plus_values_and_decodes_to_the_top_entries(jit):
    update = _tree()
    comp = topk(MASK, update, 0.1)
    encode = jax.jit(comp.encode) if jit else comp.encode
    payload, _ = encode(update, None, (), jax.random.PRNGKey(0))
    p = payload["conv"]["kernel"]
    assert isinstance(p, Sparse) and isinstance(payload["conv"]["bias"], Dense)
    assert p.indices.dtype == np.uint8 and p.indices.shape == (18,)  # 180 entries: 18 kept, uint8 indices
    assert payload["big"]["kernel"].indices.dtype == np.uint32  # 90,000 entries need more than 16 bits
    decoded = comp.decode(payload)
    for name in ("conv", "big"):
        u = np.asarray(update[name]["kernel"])
        d = np.asarray(decoded[name]["kernel"])
        assert d.shape == u.shape
        k = kept(u.size, 0.1)
        top = np.argsort(-np.abs(u).ravel())[:k]
        expected = np.zeros(u.size, np.float32)
        expected[top] = u.ravel()[top]
        np.testing.assert_array_equal(d.ravel(), expected)
    np.testing.assert_array_equal(decoded["conv"]["bias"], update["conv"]["bias"])
    # exact size: k (index bits + 32) per compressed tensor, 32 bits per value of the others
    assert payload_bits(payload) == 18 * (8 + 32) + 9000 * (32 + 32) + 5 * 32


def test_index_types_and_kept_counts():
    assert [index_dtype(n) for n in (1, 256, 257, 65536, 65537)] == [np.uint8, np.uint8, np.uint16, np.uint16,
                                                                     np.uint32]
    assert kept(10, 0.01) == 1 and kept(10, 1.0) == 10 and kept(1000, 0.25) == 250


def test_ef_topk_keeps_what_was_dropped():
    update = _tree()
    comp = with_error_feedback(topk(MASK, update, 0.1), "ef", MASK)
    state = comp.init(update)
    payload, state = comp.encode(update, None, state, jax.random.PRNGKey(0))
    sent = comp.decode(payload)
    residual = np.asarray(state["conv"]["kernel"])
    np.testing.assert_allclose(residual + np.asarray(sent["conv"]["kernel"]), np.asarray(update["conv"]["kernel"]),
                               rtol=0, atol=0)
    assert np.count_nonzero(residual) == 180 - 18
    # the next upload carries the residual on top of the new update
    payload2, _ = comp.encode(update, None, state, jax.random.PRNGKey(1))
    assert float(np.abs(comp.decode(payload2)["conv"]["kernel"]).max()) > float(np.abs(update["conv"]["kernel"]).max())


@pytest.mark.slow
@pytest.mark.parametrize("feedback", ["none", "ef"])
def test_topk_runs_on_every_backend(feedback):
    c = dict(model="logreg", compressor="topk", topk_fraction=0.05, error_feedback=feedback, rounds=2)
    runs = [fb.run(tiny("fedavg", backend=e, **c)) for e in ("host", "fused")]
    _, m = jax.jit(fb.make_train(tiny("fedavg", **c)))(jax.random.PRNGKey(0))
    np.testing.assert_allclose([r["train_loss"] for r in runs[1]], [r["train_loss"] for r in runs[0]], rtol=1e-4)
    np.testing.assert_allclose(np.asarray(m["train_loss"]), [r["train_loss"] for r in runs[0]], rtol=1e-4)
    # logreg: a 7,840-entry kernel (392 kept, uint16 indices) and 10 float32 biases, from 3 clients
    assert runs[0][0]["uplink_bits"] == 3 * (392 * (16 + 32) + 10 * 32)


@pytest.mark.parametrize("fraction", [0.0, 1.5])
def test_bad_fraction_is_one_line(fraction):
    with pytest.raises(fb.ConfigError, match=r"^topk_fraction must be in \(0, 1\]"):
        fb.validate(tiny("fedavg", compressor="topk", topk_fraction=fraction))
