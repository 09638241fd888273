"""Training-time augmentation, on the device inside the jitted local step.

An augmentation is ``fn(key, images) -> images`` on a raw batch (uint8 [B,H,W,C], before
normalisation), drawing independently per example from ``key``; the local step derives ``key`` from
(seed, round, client, step), so augmentation is reproducible and resumes exactly.
Adding one = a function (here, or in a file of its own) + an entry in ``AUGMENTATIONS``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from fedbat_jax.registry import Registry


def none(key: jax.Array, images: jax.Array) -> jax.Array:
    del key
    return images


def crop_flip(key: jax.Array, images: jax.Array, pad: int = 4) -> jax.Array:
    """Random HxW crop of the image zero-padded by ``pad`` on each side, then a horizontal flip with
    probability 1/2 (torchvision's ``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip()``)."""
    b, h, w, c = images.shape
    k_crop, k_flip = jax.random.split(key)
    offsets = jax.random.randint(k_crop, (b, 2), 0, 2 * pad + 1)
    flip = jax.random.bernoulli(k_flip, 0.5, (b,))
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    crops = jax.vmap(lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), (h, w, c)))(padded, offsets)
    return jnp.where(flip[:, None, None, None], crops[:, :, ::-1], crops)


# The ``augment`` setting (besides ``auto``, the dataset's own): name -> fn(key, images) -> images.
AUGMENTATIONS = Registry("augment", {
    "none": none,
    "crop_flip": crop_flip,  # CIFAR-10 / CIFAR-100 (REFERENCE.md section 3)
})
