"""Models for natural federations: the Shakespeare character LSTM and a causal transformer of its size, and the
EMNIST conv-dropout CNN: shapes, causality, dropout, exact sizes, what FedBAT binarizes and its exact uplink."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedbat_jax.binarization import binarized_mask, default_binarize_predicate
from fedbat_jax.compressors import COMPRESSORS
from fedbat_jax.config import default_config
from fedbat_jax.errors import ConfigError
from fedbat_jax.federated import Learner
from fedbat_jax.local import LocalConfig
from fedbat_jax.models import MODELS, make_model
from fedbat_jax.models.char_lstm import CharLSTM
from fedbat_jax.models.char_transformer import CharTransformer
from fedbat_jax.models.emnist_cnn import EmnistCNN
from fedbat_jax.rounds import wire_sizes

TOKENS = jnp.zeros((1, 80), jnp.int32)
IMAGES = jnp.zeros((1, 28, 28, 1), jnp.float32)


def _params(model, x):
    return jax.eval_shape(model.init, jax.random.key(0), x)["params"]


def _leaves(params) -> dict:
    """``{path: (binarized by FedBAT's default predicate, shape)}``."""
    mask = binarized_mask(params, default_binarize_predicate)
    return {jax.tree_util.keystr(p): (b, leaf.shape) for (p, b), leaf in
            zip(jax.tree_util.tree_leaves_with_path(mask), jax.tree.leaves(params))}


def _count(leaves: dict, binarized: bool) -> int:
    return sum(int(np.prod(s)) for b, s in leaves.values() if b == binarized)


def _tokens(key, b=4, t=80, v=90):
    return jax.random.randint(jax.random.key(key), (b, t), 0, v, jnp.int32)


def _loss(logits, y):
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))


# ---- sizes at the defaults (shapes only) ----------------------------------------------------------------------
def test_parameter_counts_at_the_defaults():
    w, v = 256, 90
    lstm = v * 8 + 4 * (8 * w + w * w + w) + 4 * (2 * w * w + w) + w * v + v  # Keras's count: one bias per gate
    assert lstm == 820_522
    assert _count(_leaves(_params(CharLSTM(), TOKENS)), True) + _count(_leaves(_params(CharLSTM(), TOKENS)), False) \
        == lstm
    w = 128
    transformer = (v + 80) * w + 4 * (12 * w * w + 13 * w) + 2 * w + w * v + v
    assert transformer == 826_714 and abs(transformer / lstm - 1) < 0.2
    assert sum(x.size for x in jax.tree.leaves(_params(CharTransformer(), TOKENS))) == transformer
    assert sum(x.size for x in jax.tree.leaves(_params(EmnistCNN(), IMAGES))) == 1_206_590
    assert sum(x.size for x in jax.tree.leaves(_params(make_model("emnist_cnn", 62), IMAGES))) == 1_206_590


# ---- what FedBAT's default predicate binarizes ------------------------------------------------------------------
def test_char_lstm_binarizes_every_lstm_kernel_and_the_output_kernel():
    leaves = _leaves(_params(CharLSTM(), TOKENS))
    binarized = sorted(k for k, (b, _) in leaves.items() if b)
    gates = "ifgo"
    assert binarized == sorted([f"['lstm_{layer}']['{side}{g}']['kernel']" for layer in (0, 1) for side in "ih"
                                for g in gates] + ["['head']['kernel']"])
    assert sorted(k for k, (b, _) in leaves.items() if not b) == sorted(
        ["['embed']['embedding']", "['head']['bias']"] + [f"['lstm_{layer}']['h{g}']['bias']" for layer in (0, 1)
                                                          for g in gates])
    assert leaves["['lstm_0']['ii']['kernel']"][1] == (8, 256) and leaves["['lstm_1']['ii']['kernel']"][1] == (256, 256)
    assert leaves["['lstm_0']['hf']['kernel']"][1] == (256, 256)
    assert leaves["['embed']['embedding']"] == (False, (90, 8))
    assert (_count(leaves, True), _count(leaves, False)) == (817_664, 2_858)


