"""A client's local steps: the binarized leaves, the warm-up switch and alpha0, masked short batches."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fedbat_jax.binarization import warmup_steps
from fedbat_jax.local import (
    ALPHA0_INIT,
    FederatedData,
    LocalConfig,
    batch_at,
    binarized_mask,
    default_binarize_predicate,
    epoch_orders,
    init_client,
    make_local_step,
)
from fedbat_jax.models import make_model
from fedbat_jax.models.layers import BatchNorm


class MLP(nn.Module):
    """Any Flax model works: FedBAT only sees the parameter pytree."""

    @nn.compact
    def __call__(self, x, train=False, mask=None):
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(16)(x))
        x = BatchNorm()(x, train, mask)
        return nn.Dense(10)(x)


def _data(n=50, shape=(28, 28, 1), batch=8, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n,) + shape, dtype=np.uint8)
    labels = rng.integers(0, 10, n).astype(np.int32)
    index = np.zeros((1, n + batch), np.int32)
    index[0, :n] = np.arange(n)
    return FederatedData(jnp.asarray(images), jnp.asarray(labels), jnp.asarray(index), jnp.asarray([n], jnp.int32),
                      jnp.zeros(shape[-1]), jnp.ones(shape[-1]))


def test_default_predicate_picks_conv_and_dense_kernels():
    model = make_model("cnn4", 10)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))["params"]
    mask = binarized_mask(params, default_binarize_predicate)
    picked = {jax.tree_util.keystr(p) for p, b in jax.tree_util.tree_leaves_with_path(mask) if b}
    assert picked == {f"['Conv_{i}']['kernel']" for i in range(4)} | {"['Dense_0']['kernel']"}
    assert all(not b for b in jax.tree.leaves(binarized_mask(params, None)))


def test_any_model_and_any_predicate():
    model = MLP()
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
    params = variables["params"]

    def only_first(path, leaf):
        return jax.tree_util.keystr(path) == "['Dense_0']['kernel']"

    mask = binarized_mask(params, only_first)
    cfg = LocalConfig(lr=0.1, batch_size=8)
    step = jax.jit(make_local_step(model, mask, cfg))
    data = _data()
    state = init_client(params, variables["batch_stats"], mask, cfg)
    orders = epoch_orders(jax.random.PRNGKey(1), data.index[0], data.sizes[0], 1)
    for t in range(3):
        state = step(state, params, data, orders, data.sizes[0], 1, t, jax.random.PRNGKey(t), cfg.lr)
    # The binarized leaf holds a latent update (started at 0); the others hold the parameter itself.
    assert float(jnp.abs(state.theta["Dense_0"]["kernel"]).max()) < 1.0
    assert not jnp.allclose(state.theta["Dense_1"]["kernel"], params["Dense_1"]["kernel"])
    assert float(state.a["Dense_0"]["kernel"]) != 0.0  # learned after warm-up (1 step)
    assert float(state.a["Dense_1"]["kernel"]) == 0.0  # full-precision leaf: no step size


def _cnn4_steps(cfg: LocalConfig):
    """A CNN4 client's 2 epochs of 30 examples in batches of 8 (8 steps, warm-up phi 0.5), FedBAT's kernels
    binarized: yields ``(t, n_warm, state before the step, state after)``."""
    model = make_model("cnn4", 10)
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
    params = variables["params"]
    mask = binarized_mask(params, default_binarize_predicate)
    step = jax.jit(make_local_step(model, mask, cfg))
    data = _data(n=30)
    n = data.sizes[0]
    num_steps = 2 * 4  # 2 epochs of ceil(30 / 8) = 4 batches
    n_warm = warmup_steps(0.5, num_steps)
    orders = epoch_orders(jax.random.PRNGKey(1), data.index[0], n, 2)
    state = init_client(params, variables["batch_stats"], mask, cfg)
    for t in range(num_steps):
        before, state = state, step(state, params, data, orders, n, n_warm, t, jax.random.PRNGKey(100 + t), cfg.lr)
        yield t, n_warm, before, state


def test_warmup_switch_sets_alpha0_and_freezes_a_before():
    for t, n_warm, before, state in _cnn4_steps(LocalConfig(lr=0.1, batch_size=8)):
        k = state.alpha0["Conv_1"]["kernel"]
        if t < n_warm:
            assert float(k) == np.float32(ALPHA0_INIT)
            assert float(state.a["Conv_1"]["kernel"]) == 0.0  # zero gradient during warm-up
        elif t == n_warm:
            expected = jnp.mean(jnp.abs(before.theta["Conv_1"]["kernel"]))
            np.testing.assert_allclose(k, expected, rtol=1e-6)
            assert float(state.a["Conv_1"]["kernel"]) != 0.0
        else:
            assert float(k) == float(before.alpha0["Conv_1"]["kernel"])  # set once
    assert float(state.seen) == 2 * 30


def test_alpha_init_scale_sets_the_level_and_rho_0_keeps_it():
    """Issue 40's level control: alpha0 = alpha_init_scale x mean|u| when warm-up ends; with rho = 0 the step
    size stays exactly there for the rest of the round (alpha = alpha0 exp(0 a), inside the bounds)."""
    from fedbat_jax.local import step_sizes

    cfg = LocalConfig(lr=0.1, batch_size=8, rho=0.0, alpha_init_scale=2.0, alpha_min=1e-8)
    for t, n_warm, before, state in _cnn4_steps(cfg):
        if t == n_warm:
            level = 2.0 * jnp.mean(jnp.abs(before.theta["Conv_1"]["kernel"]))
            np.testing.assert_allclose(state.alpha0["Conv_1"]["kernel"], level, rtol=1e-6)
    alpha = step_sizes(state.a, state.alpha0, cfg, state.theta)["Conv_1"]["kernel"]
    np.testing.assert_allclose(alpha, level, rtol=1e-6)


def test_epoch_orders_and_short_last_batch():
    data = _data(n=21, batch=8)
    orders = epoch_orders(jax.random.PRNGKey(0), data.index[0], jnp.int32(21), 3)
    for e in range(3):
        assert sorted(np.asarray(orders[e, :21]).tolist()) == list(range(21))  # each epoch: every sample once
    assert not np.array_equal(orders[0, :21], orders[1, :21])  # reshuffled
    seen = []
    for t in range(3):  # ceil(21 / 8) = 3 batches: 8, 8, 5
        idx, valid = batch_at(orders, jnp.int32(21), jnp.int32(t), 8)
        seen += np.asarray(idx)[np.asarray(valid)].tolist()
        assert int(valid.sum()) == (5 if t == 2 else 8)
    assert sorted(seen) == list(range(21))
    idx, _ = batch_at(orders, jnp.int32(21), jnp.int32(3), 8)  # step 3 starts epoch 1
    np.testing.assert_array_equal(idx, orders[1, :8])


def test_masked_batchnorm_equals_short_batch():
    x = jax.random.normal(jax.random.PRNGKey(0), (8, 4, 4, 3)) * 2 + 1
    bn = BatchNorm()
    v = bn.init(jax.random.PRNGKey(1), x, True)
    mask = jnp.arange(8) < 5
    y_masked, s_masked = bn.apply(v, x, True, mask, mutable=["batch_stats"])
    y_short, s_short = bn.apply(v, x[:5], True, None, mutable=["batch_stats"])
    np.testing.assert_allclose(y_masked[:5], y_short, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(s_masked), jax.tree.leaves(s_short)):
        np.testing.assert_allclose(a, b, rtol=1e-5)
    # PyTorch semantics: running var takes the unbiased batch variance, momentum 0.1 on the batch.
    var = np.var(np.asarray(x[:5]), axis=(0, 1, 2), ddof=1)
    np.testing.assert_allclose(s_short["batch_stats"]["var"], 0.9 + 0.1 * var, rtol=1e-5)


def test_augmentation_in_the_step_is_keyed():
    """crop_flip changes what a step trains on, identically for the same step key."""
    model = MLP()
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
    params = variables["params"]
    mask = binarized_mask(params, default_binarize_predicate)
    data = _data()
    orders = epoch_orders(jax.random.PRNGKey(1), data.index[0], data.sizes[0], 1)

    def one_step(augment, key):
        cfg = LocalConfig(lr=0.1, batch_size=8, augment=augment)
        step = jax.jit(make_local_step(model, mask, cfg))
        state = init_client(params, variables["batch_stats"], mask, cfg)
        return step(state, params, data, orders, data.sizes[0], 10, 0, key, cfg.lr).theta  # warm-up: no binarization

    plain = one_step("none", jax.random.PRNGKey(5))
    aug = one_step("crop_flip", jax.random.PRNGKey(5))
    again = one_step("crop_flip", jax.random.PRNGKey(5))
    other = one_step("crop_flip", jax.random.PRNGKey(6))

    def same(a, b):
        return all(bool(jnp.array_equal(x, y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

    assert same(plain, one_step("none", jax.random.PRNGKey(6)))  # without augmentation the key is unused in warm-up
    assert same(aug, again) and not same(aug, plain) and not same(aug, other)
