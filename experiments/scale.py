"""Scale benchmark: training samples/s, peak memory and compile seconds per execution and cohort size.

CNN4 on Fashion-MNIST split IID over 1,000 clients (60 samples each), 1 local epoch, cohorts of 10, 100
and 1,000 clients a round, the fused execution with a fixed number of lanes. Each (execution, cohort)
runs in its own process, so its peak memory is its own: device memory stats on GPU/TPU (peak bytes in
use), the process's peak RSS on CPU (reported with the RSS before the first round, ``base_rss_bytes``).

    python experiments/scale.py --data-dir ../shared/data --out runs/scale.json [--md runs/scale.md]
    python experiments/scale.py --quick ...   # CPU sizes: 2 timed rounds, 1 lane (vmap is slow on XLA:CPU)

Writes a JSON list of records (``execution, clients, samples_per_s, peak_memory_bytes, compile_s``, ...)
and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one(args, overrides: list[str]) -> dict:
    """Measure one (execution, cohort) in this process."""
    import jax

    import fedbat_jax as fb
    from fedbat_jax.config import apply_overrides
    from fedbat_jax.timing import samples_per_round, time_rounds

    c = fb.default_config()
    c.update(algorithm=args.algorithm, dataset=args.dataset, data_dir=args.data_dir, model="cnn4",
             model_width=args.model_width, num_clients=args.num_clients, clients_per_round=args.clients,
             local_epochs=1, batch_size=64, partition="iid", execution=args.execution, lanes=args.lanes,
             rounds=args.rounds + 1)
    apply_overrides(c, overrides)
    exp = fb.build(c)
    jax.block_until_ready(exp.server)
    base = _rss()
    t = time_rounds(exp, args.rounds)
    samples = samples_per_round(exp)
    stats = jax.devices()[0].memory_stats() if jax.default_backend() != "cpu" else None
    peak = int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else _rss()
    execution = exp.round.execution
    return {"execution": execution.name, "clients": args.clients, "lanes": args.lanes, "lane_loop": execution.loop,
            "algorithm": c.algorithm, "model_width": args.model_width or 32, "dataset": args.dataset,
            "samples_per_round": samples, "round_s": round(t.median, 4), "samples_per_s": round(samples / t.median, 1),
            "compile_s": round(t.compile_s, 2), "peak_memory_bytes": peak,
            "memory_kind": "device peak_bytes_in_use" if stats else "process peak RSS", "base_rss_bytes": base,
            "backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind),
            "train_loss": t.train_loss}


def _rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def table(records: list[dict]) -> str:
    lines = ["| execution | clients | lanes | samples/s | vs 10 clients | peak memory (MB) | compile (s) |",
             "|---|---|---|---|---|---|---|"]
    for r in records:
        base = next((b for b in records if b["execution"] == r["execution"] and b["clients"] == min(
            x["clients"] for x in records if x["execution"] == r["execution"])), r)
        lanes = r['lanes'] if r['execution'] == 'fused' else '-'
        lines.append(f"| {r['execution']} | {r['clients']} | {lanes} | {r['samples_per_s']:.0f} | "
                     f"{r['samples_per_s'] / base['samples_per_s']:.2f}x | {r['peak_memory_bytes'] / 2**20:.0f} | "
                     f"{r['compile_s']:.1f} |")
    return "\n".join(lines)


def parser():
    from fedbat_jax import cli

    ap = cli.ArgumentParser(prog="scale", description=__doc__.splitlines()[0])
    ap.add_argument("--executions", default="host,fused")
    ap.add_argument("--clients", default="10,100,1000", help="cohort sizes")
    ap.add_argument("--num-clients", type=int, default=1000, help="clients in the federation")
    ap.add_argument("--lanes", type=int, default=10, help="fused execution: fixed lanes")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds after the compiling one (median)")
    ap.add_argument("--dataset", default="fashion_mnist")
    ap.add_argument("--data-dir", default="")
    ap.add_argument("--algorithm", default="fedbat")
    ap.add_argument("--model-width", type=int, default=0, help="CNN4 channels (0: the paper's 32)")
    ap.add_argument("--quick", action="store_true", help="CPU sizes: 2 timed rounds, --lanes 1")
    ap.add_argument("--out", default="runs/scale.json")
    ap.add_argument("--md", default="", help="also write the table here")
    ap.add_argument("--one", nargs=2, metavar=("EXECUTION", "CLIENTS"), help=argparse.SUPPRESS)
    return ap


def main(args, overrides: list[str]) -> int:
    if args.quick:
        args.rounds, args.lanes = min(args.rounds, 2), 1
    if args.one:
        args.execution, args.clients = args.one[0], int(args.one[1])
        print("RECORD " + json.dumps(one(args, overrides)), flush=True)
        return 0
    records = []
    passthrough = ["--num-clients", str(args.num_clients), "--lanes", str(args.lanes), "--rounds", str(args.rounds),
                   "--dataset", args.dataset, "--data-dir", args.data_dir, "--algorithm", args.algorithm,
                   "--model-width", str(args.model_width)] + overrides
    for execution in args.executions.split(","):
        for k in (int(x) for x in args.clients.split(",")):
            done = subprocess.run([sys.executable, __file__, "--one", execution, str(k)] + passthrough,
                                  capture_output=True, text=True)
            rec = [line[7:] for line in done.stdout.splitlines() if line.startswith("RECORD ")]
            if done.returncode != 0 or not rec:
                err = done.stderr.strip().splitlines()
                print(err[-1] if err else f"scale: error: {execution} x {k} failed", file=sys.stderr)
                return 2
            records.append(json.loads(rec[0]))
            r = records[-1]
            print(f"{r['execution']:6s} {k:5d} clients: {r['samples_per_s']:8.0f} samples/s, "
                  f"peak {r['peak_memory_bytes'] / 2**20:7.0f} MB, compile {r['compile_s']:.1f} s", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(records, indent=2) + "\n")
    md = table(records)
    print(md)
    if args.md:
        Path(args.md).write_text(md + "\n")
    return 0


if __name__ == "__main__":
    from fedbat_jax import cli

    sys.exit(cli.guarded("scale", lambda: main(*cli.parse_args(parser(), sys.argv[1:]))))