def test_char_transformer_binarizes_every_attention_mlp_and_output_kernel():
    leaves = _leaves(_params(CharTransformer(), TOKENS))
    binarized = sorted(k for k, (b, _) in leaves.items() if b)
    assert binarized == sorted([f"['block_{i}']['attention']['{p}']['kernel']" for i in range(4)
                                for p in ("query", "key", "value", "out")]
                               + [f"['block_{i}']['mlp_{p}']['kernel']" for i in range(4) for p in ("in", "out")]
                               + ["['head']['kernel']"])
    floats = [k for k, (b, _) in leaves.items() if not b]
    assert all(k.endswith(("['bias']", "['scale']")) for k in floats
               if k not in ("['embed']['embedding']", "['pos_embedding']"))
    assert leaves["['embed']['embedding']"] == (False, (90, 128))
    assert leaves["['pos_embedding']"] == (False, (1, 80, 128))
    assert leaves["['block_0']['attention']['query']['kernel']"][1] == (128, 4, 32)
    assert (_count(leaves, True), _count(leaves, False)) == (797_952, 28_762)


def test_emnist_cnn_binarizes_its_four_kernels():
    leaves = _leaves(_params(EmnistCNN(), IMAGES))
    assert {k: s for k, (b, s) in leaves.items() if b} == {
        "['conv_0']['kernel']": (3, 3, 1, 32), "['conv_1']['kernel']": (3, 3, 32, 64),
        "['dense']['kernel']": (12 * 12 * 64, 128), "['head']['kernel']": (128, 62)}
    assert sorted(k for k, (b, _) in leaves.items() if not b) == [f"['{n}']['bias']" for n in
                                                                  ("conv_0", "conv_1", "dense", "head")]


# ---- exact uplink of one client (rounds.wire_sizes, from the payload's shapes) ---------------------------------
def _uplink(model_name: str, compressor: str, x) -> int:
    """One client's uplink as the run reports it: the compressor built as ``federation.make_learner`` builds it
    (its spec's mask of compressed leaves, the default config), sized by ``rounds.wire_sizes``."""
    model = make_model(model_name, 62 if model_name == "emnist_cnn" else 90)
    params = _params(model, x)
    spec = COMPRESSORS[compressor]
    mask = binarized_mask(params, spec.compresses)
    learner = Learner(model, mask, spec.make(mask, params, default_config()), LocalConfig(0.1, 4), 1)
    return wire_sizes(learner, params, {}, 1)["uplink_bits"]


@pytest.mark.parametrize("name,x,binarized,tensors,floats", [
    ("char_lstm", TOKENS, 817_664, 17, 2_858),
    ("char_transformer", TOKENS, 797_952, 25, 28_762),
    ("emnist_cnn", IMAGES, 1_206_304, 4, 286),
])
def test_fedbat_uplink_bits_by_hand(name, x, binarized, tensors, floats):
    """1 bit a binarized value (every tensor's size is a multiple of 8: no padding), a float32 alpha a binarized
    tensor, float32 for the rest; FedAvg: 32 bits a parameter."""
    assert _uplink(name, "fedbat", x) == binarized + 32 * tensors + 32 * floats
    assert _uplink(name, "none", x) == 32 * (binarized + floats)


def test_char_lstm_uplink_at_the_defaults():
    assert _uplink("char_lstm", "fedbat", TOKENS) == 909_664
    assert _uplink("char_lstm", "none", TOKENS) == 26_256_704


# ---- forward passes ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", [CharLSTM(width=32, depth=2), CharTransformer(width=32, depth=2, heads=2)])
def test_char_models_shapes_loss_and_gradient(model):
    x, y = _tokens(1), _tokens(2)
    variables = model.init(jax.random.key(0), x)
    assert "batch_stats" not in variables
    logits = model.apply(variables, x, train=True)
    assert logits.shape == (4, 80, 90) and logits.dtype == jnp.float32
    loss, grads = jax.jit(jax.value_and_grad(lambda p: _loss(model.apply({"params": p}, x, train=True), y)))(
        variables["params"])
    assert bool(jnp.isfinite(loss)) and abs(float(loss) - np.log(90)) < 1.0  # near uniform at initialisation
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    short = model.apply(variables, x[:, :17])  # any length (the transformer's up to max_len)
    assert short.shape == (4, 17, 90)
    np.testing.assert_allclose(short, logits[:, :17], atol=1e-5)


