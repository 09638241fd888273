"""The public API at the package's top: the list is held here, and every name resolves and is documented."""
from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp

import fedbat_jax as fb

PUBLIC = {"binarize", "quantize", "default_config", "validate", "build", "build_from_data", "run", "load_run",
          "client_updates", "make_train",
          "ALGORITHMS", "COMPRESSORS", "BACKENDS", "MODELS", "DATASETS", "Registry", "Setting", "Algorithm", "Learner",
          "CompressorSpec", "Compressor", "full_precision", "stochastic_levels", "scaled_sign",
          "with_error_feedback", "partition", "sweep", "sweep_records", "load_dataset",
          "default_binarize_predicate", "FedBatError", "ConfigError", "DataError", "WorkdirError", "DivergenceError"}


def test_all_is_the_public_api_and_each_name_is_documented():
    assert set(fb.__all__) == PUBLIC
    for name in fb.__all__:
        obj = getattr(fb, name)
        if isinstance(obj, dict):  # a registry: name -> constructor
            assert obj and all(isinstance(k, str) for k in obj)
        else:
            assert (inspect.getdoc(obj) or "").strip(), f"fb.{name} has no docstring"
    assert set(fb.MODELS) >= {"cnn4", "resnet10", "logreg"} and "fedbat" in fb.ALGORITHMS
    assert "mnist5k" in fb.DATASETS


def test_the_operator_is_the_function_not_a_module():
    from fedbat_jax import binarization, runner, whole_run  # noqa: F401  (submodules must not shadow the operator)

    u = jnp.array([0.01, -0.02, 0.0])
    q = fb.binarize(u, jnp.float32(0.05), jax.random.PRNGKey(0))
    assert set(map(float, jnp.abs(q))) == {float(jnp.float32(0.05))}  # every value is +-alpha
    assert callable(fb.quantize) and callable(fb.binarize)
