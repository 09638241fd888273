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


def pass_signs(key: jax.Array, total: int, passes: int) -> list[jax.Array]:
    """The random +-1 signs of each rotation pass (the first from ``key`` itself, as with one pass)."""
    keys = [key] + [jax.random.fold_in(key, i) for i in range(1, passes)]
    return [jnp.where(jax.random.bernoulli(k, 0.5, (total,)), 1.0, -1.0) for k in keys]


def rotated_sign(mask, template, unbiased: bool, mode: str = "split", passes: int = 1) -> Compressor:
    """EDEN (``unbiased=True``) or DRIVE on the masked leaves; other leaves float32. ``passes`` > 1 rotates each
    block ``y = H D_p ... H D_1 x`` with independent signs: closer to a uniform rotation (so EDEN's scale closer to
    unbiased on heavy-tailed or spiky tensors) at ``passes`` times the transform's cost, the same bits."""

    def encode(update, scales, state, key):
        def leaf(m, compressed, k):
            if not compressed:
                return Dense(m.astype(jnp.float32))
            flat = m.astype(jnp.float32).reshape(-1)
            lengths = blocks(flat.size, mode)
            flat = jnp.pad(flat, (0, sum(lengths) - flat.size))
            ds = pass_signs(k, flat.size, passes)
            signs, block_scales, start = [], [], 0
            for n in lengths:
                x = y = flat[start:start + n]
                for d in ds:
                    y = hadamard(d[start:start + n] * y)
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
        ds = pass_signs(p.key, total, passes)
        b = jnp.where(unpack_signs(p.signs, (total,)), 1.0, -1.0)
        out, start = [], 0
        for i, n in enumerate(lengths):
            x = b[start:start + n]
            for d in reversed(ds):  # the inverse: (H D)^-1 = D H, last pass first
                x = d[start:start + n] * hadamard(x)
            out.append(p.scales[i] * x)
            start += n
        return jnp.concatenate(out)[:size].reshape(shape)

    return Compressor(lambda params: (), encode, decoder(template, {Rotated: decode_leaf}))


SETTINGS = (Setting("rotation_blocks", "split", "eden, drive: split (power-of-two blocks by the binary expansion of "
                                                "the size: 1 bit a value plus a float32 per block) | pad (one block, "
                                                "zero-padded to the next power of two)", BLOCKS),
            Setting("rotation_passes", 1, "eden, drive: rotations H D applied in turn, each with its own random "
                                          "signs (1 = the papers'; 2 is closer to a uniform rotation, so EDEN's "
                                          "scale is closer to unbiased on heavy-tailed tensors; same bits)", (1, 2, 3)))


def _make(unbiased: bool):
    return lambda mask, template, config: rotated_sign(mask, template, unbiased, config.rotation_blocks,
                                                       config.rotation_passes)


EDEN = CompressorSpec("EDEN: random rotation (signs + Hadamard), 1 bit a value, unbiased scale ||x||^2 / ||Rx||_1",
                      _make(True), settings=SETTINGS)
DRIVE = CompressorSpec("DRIVE: random rotation (signs + Hadamard), 1 bit a value, least-squares scale ||Rx||_1 / n",
                       _make(False), settings=SETTINGS)