@pytest.mark.parametrize("model", [CharLSTM(width=32, depth=2), CharTransformer(width=32, depth=2, heads=2)])
def test_char_models_are_causal(model):
    x = _tokens(1, b=2, t=40)
    variables = model.init(jax.random.key(0), x)
    apply = jax.jit(model.apply)
    base = apply(variables, x)
    for t in (0, 13, 38):
        changed = x.at[:, t + 1:].set((x[:, t + 1:] + 1 + jnp.arange(40 - t - 1)) % 90)
        out = apply(variables, changed)
        np.testing.assert_allclose(out[:, : t + 1], base[:, : t + 1], atol=1e-6)  # the past does not see the future
        assert float(jnp.abs(out[:, t + 1:] - base[:, t + 1:]).max()) > 1e-4  # the future does see the change


def test_registry_builds_them_with_their_settings():
    assert set(MODELS) >= {"char_lstm", "char_transformer", "emnist_cnn"}
    p = _params(make_model("char_lstm", 90, width=32, depth=1), TOKENS)
    assert set(p) == {"embed", "lstm_0", "head"} and p["lstm_0"]["hi"]["kernel"].shape == (32, 32)
    p = _params(make_model("char_transformer", 90, width=48, depth=2, heads=3), TOKENS)
    assert {k for k in p if k.startswith("block")} == {"block_0", "block_1"}
    assert p["block_0"]["attention"]["query"]["kernel"].shape == (48, 3, 16)
    p = _params(make_model("emnist_cnn", 10, width=8), IMAGES)
    assert p["conv_1"]["kernel"].shape == (3, 3, 8, 16) and p["head"]["kernel"].shape == (128, 10)


def test_bad_settings_are_one_line_config_errors():
    with pytest.raises(ConfigError, match="model_heads=3 must divide model_width=128"):
        make_model("char_transformer", 90, heads=3)
    with pytest.raises(ConfigError, match="longer than the char_transformer's max_len=80"):
        CharTransformer(width=32, depth=1).init(jax.random.key(0), jnp.zeros((1, 81), jnp.int32))
    with pytest.raises(ConfigError, match="model_heads=4 does not apply to model=char_lstm"):
        make_model("char_lstm", 90, heads=4)
    with pytest.raises(ConfigError, match="model_depth=2 does not apply to model=emnist_cnn"):
        make_model("emnist_cnn", 62, depth=2)
    with pytest.raises(ConfigError, match="model_width must be >= 1 for model=char_lstm"):
        CharLSTM(width=-1)
    with pytest.raises(ConfigError, match=r"reads int tokens \[batch, time\]"):
        CharLSTM(width=8, depth=1).init(jax.random.key(0), jnp.zeros((1, 28, 28, 1), jnp.int32))


def test_emnist_cnn_dropout_only_in_training_and_from_the_dropout_stream():
    model = EmnistCNN(width=8)
    x = jax.random.normal(jax.random.key(1), (4, 28, 28, 1))
    variables = model.init(jax.random.key(0), x)  # no dropout rng needed: train=False
    apply = jax.jit(model.apply, static_argnames="train")
    plain = apply(variables, x)
    assert plain.shape == (4, 62) and plain.dtype == jnp.float32
    assert bool(jnp.isfinite(_loss(plain, jnp.arange(4))))
    np.testing.assert_array_equal(apply(variables, x, train=False, rngs={"dropout": jax.random.key(5)}), plain)
    a = apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)})
    b = apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)})
    np.testing.assert_array_equal(apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)}), a)
    assert float(jnp.abs(a - b).max()) > 1e-4 and float(jnp.abs(a - plain).max()) > 1e-4
    with pytest.raises(Exception, match="dropout"):  # training needs the stream
        model.apply(variables, x, train=True)
