"""Tests for fedbat_jax.data.partitions, on the real mnist5k digits (and Fashion-MNIST labels when present)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from fedbat_jax.data import PARTITIONS, label_histograms, load_dataset, partition, size_summary
from fedbat_jax.data.partitions import canonical_order, format_histograms
from fedbat_jax.errors import ConfigError

from fedbat_jax.data import partitions as part_mod
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def digits():
    d = load_dataset("mnist5k")
    return d.x_train, d.y_train


def _check_disjoint_cover(parts, n):
    allidx = np.concatenate(parts)
    assert len(allidx) == n and len(np.unique(allidx)) == n
    for p in parts:
        assert p.dtype.kind == "i" and np.all(np.diff(p) > 0)


def _multisets(x, y, parts, back=None):
    out = []
    for p in parts:
        idx = p if back is None else back[p]
        out.append(Counter(x[i].tobytes() + bytes([y[i]]) for i in idx))
    return out


@pytest.mark.parametrize("method", PARTITIONS)
def test_disjoint_and_complete(digits, method):
    x, y = digits
    parts = partition(x, y, 20, method)
    assert len(parts) == 20
    _check_disjoint_cover(parts, len(y))


def test_iid_near_equal(digits):
    x, y = digits
    sizes = [len(p) for p in partition(x, y, 30, "iid")]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == 4000


def _skew(hist):
    """Mean total-variation distance between each client's label distribution and the global one."""
    glob = hist.sum(0) / hist.sum()
    return float(np.mean(0.5 * np.abs(hist / hist.sum(1, keepdims=True) - glob).sum(1)))


def test_dirichlet_min_size_and_skew(digits):
    x, y = digits
    parts = partition(x, y, 20, "dirichlet", dirichlet_beta=0.3)
    assert min(len(p) for p in parts) >= 10
    dir_skew = _skew(label_histograms(parts, y, 10))
    iid_skew = _skew(label_histograms(partition(x, y, 20, "iid"), y, 10))
    assert dir_skew > 0.4 and iid_skew < 0.15, (dir_skew, iid_skew)


@pytest.mark.skipif(not (SHARED_DATA / "fashion_mnist").is_dir(), reason="shared/data/fashion_mnist absent")
def test_dirichlet_paper_setting_on_fashion_mnist_labels():
    """100 clients, beta 0.3 on the 60,000 Fashion-MNIST training labels (the paper's Non-IID-1)."""
    d = load_dataset("fashion_mnist", SHARED_DATA)
    parts = partition(d.x_train, d.y_train, 100, "dirichlet")
    _check_disjoint_cover(parts, 60000)
    assert min(len(p) for p in parts) >= 10
    assert _skew(label_histograms(parts, d.y_train, 10)) > 0.4


@pytest.mark.parametrize("clients,c", [(20, 3), (7, 2), (10, 1), (3, 10)])
def test_label_count_classes_and_balance(digits, clients, c):
    x, y = digits
    parts = partition(x, y, clients, "label_count", labels_per_client=c)
    _check_disjoint_cover(parts, len(y))
    hist = label_histograms(parts, y, 10)
    assert np.all((hist > 0).sum(1) == c)
    usage = (hist > 0).sum(0)
    assert usage.max() - usage.min() <= 1
    for j in range(10):  # each class split evenly among its holders
        held = hist[:, j][hist[:, j] > 0]
        assert held.max() - held.min() <= 1


def test_label_count_greedy_assignment():
    """Tiny constructed labels: each client takes the least-used classes, ties by class index."""
    y = np.repeat(np.arange(10), 4).astype(np.int32)
    x = np.arange(40, dtype=np.uint8).reshape(40, 1)
    parts = partition(x, y, 4, "label_count", labels_per_client=3, min_size=1)
    assert [sorted(set(y[p].tolist())) for p in parts] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [0, 1, 9]]


@pytest.mark.parametrize("method", PARTITIONS)
def test_seed_determinism(digits, method):
    x, y = digits
    a = partition(x, y, 20, method, seed=1234)
    b = partition(x, y, 20, method, seed=1234)
    c = partition(x, y, 20, method, seed=99)
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    assert not all(np.array_equal(u, v) for u, v in zip(a, c))


