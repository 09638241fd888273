"""Shared fixtures: where the real development data lives (../shared/data beside the repo), the tiny run
every engine test starts from (``from conftest import tiny``), the XLA cache and subprocess environment."""
from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def tiny(algorithm: str = "fedbat", **overrides):
    """A run of seconds on the bundled mnist5k digits: 8 Dirichlet clients, 3 a round, 2 rounds of one
    local epoch, a checkpoint every round (with a workdir); ``overrides`` set any other field."""
    from fedbat_jax.config import default_config

    c = default_config()
    c.update(algorithm=algorithm, dataset="mnist5k", num_clients=8, clients_per_round=3, rounds=2, local_epochs=1,
             batch_size=32, partition="dirichlet", dirichlet_beta=0.5, client_threads=1, checkpoint_every=1)
    c.update(**overrides)
    return c


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "fashion_mnist").is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (the repo's ../shared/data)")
    return SHARED_DATA


# XLA:CPU compiles about 3x faster without its backend optimisations; a subprocess test that checks
# behaviour (not speed) runs its programs a few times at most, so it trades run time for compile time.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


@pytest.fixture
def xla_cache_env() -> dict:
    return subprocess_env()


def subprocess_env() -> dict:
    """Environment for a subprocess test: the same persistent XLA cache as this process (reruns compile
    less) and fast, unoptimised XLA:CPU compilation (``XLA_FLAGS``; extend it, don't replace it)."""
    import os

    return {"JAX_COMPILATION_CACHE_DIR": os.environ.get("FEDBAT_TEST_XLA_CACHE", _default_cache()),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5", "XLA_FLAGS": FAST_COMPILE}


def _default_cache() -> str:
    import os
    import tempfile

    return os.path.join(tempfile.gettempdir(), "fedbat_jax_test_xla_cache")


def pytest_configure(config):
    """Tests build many identical rounds: keep compiled XLA programs in a persistent cache."""
    import os

    import jax

    cache = os.environ.get("FEDBAT_TEST_XLA_CACHE", _default_cache())
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
