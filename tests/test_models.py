"""Models: ResNet-10's architecture and sizes (REFERENCE.md section 3), the ViT and the MobileNet-style net;
what the default predicate binarizes in each, and their exact uplink bits."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fedbat_jax as fb
from conftest import tiny
from fedbat_jax.config import default_config, validate
from fedbat_jax.errors import ConfigError
from fedbat_jax.local import binarized_mask, default_binarize_predicate
from fedbat_jax.models import MODELS, make_model


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
    assert set(MODELS) >= {"cnn4", "resnet10", "vit", "mobilenet"}


def _vit_sizes(c: int, hw: int, width=64, depth=4, patch=4, classes=10):
    """By hand: (binarized values, binarized tensors, float32 values) of the ViT on hw x hw x c inputs."""
    tokens = (hw // patch) ** 2 + 1
    binarized = patch * patch * c * width + depth * (4 * width * width + 2 * width * 2 * width) + width * classes
    block_floats = 2 * 2 * width + 3 * width + width + 2 * width + width  # 2 LayerNorms, q/k/v/out and MLP biases
    floats = width + width + tokens * width + depth * block_floats + 2 * width + classes  # patch bias, cls, pos
    return binarized, 1 + 6 * depth + 1, floats


def _mobilenet_sizes(c: int, width=32, classes=10):
    """By hand: (binarized values, binarized tensors, float32 parameters: BatchNorm scales and biases, as many
    as the BatchNorm statistics) of the MobileNet-style net on inputs of c channels."""
    chans = [width] + [width * m for m in (2, 4, 4, 8, 8)]
    binarized = 9 * c * width + sum(9 * a + a * b for a, b in zip(chans, chans[1:])) + chans[-1] * classes
    bn_channels = width + sum(a + b for a, b in zip(chans, chans[1:]))
    return binarized, 1 + 2 * 5 + 1, 2 * bn_channels


@pytest.mark.parametrize("name,shape,expected", [
    ("vit", (28, 28, 1), _vit_sizes(1, 28)), ("vit", (32, 32, 3), _vit_sizes(3, 32)),
    ("mobilenet", (28, 28, 1), _mobilenet_sizes(1)), ("mobilenet", (32, 32, 3), _mobilenet_sizes(3)),
])
def test_vit_and_mobilenet_binarize_every_projection_and_conv_kernel(name, shape, expected):
    v, mask, binarized, full = _sizes(make_model(name, 10), shape)
    paths = [(jax.tree_util.keystr(p), b) for p, b in jax.tree_util.tree_leaves_with_path(mask)]
    assert all(k.endswith("['kernel']") for k, b in paths if b)
    assert (binarized, sum(b for _, b in paths), full) == expected
    if name == "vit":  # every attention projection and both MLP kernels of each block; no norm, bias or embedding
        assert sum(b for k, b in paths if "MultiHeadDotProductAttention" in k) == 4 * 4
        assert not any(b for k, b in paths if "LayerNorm" in k or "pos_embedding" in k or "cls" in k)
        assert "batch_stats" not in v
    else:  # the depthwise kernels are (3, 3, 1, C): one filter per channel
        assert v["params"]["SeparableBlock_2"]["depthwise"]["kernel"].shape == (3, 3, 1, 128)
        assert sum(x.size for x in jax.tree.leaves(v["batch_stats"])) == expected[2]


@pytest.mark.parametrize("name", ["vit", "mobilenet"])
def test_vit_and_mobilenet_forward_and_loss(name):
    model = make_model(name, 10)
    x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
    variables = model.init(jax.random.key(0), x)
    logits, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
    loss = -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(4), jnp.arange(4)])
    assert logits.shape == (4, 10) and bool(jnp.isfinite(loss))
    assert model.apply(variables, x, train=False).shape == (4, 10)


def test_vit_settings_shape_the_model_and_bad_ones_are_one_line():
    v = jax.eval_shape(make_model("vit", 10, width=32, depth=2, heads=2, patch=7).init, jax.random.key(0),
                       jnp.zeros((1, 28, 28, 1)))["params"]
    assert set(k for k in v if k.startswith("Block")) == {"Block_0", "Block_1"}
    assert v["Block_0"]["MultiHeadDotProductAttention_0"]["query"]["kernel"].shape == (32, 2, 16)
    assert v["pos_embedding"].shape == (1, 17, 32) and v["patch_embed"]["kernel"].shape == (7, 7, 1, 32)
    for fields, message in ((dict(model_heads=3), "model_heads=3 must divide model_width=64"),
                            (dict(model_depth=-1), "model_depth must be >= 0"),
                            (dict(model="cnn4", model_patch=2), "model_patch=2 does not apply to model=cnn4"),
                            # logreg has no width: the setting is refused, never silently ignored
                            (dict(model="logreg", model_width=8), "model_width=8 does not apply to model=logreg")):
        c = default_config()
        c.update(**{"model": "vit", **fields})
        with pytest.raises(ConfigError, match=message):
            validate(c)
    with pytest.raises(ConfigError, match="model_patch=5 must divide the image size 28x28"):
        make_model("vit", 10, patch=5).init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vit", "mobilenet"])
def test_vit_and_mobilenet_uplink_bits_and_the_fused_round_equals_the_host_round(name):
    """FedBAT's exact uplink per client (1 bit a binarized value, a float32 alpha a binarized tensor, float32 for
    the rest), and one round of the model on the fused backend (the GPU/TPU program) against the host loop. The
    round is FedAvg's, which compiles in half FedBAT's time (FedBAT's upload on the fused backend is
    tests/test_round.py's), on a one-block ViT; the two differ by rounding amplified by training, not by a wrong
    client or step (which would be O(1)); lr 0.01, as BatchNorm nets amplify rounding chaotically at lr 0.1."""
    binarized, tensors, floats = _vit_sizes(1, 28) if name == "vit" else _mobilenet_sizes(1)
    if name == "mobilenet":
        floats *= 2  # the BatchNorm statistics (mean, var) travel too, as many as the scales and biases
    assert fb.build(tiny("fedbat", model=name)).wire["uplink_bits"] == 3 * (binarized + 32 * tensors + 32 * floats)
    small = dict(model=name, batch_size=128, lr=0.01, **(dict(model_depth=1, model_width=32, model_heads=2)
                                                         if name == "vit" else {}))
    host = fb.build(tiny("fedavg", **small))
    fused = fb.build(tiny("fedavg", backend="fused", lanes=2, lane_loop="scan", **small))
    w0 = host.server.params
    pa, pb = fused.run_round(fused.server, 1)[0].params, host.run_round(host.server, 1)[0].params
    # (the attention's key bias has no gradient, softmax being shift-invariant: its "update" is float noise)
    errors = [float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b - w)) for a, b, w in
              zip(jax.tree.leaves(pa), jax.tree.leaves(pb), jax.tree.leaves(w0)) if jnp.linalg.norm(b - w) > 1e-6]
    assert len(errors) > len(jax.tree.leaves(w0)) // 2 and max(errors) < 0.3 and np.median(errors) < 0.05, errors
