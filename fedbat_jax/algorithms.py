"""Federated algorithms as (which leaves train binarized, which compressor uploads the update).

* ``fedavg``: full-precision training, float32 upload.
* ``fedbat``: binarized leaves learn a 1-bit update during training; the upload is a fresh draw of
  ``Q(u, alpha)`` with the learned alpha, as packed signs (REFERENCE.md 1.5-1.6).

Post-training compressors (sign, error feedback, stochastic binarization, k-bit) are new entries
with ``train_predicate=None`` and their own compressor.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

from fedbat_jax.compressors import Compressor, full_precision, learned_signs
from fedbat_jax.errors import ConfigError
from fedbat_jax.local import default_binarize_predicate


class Algorithm(NamedTuple):
    train_predicate: Callable | None  # leaves binarized *during* local training (None: none)
    upload_predicate: Callable | None  # leaves the compressor sends in compressed form
    make_compressor: Callable[..., Compressor]  # (mask, template) -> Compressor


ALGORITHMS: dict[str, Algorithm] = {
    "fedavg": Algorithm(None, None, lambda mask, template: full_precision()),
    "fedbat": Algorithm(default_binarize_predicate, default_binarize_predicate, learned_signs),
}


def get_algorithm(name: str) -> Algorithm:
    if name not in ALGORITHMS:
        raise ConfigError(f"unknown algorithm {name!r}; choose one of: {', '.join(sorted(ALGORITHMS))}")
    return ALGORITHMS[name]
