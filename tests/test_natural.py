"""Natural federations end to end: TFF's Shakespeare recipe, the sequence loss and accuracy, the natural partition
and its settings (partition=auto, num_clients=0, max_client_examples, local_steps, uniform weights), per-client
evaluation, the shakespeare / femnist datasets on the real files and on files written here, and ragged clients
through the host and fused backend and make_train."""
from __future__ import annotations

import runpy
from pathlib import Path

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fedbat_jax as fb
from conftest import SHARED_DATA
from fedbat_jax.config import default_config, resolved
from fedbat_jax.data import load_dataset, text
from fedbat_jax.data.clients import choose_clients, client_sizes, keep_clients, natural_parts
from fedbat_jax.data.datasets import DataNotFoundError
from fedbat_jax.data.federations import (cifar100_fed_dataset, femnist_dataset, load_femnist, load_shakespeare,
                                        shakespeare_dataset)
from fedbat_jax.data.natural import ClientArrays, decode_snippets, read_leaf_json, read_tff_h5
from fedbat_jax.errors import ConfigError, DataError
from fedbat_jax.evaluation import client_summary, pooled
from fedbat_jax.federated import make_roster
from fedbat_jax.local import batch_at, epoch_orders
from fedbat_jax.objective import scores
from fedbat_jax.workdir import result_changes

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = SHARED_DATA / "shakespeare"
FEMNIST = SHARED_DATA / "femnist_leaf"


# --------------------------------------------------------------------------- the Shakespeare recipe

def test_snippet_to_sequences_by_hand():
    x, y = text.sequences(["Hi!", "", "d" * 80])
    h, i, bang, d = (text.CHAR_VOCAB.index(c) + 1 for c in "Hi!d")
    assert x.shape == y.shape == (4, 80) and x.dtype == np.int32
    np.testing.assert_array_equal(x[0, :5], [text.BOS, h, i, bang, text.EOS])
    np.testing.assert_array_equal(y[0, :5], [h, i, bang, text.EOS, text.PAD])
    assert not x[0, 5:].any() and not y[0, 4:].any()
    np.testing.assert_array_equal(x[1, :2], [text.BOS, text.EOS])  # an empty snippet: one target, its end
    # 80 characters + BOS + EOS = 82 ids: two rows of 81, the second holding EOS then padding, so (as in TFF's
    # recipe) the end of this snippet is never a target: its second row has no target but padding
    np.testing.assert_array_equal(x[2, :2], [text.BOS, d])
    assert y[2, -1] == d
    np.testing.assert_array_equal(x[3, :2], [text.EOS, text.PAD])
    assert not y[3].any()


def test_vocabulary_is_tffs():
    assert len(text.CHAR_VOCAB) == len(set(text.CHAR_VOCAB)) == 86 and text.VOCAB_SIZE == 90
    assert (text.PAD, text.OOV, text.BOS, text.EOS) == (0, 87, 88, 89)
    assert text.char_ids("d\r~é").tolist() == [1, 86, text.OOV, text.OOV]
    assert text.decode(text.sequences(["To be, or not to be"])[0][0]) == "To be, or not to be"


# --------------------------------------------------------------------------- loss and accuracy

