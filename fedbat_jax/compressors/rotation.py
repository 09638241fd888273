"""DRIVE (Vargaftik et al., NeurIPS 2021) and EDEN (Vargaftik et al., ICML 2022): one bit per value after a shared
random rotation.

Per compressed tensor, flattened: random +-1 signs ``D``, then the orthonormal Walsh-Hadamard transform ``H / sqrt(n)``
(``hadamard``: O(n log n), jit- and vmap-friendly), so ``y = H D x / sqrt(n)``; the client sends ``sign(y)`` packed 8
to a byte and one float32 scale ``S``; the server decodes ``S * D H sign(y) / sqrt(n)`` (the rotation is its own
inverse up to ``D``). The scale is what separates the two:

* ``drive``: ``S = ||y||_1 / n``, the least-squares scale (biased; normalised error ``1 - 2/pi`` about 0.36);
* ``eden``: ``S = ||x||_2^2 / ||y||_1``, which makes the decoded vector unbiased over the rotation (normalised
  variance ``pi/2 - 1`` about 0.57 at any dimension; stochastic binarization with ``alpha = max|x|`` has
  ``d max|x|^2 / ||x||^2 - 1``, which grows with d).

The Hadamard transform needs a power-of-two length. ``rotation_blocks=split`` (the default) cuts a tensor of ``d``
values into power-of-two blocks by the binary expansion of ``d`` (288 = 256 + 32), each rotated with its own signs
and scale: exactly ``d`` bits plus 32 per block. ``rotation_blocks=pad`` rotates the tensor zero-padded to the next
power of two as one block: one scale, but the padding's signs travel too (a 3x3 kernel of 9 * 2^k values costs
16 * 2^k bits, 1.78 bits a value).

The rotation's key is the client's upload key, derived from (seed, round, client), so the server draws the same
``D`` and needs no extra bits: the payload carries it for the simulation, as a ``shared`` field that
``payload_bits`` does not count.

    python -m fedbat_jax.main --config.algorithm=fedavg --config.compressor=eden
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from fedbat_jax.binarization import leaf_keys
from fedbat_jax.compressors import Compressor, CompressorSpec
from fedbat_jax.packing import pack_signs, unpack_signs
from fedbat_jax.payloads import Dense, decoder, payload_kind
from fedbat_jax.registry import Setting

BLOCKS = ("split", "pad")


@payload_kind
class Rotated(NamedTuple):
    signs: jax.Array  # uint8 [ceil(bits / 8)]: sign(y) of every block, concatenated, True = +1
    scales: jax.Array  # float32 [blocks]
    key: jax.Array  # the rotation's key: derived from (seed, round, client) on both sides, not sent
    shared = ("key",)  # fields the server derives itself (payload_bits skips them)


def hadamard(x: jax.Array) -> jax.Array:
    """The orthonormal Walsh-Hadamard transform ``H x / sqrt(n)`` along the last axis (``n`` a power of two),
    Sylvester's ordering, in ``log2 n`` butterfly stages."""
    n = x.shape[-1]
    if n & (n - 1):
        raise ValueError(f"hadamard needs a power-of-two length, got {n}")
    lead, h, y = x.shape[:-1], 1, x
    while h < n:
        y = y.reshape(lead + (n // (2 * h), 2, h))
        a, b = y[..., 0, :], y[..., 1, :]
        y = jnp.stack([a + b, a - b], axis=-2)
        h *= 2
    return y.reshape(x.shape) / math.sqrt(n)


def blocks(size: int, mode: str) -> tuple[int, ...]:
    """The power-of-two block lengths a tensor of ``size`` values is rotated in (``split``: its binary expansion,
    largest first; ``pad``: one block, the next power of two)."""
    if mode == "pad":
        return (1 << max(size - 1, 0).bit_length(),)
    return tuple(1 << i for i in reversed(range(size.bit_length())) if size >> i & 1)


def rotated_sign(mask, template, unbiased: bool, mode: str = "split") -> Compressor:
    """EDEN (``unbiased=True``) or DRIVE on the masked leaves; other leaves float32."""

    def encode(update, scales, state, key):
        def leaf(m, compressed, k):
            if not compressed:
                return Dense(m.astype(jnp.float32))
            flat = m.astype(jnp.float32).reshape(-1)
            lengths = blocks(flat.size, mode)
            flat = jnp.pad(flat, (0, sum(lengths) - flat.size))
            d = jnp.where(jax.random.bernoulli(k, 0.5, flat.shape), 1.0, -1.0)
            signs, block_scales, start = [], [], 0
            for n in lengths:
                x = flat[start:start + n]
                y = hadamard(d[start:start + n] * x)
                l1 = jnp.sum(jnp.abs(y))
                s = jnp.sum(x * x) / jnp.maximum(l1, 1e-30) if unbiased else l1 / n
                signs.append(y >= 0)
                block_scales.append(s)
                start += n
            return Rotated(pack_signs(jnp.concatenate(signs)), jnp.stack(block_scales), k)

        return jax.tree.map(leaf, update, mask, leaf_keys(key, update)), state

    def decode_leaf(p: Rotated, shape):
        size = math.prod(shape)
        lengths = blocks(size, mode)
        total = sum(lengths)
        d = jnp.where(jax.random.bernoulli(p.key, 0.5, (total,)), 1.0, -1.0)
        b = jnp.where(unpack_signs(p.signs, (total,)), 1.0, -1.0)
        out, start = [], 0
        for i, n in enumerate(lengths):
            out.append(p.scales[i] * d[start:start + n] * hadamard(b[start:start + n]))
            start += n
        return jnp.concatenate(out)[:size].reshape(shape)

    return Compressor(lambda params: (), encode, decoder(template, {Rotated: decode_leaf}))


SETTINGS = (Setting("rotation_blocks", "split", "eden, drive: split (power-of-two blocks by the binary expansion of "
                                                "the size: 1 bit a value plus a float32 per block) | pad (one block, "
                                                "zero-padded to the next power of two)", BLOCKS),)
EDEN = CompressorSpec("EDEN: random rotation (signs + Hadamard), 1 bit a value, unbiased scale ||x||^2 / ||Rx||_1",
                      lambda mask, template, config: rotated_sign(mask, template, True, config.rotation_blocks),
                      settings=SETTINGS)
DRIVE = CompressorSpec("DRIVE: random rotation (signs + Hadamard), 1 bit a value, least-squares scale ||Rx||_1 / n",
                       lambda mask, template, config: rotated_sign(mask, template, False, config.rotation_blocks),
                       settings=SETTINGS)
