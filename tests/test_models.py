"""Models: ResNet-10's architecture and sizes (REFERENCE.md section 3), binarized by the default predicate."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedbat_jax.local import binarized_mask, default_binarize_predicate
from fedbat_jax.models import MODELS, make_model
from fedbat_jax.errors import ConfigError


def _sizes(model, shape):
    v = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1,) + shape))
    mask = binarized_mask(v["params"], default_binarize_predicate)
    leaves = zip(jax.tree.leaves(v["params"]), jax.tree.leaves(mask))
    binarized = sum(int(np.prod(x.shape)) for x, b in leaves if b)
    total = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(v["params"]))
    return v, mask, binarized, total - binarized


@pytest.mark.parametrize("name,shape,classes,expected", [
    ("resnet10", (32, 32, 3), 10, (4_897_472, 5_760)),   # REFERENCE.md section 3
    ("cnn4", (28, 28, 1), 10, (389_920, 960)),
    ("cnn4", (32, 32, 3), 10, (398_176, 960)),
])
def test_paper_sizes(name, shape, classes, expected):
    _, _, binarized, full = _sizes(make_model(name, classes), shape)
    assert (binarized, full) == expected


def test_resnet10_every_conv_shortcut_and_dense_kernel_is_binarized():
    v, mask, _, _ = _sizes(make_model("resnet10", 100), (32, 32, 3))
    paths = {jax.tree_util.keystr(p): (b, leaf.shape) for (p, b), leaf in
             zip(jax.tree_util.tree_leaves_with_path(mask), jax.tree.leaves(v["params"]))}
    kernels = {k: s for k, (b, s) in paths.items() if b}
    assert all(k.endswith("['kernel']") for k in kernels)
    assert not any(b for k, (b, _) in paths.items() if not k.endswith("['kernel']"))  # BN scale/bias stay float
    convs = [s for s in kernels.values() if len(s) == 4]
    assert len(convs) == 1 + 4 * 2 + 3  # stem, two per block, three 1x1 shortcuts
    assert sorted(s[:2] for s in convs).count((1, 1)) == 3
    assert kernels["['Dense_0']['kernel']"] == (512, 100)
    assert len(jax.tree.leaves(v["batch_stats"])) == 2 * (1 + 4 * 2 + 3)


@pytest.mark.slow
def test_resnet10_forward_and_width():
    model = make_model("resnet10", 10, width=8)
    x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
    variables = model.init(jax.random.key(0), x)
    logits, new = model.apply(variables, x, train=True, mutable=["batch_stats"])
    assert logits.shape == (4, 10) and bool(jnp.all(jnp.isfinite(logits)))
    assert not jnp.allclose(new["batch_stats"]["BatchNorm_0"]["mean"], 0.0)  # running stats move in training
    assert model.apply(variables, x, train=False).shape == (4, 10)
    assert variables["params"]["Dense_0"]["kernel"].shape == (64, 10)  # 8 * 2**3 features


def test_unknown_model():
    with pytest.raises(ConfigError, match="resnet10"):
        make_model("resnet18", 10)
    assert set(MODELS) >= {"cnn4", "resnet10"}
