"""Training throughput of one FedBAT and one FedAvg round (make bench).

CNN4 on 28x28x1 inputs, 10 clients x batch 64, and ResNet-10 on 32x32x3 inputs (random pixels, with
CIFAR's crop+flip; 4 clients x 128 samples by default), on the current backend. Each round is timed after a
warm-up round (compilation excluded); the figure is training samples per second of the whole round
(local steps of every client + upload + aggregation). Results go to a JSON file.

    python experiments/bench.py --out bench_results.json [--rounds 3] [--epochs 2] [--execution host]
                                [--config=FILE[:ARG]] [--config.FIELD=VALUE ...]

``--config`` times the rounds of that config instead of the built-in CNN4 federation (each of
``--algorithms`` in turn); ``--config.FIELD=VALUE`` overrides a setting of those rounds (the CLI's syntax).
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from fedbat_jax import train
from fedbat_jax.config import apply_overrides, load_config
from fedbat_jax.data import Dataset
from fedbat_jax.errors import FedBatError


def make_config(algorithm: str, epochs: int, execution: str = "auto", threads: int = 0, dataset: str = "mnist5k",
                paper: bool = False, data_dir: str = ""):
    c = train.default_config()
    c.update(algorithm=algorithm, dataset=dataset, num_clients=10, clients_per_round=10, local_epochs=epochs,
             batch_size=64, partition="iid", execution=execution, client_threads=threads, data_dir=data_dir)
    if algorithm == "qsgd":
        c.bits = 4
    if paper:  # the paper's Fashion-MNIST round: 10 of 100 IID clients (600 samples each), 10 epochs
        c.update(dataset="fashion_mnist", num_clients=100, clients_per_round=10, local_epochs=10)
    return c


def build(config, data: Dataset | None = None):
    exp = train.build(config) if data is None else train.build_from_data(config, data)
    server, _ = exp.round.run(exp.server, 1)  # warm-up: compiles
    jax.block_until_ready(server)
    return exp, server


def timed_round(exp, server, r: int):
    """Seconds of round ``r``, and the new server state (a round consumes its input's client states)."""
    t0 = time.perf_counter()
    server, m = exp.round.run(server, r)
    jax.block_until_ready((server, m["train_loss"]))
    return time.perf_counter() - t0, server


def bench(configs: list, rounds: int, data: Dataset | None = None) -> list[dict]:
    """Rounds of the configs alternate (A B A B ...), so machine drift hits both alike."""
    built = [list(build(c, data)) for c in configs]
    times = [[] for _ in configs]
    for r in range(2, rounds + 2):
        for i, (exp, server) in enumerate(built):
            seconds, built[i][1] = timed_round(exp, server, r)
            times[i].append(seconds)
    results = []
    for (exp, _), ts in zip(built, times):
        c = exp.config
        samples = int(np.mean([len(p) for p in exp.parts]) * c.clients_per_round * c.local_epochs)
        med = float(np.median(ts))
        results.append({"algorithm": c.algorithm, "model": c.model, "input": "x".join(map(str, exp.dataset.input_shape)),
                        "execution": exp.round.execution_name, "client_threads": getattr(exp.round.execution, "threads", 1),
                        "samples_per_round": samples, "round_seconds_median": round(med, 3),
                        "round_seconds_all": [round(t, 3) for t in ts], "samples_per_second": round(samples / med, 1)})
    return results


def random_pixels(n: int, classes: int = 10) -> Dataset:
    """32x32x3 images of uniform random pixels, for timing ResNet-10 where no CIFAR files are at hand
    (speed does not depend on pixel values; the name says what they are)."""
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, classes, n).astype(np.int32)
    return Dataset("random pixels (timing only)", x, y, x[:256], y[:256], classes, (0.5,) * 3, (0.25,) * 3,
                   augment="crop_flip")


def resnet_bench(algorithms: list[str], rounds: int, clients: int, samples: int, width: int, execution: str) -> list[dict]:
    """ResNet-10 rounds on 32x32x3 inputs with CIFAR's crop+flip: ``clients`` clients x ``samples`` each, 1 epoch."""
    configs = []
    for a in algorithms:
        c = make_config(a, 1, execution)
        c.update(model="resnet10", model_width=width, num_clients=clients, clients_per_round=clients)
        configs.append(c)
    return bench(configs, rounds, random_pixels(clients * samples))


