"""Run a grid of (dataset, partition, algorithm, seed) and write a results table and plots.

    # the paper's settings, 20 rounds each (configs: experiments/configs/<dataset>.py)
    python experiments/study.py --datasets fashion_mnist --data-dir ../shared/data --rounds 20 \
        --algorithms fedavg,fedbat --out docs/results/paper_fmnist
    # the reduced CPU variants (20 clients, 5 per round, 2 local epochs, 20 rounds, ResNet-10 width 16)
    python experiments/study.py --datasets cifar10 --reduced --data-dir ../shared/data --out docs/results/reduced_cifar10
    # any single config file
    python experiments/study.py --config experiments/configs/mnist5k.py --partitions iid

Each run lives in WORKDIR/<dataset>[_reduced]/<partition>/<algorithm>[_bK]/seed<S> and resumes if interrupted
(a finished run is read back, not rerun). Writes OUT.md, OUT.csv and OUT_<dataset>_<partition>.png (accuracy
against round and against cumulative uplink MB). ``--config.FIELD=VALUE`` (the CLI's syntax) overrides a field
for every run.

``--vmap-seeds`` runs each cell's seeds as one ``jax.jit(jax.vmap(train))`` program (``fedbat_jax.make_train``;
the seeds of a cell share every shape) instead of one run after another; such runs keep no workdir (no
resume) and their seconds are the cell's wall time split evenly over its seeds.
"""
from __future__ import annotations

import argparse
import itertools
import platform
import sys
import time
from pathlib import Path

from report import gap_table, plot_curves, summarize, write_table

import fedbat_jax
from fedbat_jax.config import apply_overrides, load_config
from fedbat_jax.errors import FedBatError
from fedbat_jax.train import run

CONFIGS = Path(__file__).resolve().parent / "configs"


def vmapped_runs(config, seeds: list[int]) -> dict[int, list[dict]]:
    """Every seed of one config as one vmapped program; records shaped like ``train.run``'s."""
    import jax
    import numpy as np

    t0 = time.perf_counter()
    train = fedbat_jax.make_train(config)
    keys = jax.numpy.stack([jax.random.PRNGKey(s) for s in seeds])
    _, metrics = jax.block_until_ready(jax.jit(jax.vmap(train))(keys))
    seconds = (time.perf_counter() - t0) / len(seeds) / config.rounds
    metrics = {k: np.asarray(v, np.float64) for k, v in metrics.items()}
    value = lambda x: None if np.isnan(x) else float(x)  # noqa: E731
    return {seed: [{"round": r + 1, "test_accuracy": value(metrics["test_accuracy"][i, r]),
                    "test_loss": value(metrics["test_loss"][i, r]), "train_loss": float(metrics["train_loss"][i, r]),
                    "uplink_bits": int(metrics["uplink_bits"][i, r]), "round_seconds": seconds}
                   for r in range(config.rounds)] for i, seed in enumerate(seeds)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="", help="comma list of experiments/configs/<name>.py (the paper's)")
    ap.add_argument("--config", default="", help="one config file instead of --datasets")
    ap.add_argument("--reduced", action="store_true", help="the configs' reduced CPU variants")
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
    ap.add_argument("--vmap-seeds", action="store_true", help="each cell's seeds as one vmapped program")
    args, overrides = ap.parse_known_args()
    out = Path(args.out)
    configs = [args.config] if args.config else [str(CONFIGS / f"{d}.py") for d in args.datasets.split(",") if d]
    if not configs:
        ap.error("give --datasets or --config")
    rows, curves, notes = [], {}, {}
    started = time.time()
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
        for config_path, partition, algorithm, seed in itertools.product(
                configs, args.partitions.split(","), args.algorithms.split(","), seeds):
            if args.vmap_seeds and seed != seeds[0]:
                continue  # ran with the cell's first seed
            c = load_config(f"{config_path}:{partition}" + (",reduced" if args.reduced else ""))
            c.algorithm, c.seed = algorithm, seed
            if args.data_dir:
                c.data_dir = args.data_dir
            if args.rounds:
                c.rounds = args.rounds
            if args.local_epochs:
                c.local_epochs = args.local_epochs
            if algorithm == "qsgd":
                c.bits = args.bits
            unknown = apply_overrides(c, overrides)
            if unknown:
                ap.error(f"unrecognized arguments: {' '.join(unknown)} (fields are set as --config.FIELD=VALUE)")
            setting = c.dataset + ("_reduced" if args.reduced else "")
            name = algorithm + (f"_{c.bits}bit" if algorithm == "qsgd" or c.bits != 1 else "")

            def log(line: str, setting: str = setting) -> None:
                print(line)
                if line.startswith("note: "):  # the dataset's provenance caveat (e.g. a pseudo split)
                    notes.setdefault(setting, line.removeprefix("note: "))

            if args.vmap_seeds:
                runs = vmapped_runs(c, seeds)
            else:
                runs = {seed: run(c, Path(args.workdir) / setting / partition / name / f"seed{seed}", progress=True,
                                  log=log)}
            for seed, records in runs.items():
                s = summarize(records, args.target)
                rows.append({"dataset": setting, "partition": partition, "algorithm": name, "seed": seed,
                             "rounds": s["rounds"], "local_epochs": c.local_epochs, "final_acc": s["final"],
                             "best_acc": s["best"], f"rounds_to_{args.target:g}": s["rounds_to_target"],
                             "uplink_MB": s["uplink_mb"], "train_s": s["seconds"]})
                curves.setdefault((setting, partition), {})[f"{name} s{seed}"] = records
            write_table(rows, out.with_suffix(".md"), out.with_suffix(".csv"))
    except (FedBatError, ValueError, TypeError) as e:
        print(f"study: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    for (setting, partition), results in curves.items():
        plot_curves(results, Path(f"{out}_{setting}_{partition}.png"), f"{setting} ({partition})")
    note = (f"Command: `python {' '.join(sys.argv)}`  \nMachine: {platform.machine()} "
            f"{platform.processor() or ''}, wall time of this invocation {time.time() - started:.0f} s "
            f"(runs already complete in the workdir are read back, not rerun)."
            + "".join(f"  \nNote ({k}): {v}." for k, v in notes.items()))
    table = write_table(rows, out.with_suffix(".md"), out.with_suffix(".csv"), note)
    gaps = gap_table(rows)
    if gaps:
        table += "\nFedBAT against FedAvg (same setting and seed):\n\n" + gaps
        out.with_suffix(".md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
