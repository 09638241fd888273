"""Scale benchmark: round time, samples/s, peak memory and compile seconds per backend, cohort size,
federation size and device layout.

CNN4 on Fashion-MNIST split IID, 1 local epoch. Two uses:

* cohorts (the default): 1,000 clients of 60 samples, cohorts of 10, 100 and 1,000 clients a round, the
  fused backend with a fixed number of lanes;
* federations (``--num-clients 100,1000,10000 --samples-per-client 6``): the same cohort of 10 from ever
  larger federations, each client holding 6 samples (the first 6N of the training set), so the clients' work
  is equal and only the N-row table of per-client state (``--algorithm ef_signsgd``: an EF residual each)
  grows. ``--layouts 1x1,1x2,2x1,2x2`` runs each as PROCESSES x DEVICES-per-process (forced host devices on
  a CPU, ``jax.distributed`` with gloo across processes; the record is process 0's).

Each cell runs in its own process(es), so its peak memory is its own: device memory stats on GPU/TPU (peak
bytes in use), the process's peak RSS on CPU (reported with the RSS before the first round, ``base_rss_bytes``).

    python experiments/scale.py --data-dir ../shared/data --out runs/scale.json [--md runs/scale.md]
    python experiments/scale.py --quick ...   # CPU sizes: 2 timed rounds, 1 lane (vmap is slow on XLA:CPU)
    python experiments/scale.py --data-dir ../shared/data --algorithm ef_signsgd --model-width 8 --backend fused \
        --clients 10 --num-clients 100,1000,10000 --samples-per-client 6 --batch-size 6 --layouts 1x1,1x2 \
        --config.min_client_size=4

Writes a JSON list of records (``backend, clients, num_clients, processes, devices, round_s,
samples_per_s, peak_memory_bytes, table_bytes, compile_s``, ...) and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

from fedbat_jax import cli
from fedbat_jax.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def one(args, overrides: list[str]) -> dict:
    """Measure one (backend, cohort) in this process."""
    import jax

    import fedbat_jax as fb
    from fedbat_jax.cli import apply_overrides
    from fedbat_jax.timing import samples_per_round, time_rounds

    c = fb.default_config()
    c.update(algorithm=args.algorithm, dataset=args.dataset, data_dir=args.data_dir, model="cnn4",
             model_width=args.model_width, num_clients=args.num_clients, clients_per_round=args.clients,
             local_epochs=1, batch_size=args.batch_size, partition="iid", backend=args.backend,
             lanes=args.lanes, rounds=args.rounds + 1)
    apply_overrides(c, overrides)
    ds = fb.load_dataset(c.dataset, c.data_dir or None)
    if args.samples_per_client:
        n = args.samples_per_client * c.num_clients
        ds = ds._replace(x_train=ds.x_train[:n], y_train=ds.y_train[:n])
    exp = fb.build_from_data(c, ds)
    jax.block_until_ready(exp.server)
    table = sum(x.nbytes for x in jax.tree.leaves(exp.server.client_table))
    base = _rss()
    t = time_rounds(exp, args.rounds)
    samples = samples_per_round(exp)
    stats = jax.devices()[0].memory_stats() if jax.default_backend() != "cpu" else None
    peak = int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else _rss()
    backend = exp.backend
    return {"backend": backend.name, "clients": args.clients, "num_clients": c.num_clients,
            "processes": jax.process_count(), "devices": backend.devices, "table_bytes": table,
            "lanes": args.lanes, "lane_loop": backend.loop,
            "algorithm": c.algorithm, "model_width": args.model_width or 32, "dataset": args.dataset,
            "samples_per_round": samples, "round_s": round(t.median, 4), "samples_per_s": round(samples / t.median, 1),
            "compile_s": round(t.compile_s, 2), "peak_memory_bytes": peak,
            "memory_kind": "device peak_bytes_in_use" if stats else "process peak RSS", "base_rss_bytes": base,
            "platform": jax.default_backend(), "device": str(jax.devices()[0].device_kind),
            "train_loss": t.train_loss}


def _rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def table(records: list[dict]) -> str:
    """One row per cell; ``vs first`` compares it with the first cell of the same backend and layout."""
    lines = ["| backend | processes x devices | loop | clients (K) | federation (N) | client table (MB) | "
             "round (s) | vs first | samples/s | peak memory (MB) | compile (s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]

    def key(x):
        return (x["backend"], x.get("processes", 1), x.get("devices", 1))

    for r in records:
        base = next(b for b in records if key(b) == key(r))
        lines.append(f"| {r['backend']} | {r.get('processes', 1)} x {r.get('devices', 1) // r.get('processes', 1)} | "
                     f"{r['lane_loop']} | {r['clients']} | {r.get('num_clients', '')} | "
                     f"{r.get('table_bytes', 0) / 2**20:.0f} | {r['round_s']:.3f} | "
                     f"{r['round_s'] / base['round_s']:.2f}x | "
                     f"{r['samples_per_s']:.0f} | {r['peak_memory_bytes'] / 2**20:.0f} | {r['compile_s']:.1f} |")
    return "\n".join(lines)


def parser():
    ap = cli.ArgumentParser(prog="scale", description=__doc__.splitlines()[0])
    ap.add_argument("--backends", default="host,fused")
    ap.add_argument("--clients", type=cli.int_list, default="10,100,1000", help="cohort sizes")
    ap.add_argument("--num-clients", type=cli.int_list, default="1000", help="federation sizes")
    ap.add_argument("--samples-per-client", type=int, default=0,
                    help="each client's samples: the federation trains on the first N x this (0: the whole set)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--layouts", type=cli.names, default="1x1",
                    help="PROCESSESxDEVICES-per-process cells, e.g. 1x1,1x2,2x2 (forced host devices on a CPU)")
    ap.add_argument("--lanes", type=int, default=10, help="fused backend: fixed lanes")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds after the compiling one (median)")
    ap.add_argument("--dataset", default="fashion_mnist")
    ap.add_argument("--data-dir", default="")
    ap.add_argument("--algorithm", default="fedbat")
    ap.add_argument("--model-width", type=int, default=0, help="CNN4 channels (0: the paper's 32)")
    ap.add_argument("--quick", action="store_true", help="CPU sizes: 2 timed rounds, --lanes 1")
    ap.add_argument("--out", default="runs/scale.json")
    ap.add_argument("--md", default="", help="also write the table here")
    ap.add_argument("--one", nargs=3, metavar=("BACKEND", "CLIENTS", "NUM_CLIENTS"), help=argparse.SUPPRESS)
    return ap


def main(args, overrides: list[str]) -> int:
    if args.quick:
        args.rounds, args.lanes = min(args.rounds, 2), 1
    if args.one:
        args.backend, args.clients, args.num_clients = args.one[0], int(args.one[1]), int(args.one[2])
        record = one(args, overrides)
        import jax

        if jax.process_index() == 0:
            print("RECORD " + json.dumps(record), flush=True)
        return 0
    layouts = [_layout(text) for text in args.layouts]
    records = []
    passthrough = ["--lanes", str(args.lanes), "--rounds", str(args.rounds), "--dataset", args.dataset,
                   "--data-dir", args.data_dir, "--algorithm", args.algorithm, "--model-width", str(args.model_width),
                   "--samples-per-client", str(args.samples_per_client), "--batch-size", str(args.batch_size),
                   *overrides]
    for backend in args.backends.split(","):
        for processes, devices in layouts:
            for n in args.num_clients:
                for k in args.clients:
                    cell = [sys.executable, __file__, "--one", backend, str(k), str(n)] + passthrough
                    rec, err = _measure(cell, processes, devices)
                    if rec is None:
                        print(err or f"scale: error: {backend} {processes}x{devices} N={n} K={k} failed",
                              file=sys.stderr)
                        return 2
                    records.append(rec)
                    print(f"{backend:6s} {processes}x{devices} N={n:6d} K={k:5d}: round {rec['round_s']:.3f} s, "
                          f"{rec['samples_per_s']:8.0f} samples/s, peak {rec['peak_memory_bytes'] / 2**20:7.0f} MB, "
                          f"compile {rec['compile_s']:.1f} s", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(records, indent=2) + "\n")
    md = table(records)
    print(md)
    if args.md:
        Path(args.md).write_text(md + "\n")
    return 0


def _layout(text: str) -> tuple[int, int]:
    processes, sep, devices = text.partition("x")
    if not (sep and processes.isdigit() and devices.isdigit() and int(processes) >= 1 and int(devices) >= 1):
        raise ConfigError(f"--layouts takes PROCESSESxDEVICES items such as 1x2, got {text!r}")
    return int(processes), int(devices)


def _measure(cell: list[str], processes: int, devices: int) -> tuple[dict | None, str]:
    """Run one cell as ``processes`` processes of ``devices`` devices each; process 0's record, or an error line."""
    from fedbat_jax.launch import free_port, job_flags, process_env, stop

    address = f"127.0.0.1:{free_port()}"
    procs = [subprocess.Popen(cell + job_flags(address, processes, i),
                              env=process_env(i, devices), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(processes)]
    try:
        out, err = procs[0].communicate()
        for p in procs[1:]:
            p.wait()
    finally:
        stop(procs)
    rec = [line[7:] for line in out.splitlines() if line.startswith("RECORD ")]
    if any(p.returncode != 0 for p in procs) or not rec:
        lines = err.strip().splitlines()
        return None, lines[-1] if lines else ""
    return json.loads(rec[0]), ""


if __name__ == "__main__":
    sys.exit(cli.guarded("scale", lambda: main(*cli.parse_args(parser(), sys.argv[1:]))))
