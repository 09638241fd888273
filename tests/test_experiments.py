"""End to end: a reduced CIFAR-10 round (ResNet-10, on-device crop+flip) and the study script's outputs."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedbat_jax import train
from fedbat_jax.config import paper_config

ROOT = Path(__file__).resolve().parents[1]


def test_reduced_cifar10_round_is_reproducible(shared_data):
    if not (shared_data / "cifar10" / "cifar10_test.npz").is_file():
        pytest.skip("no CIFAR-10 npz in shared/data")
    c = paper_config("cifar10", "dirichlet,reduced")
    c.update(data_dir=str(shared_data), num_clients=40, clients_per_round=2, local_epochs=1, model_width=8)
    exp = train.build(c)
    assert exp.round.fed.local.augment == "crop_flip" and "partial train set" in exp.dataset.note
    a, ma = exp.round.run(exp.server, 1)
    b, mb = exp.round.run(exp.server, 1)  # same (seed, round): same cohort, shuffles, crops, flips and draws
    assert all(bool(jnp.array_equal(x, y)) for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)))
    assert float(ma["train_loss"]) == float(mb["train_loss"]) and np.isfinite(float(ma["train_loss"]))
    moved = [not bool(jnp.array_equal(x, y)) for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(exp.server.params))]
    assert all(moved)
    loss, acc = exp.evaluate(a)
    assert np.isfinite(loss) and 0.0 <= acc <= 1.0


def test_study_writes_table_csv_and_plots(tmp_path):
    out = tmp_path / "res"
    cmd = [sys.executable, "experiments/study.py", "--config", "experiments/configs/mnist5k.py", "--partitions",
           "iid", "--algorithms", "fedavg,fedbat", "--rounds", "1", "--target", "0.5", "--workdir", str(tmp_path / "w"),
           "--out", str(out), "--set", "num_clients=4", "clients_per_round=2", "local_epochs=1"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = list(csv.DictReader((tmp_path / "res.csv").open()))
    assert [(r["dataset"], r["partition"], r["algorithm"]) for r in rows] == [("mnist5k", "iid", "fedavg"),
                                                                              ("mnist5k", "iid", "fedbat")]
    assert {"final_acc", "best_acc", "rounds_to_0.5", "uplink_MB", "train_s"} <= set(rows[0])
    fedavg, fedbat = (float(r["uplink_MB"]) for r in rows)
    assert fedavg > 20 * fedbat  # 1 bit per binarized value against 32
    assert (tmp_path / "res_mnist5k_iid.png").stat().st_size > 0
    md = (tmp_path / "res.md").read_text()
    assert "Command: `python experiments/study.py" in md and "FedBAT against FedAvg" in md
    assert "| mnist5k | iid | 0 | " in md.split("FedBAT against FedAvg")[1]


def test_study_bad_field_is_one_line(tmp_path):
    done = subprocess.run([sys.executable, "experiments/study.py", "--config", "experiments/configs/mnist5k.py",
                           "--workdir", str(tmp_path), "--out", str(tmp_path / "r"), "--set", "nope=1"],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "nope" in done.stderr


def test_gpu_check_runs_at_tiny_sizes(tmp_path, xla_cache_env):
    """The prepared GPU script, on the CPU at tiny sizes, so that it cannot rot before a GPU is at hand."""
    out = tmp_path / "bench_gpu.json"
    done = subprocess.run(["bash", "experiments/gpu_check.sh", str(out), "--tiny"], cwd=ROOT, capture_output=True,
                          text=True, env=dict(os.environ, **xla_cache_env))
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-2000:])
    report = json.loads(out.read_text())
    assert {"device", "jax_version", "paper_fmnist_round_s", "scale", "resnet10_round"} <= set(report)
    assert set(report["paper_fmnist_round_s"]) == {"fedbat", "fedavg"}
    assert all(v > 0 for v in report["paper_fmnist_round_s"].values())
    assert [r["clients"] for r in report["scale"]] == [2]
    for r in report["scale"]:
        assert r["execution"] == "fused" and r["samples_per_s"] > 0 and r["peak_memory_bytes"] > 0
        assert r["compile_s"] >= 0
    assert report["resnet10_round"]["samples_per_s"] > 0 and report["resnet10_round"]["width"] == 4
