"""Training throughput of one FedBAT and one FedAvg round (make bench).

CNN4 on 28x28x1 inputs, 10 clients x batch 64, and ResNet-10 on 32x32x3 inputs (random pixels, with
CIFAR's crop+flip; 4 clients x 128 samples by default), on the current backend. Each round is timed after a
warm-up round (compilation excluded); the figure is training samples per second of the whole round
(local steps of every client + upload + aggregation). Results go to a JSON file.

    python experiments/bench.py --out bench_results.json [--rounds 3] [--epochs 2] [--backend host]
                                [--threads 1,2] [--config=FILE[:ARG]] [--config.FIELD=VALUE ...]

``--config`` times the rounds of that config instead of the built-in CNN4 federation (each of
``--algorithms`` in turn); ``--config.FIELD=VALUE`` overrides a setting of those rounds (the CLI's syntax).
Every row reports CPU-seconds per sample (all of this process's threads) beside samples/s. ``--threads 1,2``
times each algorithm's host round with 1 and with 2 client threads, interleaved, and prints the second thread's
cost: CPU per sample and samples/s of 2 threads over 1.

``--natural FEDERATION`` times cohorts of ``--cohorts`` clients drawn from a natural federation instead
(``shakespeare``, ``femnist``, or ``femnist_3400``: 3,400 writers with the real FEMNIST sample's size
distribution and random pixels), with peak host and device memory and the largest-to-smallest cohort throughput:

    python experiments/bench.py --natural femnist_3400 --data-dir ../shared/data --rounds 1 --out cohorts.json
"""
from __future__ import annotations

import json
import time
import sys

import jax
import jax.numpy as jnp
import numpy as np

import fedbat_jax as fb
from fedbat_jax import cli, machine
from fedbat_jax.config import default_config
from fedbat_jax.data import Dataset
from fedbat_jax.timing import random_pixels, samples_per_round, timed_round


def make_config(algorithm: str, epochs: int, backend: str = "auto", threads: int = 0, dataset: str = "mnist5k",
                paper: bool = False, data_dir: str = ""):
    c = default_config()
    c.update(algorithm=algorithm, dataset=dataset, num_clients=10, clients_per_round=10, local_epochs=epochs,
             batch_size=64, partition="iid", backend=backend, client_threads=threads, data_dir=data_dir)
    if algorithm == "qsgd":
        c.bits = 4
    if paper:  # the paper's Fashion-MNIST round: 10 of 100 IID clients (600 samples each), 10 epochs
        c.update(dataset="fashion_mnist", num_clients=100, clients_per_round=10, local_epochs=10)
    return c


def build(config, data: Dataset | None = None):
    exp = fb.build(config) if data is None else fb.build_from_data(config, data)
    return exp, timed_round(exp, exp.server, 1).server  # warm-up: compiles


def bench(configs: list, rounds: int, data: Dataset | None = None) -> list[dict]:
    """Rounds of the configs alternate (A B A B ...), so machine drift hits both alike."""
    built = [list(build(c, data)) for c in configs]
    times, cpu = [[] for _ in configs], [[] for _ in configs]
    for r in range(2, rounds + 2):
        for i, (exp, server) in enumerate(built):
            t = timed_round(exp, server, r)
            built[i][1] = t.server
            times[i].append(t.seconds)
            cpu[i].append(t.cpu_seconds)
    results = []
    for (exp, _), ts, cs in zip(built, times, cpu):
        c, backend = exp.config, exp.backend
        samples = samples_per_round(exp)
        med = float(np.median(ts))
        shape = "x".join(map(str, exp.dataset.input_shape))
        results.append({"algorithm": c.algorithm, "model": c.model, "input": shape,
                        "backend": backend.name, "loop": backend.loop, "client_threads": c.client_threads,
                        "samples_per_round": samples, "round_seconds_median": round(med, 3),
                        "round_seconds_all": [round(t, 3) for t in ts], "samples_per_second": round(samples / med, 1),
                        "cpu_seconds_per_sample": round(float(np.median(cs)) / samples, 7)})
    return results


def resnet_bench(algorithms: list[str], rounds: int, clients: int, samples: int, width: int, backend: str,
                 ) -> list[dict]:
    """ResNet-10 rounds on 32x32x3 inputs with CIFAR's crop+flip: ``clients`` clients x ``samples`` each, 1 epoch."""
    configs = []
    for a in algorithms:
        c = make_config(a, 1, backend)
        c.update(model="resnet10", model_width=width, num_clients=clients, clients_per_round=clients)
        configs.append(c)
    return bench(configs, rounds, random_pixels(clients * samples))