def test_sequence_scores_by_hand():
    # one sequence of 4 targets: a character, end of snippet, two pads; vocabulary 3 + ids 3 (pad 0) and 4 (eos)
    logits = jnp.log(jnp.array([[[0.1, 0.7, 0.1, 0.05, 0.05], [0.1, 0.1, 0.1, 0.1, 0.6],
                                 [0.9, 0.025, 0.025, 0.025, 0.025], [0.9, 0.025, 0.025, 0.025, 0.025]]]))
    y = jnp.array([[1, 4, 0, 0]])
    s = scores(logits, y, jnp.array([True]), pad_ids=(0,), unscored_ids=(4,))
    np.testing.assert_allclose(s.loss, [-np.log(0.7) - np.log(0.6)], rtol=1e-6)
    assert (s.counted.tolist(), s.scored.tolist(), s.correct.tolist()) == ([2.0], [1.0], [1.0])
    dead = scores(logits, y, jnp.array([False]), pad_ids=(0,), unscored_ids=(4,))  # a padded example counts nowhere
    assert float(dead.loss[0]) == float(dead.counted[0]) == float(dead.scored[0]) == 0.0
    # images: one label each, every real example counted and scored
    s = scores(jnp.log(jnp.array([[0.2, 0.8], [0.6, 0.4]])), jnp.array([1, 1]), jnp.array([True, True]))
    np.testing.assert_allclose(s.loss, [-np.log(0.8), -np.log(0.4)], rtol=1e-6)
    assert s.correct.tolist() == [1.0, 0.0] and s.counted.tolist() == s.scored.tolist() == [1.0, 1.0]


def test_client_summary_by_hand():
    # per client: loss, correct, counted, scored, examples
    table = np.array([[0, 1, 2, 2, 2], [0, 3, 4, 4, 1], [0, 0, 1, 0, 1], [0, 0, 5, 5, 5]], np.float64)
    s = client_summary(table, threshold=0.5)
    acc = np.array([0.5, 0.75, 0.0])  # the third client has nothing scored: left out
    assert s["test_clients"] == 3
    assert s["client_accuracy_mean"] == pytest.approx(acc.mean())
    assert s["client_accuracy_weighted"] == pytest.approx((0.5 * 2 + 0.75 * 1 + 0 * 5) / 8)
    assert s["client_accuracy_p10"] == pytest.approx(np.percentile(acc, 10))
    assert s["client_accuracy_below"] == pytest.approx(1 / 3)
    assert pooled(table) == pytest.approx((0.0, 4 / 11))


# --------------------------------------------------------------------------- clients and settings

def _digits_federation(sizes: list[int], test_per_client: int = 3, seed: int = 0):
    """A natural federation written here: mnist5k digits dealt to clients of the given (ragged) sizes."""
    ds = load_dataset("mnist5k")
    rng = np.random.default_rng(seed)
    tr, te = rng.permutation(len(ds.y_train))[: sum(sizes)], rng.permutation(len(ds.y_test))
    owner = np.repeat(np.arange(len(sizes)), sizes).astype(np.int32)
    tests = te[: test_per_client * len(sizes)]
    ids = tuple(f"writer{k}" for k in range(len(sizes)))
    return ds._replace(name="digits_fed", x_train=ds.x_train[tr], y_train=ds.y_train[tr], x_test=ds.x_test[tests],
                       y_test=ds.y_test[tests], train_clients=owner,
                       test_clients=np.repeat(np.arange(len(sizes)), test_per_client).astype(np.int32),
                       client_ids=ids, test_client_ids=ids)


def test_natural_parts_and_subsets():
    owner = np.array([2, 0, 2, 1, 0, 2])
    assert [p.tolist() for p in natural_parts(owner, 4)] == [[1, 4], [3], [0, 2, 5], []]
    ds = _digits_federation([5, 1, 7, 2])
    sub = keep_clients(ds, np.array([1, 3]))
    assert sub.client_ids == sub.test_client_ids == ("writer1", "writer3")
    assert client_sizes(sub).tolist() == [1, 2] and client_sizes(sub, "test").tolist() == [3, 3]
    np.testing.assert_array_equal(sub.x_train, ds.x_train[np.isin(ds.train_clients, [1, 3])])
    a, b = choose_clients(715, 10, 1234), choose_clients(715, 10, 1234)
    assert a.tolist() == b.tolist() == sorted(set(a.tolist())) and len(a) == 10
    assert choose_clients(715, 0, 1).tolist() == list(range(715))
    with pytest.raises(ConfigError, match="more than the 715 clients"):
        choose_clients(715, 716, 1)


