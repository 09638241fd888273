"""The host-memory check: a run whose N-client table and dataset cannot fit is refused in one line, before any
data loads where the dataset says its size, and the estimate is the table the run would allocate."""
from __future__ import annotations

import pytest

import fedbat_jax as fb
from conftest import tiny
from fedbat_jax.data import load_dataset
from fedbat_jax.federation import build_federation, memory_need
from fedbat_jax.payloads import tree_bytes


@pytest.mark.parametrize("algorithm, extra, owner", [
    ("scaffold", {}, "algorithm=scaffold"),
    ("fedbat", dict(error_feedback="ef21"), "error_feedback=ef21/compressor"),
])
def test_a_table_that_cannot_fit_is_refused_before_the_data_loads(tmp_path, algorithm, extra, owner):
    """10,000 clients of CNN4 with a model-sized row: refused in one line naming the sizes and the settings
    behind them, with no workdir left behind (issue 41: a traceback after 22 s of loading before)."""
    c = tiny(algorithm, num_clients=10_000, clients_per_round=10, max_host_memory=1.0, **extra)
    c.dataset, c.data_dir = "fashion_mnist", str(tmp_path / "no_data_here")  # never read: refused before
    with pytest.raises(fb.ConfigError, match=rf"needs about 14.6 GiB of host memory \(estimated before loading the "
                                             rf"data\): a per-client table of num_clients=10000 x 1.49 MB \({owner} "
                                             r"1.49 MB; model=cnn4\) = 14.5\d GiB.*only 1.0 GiB are allowed "
                                             r"\(max_host_memory=1\)") as e:
        fb.run(c, tmp_path / "run")
    assert "\n" not in str(e.value) and not (tmp_path / "run").exists()


@pytest.mark.parametrize("algorithm, extra", [("scaffold", {}), ("fedbat", dict(error_feedback="ef")),
                                              ("fedavg", {}), ("feddyn", dict(model="logreg"))])
def test_the_estimate_is_the_table_the_run_allocates(algorithm, extra):
    """Before loading (from the loader's footprint) and after, the estimate is the host table's bytes."""
    c = tiny(algorithm, **extra)
    before = memory_need(c)
    exp = fb.build(c)
    after = memory_need(c, exp.federation)
    assert before.table == after.table == tree_bytes(exp.server.client_table)
    assert after.params == tree_bytes(exp.server.params) and after.clients == c.num_clients
    assert after.dataset <= before.dataset  # the footprint is the complete split, an upper bound


def test_a_federation_known_only_from_its_files_is_checked_before_its_table(monkeypatch):
    """Without a footprint (a natural federation, or any dataset already in memory) the check runs once the
    clients are known, before the table is allocated."""
    c = tiny("scaffold", max_host_memory=1e-6)
    ds = load_dataset("mnist5k")
    assert memory_need(c, build_federation(c, ds)).table > 1e-6 * 2 ** 30
    with pytest.raises(fb.ConfigError, match=r"needs about \d+\.\d GiB of host memory: a per-"
                                             r"client table of num_clients=8 x"):
        fb.build_from_data(c, ds)


def test_a_loaded_dataset_is_not_counted_twice_against_what_the_machine_reports(monkeypatch):
    """After loading, MemAvailable is net of the dataset this process holds: the table alone is set against it.
    max_host_memory is the run's whole budget, so the dataset still counts there."""
    from fedbat_jax import memory

    gib = memory.GIB
    est = memory.Need(clients=1, compressor_row=gib, algorithm_row=0, params=0, dataset=3 * gib)  # table 1 GiB
    monkeypatch.setattr(memory, "_meminfo", lambda: {"MemAvailable": 2 * gib})
    c = tiny()
    memory.check(c, est, loaded=True)  # 1 GiB of table into 2 GiB left: fits
    with pytest.raises(fb.ConfigError, match=r"needs about 4.0 GiB .* only 2.0 GiB are available on this machine"):
        memory.check(c, est)  # before loading, the dataset's 3 GiB are still to come
    c.max_host_memory = 2.0
    with pytest.raises(fb.ConfigError, match=r"dataset's 3.00 GiB \(loaded\); only 2.0 GiB are allowed"):
        memory.check(c, est, loaded=True)
