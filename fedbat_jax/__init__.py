"""fedbat-jax: FedBAT (learnable binarization for federated learning) in JAX/Flax, as pure functions.

    import fedbat_jax as fb
    cfg = fb.default_config()                 # every setting; fb.run / fb.build / fb.make_train take it
    records = fb.run(cfg)                     # the run loop: one dict per round
    train = fb.make_train(cfg)                # a whole run as one pure, jittable, vmappable function

The names below are the public API (``__all__``); they load lazily, so ``import fedbat_jax`` stays light.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    # the operator
    "binarize": "fedbat_jax.binarization",  # Q(u, alpha): stochastic 1-bit, straight-through gradients
    "quantize": "fedbat_jax.binarization",  # its k-bit form
    # configs and runs
    "default_config": "fedbat_jax.config",
    "validate": "fedbat_jax.config",
    "build": "fedbat_jax.runner",
    "build_from_data": "fedbat_jax.runner",
    "run": "fedbat_jax.runner",
    "load_run": "fedbat_jax.runner",  # a workdir's run as it stands: (experiment, newest checkpoint's state, round)
    "client_updates": "fedbat_jax.runner",  # a round's first clients trained, their updates before compression
    "make_train": "fedbat_jax.whole_run",
    "sweep": "fedbat_jax.sweeps",  # make_train over seeds x a grid, sharded over every device
    "sweep_records": "fedbat_jax.sweeps",  # one config's seeds as one program, records shaped like run's
    # registries: every choice a setting names (fedbat_jax.registry)
    "ALGORITHMS": "fedbat_jax.algorithms",
    "COMPRESSORS": "fedbat_jax.compressors",
    "BACKENDS": "fedbat_jax.backends",
    "MODELS": "fedbat_jax.models",
    "DATASETS": "fedbat_jax.data",
    "Registry": "fedbat_jax.registry",
    "Setting": "fedbat_jax.registry",
    # pieces to compose
    "Algorithm": "fedbat_jax.algorithms",
    "Learner": "fedbat_jax.federated",
    "Compressor": "fedbat_jax.compressors",
    "CompressorSpec": "fedbat_jax.compressors",
    "full_precision": "fedbat_jax.compressors",
    "stochastic_levels": "fedbat_jax.compressors",
    "scaled_sign": "fedbat_jax.compressors",
    "with_error_feedback": "fedbat_jax.compressors",
    "load_dataset": "fedbat_jax.data",  # a dataset by name, as the config's dataset/data_dir
    "partition": "fedbat_jax.data",
    "default_binarize_predicate": "fedbat_jax.binarization",
    # errors
    "FedBatError": "fedbat_jax.errors",
    "ConfigError": "fedbat_jax.errors",
    "DataError": "fedbat_jax.errors",
    "WorkdirError": "fedbat_jax.errors",
    "DivergenceError": "fedbat_jax.errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fedbat_jax' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