def test_partition_auto_and_old_workdirs_resume():
    c = default_config()
    assert (c.partition, c.num_clients) == ("auto", 0)
    assert resolved(dict(c))["partition"] == "iid" and resolved(dict(c))["num_clients"] == 100
    nat = dict(c, dataset="shakespeare")
    assert resolved(nat)["partition"] == "natural" and resolved(nat)["num_clients"] == 0
    old = dict(c, partition="iid", num_clients=100)  # a config.json written before these defaults
    assert result_changes(old, c) == {}
    assert set(result_changes(dict(old, num_clients=50), c)) == {"num_clients"}


def test_a_centralised_dataset_refuses_partition_natural_and_sequences_refuse_label_splits():
    with pytest.raises(ConfigError, match="partition=natural needs a dataset whose examples belong to clients"):
        fb.build(_config(partition="natural", dataset="mnist5k", num_clients=4))
    seq = shakespeare_dataset(*_small_shakespeare_arrays())
    with pytest.raises(ConfigError, match="targets are sequences: use partition=natural"):
        fb.build_from_data(_config(partition="iid", num_clients=2, clients_per_round=1, model="char_lstm"), seq)


def test_roster_cap_fixed_steps_and_uniform_weights():
    r = make_roster([3, 10, 50], local_epochs=2, batch_size=4, phi=0.5, aggregation_weights="samples",
                    max_examples=8)
    assert r.used.tolist() == [3, 8, 8] and r.num_steps.tolist() == [2, 4, 4] and r.weight.tolist() == [3, 8, 8]
    r = make_roster([3, 10, 50], local_epochs=2, batch_size=4, phi=0.5, aggregation_weights="uniform",
                    local_steps=5)
    assert r.num_steps.tolist() == [5, 5, 5] and r.weight.tolist() == [1, 1, 1] and r.n_warm.tolist() == [2, 2, 2]
    assert r.epochs == 5  # the 3-example client needs five passes (one batch each)


def test_capped_orders_train_one_subset_per_round():
    row = jnp.arange(40, dtype=jnp.int32)
    orders = np.asarray(epoch_orders(jax.random.PRNGKey(3), row, jnp.int32(30), epochs=3, cap=8))
    subsets = [set(o[:8].tolist()) for o in orders]
    assert subsets[0] == subsets[1] == subsets[2] and subsets[0] <= set(range(30))  # the round's 8, reshuffled
    assert [o[:8].tolist() for o in orders] != [orders[0][:8].tolist()] * 3
    other = np.asarray(epoch_orders(jax.random.PRNGKey(4), row, jnp.int32(30), epochs=1, cap=8))
    assert set(other[0, :8].tolist()) != subsets[0]  # another round, another subset
    # fixed local steps cycle through the epochs' orders: step 5 of a 2-batch client is epoch 2's second batch
    idx, valid = batch_at(jnp.asarray(orders), jnp.int32(8), jnp.int32(5), 4)
    assert idx.tolist() == orders[2][4:8].tolist() and bool(valid.all())


# --------------------------------------------------------------------------- datasets on files written here

def _small_shakespeare_arrays():
    train = ClientArrays(["A_ROLE", "B_ROLE", "C_ROLE"],
                         {"snippets": [np.array([b"Now is the winter", b""]), np.array([b"x" * 100]),
                                       np.array([b"Hold."])]})
    test = ClientArrays(["B_ROLE", "A_ROLE", "D_ONLY_TEST"],
                        {"snippets": [np.array([b"Yes"]), np.array([b"No, my lord"]), np.array([b"Hm"])]})
    return train, test