def report_line(r: dict) -> str:
    return (f"{r['algorithm']:7s} {r['model']:8s} {r['input']:7s} {r['execution']:5s} threads={r['client_threads']} "
            f"{r['samples_per_second']:8.1f} samples/s  (round {r['round_seconds_median']:.2f} s, "
            f"{r['samples_per_round']} samples)")


def compressor_costs(algorithms: list[str], rounds: int, epochs: int, dataset: str) -> list[dict]:
    """Per algorithm: seconds of a whole round vs seconds of the cohort's encode + decode + aggregation
    (``federated.absorb`` of every client, jitted on its own), each after a warm-up."""
    from fedbat_jax.federated import absorb, empty_aggregate

    out = []
    for a in algorithms:
        exp, server = build(make_config(a, epochs, dataset=dataset))
        rnd = exp.round
        fed = rnd.fed
        inputs = rnd.plan(jax.random.PRNGKey(exp.config.seed), 1, index=rnd.data.index)
        clients = jax.vmap(fed.client_init, (None, None, 0))(server.params, server.batch_stats, inputs)
        done = jnp.ones(inputs.client.shape, bool)
        upload = jax.jit(lambda s, c, i: absorb(fed, s.params, empty_aggregate(s), s.client_states, c, i, done))
        jax.block_until_ready(upload(server, clients, inputs))
        round_s, finish_s = [], []
        for r in range(2, rounds + 2):
            seconds, server = timed_round(exp, server, r)
            round_s.append(seconds)
            t0 = time.perf_counter()
            jax.block_until_ready(upload(server, clients, inputs))
            finish_s.append(time.perf_counter() - t0)
        tr, fi = float(np.median(round_s)), float(np.median(finish_s))
        out.append({"algorithm": a, "round_seconds": round(tr, 3), "encode_decode_aggregate_seconds": round(fi, 4),
                    "relative_to_round": round(fi / tr, 5), "uplink_bits_per_round": rnd.bits["uplink_bits"]})
        print(f"{a:12s} round {tr:6.2f} s   encode+decode+aggregate {1e3 * fi:7.1f} ms "
              f"({100 * fi / tr:.2f}% of the round)   uplink {rnd.bits['uplink_bits'] / 8e6:.2f} MB/round")
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
    ap.add_argument("--resnet-algorithms", default="fedbat,fedavg", help="ResNet-10 rounds ('' to skip)")
    ap.add_argument("--resnet-clients", type=int, default=4)
    ap.add_argument("--resnet-samples", type=int, default=128, help="samples per client (1 local epoch)")
    ap.add_argument("--resnet-width", type=int, default=64, help="64: the paper's ResNet-10")
    ap.add_argument("--config", default="", help="FILE[:ARG]: time this config's rounds instead of the CNN4 ones")
    args, overrides = ap.parse_known_args()
    try:
        configs = []
        for a in (a for a in args.algorithms.split(",") if a):
            c = (load_config(args.config) if args.config else
                 make_config(a, args.epochs, args.execution, args.threads, args.dataset, args.paper, args.data_dir))
            c.algorithm = a
            unknown = apply_overrides(c, overrides)
            if unknown:
                ap.error(f"unrecognized arguments: {' '.join(unknown)} (fields are set as --config.FIELD=VALUE)")
            configs.append(c)
        results = bench(configs, args.rounds) if configs else []
        resnet = (resnet_bench(args.resnet_algorithms.split(","), max(2, args.rounds // 2), args.resnet_clients,
                               args.resnet_samples, args.resnet_width, args.execution)
                  if args.resnet_algorithms else [])
    except FedBatError as e:
        raise SystemExit(f"bench: error: {e}")
    report = {"backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
              "machine": platform.processor() or platform.machine(), "jax": jax.__version__, "results": results,
              "resnet10": resnet}
    for name, rows in (("", results), ("resnet10_", resnet)):
        by = {r["algorithm"]: r for r in rows}
        if "fedbat" in by and "fedavg" in by:
            ratio = by["fedbat"]["round_seconds_median"] / by["fedavg"]["round_seconds_median"]
            report[f"{name}fedbat_time_over_fedavg"] = round(ratio, 3)
        for r in rows:
            print(report_line(r))
        if "fedbat" in by and "fedavg" in by:
            print(f"{rows[0]['model']}: FedBAT round time / FedAvg round time: {ratio:.3f}")
    if args.compressors:
        report["compressor_costs"] = compressor_costs(args.compressors.split(","), 3, args.epochs, args.dataset)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
