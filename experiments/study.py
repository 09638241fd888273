"""Run a grid of (partition, algorithm, seed) and write a results table and plots.

    python experiments/study.py --config experiments/configs/fashion_mnist.py --data-dir ../shared/data \
        --partitions iid,dirichlet,label_count --algorithms fedavg,fedbat,signsgd,ef_signsgd,stoch_binary,qsgd \
        --rounds 20 --local-epochs 1 --out docs/results/compressors_fmnist

Each run lives in WORKDIR/<partition>/<algorithm>[_bK]/seed<S> and resumes if interrupted. Writes
OUT.md, OUT.csv and OUT_<partition>.png (accuracy against round and against cumulative uplink MB).
``--set FIELD=VALUE`` overrides any config field for every run (as ``--config.FIELD`` does).
"""
from __future__ import annotations

import argparse
import importlib.util
import platform
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
from report import plot_curves, summarize, write_table  # noqa: E402

from fedbat_jax.errors import FedBatError  # noqa: E402
from fedbat_jax.train import run  # noqa: E402


def load_config(path: str, arg: str):
    spec = importlib.util.spec_from_file_location("experiment_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


def apply_overrides(c, overrides: list[str]) -> None:
    for item in overrides:
        field, _, value = item.partition("=")
        if field not in c:
            raise FedBatError(f"unknown config field {field!r} in --set {item}")
        current = c[field]
        c[field] = value.lower() in ("1", "true") if isinstance(current, bool) else type(current)(value)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="experiments/configs/fashion_mnist.py")
    ap.add_argument("--data-dir", default="")
    ap.add_argument("--partitions", default="iid,dirichlet,label_count")
    ap.add_argument("--algorithms", default="fedavg,fedbat")
    ap.add_argument("--bits", type=int, default=4, help="bits for qsgd")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--rounds", type=int, default=0, help="0: the config's")
    ap.add_argument("--local-epochs", type=int, default=0, help="0: the config's")
    ap.add_argument("--target", type=float, default=0.8, help="accuracy for the rounds-to-target column")
    ap.add_argument("--workdir", default="runs/study")
    ap.add_argument("--out", default="docs/results/study")
    ap.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE")
    args = ap.parse_args()
    out = Path(args.out)
    rows, curves = [], {}
    started = time.time()
    try:
        for partition in args.partitions.split(","):
            for algorithm in args.algorithms.split(","):
                for seed in [int(s) for s in args.seeds.split(",")]:
                    c = load_config(args.config, partition)
                    c.algorithm, c.seed = algorithm, seed
                    if args.data_dir:
                        c.data_dir = args.data_dir
                    if args.rounds:
                        c.rounds = args.rounds
                    if args.local_epochs:
                        c.local_epochs = args.local_epochs
                    if algorithm == "qsgd":
                        c.bits = args.bits
                    apply_overrides(c, args.set)
                    name = algorithm + (f"_{c.bits}bit" if algorithm == "qsgd" or c.bits != 1 else "")
                    records = run(c, Path(args.workdir) / c.dataset / partition / name / f"seed{seed}",
                                  progress=True, log=print)
                    s = summarize(records, args.target)
                    rows.append({"dataset": c.dataset, "partition": partition, "algorithm": name, "seed": seed,
                                 "rounds": s["rounds"], "local_epochs": c.local_epochs, "final_acc": s["final"],
                                 "best_acc": s["best"], f"rounds_to_{args.target:g}": s["rounds_to_target"],
                                 "uplink_MB": s["uplink_mb"], "train_s": s["seconds"]})
                    curves.setdefault(partition, {})[f"{name} s{seed}"] = records
                    write_table(rows, out.with_suffix(".md"), out.with_suffix(".csv"))
    except (FedBatError, ValueError, TypeError) as e:
        print(f"study: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    for partition, results in curves.items():
        plot_curves(results, Path(f"{out}_{partition}.png"), f"{rows[0]['dataset']} ({partition})")
    note = (f"Command: `python {' '.join(sys.argv)}`  \nMachine: {platform.machine()} "
            f"{platform.processor() or ''}, wall time of this invocation {time.time() - started:.0f} s "
            f"(runs already complete in the workdir are read back, not rerun).")
    print(write_table(rows, out.with_suffix(".md"), out.with_suffix(".csv"), note))
    return 0


if __name__ == "__main__":
    sys.exit(main())