def test_shakespeare_dataset_from_client_arrays():
    ds = shakespeare_dataset(*_small_shakespeare_arrays())
    # the roles of both files (C_ROLE has no test data, D_ONLY_TEST no training data), in training order
    assert ds.is_natural and ds.client_ids == ds.test_client_ids == ("A_ROLE", "B_ROLE")
    assert client_sizes(ds).tolist() == [2, 2]  # two snippets; 100 characters -> 102 ids, two rows
    assert client_sizes(ds, "test").tolist() == [1, 1]
    assert ds.x_train.dtype == ds.y_train.dtype == np.int32 and ds.input_shape == (80,)
    assert (ds.pad_ids, ds.unscored_ids, ds.num_classes) == ((0,), (89,), 90)
    assert text.decode(ds.x_test[ds.test_clients == 0][0]) == "No, my lord"


def _write_tff(path: Path, clients: dict) -> ClientArrays:
    with h5py.File(path, "w") as f:
        examples = f.create_group("examples")
        for cid, fields in clients.items():
            for name, values in fields.items():
                examples.require_group(cid).create_dataset(name, data=values)
    return read_tff_h5(path, list(next(iter(clients.values()))))


def test_tff_emnist_and_cifar100_layouts(tmp_path):
    rng = np.random.default_rng(0)

    def emnist(n):
        return {"pixels": rng.integers(0, 256, (n, 28, 28)).astype(np.float32) / 255, "label": rng.integers(0, 62, n)}

    train = _write_tff(tmp_path / "fed_emnist_train.h5", {"f0001_00": emnist(5), "f0002_11": emnist(3)})
    test = _write_tff(tmp_path / "fed_emnist_test.h5", {"f0002_11": emnist(2), "f0001_00": emnist(1)})
    ds = femnist_dataset(train, test)
    assert ds.client_ids == ("f0001_00", "f0002_11") and client_sizes(ds, "test").tolist() == [1, 2]
    np.testing.assert_array_equal(ds.x_train[:5, ..., 0] / np.float32(255), train.arrays["pixels"][0])

    def cifar(n):
        return {"image": rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), "label": rng.integers(0, 100, n),
                "coarse_label": rng.integers(0, 20, n)}

    train = _write_tff(tmp_path / "fed_cifar100_train.h5", {"0": cifar(4), "1": cifar(6)})
    test = _write_tff(tmp_path / "fed_cifar100_test.h5", {"7": cifar(3)})  # TFF's test clients are other ones
    ds = cifar100_fed_dataset(train, test)
    assert ds.client_ids == ("0", "1") and ds.test_client_ids == ("7",) and ds.augment == "crop_flip"
    np.testing.assert_array_equal(ds.y_train, np.concatenate(train.arrays["label"]))
    assert keep_clients(ds, np.array([1])).test_client_ids == ("7",)  # a test-only client stays
    with pytest.raises(DataError, match="TFF's documented 500 clients / 50,000"):
        load_dataset("cifar100_fed", tmp_path)


def test_loaders_check_tffs_documented_sizes(tmp_path):
    for split in ("train", "test"):
        with h5py.File(tmp_path / f"shakespeare_{split}.h5", "w") as f:
            f.create_group("examples").create_group("ROLE").create_dataset("snippets", data=np.array([b"Hi"]))
    with pytest.raises(DataError, match=r"holds 1 clients / 1 examples, TFF's documented 715 clients / 16,068"):
        load_shakespeare(tmp_path)


@pytest.mark.parametrize("load, expect", [
    (load_shakespeare, "shakespeare.tar.bz2"),
    (load_femnist, "preprocess.sh -s niid --sf 0.05 -k 0 -t sample"),
])
def test_missing_files_are_one_line_naming_where_it_looked(tmp_path, monkeypatch, load, expect):
    monkeypatch.delenv("FEDBAT_DATA_DIR", raising=False)
    with pytest.raises(DataNotFoundError) as e:
        load(tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path) in msg and expect in msg and "$FEDBAT_DATA_DIR (not set)" in msg


# --------------------------------------------------------------------------- the real files

@pytest.fixture(scope="module")
def shakespeare():
    if not (SHAKESPEARE / "shakespeare_train.h5").is_file():
        pytest.skip(f"no Shakespeare files at {SHAKESPEARE}")
    return load_dataset("shakespeare", SHARED_DATA)


