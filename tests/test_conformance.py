"""The conformance suite: every registry entry through the same checks, so ``pytest -k NAME`` is a new entry's
whole test loop (``make test-fast`` runs it).

* every algorithm on every backend: ``fused``, ``padded`` and ``debug`` equal ``host`` on a tiny logreg
  federation (train losses to rtol 1e-4: the same sums in another order), and ``make_train`` too;
* every compressor: ``encode`` then ``decode`` gives the update's shapes and finite values, the same jitted and
  unjitted; every leaf of the payload is a registered payload kind; ``payload_bits`` of the payload is the
  run's ``uplink_bits`` per client (with the BatchNorm statistics, float32);
* every model: init on its input, apply (inference, and training with an example mask, its BatchNorm statistics
  mutable and dropout keyed) gives finite logits of the right shape; the masked-out examples change nothing;
* every dataset: its loader on a tiny copy of its files (``FIXTURES``; a new dataset without one fails) gives
  consistent arrays, labels in range and, for a natural federation, clients that cover its examples;
* every setting, core or an entry's: a value outside the ``values`` it declares is one line naming it, whichever
  entry is active; every entry's setting declares its values, and its check runs while another entry is active.
"""
from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fedbat_jax as fb
from conftest import tiny
from fedbat_jax.algorithms import ALGORITHMS
from fedbat_jax.backends import BACKENDS
from fedbat_jax.compressors import COMPRESSORS
from fedbat_jax.config import SETTINGS, _CORE, default_config, validate
from fedbat_jax.registry import Range
from fedbat_jax.models import MODELS, make_model
from fedbat_jax.payloads import is_payload, payload_bits
from test_data_readers import _images, _npz, _write_svhn  # the readers' tests' file writers
from test_natural_readers import _leaf_shard, _write_tff

TINY = dict(model="logreg", num_clients=6, clients_per_round=2, rounds=2, max_client_examples=96)  # 3 steps a client


def _config(algorithm, **extra):
    c = tiny(algorithm, **{**TINY, **extra})
    if c.algorithm == "qsgd" or c.compressor == "qsgd":
        c.bits = 2
    return c


@functools.lru_cache(maxsize=None)
def _host_losses(algorithm: str) -> tuple[float, ...]:
    return tuple(r["train_loss"] for r in fb.run(_config(algorithm, backend="host")))


@pytest.mark.parametrize("backend", sorted(set(BACKENDS) - {"host"}))
@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_algorithm_on_backend_equals_host(algorithm, backend):
    losses = [r["train_loss"] for r in fb.run(_config(algorithm, backend=backend))]
    np.testing.assert_allclose(losses, _host_losses(algorithm), rtol=1e-4)


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_algorithm_in_make_train_equals_host(algorithm):
    _, metrics = jax.jit(fb.make_train(_config(algorithm)))(jax.random.PRNGKey(0))
    np.testing.assert_allclose(np.asarray(metrics["train_loss"]), _host_losses(algorithm), rtol=1e-4)


@pytest.mark.parametrize("compressor", sorted(COMPRESSORS))
def test_compressor_round_trip_and_payload_bits(compressor):
    model = "cnn4" if compressor == "fedbat" else "logreg"  # fedbat binarizes conv kernels too
    c = _config("fedavg", compressor=compressor, model=model, model_width=4 if model == "cnn4" else 0)
    exp = fb.build(c)
    learner, params = exp.federation.learner, exp.server.params
    comp = learner.compressor
    key = jax.random.PRNGKey(1)
    update = jax.tree.map(lambda x: 0.01 * jax.random.normal(jax.random.fold_in(key, x.size), x.shape), params)
    scales = jax.tree.map(lambda x: jnp.float32(0.01), params)
    state = comp.init(params)

    def round_trip(u, s, st, k):
        payload, new_state = comp.encode(u, s, st, k)
        return payload, comp.decode(payload)

    payload, decoded = round_trip(update, scales, state, key)
    jpayload, jdecoded = jax.jit(round_trip)(update, scales, state, key)
    chex.assert_trees_all_equal_shapes_and_dtypes(decoded, jax.tree.map(lambda x: x.astype(jnp.float32), update))
    chex.assert_trees_all_close(decoded, jdecoded, rtol=1e-6, atol=1e-7)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(decoded))
    kinds = jax.tree.leaves(payload, is_leaf=is_payload)
    assert kinds and all(is_payload(p) for p in kinds), [type(p).__name__ for p in kinds]
    stats = payload_bits(exp.server.batch_stats)  # BatchNorm statistics travel as float32 beside the payload
    assert exp.wire["uplink_bits"] == c.clients_per_round * (payload_bits(payload) + stats)
    if compressor == "none":
        chex.assert_trees_all_close(decoded, update)


