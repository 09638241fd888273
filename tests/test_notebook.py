"""The tour notebook runs top to bottom (offline, CPU), so it cannot rot."""
from __future__ import annotations

from pathlib import Path

import nbclient
import nbformat
import pytest

from conftest import SHARED_DATA

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "tour.ipynb"


@pytest.mark.slow
def test_tour_notebook_executes(tmp_path, xla_cache_env, monkeypatch):
    for name, value in xla_cache_env.items():  # the kernel inherits the XLA cache and flags
        monkeypatch.setenv(name, value)
    shakespeare = (SHARED_DATA / "shakespeare" / "shakespeare_train.h5").is_file()
    if shakespeare:  # section 6 reads the real files where they are; without them it says so and skips
        monkeypatch.setenv("FEDBAT_DATA_DIR", str(SHARED_DATA))
    else:
        monkeypatch.delenv("FEDBAT_DATA_DIR", raising=False)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code")  # stored without outputs
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "a client's upload:" in printed and "lr 0.2: test accuracy per round" in printed
    assert "12 binarized leaves of 40" in printed and "['Block_1']['MultiHeadDotProductAttention_0']" in printed
    if shakespeare:
        assert "715 roles, 37784 training sequences" in printed and "generated: 'ROMEO: " in printed
    else:
        assert "section 6 skipped: shakespeare files not found" in printed