def test_real_shakespeare(shakespeare):
    ds = shakespeare
    assert len(ds.client_ids) == len(ds.test_client_ids) == 715
    raw = read_tff_h5(SHAKESPEARE / "shakespeare_train.h5", "snippets")
    rows = sum(-(-(len(s) + 2) // 81) for snippets in raw.arrays["snippets"] for s in decode_snippets(snippets))
    assert len(ds.y_train) == rows == 37_784 and len(ds.y_test) == 5_490
    np.testing.assert_array_equal(ds.x_train[:, 1:], ds.y_train[:, :-1])  # targets: the inputs shifted by one
    first = decode_snippets(raw.arrays["snippets"][0])[0]
    assert text.decode(ds.x_train[ds.train_clients == 0][0]).startswith(first[:40])
    sizes = client_sizes(ds)
    assert sizes.min() == 1 and sizes.max() == 1003  # ragged: three orders of magnitude


def test_real_femnist_pixels_are_leafs_exactly():
    if not (FEMNIST / "train").is_dir():
        pytest.skip(f"no FEMNIST sample at {FEMNIST}")
    ds = load_femnist(SHARED_DATA)
    assert len(ds.client_ids) == 110 and len(ds.y_train) == 14_697 and len(ds.y_test) == 1_695
    assert "88 test-only writers dropped" in ds.note and ds.mean == (0.0,) and ds.std == (1.0,)
    shard = sorted((FEMNIST / "train").glob("*.json"))[0]
    leaf = read_leaf_json([shard])
    k = ds.client_ids.index(leaf.ids[0])
    np.testing.assert_array_equal(ds.x_train[ds.train_clients == k].reshape(-1, 784) / np.float32(255.0),
                                  leaf.arrays["x"][0])
    again = femnist_dataset(leaf, leaf)
    assert again.client_ids == (leaf.ids[0],) + tuple(leaf.ids[1:])


# --------------------------------------------------------------------------- ragged clients through the engine

def _config(**fields):
    c = default_config()
    c.update(**{**dict(algorithm="fedbat", model="logreg", clients_per_round=4, rounds=2, local_epochs=1,
                       batch_size=16, client_threads=1), **fields})
    return c


@pytest.fixture(scope="module")
def ragged():
    return _digits_federation([1, 150, 7, 40, 2, 90, 13, 3])


def test_ragged_round_host_equals_fused_and_reports_clients(ragged):
    c = _config(max_client_examples=64)
    host = fb.build_from_data(c, ragged)
    assert host.federation.roster.used.tolist() == [1, 64, 7, 40, 2, 64, 13, 3]
    fused = fb.build_from_data(_config(max_client_examples=64, backend="fused", lanes=2), ragged)
    a, ma = host.run_round(host.server, 1)
    b, mb = fused.run_round(fused.server, 1)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=2e-5, atol=2e-6)
    assert float(ma["train_loss"]) == pytest.approx(float(mb["train_loss"]), rel=1e-5)
    metrics = host.evaluate(a)
    assert metrics["test_clients"] == 8 and 0.0 <= metrics["client_accuracy_p10"] <= metrics["test_accuracy"] + 1e-9


def test_a_seeded_subset_with_fixed_steps_and_uniform_weights(ragged):
    exp = fb.build_from_data(_config(num_clients=5, aggregation_weights="uniform", local_steps=3), ragged)
    assert len(exp.parts) == 5 and exp.federation.roster.num_steps.tolist() == [3] * 5
    assert len(exp.dataset.test_client_ids) == 5  # the seeded subset keeps its clients' test data only
    server, _ = exp.run_round(exp.server, 1)
    m = exp.evaluate(server)
    assert m["test_clients"] == 5 and set(m) >= {"client_accuracy_mean", "client_accuracy_below"}


@pytest.mark.slow
def test_make_train_runs_a_ragged_natural_federation_as_the_run_loop_does(ragged):
    c = _config(rounds=2, max_client_examples=64)
    train = fb.make_train(c, dataset=ragged)
    server, metrics = jax.jit(train)(jax.random.PRNGKey(c.seed))
    exp = fb.build_from_data(c, ragged)
    loop = exp.server
    for r in (1, 2):
        loop, _ = exp.run_round(loop, r)
    for x, y in zip(jax.tree.leaves(server.params), jax.tree.leaves(loop.params)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-5)
    assert float(metrics["test_accuracy"][-1]) == pytest.approx(exp.evaluate(loop)["test_accuracy"], abs=1e-6)


@pytest.mark.slow
def test_shakespeare_rounds_with_a_small_lstm(shakespeare, tmp_path):
    c = _config(dataset="shakespeare", model="char_lstm", model_width=16, model_depth=1, num_clients=12,
                clients_per_round=3, batch_size=4, lr=1.0, eval_every=1)
    c.data_dir = str(SHARED_DATA)
    records = fb.run(c, tmp_path / "run")
    assert [r["round"] for r in records] == [1, 2] and records[-1]["test_clients"] <= 12
    assert records[-1]["train_loss"] < np.log(90)
    # experiments/evaluate.py reads the final checkpoint back: the run's own numbers, and Reddi et al.'s metric
    evaluate_workdir = runpy.run_path(str(ROOT / "experiments" / "evaluate.py"))["evaluate_workdir"]
    again = evaluate_workdir(tmp_path / "run", str(SHARED_DATA), shakespeare)
    assert again["round"] == 2 and again["test_accuracy"] == records[-1]["test_accuracy"]
    assert again["client_accuracy_p10"] == records[-1]["client_accuracy_p10"]
    assert 0.0 < again["test_accuracy_all_targets"] < 1.0
    host = fb.build_from_data(c, shakespeare)
    fused = fb.build_from_data(_with(c, backend="fused", lanes=2), shakespeare)
    a, _ = host.run_round(host.server, 1)
    b, _ = fused.run_round(fused.server, 1)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)


