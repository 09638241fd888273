"""EDEN and DRIVE: the Hadamard transform against the dense matrix, the block layout and exact bits, EDEN's
unbiasedness and normalised variance over many rotations, DRIVE's scale, and runs through the whole round."""
from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

import fedbat_jax as fb
from conftest import tiny
from fedbat_jax.compressors.rotation import Rotated, blocks, hadamard, rotated_sign
from fedbat_jax.payloads import Dense, payload_bits

KEYS = jax.random.split(jax.random.PRNGKey(0), 1000)


def _gaussian(shape, seed=1):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


@pytest.mark.parametrize("n", [1, 2, 8, 64, 512])
def test_hadamard_is_the_dense_orthonormal_matrix(n):
    x = _gaussian((3, n))
    np.testing.assert_allclose(hadamard(x), np.asarray(x) @ scipy.linalg.hadamard(n).T / math.sqrt(n),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(hadamard(hadamard(x)), x, rtol=1e-5, atol=1e-5)  # its own inverse


def test_hadamard_refuses_other_lengths():
    with pytest.raises(ValueError, match="power-of-two"):
        hadamard(jnp.zeros(6))


def test_blocks_split_by_binary_expansion_or_pad():
    assert blocks(288, "split") == (256, 32) and blocks(288, "pad") == (512,)
    assert blocks(1024, "split") == (1024,) == blocks(1024, "pad")
    assert blocks(7, "split") == (4, 2, 1) and blocks(1, "pad") == (1,)


@pytest.mark.parametrize("mode", ["split", "pad"])
def test_exact_bits_one_per_value_plus_a_scale_per_block(mode):
    tree = {"k": _gaussian((3, 3, 4, 8)), "b": _gaussian((8,))}  # 288 values
    comp = rotated_sign({"k": True, "b": False}, tree, True, mode)
    payload, _ = comp.encode(tree, jax.tree.map(lambda _: jnp.nan, tree), (), KEYS[0])
    assert isinstance(payload["k"], Rotated) and isinstance(payload["b"], Dense)
    sent = sum(blocks(288, mode))
    assert payload_bits(payload["k"]) == 8 * math.ceil(sent / 8) + 32 * len(blocks(288, mode))  # the key is not sent
    assert payload_bits(payload) == payload_bits(payload["k"]) + 8 * 32


def _draws(unbiased, x, mode="split"):
    tree = {"k": x}
    comp = rotated_sign({"k": True}, tree, unbiased, mode)

    def one(key):
        payload, _ = comp.encode(tree, {"k": jnp.nan}, (), key)
        return comp.decode(payload)["k"]

    return jax.jit(jax.vmap(one))(KEYS)


@pytest.mark.parametrize("mode", ["split", "pad"])
def test_eden_is_unbiased_with_normalised_variance_near_pi_over_2_minus_1(mode):
    x = _gaussian((48, 40))  # 1920 = 1024 + 512 + 256 + 128 values
    out = _draws(True, x, mode)
    err = np.asarray(out - x).reshape(len(KEYS), -1)
    nmse = float(np.mean(np.sum(err**2, axis=1)) / np.sum(np.asarray(x) ** 2))
    assert abs(nmse - (math.pi / 2 - 1)) < 0.05, nmse  # (padding to 2048 lowers it a little)
    # the mean of 1000 draws: its error is the draws' spread / sqrt(1000) if unbiased, about 0.024 of ||x||
    bias = float(np.linalg.norm(err.mean(axis=0)) / np.linalg.norm(x))
    assert bias < 2.0 * math.sqrt(nmse / len(KEYS)), bias


def _spiky(d=1024, seed=3):
    """Eight large coordinates over small Gaussian noise: far from the near-Gaussian rotated vector EDEN's scale
    assumes."""
    noise = np.random.default_rng(seed).normal(size=d)
    return jnp.asarray(np.where(np.arange(d) < 8, 10.0, 0.0) + 0.1 * noise, jnp.float32)


@pytest.mark.parametrize("x", [_spiky(), jnp.asarray(np.random.default_rng(3).standard_t(2, 1024), jnp.float32)],
                         ids=["spiky", "student_t2"])
def test_one_rotation_pass_is_biased_off_gaussian_and_two_passes_are_not(x):
    """One random-sign Hadamard rotation is not a uniform rotation: on a spiky or heavy-tailed vector the rotated
    coordinates are far from Gaussian and EDEN's scale ||x||^2 / ||Rx||_1 is biased (measured with 16,000 draws:
    9% of ||x|| on Student-t(2), 23% on the spiky one, 270x and 1,150x the Monte Carlo floor); a second pass with
    its own signs brings the bias down to the floor."""
    biases = {}
    for passes in (1, 2):
        comp = rotated_sign({"k": True}, {"k": x}, True, "split", passes)
        keys = jax.random.split(jax.random.PRNGKey(0), 4000)
        out = jax.jit(jax.vmap(lambda k: comp.decode(comp.encode({"k": x}, {"k": jnp.nan}, (), k)[0])["k"]))(keys)
        err = np.asarray(out - x)
        nmse = float(np.mean(np.sum(err**2, axis=1)) / np.sum(np.asarray(x) ** 2))
        biases[passes] = (float(np.linalg.norm(err.mean(axis=0)) / np.linalg.norm(x)), math.sqrt(nmse / len(keys)))
    (one, floor1), (two, floor2) = biases[1], biases[2]
    assert one > 3.0 * floor1, biases  # one pass: the bias stands far above the draws' spread
    assert two < 2.0 * floor2, biases  # two passes: within the spread of the mean of 4000 draws


def test_drive_is_the_least_squares_scale_and_biased():
    x = _gaussian((32, 32))
    out = _draws(False, x)
    err = np.asarray(out - x).reshape(len(KEYS), -1)
    nmse = float(np.mean(np.sum(err**2, axis=1)) / np.sum(np.asarray(x) ** 2))
    assert abs(nmse - (1 - 2 / math.pi)) < 0.03, nmse
    # shrinks towards 0 by about 2/pi: E[x_hat] = (2/pi) x for large d
    ratio = float(np.sum(np.asarray(out.mean(axis=0)) * np.asarray(x)) / np.sum(np.asarray(x) ** 2))
    assert abs(ratio - 2 / math.pi) < 0.03, ratio


class DecodeTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_decode_has_the_sent_scale_and_signs(self):
        x = _gaussian((100,))
        for unbiased in (True, False):
            comp = rotated_sign({"k": True}, {"k": x}, unbiased)
            payload, _ = self.variant(comp.encode)({"k": x}, {"k": jnp.nan}, (), KEYS[1])
            back = self.variant(comp.decode)(payload)["k"]
            # re-rotating the decoded vector gives +-scale with the sent signs, block by block
            d = jnp.where(jax.random.bernoulli(payload["k"].key, 0.5, (100,)), 1.0, -1.0)
            start = 0
            for i, n in enumerate(blocks(100, "split")):
                y = hadamard(d[start:start + n] * back[start:start + n])
                np.testing.assert_allclose(np.abs(y), payload["k"].scales[i], rtol=1e-4)
                rotated = hadamard(d[start:start + n] * x[start:start + n])
                np.testing.assert_array_equal(np.asarray(y) > 0, np.asarray(rotated) >= 0)
                l1, sq = float(jnp.sum(jnp.abs(rotated))), float(jnp.sum(x[start:start + n] ** 2))
                np.testing.assert_allclose(payload["k"].scales[i], sq / l1 if unbiased else l1 / n, rtol=1e-5)
                start += n

    def test_an_all_zero_tensor_decodes_to_zero(self):
        comp = rotated_sign({"k": True}, {"k": jnp.zeros(16)}, True)
        payload, _ = comp.encode({"k": jnp.zeros(16)}, {"k": jnp.nan}, (), KEYS[0])
        np.testing.assert_array_equal(comp.decode(payload)["k"], 0.0)


@pytest.mark.parametrize("name", ["eden", "drive"])
def test_runs_through_the_round_and_counts_its_bits(name, tmp_path):
    records = fb.run(tiny("fedavg", compressor=name, rounds=1), tmp_path / name)
    bits = fb.build(tiny("stoch_binary", rounds=1)).wire["uplink_bits"]
    assert np.isfinite(records[0]["test_loss"])
    # 1 bit a value plus a float per power-of-two block (stochastic binarization: one float per tensor)
    assert bits <= records[0]["uplink_bits"] < bits * 1.01
