"""Federated algorithms as (which leaves train binarized, which leaves are compressed, compressor).

* ``fedavg``: full-precision training, float32 upload.
* ``fedbat``: the kernels learn a ``bits``-bit update during training (1 bit: the paper); the upload
  is a fresh draw of the operator with the learned alpha, packed (REFERENCE.md 1.5-1.6).
* post-training baselines (REFERENCE.md 4), full-precision training, then the kernels' update
  compressed: ``signsgd`` (scaled sign), ``ef_signsgd`` (``signsgd`` with ``error_feedback=ef``), ``stoch_binary``
  (the operator with alpha = max|m|), ``qsgd`` (``bits``-bit stochastic quantization, unbiased).
  Norm scales/biases and BatchNorm statistics travel in float32 for every algorithm, as for FedBAT.

Every compressed algorithm takes ``error_feedback`` (``compressors.with_error_feedback``) on top.
A new algorithm is one entry here (and, if it needs one, a compressor in ``compressors.py``).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

from fedbat_jax.compressors import Compressor, full_precision, scaled_sign, stochastic_levels, with_error_feedback
from fedbat_jax.errors import ConfigError
from fedbat_jax.local import default_binarize_predicate


class Algorithm(NamedTuple):
    train_predicate: Callable | None  # leaves binarized *during* local training (None: none)
    upload_predicate: Callable | None  # leaves the compressor sends in compressed form
    make_compressor: Callable[..., Compressor]  # (mask, template, bits) -> Compressor


KERNELS = default_binarize_predicate
ALGORITHMS: dict[str, Algorithm] = {
    "fedavg": Algorithm(None, None, lambda mask, template, bits: full_precision()),
    "fedbat": Algorithm(KERNELS, KERNELS, lambda mask, template, bits: stochastic_levels(mask, template, bits, True)),
    "signsgd": Algorithm(None, KERNELS, lambda mask, template, bits: scaled_sign(mask, template)),
    "ef_signsgd": Algorithm(None, KERNELS,
                            lambda mask, template, bits: with_error_feedback(scaled_sign(mask, template), "ef", mask)),
    "stoch_binary": Algorithm(None, KERNELS, lambda mask, template, bits: stochastic_levels(mask, template, 1, False)),
    "qsgd": Algorithm(None, KERNELS, lambda mask, template, bits: stochastic_levels(mask, template, bits, False)),
}


def get_algorithm(name: str) -> Algorithm:
    if name not in ALGORITHMS:
        raise ConfigError(f"unknown algorithm {name!r}; choose one of: {', '.join(sorted(ALGORITHMS))}")
    return ALGORITHMS[name]