def _with(c, **fields):
    c = c.copy_and_resolve_references()
    c.update(**fields)
    return c


def test_dropout_model_trains_deterministically():
    ds = _digits_federation([30, 20, 25, 10])
    c = _config(model="emnist_cnn", model_width=4, algorithm="fedavg", clients_per_round=2)
    a = fb.build_from_data(c, ds)
    s1, m1 = a.run_round(a.server, 1)
    s2, m2 = a.run_round(a.server, 1)
    assert float(m1["train_loss"]) == float(m2["train_loss"]) and np.isfinite(float(m1["train_loss"]))
    assert all(bool(jnp.array_equal(x, y)) for x, y in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params)))


def test_unknown_paths_stay_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist or is not a folder"):
        load_shakespeare(Path(tmp_path) / "nowhere")


def test_load_run_of_a_folder_without_a_run_is_one_line(tmp_path):
    with pytest.raises(fb.WorkdirError, match="holds no readable config.json and checkpoint.npz"):
        fb.load_run(tmp_path)


def test_a_client_without_training_examples_is_left_out_with_its_test_data():
    def writer(n):
        return {"x": np.full((n, 784), 0.5, np.float32), "y": np.arange(n) % 62}

    train = ClientArrays(["w0", "w1", "w2"], {k: [writer(n)[k] for n in (3, 0, 2)] for k in ("x", "y")})
    test = ClientArrays(["w0", "w1", "w2"], {k: [writer(n)[k] for n in (1, 4, 2)] for k in ("x", "y")})
    ds = femnist_dataset(train, test)
    assert ds.client_ids == ds.test_client_ids == ("w0", "w2")
    assert client_sizes(ds).tolist() == [3, 2] and client_sizes(ds, "test").tolist() == [1, 2]
