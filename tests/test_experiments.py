"""End to end: a reduced CIFAR-10 round (ResNet-10, on-device crop+flip) and the study script's outputs."""
from __future__ import annotations

import csv
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedbat_jax.errors import ConfigError

import fedbat_jax as fb
from fedbat_jax.cli import load_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_reduced_cifar10_round_is_reproducible(shared_data):
    if not (shared_data / "cifar10" / "cifar10_test.npz").is_file():
        pytest.skip("no CIFAR-10 npz in shared/data")
    c = load_config(f"{ROOT / 'experiments' / 'configs' / 'paper.py'}:cifar10:dirichlet,reduced")
    c.update(data_dir=str(shared_data), num_clients=40, clients_per_round=2, local_epochs=1, model_width=8)
    exp = fb.build(c)
    assert exp.federation.learner.local.augment == "crop_flip" and "partial train set" in exp.dataset.note
    a, ma = exp.run_round(exp.server, 1)
    b, mb = exp.run_round(exp.server, 1)  # same (seed, round): same cohort, shuffles, crops, flips and draws
    assert all(bool(jnp.array_equal(x, y)) for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)))
    assert float(ma["train_loss"]) == float(mb["train_loss"]) and np.isfinite(float(ma["train_loss"]))
    moved = [not bool(jnp.array_equal(x, y))
             for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(exp.server.params))]
    assert all(moved)
    scores = exp.evaluate(a)
    assert np.isfinite(scores["test_loss"]) and 0.0 <= scores["test_accuracy"] <= 1.0


@pytest.mark.slow
def test_study_writes_table_csv_and_plots(tmp_path, xla_cache_env):
    out = tmp_path / "res"
    cmd = [sys.executable, "experiments/study.py", "--config", "experiments/configs/mnist5k.py", "--partitions",
           "iid", "--algorithms", "fedavg,fedbat", "--rounds", "1", "--target", "0.5", "--workdir", str(tmp_path / "w"),
           "--out", str(out), "--config.num_clients=4", "--config.clients_per_round=2", "--config.local_epochs=1"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, **xla_cache_env))
    assert done.returncode == 0, done.stderr[-2000:]
    rows = list(csv.DictReader((tmp_path / "res.csv").open()))
    assert [(r["dataset"], r["partition"], r["algorithm"]) for r in rows] == [("mnist5k", "iid", "fedavg"),
                                                                              ("mnist5k", "iid", "fedbat")]
    assert {"final_acc", "last5_acc", "best_acc", "rounds_to_0.5", "uplink_MB", "train_s"} <= set(rows[0])
    fedavg, fedbat = (float(r["uplink_MB"]) for r in rows)
    assert fedavg > 20 * fedbat  # 1 bit per binarized value against 32
    assert (tmp_path / "res_mnist5k_iid.png").stat().st_size > 0
    md = (tmp_path / "res.md").read_text()
    assert "Command: `python experiments/study.py" in md and "fedbat against fedavg, seed by seed" in md
    assert "| mnist5k | iid | 1 | " in md.split("fedbat against fedavg")[1]  # one seed: the difference, no interval
    assert "| mnist5k | iid | fedavg | 1 | " in md  # the per-cell table: one seed
    assert "| n | final [95%] | last-5 mean [95%] | best [95%] |" in md