def _model_input(name: str, batch: int):
    if name.startswith("char_"):  # the text models read int tokens [batch, time]
        return jnp.arange(batch * 12, dtype=jnp.int32).reshape(batch, 12) % 10
    return jax.random.uniform(jax.random.PRNGKey(0), (batch, 32, 32, 3))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_init_and_apply_with_a_mask(name):
    small = {"resnet10": 8, "mobilenet": 8, "vit": 16, "char_lstm": 16, "char_transformer": 16, "cnn4": 8,
             "emnist_cnn": 8}
    model = make_model(name, 10, width=small.get(name, 0))
    x = _model_input(name, 4)
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), x)
    params, stats = variables["params"], variables.get("batch_stats", {})
    logits = model.apply({"params": params, "batch_stats": stats}, x, train=False)
    assert logits.shape[0] == 4 and logits.shape[-1] == 10 and bool(jnp.all(jnp.isfinite(logits)))

    def train(x, mask):
        out, new = model.apply({"params": params, "batch_stats": stats}, x, train=True, mask=mask,
                               mutable=["batch_stats"], rngs={"dropout": jax.random.PRNGKey(3)})
        return out, new.get("batch_stats", {})

    mask = jnp.array([True, True, True, False])
    out, new_stats = jax.jit(train)(x, mask)
    assert out.shape == logits.shape and bool(jnp.all(jnp.isfinite(out)))
    # what a masked-out (padding) example holds changes neither the statistics nor the real examples' logits
    other = x.at[3].set(x[0] + 1 if x.dtype != jnp.int32 else (x[0] + 1) % 10)
    out2, new_stats2 = jax.jit(train)(other, mask)
    chex.assert_trees_all_close(new_stats, new_stats2, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(out[:3], out2[:3], rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- datasets
def _tff(path, clients: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_tff(path, clients)


def _svhn(root):
    for name, n in (("train_32x32.mat", 6), ("test_32x32.mat", 4)):
        _write_svhn(root / "svhn", _images(n), np.arange(n) % 10 + 1, name)


def _cifar(name: str, classes: int):
    def write(root):
        _npz(root / name / f"{name}_train.npz", _images(6), np.arange(6) % classes)
        _npz(root / name / f"{name}_test.npz", _images(4, seed=1), np.arange(4) % classes)
    return write


def _shakespeare(root):
    for split, n in (("train", 3), ("test", 1)):
        _tff(root / "shakespeare" / f"shakespeare_{split}.h5",
             {f"role{i}": {"snippets": np.array([b"To be, or not to be" * (i + 1)] * n)} for i in range(3)})


def _femnist(root):
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("test", 2)):
        _leaf_shard(root / "femnist" / split / "all_data_0.json",
                    {f"w{i}": ((rng.integers(0, 256, (n, 784)) / 255).tolist(),
                               [int(v) for v in rng.integers(0, 62, n)]) for i in range(3)})


def _cifar100_fed(root):
    for split, clients in (("train", ("0", "1", "2")), ("test", ("0", "1"))):
        _tff(root / "cifar100_fed" / f"fed_cifar100_{split}.h5",
             {c: {"image": _images(3, int(c)), "label": np.array([1, 2, 3], np.int64),
                  "coarse_label": np.array([0, 1, 2], np.int64)} for c in clients})


# A new dataset adds a writer of a tiny copy of its files here (None: bundled or checksummed files that the real
# copy in ../shared/data serves, when it is there).
FIXTURES = {"mnist5k": None, "fashion_mnist": None, "mnist": None, "svhn": _svhn, "cifar10": _cifar("cifar10", 10),
            "cifar100": _cifar("cifar100", 100), "shakespeare": _shakespeare, "femnist": _femnist,
            "cifar100_fed": _cifar100_fed}


def test_every_dataset_has_a_fixture():
    from fedbat_jax.data import DATASETS

    assert set(DATASETS) == set(FIXTURES), "add the new dataset's tiny files to FIXTURES"


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_dataset_loads_from_its_fixture(name, tmp_path, monkeypatch):
    """The loader on its files: consistent arrays, labels in range, uint8 or token inputs, and a natural
    federation's clients cover its examples."""
    from conftest import SHARED_DATA
    from fedbat_jax.data import load_dataset
    from fedbat_jax.data.datasets import is_natural

    import hashlib

    from fedbat_jax.data import svhn
    from fedbat_jax.data.natural import TFF_SIZES

    monkeypatch.delenv("FEDBAT_DATA_DIR", raising=False)
    root = tmp_path
    if FIXTURES[name] is not None:
        FIXTURES[name](root)
        # a fixture is not the published file: its documented sizes and digests do not apply
        for key in ("shakespeare", "cifar100"):  # the TFF files the fixtures write
            monkeypatch.setitem(TFF_SIZES, key, {})
        for mat in root.glob("svhn/*.mat"):
            monkeypatch.setitem(svhn.SVHN_MD5, mat.name, hashlib.md5(mat.read_bytes()).hexdigest())
    elif name != "mnist5k":
        if not (SHARED_DATA / name).is_dir():
            pytest.skip(f"{name}: checksummed files, only the real copy (../shared/data) serves")
        root = SHARED_DATA
    ds = load_dataset(name, None if name == "mnist5k" else root)
    for x, y in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
        assert len(x) == len(y) > 0 and y.dtype == np.int32
        assert 0 <= y.min() and y.max() < ds.num_classes
    assert ds.sample_input().shape[1:] == ds.x_train.shape[1:]
    if is_natural(name):
        assert len(ds.train_clients) == len(ds.y_train) and len(ds.test_clients) == len(ds.y_test)
        assert set(np.unique(ds.train_clients)) == set(range(len(ds.client_ids)))


# ---- settings ----------------------------------------------------------------------------------------------
def _outside(setting):
    """A value of the setting's type that its ``values`` refuse."""
    v = setting.values
    if not isinstance(v, Range):
        return "not_" + str(v[0]) if isinstance(setting.default, str) else max(v) + 1
    bad = (v.low if v.low_open else v.low - 1) if v.low is not None else (v.high if v.high_open else v.high + 1)
    return type(setting.default)(bad)


@pytest.mark.parametrize("setting", [s for s in SETTINGS if s.values is not None], ids=lambda s: s.name)
def test_a_value_outside_a_settings_range_is_one_line_whichever_entry_is_active(setting):
    """The default config (fedbat, host, sgd, constant schedule) refuses every setting's bad value: an inactive
    entry's (fedprox's prox_mu, adam's server_b2, the fused backend's lanes) as much as an active one's."""
    c = default_config()
    bad = _outside(setting)
    c[setting.name] = bad
    with pytest.raises(fb.ConfigError, match=f"{setting.name}"):
        validate(c)


def test_every_entrys_setting_declares_its_values():
    """A new entry's settings are covered by the test above only if they say what they accept."""
    core = {s.name for s in _CORE}
    undeclared = [s.name for s in SETTINGS if s.name not in core and s.values is None
                  and not isinstance(s.default, bool)]
    assert undeclared == []


def test_an_entrys_check_runs_while_another_entry_is_active():
    """fedbat's check (alpha_min < alpha_max) refuses under fedavg; a valid value of an inactive entry passes."""
    with pytest.raises(fb.ConfigError, match=r"alpha_min \(0.1\) must be < alpha_max"):
        validate(tiny("fedavg", alpha_min=0.1, alpha_max=0.05))
    validate(tiny("fedavg", prox_mu=0.5, ef21_momentum=0.5, lanes=3, server_b2=0.5, lr_gamma=2.0))
