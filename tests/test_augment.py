"""On-device CIFAR augmentation: random crop from a 4-pixel zero padding plus horizontal flip."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedbat_jax.augment import AUGMENTATIONS, crop_flip


def _images(b=64, h=8, w=8, c=3, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(1, 256, (b, h, w, c), dtype=np.uint8))


def _explain(src: np.ndarray, out: np.ndarray, pad: int = 4):
    """The (dy, dx, flipped) that turn src into out, or None."""
    h, w, _ = src.shape
    padded = np.pad(src, ((pad, pad), (pad, pad), (0, 0)))
    for flipped in (False, True):
        view = out[:, ::-1] if flipped else out
        for dy in range(2 * pad + 1):
            for dx in range(2 * pad + 1):
                if np.array_equal(padded[dy:dy + h, dx:dx + w], view):
                    return dy, dx, flipped
    return None


@pytest.mark.slow
def test_each_output_is_a_padded_crop_maybe_flipped():
    x = _images()
    for fn in (crop_flip, jax.jit(crop_flip)):
        out = np.asarray(fn(jax.random.key(0), x))
        assert out.shape == x.shape and out.dtype == np.uint8
        found = [_explain(np.asarray(x[i]), out[i]) for i in range(len(x))]
        assert all(f is not None for f in found)
        offsets = {f[:2] for f in found}
        assert len(offsets) > 20  # per-example offsets, not one for the batch
        flips = sum(f[2] for f in found)
        assert 10 < flips < 54  # about half flipped (binomial(64, 1/2) is within this 99.99% of the time)


def test_draws_come_from_the_key():
    x = _images()
    a, b = crop_flip(jax.random.key(3), x), crop_flip(jax.random.key(3), x)
    assert jnp.array_equal(a, b)
    assert not jnp.array_equal(a, crop_flip(jax.random.key(4), x))


def test_zero_padding_is_black_before_normalisation():
    x = jnp.full((256, 4, 4, 1), 200, jnp.uint8)
    out = np.asarray(crop_flip(jax.random.key(0), x, pad=2))
    assert set(np.unique(out)) == {0, 200}  # the border comes from padding with pixel value 0


def test_none_is_identity_and_registry():
    x = _images(4)
    assert AUGMENTATIONS["none"](jax.random.key(0), x) is x
    assert set(AUGMENTATIONS) == {"none", "crop_flip"}
