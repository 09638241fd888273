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


# XLA:CPU compiles about 2-3x faster without its backend optimisations, and runs its programs slower: a
# subprocess test that compiles many programs and runs each a few times gains (the GPU script's tiny sizes,
# 87 s -> 55 s on a 2-core EPYC), one that trains for a while loses (the notebook, 90 s -> 113 s).
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
# Every compiled program goes to the persistent cache, however fast it compiled: the suite's ~100 subprocesses
# compile the same small programs again (test_workdir.py and test_cli.py: 2 min 53 s -> 2 min 33 s cold).
CACHE_MIN_COMPILE_S = 0.0


@pytest.fixture
def xla_cache_env() -> dict:
    return subprocess_env()


def subprocess_env(fast_compile: bool = True) -> dict:
    """Environment for a subprocess test: the same persistent XLA cache as this process (reruns compile
    less) and, with ``fast_compile``, unoptimised XLA:CPU compilation (``XLA_FLAGS``; extend it, don't
    replace it)."""
    import os

    return {"JAX_COMPILATION_CACHE_DIR": os.environ.get("FEDBAT_TEST_XLA_CACHE", _default_cache()),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": str(CACHE_MIN_COMPILE_S),
            "XLA_FLAGS": FAST_COMPILE if fast_compile else ""}


def _default_cache() -> str:
    import os
    import tempfile

    return os.path.join(tempfile.gettempdir(), "fedbat_jax_test_xla_cache")


def pytest_configure(config):
    """Tests build many identical rounds: keep every compiled XLA program in a persistent cache."""
    import os

    import jax

    cache = os.environ.get("FEDBAT_TEST_XLA_CACHE", _default_cache())
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", CACHE_MIN_COMPILE_S)