def _script(name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_second_thread_ratios_pair_rows_by_algorithm():
    """``bench.py --threads 1,2``: the second thread's CPU per sample and speed, 2-thread row over 1-thread row."""
    def row(a, t, cpu, sps):
        return {"algorithm": a, "client_threads": t, "cpu_seconds_per_sample": cpu, "samples_per_second": sps}

    rows = [row("fedavg", 1, 2e-3, 500.0), row("fedavg", 2, 2.2e-3, 900.0), row("fedbat", 2, 1e-3, 10.0)]
    assert _script("bench").second_thread(rows) == [  # fedbat has no 1-thread row: no ratio
        {"algorithm": "fedavg", "cpu_per_sample_2_over_1": 1.1, "samples_per_second_2_over_1": 1.8}]


def test_study_methods_name_a_compressor_or_a_variant():
    from fedbat_jax.cli import method_fields

    assert method_fields("eden", 4) == ({"algorithm": "fedavg", "error_feedback": "none",
                                                  "compressor": "eden"}, [])
    assert method_fields("fedbat+ef21@rho=0@ste=identity", 4) == (
        {"algorithm": "fedbat", "error_feedback": "ef21"}, ["--config.rho=0", "--config.ste=identity"])
    with pytest.raises(ConfigError, match="each part after @ must be FIELD=VALUE, got 'rho'"):
        method_fields("fedbat@rho", 4)


def test_seed_blocked_interval_pools_the_residuals_of_every_method():
    from fedbat_jax import report

    acc = {"fedbat": [0.70, 0.80, 0.75], "a": [0.72, 0.83, 0.76], "b": [0.69, 0.78, 0.77]}
    rows = [{"dataset": "d", "partition": "p", "algorithm": m, "seed": s, "final_acc": v}
            for m, vs in acc.items() for s, v in enumerate(vs)]
    table = report.blocked_table(rows, "fedbat")
    # by hand: y in points, residuals of method + seed, s^2 = SSE / 4, half = t(0.975, 4) sqrt(2 s^2 / 3)
    y = 100 * np.array(list(acc.values()))
    resid = y - y.mean(1, keepdims=True) - y.mean(0, keepdims=True) + y.mean()
    half = 2.7764451 * np.sqrt(2 * np.sum(resid**2) / 4 / 3)
    diff = y[1].mean() - y[0].mean()
    assert f"| d | p | a | 3 | {diff:+.2f} | [{diff - half:+.2f}, {diff + half:+.2f}] | 4 |" in table
    assert report.blocked_table(rows[:1], "fedbat") == ""  # one seed: no block
    # a one-seed diagnosis method in the cell is left out; the cell's table is unchanged
    diagnosis = {"dataset": "d", "partition": "p", "algorithm": "fedbat@rho=0", "seed": 0, "final_acc": 0.5}
    assert report.blocked_table(rows + [diagnosis], "fedbat") == table


@pytest.mark.slow
def test_study_vmapped_seeds_equal_the_runs_one_by_one(tmp_path, xla_cache_env):
    """--vmap-seeds: each cell's seeds as one make_train program, the same numbers as the CLI runs."""
    common = ["--config", "experiments/configs/mnist5k.py", "--partitions", "iid", "--algorithms", "fedbat",
              "--seeds", "0,1", "--rounds", "2", "--target", "0.5", "--workdir", str(tmp_path / "w"),
              "--config.model=logreg", "--config.num_clients=4", "--config.clients_per_round=2",
              "--config.local_epochs=1", "--config.backend=fused"]
    for name, extra in (("vmapped", ["--vmap-seeds"]), ("runs", [])):
        done = subprocess.run([sys.executable, "experiments/study.py", "--out", str(tmp_path / name), *extra, *common],
                              cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, **xla_cache_env))
        assert done.returncode == 0, done.stderr[-2000:]
    vmapped, runs = (list(csv.DictReader((tmp_path / f"{n}.csv").open())) for n in ("vmapped", "runs"))
    assert [r["seed"] for r in vmapped] == ["0", "1"]
    for a, b in zip(vmapped, runs):
        assert abs(float(a["final_acc"]) - float(b["final_acc"])) <= 0.01 and a["uplink_MB"] == b["uplink_MB"]


