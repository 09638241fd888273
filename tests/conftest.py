"""Shared fixtures: where the real development data lives (../shared/data beside the repo)."""
from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "fashion_mnist").is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (the repo's ../shared/data)")
    return SHARED_DATA


def pytest_configure(config):
    """Tests build many identical rounds: keep compiled XLA programs in a persistent cache."""
    import os
    import tempfile

    import jax

    cache = os.environ.get("FEDBAT_TEST_XLA_CACHE", os.path.join(tempfile.gettempdir(), "fedbat_jax_test_xla_cache"))
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
