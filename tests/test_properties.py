"""Property-based tests (hypothesis): bit packing, payload sizes and partitions over random shapes and seeds."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedbat_jax.packing import pack_levels, unpack_levels
from fedbat_jax.payloads import payload_bits
from fedbat_jax.compressors import full_precision, scaled_sign, stochastic_levels, with_error_feedback
from fedbat_jax.data import partition
from fedbat_jax.errors import ConfigError

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
shapes = st.lists(st.integers(1, 9), min_size=0, max_size=3).map(tuple)


@pytest.mark.slow
@SETTINGS
@given(shape=shapes, bits=st.sampled_from([1, 2, 4, 8]), seed=st.integers(0, 2**31 - 1))
def test_packing_levels_round_trips_in_the_fewest_bytes(shape, bits, seed):
    q = np.random.default_rng(seed).integers(0, 2**bits, size=shape, dtype=np.uint8)
    packed = pack_levels(jnp.asarray(q), bits)
    assert packed.dtype == jnp.uint8 and packed.shape == (math.ceil(q.size * bits / 8),)
    np.testing.assert_array_equal(np.asarray(unpack_levels(packed, bits, shape)), q)


@st.composite
def models(draw):
    """A parameter pytree of 1-4 float32 tensors and which of them are compressed."""
    n = draw(st.integers(1, 4))
    template = {f"layer{i}": jax.ShapeDtypeStruct(draw(shapes), jnp.float32) for i in range(n)}
    mask = {name: draw(st.booleans()) for name in template}
    return template, mask


@SETTINGS
@given(model=models(), kind=st.sampled_from(["fedavg", "fedbat", "signsgd", "ef_signsgd", "fedbat_ef21"]),
       bits=st.sampled_from([1, 2, 4, 8]))
def test_payload_size_is_the_formula_and_decodes_to_the_model_shape(model, kind, bits):
    template, mask = model
    compressor = {"fedavg": lambda: full_precision(),
                  "fedbat": lambda: stochastic_levels(mask, template, bits, learned_scale=True),
                  "signsgd": lambda: scaled_sign(mask, template),
                  "ef_signsgd": lambda: with_error_feedback(scaled_sign(mask, template), "ef", mask),
                  "fedbat_ef21": lambda: with_error_feedback(stochastic_levels(mask, template, bits, True), "ef21",
                                                             mask)}[kind]()
    per_value = {"fedavg": 32, "fedbat": bits, "signsgd": 1, "ef_signsgd": 1, "fedbat_ef21": bits}[kind]
    expected = 0
    for name, leaf in template.items():
        size = math.prod(leaf.shape)
        squeezed = kind != "fedavg" and mask[name]
        expected += 8 * math.ceil(size * per_value / 8) + 32 if squeezed else 32 * size  # + its float32 scale
    scales = jax.tree.map(lambda x: jax.ShapeDtypeStruct((), jnp.float32), template)
    state = jax.eval_shape(compressor.init, template)
    payload, _ = jax.eval_shape(compressor.encode, template, scales, state, jax.random.PRNGKey(0))
    assert payload_bits(payload) == expected
    decoded = jax.eval_shape(compressor.decode, payload)
    assert jax.tree.map(lambda x: x.shape, decoded) == jax.tree.map(lambda x: x.shape, template)


@pytest.mark.parametrize("method", ["iid", "dirichlet", "label_count"])
def test_partitions_are_disjoint_complete_deterministic_and_respect_their_rule(method):
    """Over random draws, feasible by construction (labels <= classes, enough clients to cover the classes):
    every split is checked; a refusal must be one line, and at least 60% of the draws must be checked, not
    refused, so the property cannot pass vacuously. (One test per method: drawn among the other settings, a
    method was missing from 2 of 150 seeds' 40 draws.)"""
    checked, refused = [], []

    @SETTINGS
    @given(n=st.integers(40, 300), classes=st.integers(2, 8), clients=st.integers(1, 8), labels=st.integers(1, 8),
           beta=st.floats(0.3, 5.0), seed=st.integers(0, 2**32 - 1), data_seed=st.integers(0, 1000))
    def check(n, classes, clients, labels, beta, seed, data_seed):
        labels = min(labels, classes)  # feasible by construction: the refusals are tested in test_partition.py
        clients = max(clients, -(-classes // labels))
        rng = np.random.default_rng(data_seed)
        y = rng.integers(0, classes, n)
        x = rng.integers(0, 255, (n, 3), dtype=np.uint8)
        kwargs = dict(seed=seed, dirichlet_beta=beta, labels_per_client=labels, min_size=1)
        try:
            parts = partition(x, y, clients, method, **kwargs)
        except ConfigError as e:
            assert str(e) and "\n" not in str(e)
            refused.append(method)
            return
        checked.append(method)
        assert len(parts) == clients
        merged = np.concatenate(parts)
        assert np.array_equal(np.sort(merged), np.arange(n))  # every sample exactly once
        assert all(len(p) >= 1 and np.all(np.diff(p) > 0) for p in parts)
        again = partition(x, y, clients, method, **kwargs)
        assert all(np.array_equal(a, b) for a, b in zip(parts, again))
        if method == "iid":
            assert max(map(len, parts)) - min(map(len, parts)) <= 1
        if method == "label_count":
            assert all(len(np.unique(y[p])) <= labels for p in parts)
        # The split depends on the samples' content, not on their order in the arrays.
        perm = rng.permutation(n)
        shuffled = partition(x[perm], y[perm], clients, method, **kwargs)
        assert sorted(map(tuple, (np.sort(perm[p]) for p in shuffled))) == sorted(map(tuple, parts))

    check()
    assert len(checked) >= 0.6 * (len(checked) + len(refused)), (len(checked), len(refused))


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_packing_is_jittable(bits):
    q = jnp.arange(13, dtype=jnp.uint8) % (2**bits)
    packed = jax.jit(pack_levels, static_argnums=1)(q, bits)
    np.testing.assert_array_equal(jax.jit(unpack_levels, static_argnums=(1, 2))(packed, bits, (13,)), q)
