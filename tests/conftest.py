"""Shared fixtures: where the real development data lives (../shared/data beside the repo), the tiny run
every engine test starts from (``from conftest import tiny``), the XLA cache and subprocess environment."""
from __future__ import annotations

import os
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


# XLA:CPU at LLVM optimisation level 1, not its default 2, compiles about 2x faster and runs these programs
# as fast (one machine, a 2-core EPYC: a FedBAT CNN4 round 8.0 -> 5.0 s cold and 1.0 s warm at both levels,
# make_train's whole-run program 15.1 -> 7.7 s to compile, a ResNet-10 round 25.3 -> 11.3 s cold); level 0
# compiles no faster and runs 2.7x slower. The test processes and their subprocesses all use it.
FAST_COMPILE = "--xla_backend_optimization_level=1"
# Every compiled program goes to the persistent cache, however fast it compiled: the suite's ~100 subprocesses
# compile the same small programs again (test_workdir.py and test_cli.py: 2 min 53 s -> 2 min 33 s cold).
CACHE_MIN_COMPILE_S = 0.0
if FAST_COMPILE not in os.environ.get("XLA_FLAGS", ""):  # (before JAX's backend starts)
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()


@pytest.fixture
def xla_cache_env() -> dict:
    return subprocess_env()


def subprocess_env() -> dict:
    """Environment for a subprocess test: the same persistent XLA cache as this process (reruns compile
    less) and the same XLA flags (``XLA_FLAGS``; extend it, don't replace it)."""
    return {"JAX_COMPILATION_CACHE_DIR": os.environ.get("FEDBAT_TEST_XLA_CACHE", _default_cache()),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": str(CACHE_MIN_COMPILE_S),
            "XLA_FLAGS": os.environ["XLA_FLAGS"]}


def _default_cache() -> str:
    import tempfile

    return os.path.join(tempfile.gettempdir(), "fedbat_jax_test_xla_cache")


def pytest_configure(config):
    """Tests build many identical rounds: keep every compiled XLA program in a persistent cache."""
    import jax

    cache = os.environ.get("FEDBAT_TEST_XLA_CACHE", _default_cache())
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", CACHE_MIN_COMPILE_S)
