"""The clients of a natural federation: the dataset says whose each example is (``Dataset.train_clients``).

``natural_parts`` turns that into the per-client index lists every partition returns; ``keep_clients`` narrows a
federation to some of its clients (train and test data alike), for quick runs on a seeded subset; ``client_sizes``
is the size distribution a user looks at first.
"""
from __future__ import annotations

import numpy as np

from fedbat_jax.data.datasets import Dataset
from fedbat_jax.errors import ConfigError


def natural_parts(train_clients: np.ndarray, num_clients: int) -> list[np.ndarray]:
    """Each client's sorted int64 indices into the training set (client ``k`` holds the examples marked ``k``)."""
    owner = np.asarray(train_clients, np.int64)
    order = np.argsort(owner, kind="stable")
    bounds = np.searchsorted(owner[order], np.arange(num_clients + 1))
    return [np.sort(order[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def choose_clients(total: int, wanted: int, seed: int) -> np.ndarray:
    """Which of a natural federation's ``total`` clients a run keeps: all for ``wanted`` 0 (or ``total``), else a
    sorted seeded sample of ``wanted`` (``partition_seed``)."""
    if wanted in (0, total):
        return np.arange(total)
    if wanted > total:
        raise ConfigError(f"num_clients={wanted} is more than the {total} clients of this natural federation; "
                          f"use num_clients=0 (all of them) or at most {total}")
    return np.sort(np.random.default_rng(seed).choice(total, wanted, replace=False))


def keep_clients(ds: Dataset, clients: np.ndarray) -> Dataset:
    """``ds`` with only the training clients ``clients`` (indices into ``ds.client_ids``), renumbered 0..len-1 in
    that order, with their examples; a test client that is one of the dropped training clients goes too (test
    clients that are not training clients, as in TFF's CIFAR-100, all stay)."""
    if len(clients) == len(ds.client_ids):
        return ds
    new = np.full(len(ds.client_ids), -1, np.int64)
    new[clients] = np.arange(len(clients))
    dropped = set(ds.client_ids) - {ds.client_ids[i] for i in clients}
    test_kept = [i for i, cid in enumerate(ds.test_client_ids) if cid not in dropped]
    new_test = np.full(len(ds.test_client_ids), -1, np.int64)
    new_test[test_kept] = np.arange(len(test_kept))
    tr, te = new[ds.train_clients] >= 0, new_test[ds.test_clients] >= 0
    return ds._replace(x_train=ds.x_train[tr], y_train=ds.y_train[tr], x_test=ds.x_test[te], y_test=ds.y_test[te],
                       train_clients=new[ds.train_clients[tr]].astype(np.int32),
                       test_clients=new_test[ds.test_clients[te]].astype(np.int32),
                       client_ids=tuple(ds.client_ids[i] for i in clients),
                       test_client_ids=tuple(ds.test_client_ids[i] for i in test_kept))


def client_sizes(ds: Dataset, split: str = "train") -> np.ndarray:
    """Examples per client, int64 [clients], of the ``train`` or ``test`` split."""
    if split == "train":
        return np.bincount(ds.train_clients, minlength=len(ds.client_ids))
    return np.bincount(ds.test_clients, minlength=len(ds.test_client_ids))
