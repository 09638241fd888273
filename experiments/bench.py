"""Training throughput of one FedBAT and one FedAvg round (make bench).

CNN4 on 28x28x1 inputs, 10 clients x batch 64, on the current backend. Each round is timed after a
warm-up round (compilation excluded); the figure is training samples per second of the whole round
(local steps of every client + upload + aggregation). Results go to a JSON file.

    python experiments/bench.py --out bench_results.json [--rounds 3] [--epochs 2] [--execution host]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere
from fedbat_jax import train  # noqa: E402
from fedbat_jax.errors import FedBatError  # noqa: E402


def build(algorithm: str, epochs: int, execution: str, threads: int, dataset: str, paper: bool = False,
          data_dir: str = ""):
    c = train.default_config()
    c.update(algorithm=algorithm, dataset=dataset, num_clients=10, clients_per_round=10, local_epochs=epochs,
             batch_size=64, partition="iid", execution=execution, client_threads=threads, data_dir=data_dir)
    if algorithm == "qsgd":
        c.bits = 4
    if paper:  # the paper's Fashion-MNIST round: 10 of 100 IID clients (600 samples each), 10 epochs
        c.update(dataset="fashion_mnist", num_clients=100, clients_per_round=10, local_epochs=10)
    exp = train.build(c)
    server, _ = exp.round.run(exp.server, 1)  # warm-up: compiles
    jax.block_until_ready(server)
    return exp, server


def timed_round(exp, server, r: int) -> float:
    t0 = time.perf_counter()
    server, m = exp.round.run(server, r)
    jax.block_until_ready((server, m["train_loss"]))
    return time.perf_counter() - t0


def bench(algorithms: list[str], rounds: int, epochs: int, execution: str, threads: int, dataset: str,
          paper: bool = False, data_dir: str = "") -> list[dict]:
    """Rounds of the algorithms alternate (A B A B ...), so machine drift hits both alike."""
    built = {a: build(a, epochs, execution, threads, dataset, paper, data_dir) for a in algorithms}
    times = {a: [] for a in algorithms}
    for r in range(2, rounds + 2):
        for a, (exp, server) in built.items():
            times[a].append(timed_round(exp, server, r))
    results = []
    for a, (exp, _) in built.items():
        samples = int(np.mean([len(p) for p in exp.parts]) * exp.config.clients_per_round * exp.config.local_epochs)
        med = float(np.median(times[a]))
        results.append({"algorithm": a, "execution": exp.round.cfg.execution,
                        "client_threads": exp.round.cfg.client_threads, "samples_per_round": samples,
                        "round_seconds_median": round(med, 3), "round_seconds_all": [round(t, 3) for t in times[a]],
                        "samples_per_second": round(samples / med, 1)})
    return results


def compressor_costs(algorithms: list[str], rounds: int, epochs: int, dataset: str) -> list[dict]:
    """Per algorithm: seconds of local training vs seconds of encode + decode + aggregation (the
    jitted ``finish``) in a round, each timed on its own after a warm-up round."""
    from fedbat_jax.binarize import warmup_steps
    from fedbat_jax.round import client_keys, sample_cohort

    out = []
    for a in algorithms:
        exp, server = build(a, epochs, "auto", 0, dataset)
        rnd, cfg = exp.round, exp.round.cfg
        train_s, finish_s = [], []
        for r in range(2, rounds + 2):
            cohort = sample_cohort(cfg.seed, r, cfg.num_clients, cfg.clients_per_round)
            keys = client_keys(cfg.seed, r, cohort)
            n_warm = np.array([warmup_steps(cfg.phi, int(s)) for s in rnd.num_steps[cohort]], np.int32)
            t0 = time.perf_counter()
            states = jax.block_until_ready(rnd._train_host(server, cohort, keys, n_warm))
            t1 = time.perf_counter()
            new, loss = rnd._finish(server, jnp.asarray(cohort), states, jnp.asarray(rnd.weights[cohort]), keys)
            jax.block_until_ready((new, loss))
            finish_s.append(time.perf_counter() - t1)
            train_s.append(t1 - t0)
            server = new
        tr, fi = float(np.median(train_s)), float(np.median(finish_s))
        out.append({"algorithm": a, "train_seconds": round(tr, 3), "encode_decode_aggregate_seconds": round(fi, 4),
                    "relative_to_training": round(fi / tr, 5), "uplink_bits_per_round": rnd.bits["uplink_bits"]})
        print(f"{a:12s} training {tr:6.2f} s   encode+decode+aggregate {1e3 * fi:7.1f} ms "
              f"({100 * fi / tr:.2f}% of training)   uplink {rnd.bits['uplink_bits'] / 8e6:.2f} MB/round")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench_results.json")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--execution", default="auto", choices=["auto", "host", "fused"])
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--dataset", default="mnist5k")
    ap.add_argument("--algorithms", default="fedbat,fedavg")
    ap.add_argument("--paper", action="store_true", help="the paper's Fashion-MNIST round (needs --data-dir)")
    ap.add_argument("--data-dir", default="")
    ap.add_argument("--compressors", default="fedavg,fedbat,signsgd,ef_signsgd,stoch_binary,qsgd",
                    help="algorithms whose encode/decode cost is measured ('' to skip)")
    args = ap.parse_args()
    try:
        results = bench(args.algorithms.split(","), args.rounds, args.epochs, args.execution, args.threads,
                        args.dataset, args.paper, args.data_dir) if args.algorithms else []
    except FedBatError as e:
        raise SystemExit(f"bench: error: {e}")
    by = {r["algorithm"]: r for r in results}
    report = {"backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
              "machine": platform.processor() or platform.machine(), "jax": jax.__version__, "results": results}
    if "fedbat" in by and "fedavg" in by:
        report["fedbat_time_over_fedavg"] = round(by["fedbat"]["round_seconds_median"] / by["fedavg"]["round_seconds_median"], 3)
    for r in results:
        print(f"{r['algorithm']:7s} {r['execution']:5s} threads={r['client_threads']} "
              f"{r['samples_per_second']:8.1f} samples/s  (round {r['round_seconds_median']:.2f} s, {r['samples_per_round']} samples)")
    if "fedbat_time_over_fedavg" in report:
        print(f"FedBAT round time / FedAvg round time: {report['fedbat_time_over_fedavg']:.3f}")
    if args.compressors:
        report["compressor_costs"] = compressor_costs(args.compressors.split(","), 3, args.epochs, args.dataset)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