def test_study_bad_field_is_one_line(tmp_path):
    done = subprocess.run([sys.executable, "experiments/study.py", "--config", "experiments/configs/mnist5k.py",
                           "--workdir", str(tmp_path), "--out", str(tmp_path / "r"), "--config.nope=1"],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "nope" in done.stderr


def test_study_out_under_a_file_is_one_line_before_any_run(tmp_path):
    (tmp_path / "out").write_text("a file")
    done = subprocess.run([sys.executable, "experiments/study.py", "--config", "experiments/configs/mnist5k.py",
                           "--workdir", str(tmp_path / "w"), "--out", str(tmp_path / "out" / "r")],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "is a file, not a folder" in done.stderr
    assert not (tmp_path / "w").exists()  # nothing ran


@pytest.mark.slow
def test_gpu_check_runs_at_tiny_sizes(tmp_path, xla_cache_env):
    """The prepared GPU script, on the CPU at tiny sizes, so that it cannot rot before a GPU is at hand."""
    out = tmp_path / "bench_gpu.json"
    done = subprocess.run(["bash", "experiments/gpu_check.sh", str(out), "--tiny"], cwd=ROOT, capture_output=True,
                          text=True, env=dict(os.environ, PYTHON=sys.executable, **xla_cache_env))
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-2000:])
    report = json.loads(out.read_text())
    assert {"device", "jax_version", "paper_fmnist_round_s", "scale", "resnet10_round"} <= set(report)
    assert set(report["paper_fmnist_round_s"]) == {"fedbat", "fedavg"}
    assert all(v > 0 for v in report["paper_fmnist_round_s"].values())
    assert [r["clients"] for r in report["scale"]] == [2]
    for r in report["scale"]:
        assert r["backend"] == "fused" and r["samples_per_s"] > 0 and r["peak_memory_bytes"] > 0
        assert r["compile_s"] >= 0
    assert [(r["num_clients"], r["algorithm"]) for r in report["clients"]] == [(8, "ef_signsgd"), (80, "ef_signsgd")]
    assert report["clients"][1]["table_bytes"] == 10 * report["clients"][0]["table_bytes"] > 0
    assert report["resnet10_round"]["samples_per_s"] > 0 and report["resnet10_round"]["width"] == 4