@pytest.mark.parametrize("method", PARTITIONS)
def test_order_independence(digits, method):
    x, y = digits
    perm = np.random.default_rng(7).permutation(len(y))
    ref = partition(x, y, 20, method)
    got = partition(x[perm], y[perm], 20, method)
    assert _multisets(x, y, ref) == _multisets(x, y, got, back=perm)


def test_order_independence_with_duplicates_and_hash_ties(monkeypatch):
    """Constructed tiny images with exact duplicates; also with every hash colliding (byte tie-break)."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=(30, 3, 3, 1), dtype=np.uint8)
    x = np.concatenate([base, base[:10]])
    y = np.concatenate([np.arange(30) % 3, np.arange(10) % 3]).astype(np.int32)
    perm = rng.permutation(len(y))
    for collide in (False, True):
        if collide:
            monkeypatch.setattr(part_mod, "content_hash", lambda a: np.zeros(len(a), np.uint64))
        for method in PARTITIONS:
            kw = dict(min_size=1, labels_per_client=1, dirichlet_beta=1.0)
            ref = partition(x, y, 4, method, **kw)
            got = partition(x[perm], y[perm], 4, method, **kw)
            assert _multisets(x, y, ref) == _multisets(x, y, got, back=perm), (collide, method)


def test_canonical_order_is_content_sort(digits):
    x, y = digits
    order = canonical_order(x, y)
    assert np.all(np.diff(y[order]) >= 0)
    assert sorted(order.tolist()) == list(range(len(y)))


def _cfg_error(**kw):
    args = dict(x=np.zeros((100, 2), np.uint8), y=np.arange(100) % 10, num_clients=5, method="iid")
    args.update(kw)
    with pytest.raises(ConfigError) as e:
        partition(args.pop("x"), args.pop("y"), args.pop("num_clients"), args.pop("method"), **args)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_validation_errors(monkeypatch):
    assert "iid, dirichlet, label_count" in _cfg_error(method="shards")
    assert ">= 1" in _cfg_error(num_clients=0)
    assert "use at most 100 clients" in _cfg_error(num_clients=101, min_size=0)
    assert "dirichlet_beta" in _cfg_error(method="dirichlet", dirichlet_beta=0.0)
    assert "dirichlet_beta" in _cfg_error(method="dirichlet", dirichlet_beta=-1.0)
    assert "[1, 10]" in _cfg_error(method="label_count", labels_per_client=0)
    assert "[1, 10]" in _cfg_error(method="label_count", labels_per_client=11)
    assert "cannot cover" in _cfg_error(method="label_count", num_clients=3, labels_per_client=3, min_size=1)
    # One consistent limit: the number it names is itself accepted.
    assert "use at most 10 clients, or a lower min_client_size" in _cfg_error(num_clients=11)
    assert len(part_mod.partition(np.zeros((100, 2), np.uint8), np.arange(100) % 10, 10, "iid", min_size=10)) == 10
    assert "1 images but 100 labels" in _cfg_error(x=np.zeros((1, 2), np.uint8))
    monkeypatch.setattr(part_mod, "MAX_DIRICHLET_DRAWS", 20)
    x = np.arange(100, dtype=np.uint8).reshape(100, 1)
    msg = _cfg_error(x=x, y=np.arange(100) % 2, method="dirichlet", dirichlet_beta=0.01, min_size=20)
    assert "20 draws" in msg and "raise dirichlet_beta" in msg


def test_summaries(digits):
    x, y = digits
    parts = partition(x, y, 8, "iid")
    assert size_summary(parts) == "8 clients, samples per client min 500 / median 500 / max 500 (total 4000)"
    assert size_summary(parts[:1]) == "1 client, samples per client min 500 / median 500 / max 500 (total 500)"
    hist = label_histograms(parts, y, 10)
    assert hist.shape == (8, 10) and hist.sum() == 4000 and np.array_equal(hist.sum(0), np.bincount(y))
    table = format_histograms(hist).splitlines()
    assert len(table) == 9 and table[1].split("|")[-1].strip() == "500"
    with pytest.raises(ConfigError):
        label_histograms(parts, y, 5)