def natural_federation(name: str, data_dir: str) -> Dataset:
    """A natural federation for the cohort benchmark: ``shakespeare`` or ``femnist`` (the real files), or
    ``femnist_3400``: 3,400 writers whose sizes are drawn (seeded) from the real FEMNIST sample's writer sizes,
    holding uniformly random 28x28 pixels and labels (speed does not depend on their values; the name says so)."""
    from fedbat_jax.data import load_dataset

    if name != "femnist_3400":
        return load_dataset(name, data_dir or None)
    real = np.bincount(load_dataset("femnist", data_dir or None).train_clients)
    sizes = np.random.default_rng(0).choice(real, 3400)
    rng = np.random.default_rng(1)
    owner = np.repeat(np.arange(3400), sizes).astype(np.int32)
    x = rng.integers(0, 256, (len(owner), 28, 28, 1), dtype=np.uint8)
    test_owner = np.repeat(np.arange(3400), 2).astype(np.int32)
    ids = tuple(f"w{k}" for k in range(3400))
    return Dataset("femnist_3400 (random pixels, FEMNIST sample's writer sizes; timing only)", x,
                   rng.integers(0, 62, len(owner)).astype(np.int32), x[: len(test_owner)],
                   rng.integers(0, 62, len(test_owner)).astype(np.int32), 62, (0.0,), (1.0,),
                   train_clients=owner, test_clients=test_owner, client_ids=ids, test_client_ids=ids)


NATURAL_MODELS = {"shakespeare": ("char_lstm", 4), "femnist": ("emnist_cnn", 20), "femnist_3400": ("emnist_cnn", 20)}


def cohort_bench(federation: str, cohorts: list[int], algorithms: list[str], rounds: int, data_dir: str,
                 overrides: list[str]) -> list[dict]:
    """Samples/s and CPU-seconds per sample of rounds whose cohorts of K clients are drawn from a natural federation
    (the benchmark's model and batch: ``NATURAL_MODELS``), after a warm-up round, with the peak host memory (RSS)
    and device memory where the backend reports it; every examples count is the cohort's own (ragged)."""
    import resource

    from fedbat_jax.timing import cohort_examples

    ds = natural_federation(federation, data_dir)
    model, batch = NATURAL_MODELS[federation]
    out = []
    for k in cohorts:
        if k > len(ds.client_ids):
            print(f"{federation}: cohort {k} skipped, the federation has {len(ds.client_ids)} clients")
            continue
        for a in algorithms:
            c = default_config()
            c.update(algorithm=a, model=model, batch_size=batch, num_clients=0, clients_per_round=k, local_epochs=1,
                     rounds=rounds + 1)
            cli.apply_overrides(c, overrides)
            exp = fb.build_from_data(c, ds)
            server = timed_round(exp, exp.server, 1).server
            wall = cpu = examples = 0.0
            for r in range(2, rounds + 2):
                t = timed_round(exp, server, r)
                server, wall, cpu = t.server, wall + t.seconds, cpu + t.cpu_seconds
                examples += cohort_examples(exp, r)
            stats = jax.devices()[0].memory_stats() or {}
            row = {"federation": federation, "clients": len(ds.client_ids), "cohort": k, "algorithm": a,
                   "model": c.model, "model_width": c.model_width, "backend": exp.backend.name,
                   "examples": int(examples), "seconds": round(wall, 3),
                   "samples_per_second": round(examples / wall, 1), "cpu_seconds_per_sample": round(cpu / examples, 7),
                   "host_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                   "device_peak_mb": round(stats["peak_bytes_in_use"] / 2**20, 1) if "peak_bytes_in_use" in stats
                   else None}
            print(f"{federation} cohort {k:5d} {a:7s} {row['samples_per_second']:9.1f} samples/s  "
                  f"{1e3 * row['cpu_seconds_per_sample']:.3f} CPU-ms/sample  ({row['examples']} examples in "
                  f"{row['seconds']:.1f} s; host peak {row['host_peak_rss_mb']:.0f} MB)")
            out.append(row)
    for a in algorithms:
        rows = [r for r in out if r["algorithm"] == a]
        if len(rows) > 1:
            ratio = rows[-1]["samples_per_second"] / rows[0]["samples_per_second"]
            print(f"{federation} {a}: cohort {rows[-1]['cohort']} / cohort {rows[0]['cohort']} throughput {ratio:.3f}")
    return out


def report_line(r: dict) -> str:
    return (f"{r['algorithm']:7s} {r['model']:8s} {r['input']:7s} {r['backend']:5s} ({r['loop']} loop, "
            f"{r['client_threads'] or 'default'} threads) "
            f"{r['samples_per_second']:8.1f} samples/s  {1e3 * r['cpu_seconds_per_sample']:.3f} CPU-ms/sample  "
            f"(round {r['round_seconds_median']:.2f} s, {r['samples_per_round']} samples)")


def second_thread(rows: list[dict]) -> list[dict]:
    """Per algorithm timed with 1 and 2 client threads: 2-thread over 1-thread CPU-seconds per sample (the second
    thread's CPU cost; the issue's goal is at most 1.10) and samples/s (its wall-time gain)."""
    out = []
    for a in dict.fromkeys(r["algorithm"] for r in rows):
        by = {r["client_threads"]: r for r in rows if r["algorithm"] == a}
        if 1 in by and 2 in by:
            cpu = by[2]["cpu_seconds_per_sample"] / by[1]["cpu_seconds_per_sample"]
            speed = by[2]["samples_per_second"] / by[1]["samples_per_second"]
            out.append({"algorithm": a, "cpu_per_sample_2_over_1": round(cpu, 3), "samples_per_second_2_over_1":
                        round(speed, 3)})
            print(f"{a}: 2 client threads / 1: CPU per sample {cpu:.3f}, samples/s {speed:.3f}")
    return out