@pytest.mark.slow
def test_convergence_study_quick(tmp_path, xla_cache_env):
    out = tmp_path / "conv"
    done = subprocess.run([sys.executable, "experiments/convergence.py", "--quick", "--partitions=iid",
                           "--rows=fedavg,fedbat_alpha_max", "--probes", f"--out={out}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, **xla_cache_env, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    rows = list(csv.DictReader(out.with_suffix(".csv").open()))
    assert [r["algorithm"] for r in rows] == ["fedavg", "fedbat_alpha_max"]
    assert {"algorithm", "partition", "seeds", "rounds", "slope", "slope_lo", "slope_hi",
            "final_suboptimality"} <= set(rows[0])
    for r in rows:
        assert r["seeds"] == "2" and r["rounds"] == "30"
        assert float(r["final_suboptimality"]) > 0  # F* is below every iterate: the float64 optimum is right
        assert float(r["slope_lo"]) <= float(r["slope"]) <= float(r["slope_hi"]) < 0  # converging
    md = out.with_suffix(".md").read_text()
    assert "Command: `python experiments/convergence.py" in md and "gamma = max(8 kappa, E)" in md
    assert out.with_suffix(".png").stat().st_size > 0
    # --probes: the FedBAT row's alpha diagnostics per seed and round (FedAvg has none), from a run checked equal
    with gzip.open(f"{out}_probes.csv.gz", "rt") as f:
        probes = list(csv.DictReader(f))
    assert {p["algorithm"] for p in probes} == {"fedbat_alpha_max"} and len(probes) == 2 * 30
    clipped = [float(p["clipped/Dense_0/kernel"]) for p in probes]
    assert all(0.0 <= v <= 1.0 for v in clipped) and max(clipped) == 0.0  # alpha = max|u| clips nothing
    assert all(float(p["alpha_rms/Dense_0/kernel"]) >= 1.0 for p in probes)  # max|u| >= rms(u)
    # and F - F*'s two terms, which add up to the committed curve's value at that seed and round
    with gzip.open(f"{out}_curves.csv.gz", "rt") as f:
        curve = {(c["seed"], c["round"]): float(c["suboptimality"]) for c in csv.DictReader(f)
                 if c["algorithm"] == "fedbat_alpha_max"}
    for p in probes:
        np.testing.assert_allclose(float(p["ce_gap"]) + float(p["l2_gap"]), curve[p["seed"], p["round"]], rtol=1e-3)


def test_convergence_window_criterion():
    conv = _script("convergence")
    gamma, steps, r = 528.0, 20, np.arange(1, 501)
    at_rate = np.stack([2.0 / (gamma + steps * r) * (1 + 0.01 * k) for k in range(4)])
    plateau = np.stack([0.05 + 1.0 / (gamma + steps * r) for _ in range(4)])
    w = conv.window(at_rate, gamma, steps)
    assert w["window"] == "250-500" and abs(w["growth"] - 1.0) < 1e-6 and w["converges"]
    assert abs(w["w_slope"] - w["w_bound"]) < 1e-3 and -0.95 < w["w_bound"] < -0.9
    p = conv.window(plateau, gamma, steps)
    assert p["growth"] > 1.7 and not p["converges"]
    # blew up, then falls back steeply: its growth is small, but it ends above where it started
    blown = np.stack([np.where(r > 1, 1e12 / (gamma + steps * r) ** 3, 0.4) * (1 + 0.01 * k) for k in range(4)])
    b = conv.window(blown, gamma, steps)
    assert b["growth_hi"] < 1.25 and not b["converges"]


def test_convergence_slope_fit_and_optimum():
    conv = _script("convergence")
    r = np.arange(1, 201)
    rng = np.random.default_rng(0)
    curves = np.stack([3.0 / r**2 * np.exp(0.3 * rng.standard_normal(200)) for _ in range(8)])
    slope, lo, hi = conv.slopes(curves)
    assert lo < -2.0 < hi and abs(slope + 2.0) < 0.1
    # L-BFGS finds the optimum of a small strongly convex problem: gradient ~0, and no point is lower.
    X = np.hstack([rng.standard_normal((50, 3)), np.ones((50, 1))])
    y = rng.integers(0, 3, 50)
    f_star, grad, _ = conv.optimum(X, y, 0.1, 3)
    assert grad < 1e-6
    for _ in range(20):
        assert conv.objective64(rng.standard_normal(12) * 0.1, X, y, 0.1, 3)[0] >= f_star
    # example weights: equal ones are the mean; doubling half the examples is that half counted twice
    theta = rng.standard_normal(12) * 0.1
    np.testing.assert_allclose(conv.objective64(theta, X, y, 0.1, 3, np.full(50, 7.0))[0],
                               conv.objective64(theta, X, y, 0.1, 3)[0])
    twice = np.r_[np.full(25, 2.0), np.ones(25)]
    for got, want in zip(conv.objective64(theta, X, y, 0.1, 3, twice),
                         conv.objective64(theta, np.vstack([X, X[:25]]), np.r_[y, y[:25]], 0.1, 3)):
        np.testing.assert_allclose(got, want, rtol=1e-12)


def test_convergence_suboptimality_metric_far_from_a_one_hot_optimum():
    """The study's F(w) - F* equals the float64 objective's gap near the optimum and far from it: where an
    example's logits sit far below the optimum's on every class, sum p* expm1(delta) rounds to -1 in float32 and
    log1p of it gave -inf (FedBAT at lambda = 0.001, rounds 944-953)."""
    from types import SimpleNamespace

    from fedbat_jax.models import make_model

    conv = _script("convergence")
    rng = np.random.default_rng(0)
    n, d, k, lam = 60, 16, 3, 1e-3
    y = rng.integers(0, k, n)
    images = np.clip(40 + 150 * (np.arange(d)[None, :] % k == y[:, None]) + rng.integers(0, 20, (n, d)), 0, 255)
    images = images.astype(np.uint8).reshape(n, 4, 4, 1)
    mean, std = np.float32(0.4), np.float32(0.3)
    x = ((images.astype(np.float64) / 255.0 - mean) / std).reshape(n, -1) / np.sqrt(d)
    X = np.hstack([x, np.ones((n, 1))])
    f_star, _, w_star = conv.optimum(X, y, lam, k)
    metric = conv.suboptimality_metric(make_model("logreg", k), lam, X, w_star)
    clients = SimpleNamespace(inputs=jnp.asarray(images), mean=jnp.asarray(mean), std=jnp.asarray(std),
                              labels=jnp.asarray(y))
    down = np.zeros_like(w_star)
    down[-1] = -30.0  # every logit 30 below: the same softmax, an L2 gap only
    for w in (w_star + 1e-3 * rng.standard_normal(w_star.shape), w_star * 0.5, np.zeros_like(w_star),
              w_star + down, 0.5 * w_star + down, -w_star + 0.8 * down):
        params = {"Dense_0": {"kernel": jnp.asarray(w[:-1], jnp.float32), "bias": jnp.asarray(w[-1], jnp.float32)}}
        out = {k: float(v) for k, v in metric(SimpleNamespace(params=params), clients).items()}
        w64 = w.astype(np.float32).astype(np.float64)
        want = conv.objective64(w64.ravel(), X, y, lam, k)[0] - f_star
        assert np.isfinite(out["suboptimality"]) and out["suboptimality"] > 0
        np.testing.assert_allclose(out["suboptimality"], want, rtol=2e-3)
        l2 = 0.5 * lam * (np.sum(w64 ** 2) - np.sum(w_star ** 2))
        np.testing.assert_allclose(out["l2_gap"], l2, rtol=1e-3, atol=1e-7)
        np.testing.assert_allclose(out["ce_gap"] + out["l2_gap"], out["suboptimality"], rtol=1e-6)
    # a curve that is not finite is named in the table, seeds and rounds, not averaged into it silently
    curves = np.ones((3, 10))
    curves[1, 4:7], curves[2, 6] = -np.inf, np.nan
    assert conv.nonfinite("fedbat", "iid", curves) == "fedbat (iid): 2 of 3 seeds, 4 values, rounds 5-7"
    assert conv.nonfinite("fedbat", "iid", np.ones((3, 10))) is None


@pytest.mark.slow
def test_fedavg_surrogate_gap_needs_unequal_local_work():
    """The FedNova study's mechanism check: FedAvg's limiting objective weights client k by n_k S_k; with equal
    steps (IID: 400 digits each) there is no gap, with Dirichlet sizes (6 to 29 steps) there is one."""
    from fedbat_jax.data import load_dataset

    conv = _script("convergence")
    ds = load_dataset("mnist5k")
    X, y = conv.design(ds)
    f_star = conv.optimum(X, y, 0.01, 10)[0]
    gaps = [conv.surrogate_gap(load_config(f"{ROOT / 'experiments' / 'configs' / 'convergence.py'}:{p}"), X, y,
                               0.01, 10, f_star) for p in ("iid", "dirichlet")]
    assert gaps[0] == 0.0 and 1e-4 < gaps[1] < 1e-1


@pytest.mark.parametrize("script,args,needle", [
    ("convergence.py", ["--config.nope=1"], "unknown config field 'nope'"),
    ("convergence.py", ["--config=missing.py"], "config file missing.py not found"),
    ("convergence.py", ["--bogus"], "unrecognized arguments: --bogus"),
    ("convergence.py", ["--config=CONFIG:raise"], "get_config() raised RuntimeError: no such setting"),
    ("compare.py", ["--config=CONFIG:raise"], "get_config() raised RuntimeError"),
    ("bench.py", ["--config.lr=fast"], "could not convert 'fast' to float"),
    ("bench.py", ["--rounds=many"], "invalid int value"),
    ("bench.py", ["--threads=1,two"], "expected comma-separated integers"),
    ("study.py", ["--config=experiments/configs/convergence.py", "--seeds=a,b"], "expected comma-separated integers"),
    ("study.py", ["--datasets=mnist5k"], "--datasets takes the paper's datasets: fashion_mnist, svhn, cifar10, "
                                         "cifar100 (got 'mnist5k'); for another, give --config=FILE"),
    ("study.py", ["--datasets=fashion_mnst"], "(got 'fashion_mnst'; did you mean 'fashion_mnist'?)"),
    ("scale.py", ["--config.nope=1", "--backends=host", "--clients=2"], "unknown config field 'nope'"),
    ("scale.py", ["--layouts=2", "--backends=host", "--clients=2"], "--layouts takes PROCESSESxDEVICES items"),
    ("scale.py", ["--layouts=0x1", "--backends=host", "--clients=2"], "--layouts takes PROCESSESxDEVICES items"),
    ("protocol.py", ["--config.rounds=3"], "takes no --config overrides (the protocol is fixed): --config.rounds=3"),
    ("protocol.py", ["--reduced"], "give --workdir (the runs resume from it)"),
    ("compressor_stats.py", ["--workdir=W", "--clients=x"], "argument --clients: invalid int value: 'x'"),
    ("privacy.py", [], "give --workdir (each program's records are kept there"),
    ("privacy.py", ["--workdir=W", "--epsilons=1,x"], "--epsilons takes numbers and --seeds integers"),
    ("privacy.py", ["--workdir=W", "--methods=,"], "--methods is empty: give at least one"),
])
@pytest.mark.slow
def test_every_script_fails_in_one_line_like_the_cli(tmp_path, script, args, needle):
    config = tmp_path / "config.py"
    config.write_text("def get_config(arg=''):\n    raise RuntimeError('no such setting')\n")
    args = [a.replace("CONFIG", str(config)) for a in args]
    place = ["--workdir", str(tmp_path / "w")] if script == "compare.py" else ["--out", str(tmp_path / "out")]
    done = subprocess.run([sys.executable, f"experiments/{script}", *args, *place], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.count("\n") == 1 and needle in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_protocol_dry_run_states_the_protocol_and_its_cost():
    done = subprocess.run([sys.executable, "experiments/protocol.py", "--dry-run"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "99 programs" in done.stdout and "495 runs" in done.stdout and "primary: last10_acc" in done.stdout


@pytest.mark.slow
def test_scripts_help_exits_0():
    for script in ("convergence.py", "study.py", "bench.py", "compare.py"):
        done = subprocess.run([sys.executable, f"experiments/{script}", "--help"], cwd=ROOT, capture_output=True,
                              text=True)
        assert done.returncode == 0 and "--config" in done.stdout, (script, done.stderr[-500:])


def test_study_tables_from_committed_csv(tmp_path):
    """--tables-from renders the statistics of committed runs again, running nothing."""
    done = subprocess.run([sys.executable, "experiments/study.py", "--tables-from",
                           "docs/results/compressors_fmnist_seeds.csv", "--out", str(tmp_path / "t")],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    md = (tmp_path / "t.md").read_text()
    # the committed label-count paired difference of final accuracy, recomputed; best too; last-5 absent there
    assert "| fashion_mnist | label_count | 3 | -6.01 [-11.93, -0.09] |" in md.split("fedbat against stoch_binary")[1]
    assert "seed-blocked" in md and "last5_acc" not in md


@pytest.mark.parametrize("text, needle", [
    (None, "No such file or directory"),
    ("a,b\n1,2\n", "not a study CSV (no column algorithm, dataset, final_acc, partition, seed, uplink_MB)"),
    ("dataset,partition,algorithm,seed,final_acc,uplink_MB\nd,p,a,x,0.5,1\n", "a value is not a number"),
])
def test_study_tables_from_bad_csv_is_one_line(tmp_path, text, needle):
    path = tmp_path / "runs.csv"
    if text is not None:
        path.write_text(text)
    done = subprocess.run([sys.executable, "experiments/study.py", "--tables-from", str(path), "--out",
                           str(tmp_path / "t")], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and needle in done.stderr, done.stderr


def test_study_tables_from_a_glob_of_old_and_new_csvs(tmp_path):
    """A glob of CSVs, one from before the last5_acc and model columns: its cells show "-" for the endpoint it
    lacks, the others keep theirs, and OUT.csv holds every run with the paper's model named for the old rows."""
    head = "dataset,partition,algorithm,seed,final_acc,best_acc,uplink_MB"
    (tmp_path / "a_old.csv").write_text(f"{head}\nfashion_mnist,iid,fedbat,0,0.5,0.6,8\n"
                                        "fashion_mnist,iid,fedbat,1,0.7,0.8,8\n")
    (tmp_path / "b_new.csv").write_text(f"{head},last5_acc,model\nfashion_mnist_vit,iid,fedbat,0,0.4,0.5,8,0.3,vit\n"
                                        "fashion_mnist_vit,iid,fedbat,1,0.6,0.7,8,0.5,vit\n")
    done = subprocess.run([sys.executable, "experiments/study.py", "--tables-from", str(tmp_path / "*.csv"),
                           "--out", str(tmp_path / "out" / "t")], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    md = (tmp_path / "out" / "t.md").read_text()
    assert "| fashion_mnist | iid | fedbat | 2 | 0.6000 [-0.6706, 1.8706] | - | 0.7000" in md
    assert "| fashion_mnist_vit | iid | fedbat | 2 | 0.5000 [-0.7706, 1.7706] | 0.4000 [-0.8706, 1.6706] |" in md
    with open(tmp_path / "out" / "t.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["model"], r["seed"], r["last5_acc"]) for r in rows] == [
        ("cnn4", "0", ""), ("cnn4", "1", ""), ("vit", "0", "0.3"), ("vit", "1", "0.5")]
    done = subprocess.run([sys.executable, "experiments/study.py", "--tables-from", str(tmp_path / "none*.csv"),
                           "--out", str(tmp_path / "t")], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2 and "no file matches" in done.stderr and done.stderr.count("\n") == 1, done.stderr


def test_compressor_stats_variance_and_shape_against_hand_numbers():
    """Stochastic binarization at alpha = max|x| has per-coordinate variance max^2 - x^2, so its normalised variance
    is d max^2 / ||x||^2 - 1 (2.048 for [1, -0.5, 0.25, 0]) and it is unbiased; the kurtosis of [1, -1, 1, -1] is 1."""
    from fedbat_jax.compressors import stochastic_levels

    cs = _script("compressor_stats")
    x = {"k": jnp.array([[1.0, -0.5], [0.25, 0.0]]), "b": jnp.zeros(3)}
    mask, scales = {"k": True, "b": False}, {"k": jnp.float32(0), "b": jnp.float32(0)}
    stats = cs.error_stats(stochastic_levels(mask, x, 1, learned_scale=False), x, scales, mask, keys=4096)
    assert stats["nvar"] == pytest.approx(4 / 1.3125 - 1, rel=0.05)
    assert abs(stats["nbias2"]) < 5 * stats["floor"]
    assert stats["bits_per_value"] == pytest.approx((8 + 32) / 4)  # one packed byte and alpha for 4 values
    shape = cs.shape_stats({"k": jnp.array([1.0, -1.0, 1.0, -1.0]), "b": jnp.zeros(3)}, mask)
    assert shape == {"kurtosis": pytest.approx(1.0), "d_max2_over_norm2": pytest.approx(1.0)}


def test_privacy_study_writes_its_curves_tables_and_runs(tmp_path, monkeypatch):
    """experiments/privacy.py on the bundled digits in seconds (in this process), one method: its DP and no-DP
    programs, their tables, the per-run CSV and per-round curves; a rerun reads the programs back and runs nothing
    (the comparisons between methods are recomputed from the committed study in test_results.py)."""
    from fedbat_jax import cli

    study = _script("privacy")
    argv = ["--workdir", str(tmp_path / "w"), "--out", str(tmp_path / "privacy"), "--epsilons=2,8", "--low-epsilons=",
            "--seeds=0,1", "--methods=fedbat", "--no-confound", "--config.dataset=mnist5k",
            "--config.num_clients=20", "--config.clients_per_round=5", "--config.rounds=3", "--config.local_epochs=1",
            "--config.dp_count_stddev=2"]
    monkeypatch.setattr(sys, "argv", ["experiments/privacy.py", *argv])
    assert study.main(*cli.parse_args(study.parser(), argv)) == 0
    text = (tmp_path / "privacy.md").read_text()
    assert "| fedbat | epsilon 2 | 2 |" in text and "| fedbat | epsilon none | 2 |" in text
    assert "| mnist5k-20 | fedbat | epsilon 8 | 2 |" in text  # what DP costs it, paired by seed
    with open(tmp_path / "privacy_runs.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 3 and {r["epsilon"] for r in rows} == {"2", "8", "none"}
    assert all(float(r["epsilon_reached"]) <= float(r["epsilon"]) * 1.001 for r in rows if r["epsilon"] != "none")
    with gzip.open(tmp_path / "privacy_curves.csv.gz", "rt") as f:
        assert len(list(csv.DictReader(f))) == 6 * 3
    monkeypatch.setattr(study.fb, "sweep", None)  # a rerun reads every program back: it runs nothing
    assert study.main(*cli.parse_args(study.parser(), argv)) == 0
    assert (tmp_path / "privacy.md").read_text().split("\n", 2)[2] == text.split("\n", 2)[2]