def compressor_costs(algorithms: list[str], rounds: int, epochs: int, dataset: str) -> list[dict]:
    """Per algorithm: seconds of a whole round vs seconds of the cohort's encode + decode + aggregation
    (``backends.finish`` of every client, jitted on its own), each after a warm-up."""
    from fedbat_jax.backends import finish, start_clients
    from fedbat_jax.federated import plan_round
    from fedbat_jax.rounds import gather

    out = []
    for a in algorithms:
        exp, server = build(make_config(a, epochs, dataset=dataset))
        learner, federation = exp.federation.learner, exp.federation
        inputs = plan_round(jax.random.PRNGKey(exp.config.seed), 1, federation.roster, federation.data.index,
                            exp.config.clients_per_round)
        done = jnp.ones(inputs.client.shape, bool)

        @jax.jit
        def upload(sent, rows):
            clients = start_clients(learner, sent, rows, inputs)
            return finish(learner, sent, learner.empty_aggregate(sent), rows, clients, inputs, done)

        def upload_of(s):
            return upload(learner.broadcast(s), gather(s.client_table, inputs.client))

        jax.block_until_ready(upload_of(server))
        round_s, finish_s = [], []
        for r in range(2, rounds + 2):
            seconds, _, server, _ = timed_round(exp, server, r)
            round_s.append(seconds)
            t0 = time.perf_counter()
            jax.block_until_ready(upload_of(server))
            finish_s.append(time.perf_counter() - t0)
        tr, fi = float(np.median(round_s)), float(np.median(finish_s))
        out.append({"algorithm": a, "round_seconds": round(tr, 3), "encode_decode_aggregate_seconds": round(fi, 4),
                    "relative_to_round": round(fi / tr, 5), "uplink_bits_per_round": exp.wire["uplink_bits"]})
        print(f"{a:12s} round {tr:6.2f} s   encode+decode+aggregate {1e3 * fi:7.1f} ms "
              f"({100 * fi / tr:.2f}% of the round)   uplink {exp.wire['uplink_bits'] / 8e6:.2f} MB/round")
    return out


def main(args, overrides: list[str]) -> int:
    configs = []
    for a in (a for a in args.algorithms.split(",") if a):
        for threads in args.threads:
            if args.config:
                c = cli.make_config(args.config, overrides, algorithm=a)
                c.client_threads = threads or c.client_threads
            else:
                c = make_config(a, args.epochs, args.backend, threads, args.dataset, args.paper, args.data_dir)
                cli.apply_overrides(c, overrides)
            configs.append(c)
    if args.natural:
        rows = cohort_bench(args.natural, args.cohorts, args.algorithms.split(","), args.rounds, args.data_dir,
                            overrides)
        report = {"platform": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
                  "machine": machine.cpu_model(), "cpu_threads": machine.cpu_threads(), "jax": jax.__version__,
                  "natural_cohorts": rows}
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
        return 0
    results = bench(configs, args.rounds) if configs else []
    resnet = (resnet_bench(args.resnet_algorithms.split(","), max(2, args.rounds // 2), args.resnet_clients,
                           args.resnet_samples, args.resnet_width, args.backend)
              if args.resnet_algorithms else [])
    report = {"platform": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
              "machine": machine.cpu_model(), "cpu_threads": machine.cpu_threads(), "jax": jax.__version__,
              "results": results, "resnet10": resnet}
    for name, rows in (("", results), ("resnet10_", resnet)):
        by = {r["algorithm"]: r for r in reversed(rows)}  # the first thread count's row
        if "fedbat" in by and "fedavg" in by:
            ratio = by["fedbat"]["round_seconds_median"] / by["fedavg"]["round_seconds_median"]
            report[f"{name}fedbat_time_over_fedavg"] = round(ratio, 3)
        for r in rows:
            print(report_line(r))
        if "fedbat" in by and "fedavg" in by:
            print(f"{rows[0]['model']}: FedBAT round time / FedAvg round time: {ratio:.3f}")
    report["second_thread"] = second_thread(results)
    if args.compressors:
        report["compressor_costs"] = compressor_costs(args.compressors.split(","), 3, args.epochs, args.dataset)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    return 0


def parser() -> cli.ArgumentParser:
    ap = cli.ArgumentParser(prog="bench", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench_results.json")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--backend", default="auto", choices=["auto", "host", "fused"])
    ap.add_argument("--threads", type=cli.int_list, default=[0],
                    help="client threads of the host rounds (0 = the default); a list (1,2) times each in turn")
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
    ap.add_argument("--natural", default="", choices=["", *NATURAL_MODELS],
                    help="instead: cohorts drawn from this natural federation (needs --data-dir)")
    ap.add_argument("--cohorts", type=cli.int_list, default=[10, 50, 200, 1000], help="with --natural")
    return ap


if __name__ == "__main__":
    sys.exit(cli.guarded("bench", lambda: main(*cli.parse_args(parser(), sys.argv[1:]))))
