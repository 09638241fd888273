"""Run a grid of (dataset, partition, algorithm, seed) and write results tables (seeds aggregated) and plots.

    # the paper's settings (experiments/configs/paper.py), 20 rounds each
    python experiments/study.py --datasets fashion_mnist --data-dir ../shared/data --rounds 20 \
        --algorithms fedavg,fedbat --out docs/results/paper_fmnist
    # the reduced CPU variants (20 clients, 5 per round, 2 local epochs, 20 rounds, ResNet-10 width 16)
    python experiments/study.py --datasets cifar10 --reduced --data-dir ../shared/data \
        --out docs/results/reduced_cifar10
    # three seeds a cell, FedBAT with and without error feedback (ALGORITHM+ef, ALGORITHM+ef21)
    python experiments/study.py --datasets fashion_mnist --reduced --seeds 0,1,2 \
        --algorithms fedbat,fedbat+ef,fedbat+ef21
    # any single config file (its partition field is set per cell)
    python experiments/study.py --config experiments/configs/mnist5k.py --partitions iid

Each run lives in WORKDIR/<dataset>[_reduced][_<model>]/<partition>/<algorithm>[_bK]/seed<S> (the model named
only when it is not the paper's for the dataset: ``--config.model=vit``) and resumes if interrupted
(a finished run is read back, not rerun, so a long grid can be split over several sittings). Writes OUT.csv
(one row per run), OUT.md (per cell: seeds, mean final accuracy and its 95% t-interval; paired differences
between methods) and OUT_<dataset>_<partition>.png (mean accuracy curves with 95% bands, against round and
against cumulative uplink MB). ``--config.FIELD=VALUE`` overrides a field for every run.

``--vmap-seeds`` runs each cell's seeds as one program (``fedbat_jax.sweep``: ``fedbat_jax.make_train`` vmapped,
the seeds split over every device) instead of one run after another; such runs keep no workdir (no resume) and
their seconds are the cell's wall time split evenly over its seeds.
"""
from __future__ import annotations

import itertools
import re
import runpy
import sys
import time
from pathlib import Path

import fedbat_jax
from fedbat_jax import cli, machine, report
from fedbat_jax.config import default_config, did_you_mean
from fedbat_jax.errors import ConfigError

CONFIGS = Path(__file__).resolve().parent / "configs"
COMPARISONS = (("fedbat", "fedavg"), ("fedbat", "stoch_binary"), ("fedbat", "eden"), ("fedbat+ef", "fedbat"),
               ("fedbat+ef21", "fedbat"), ("fedbat+ef", "stoch_binary"), ("fedbat+ef21", "stoch_binary"))


def run_name(spec: str, config) -> str:
    return spec + (f"_{config.bits}bit" if config.algorithm == "qsgd" or config.bits != 1 else "")


def statistics(rows: list[dict]) -> str:
    """The per-cell table (n; final, last-5 mean and best accuracy with 95% intervals), the paired differences of
    COMPARISONS and of every ``fedbat@FIELD=VALUE`` variant against fedbat, and every method against fedbat, per
    endpoint the rows have, paired by seed with Holm's adjustment over the cell's comparisons and seed-blocked."""
    text = ("Per cell: the number of seeds n and, for the test accuracy of the final round, the mean of the last 5 "
            "rounds and the best round, the mean over seeds with its 95% t-interval.\n\n" + report.seed_table(rows))
    variants = sorted({r["algorithm"] for r in rows if r["algorithm"].startswith("fedbat@")})
    for a, b in COMPARISONS + tuple((v, "fedbat") for v in variants):  # (a setting's effect, paired by seed)
        paired = report.paired_table(rows, a, b)
        if paired:
            text += f"\n{a} against {b}, seed by seed:\n\n" + paired
    for value, _ in report.ENDPOINTS:
        family = report.holm_table(rows, "fedbat", value)
        if family:
            text += (f"\nEvery method against fedbat ({value}), paired by seed: p from the paired t-test, adjusted by "
                     "Holm over the cell's comparisons against fedbat (its family: every method with >= 2 paired "
                     "seeds):\n\n" + family)
        blocked = report.blocked_table(rows, "fedbat", value)
        if blocked:
            text += (f"\nEvery method against fedbat ({value}), seed-blocked: the residual variance of "
                     "accuracy = method + seed + error pooled over all methods that ran the same seeds:\n\n" + blocked)
    return text


def tables_from(paths: list[str], out: Path) -> int:
    """``--tables-from``: the statistics of committed CSVs (one row per run), rendered again without running;
    OUT.csv gets all their rows (a row from before the ``model`` column names the paper's model for its dataset).
    An entry may be a glob (quote it: ``'docs/results/architectures/*.csv'``)."""
    import csv
    import glob

    needed = {"dataset", "partition", "algorithm", "seed", "final_acc", "uplink_MB"}
    files = []
    for entry in paths:
        matched = sorted(glob.glob(entry)) if glob.has_magic(entry) else [entry]
        if not matched:
            raise ConfigError(f"--tables-from {entry}: no file matches")
        files += matched
    paper = runpy.run_path(str(CONFIGS / "paper.py"))["PAPER_SETTINGS"]
    rows = []
    for path in files:
        try:
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                missing = needed - set(reader.fieldnames or ())
                if missing:
                    raise ConfigError(f"--tables-from {path}: not a study CSV (no column {', '.join(sorted(missing))})")
                for r in reader:
                    r.setdefault("model", paper.get(r["dataset"], {}).get("model", default_config().model))
                    rows.append({k: (float(v) if (k.endswith("_acc") or k == "uplink_MB") and v != "" else
                                     int(v) if k == "seed" else v) for k, v in r.items()})
        except ConfigError:
            raise
        except OSError as e:
            raise ConfigError(f"--tables-from {path}: {e.strerror or e}") from None
        except ValueError as e:
            raise ConfigError(f"--tables-from {path}: a value is not a number ({e})") from None
    text = (f"Command: `python {' '.join(sys.argv)}` ({len(files)} CSVs, {len(rows)} runs; nothing rerun)\n\n"
            + _runs_line(out.with_suffix(".md")) + statistics(rows))
    out.with_suffix(".md").parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with out.with_suffix(".csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
    print(text)
    return 0


def _runs_line(md: Path) -> str:
    """When ``--tables-from`` renders a table again over the file of the study that ran its runs, that study's
    command and machine are kept as ``Runs:`` and ``Machine:`` lines (where the numbers came from)."""
    if not md.is_file():
        return ""
    text = md.read_text()
    runs = re.search(r"^Runs: `[^`]*`.*$", text, re.M)
    command = re.search(r"Command: `(python experiments/study.py (?![^`]*--tables-from)[^`]*)`", text)
    if not (runs or command):
        return ""
    machine_line = re.search(r"^Machine: .*$", text, re.M)
    lines = [runs.group(0) if runs else f"Runs: `{command.group(1)}` (the study that ran them)"]
    return "  \n".join(lines + ([machine_line.group(0)] if machine_line else [])) + "\n\n"


def main(args, overrides: list[str]) -> int:
    out = Path(args.out)
    for parent in (out.parent, *out.parent.parents):  # checked before any run: a run's result is never lost
        if parent.exists() and not parent.is_dir():
            raise ConfigError(f"--out {args.out}: {parent} is a file, not a folder")
    if args.tables_from:
        return tables_from(args.tables_from, out)
    specs = ([args.config] if args.config else
             [f"{CONFIGS / 'paper.py'}:{d}" for d in args.datasets])
    if not specs:
        raise ConfigError("give --datasets or --config")
    paper = runpy.run_path(str(CONFIGS / "paper.py"))["PAPER_SETTINGS"]
    for d in [] if args.config else args.datasets:
        if d not in paper:
            raise ConfigError(f"--datasets takes the paper's datasets: {', '.join(paper)} (got {d!r}"
                              f"{did_you_mean(d, paper)}); for another, give --config=FILE")
    seeds = args.seeds
    rows, curves, notes = [], {}, {}
    started = time.time()
    for spec, partition, algorithm, seed in itertools.product(specs, args.partitions, args.algorithms, seeds):
        if args.vmap_seeds and seed != seeds[0]:
            continue  # ran with the cell's first seed
        method, variant = cli.method_fields(algorithm, args.bits)
        fields = dict(partition=partition, seed=seed, **method)
        if args.datasets and args.reduced:
            spec_arg = f"{spec}:{partition},reduced"
        elif args.datasets:
            spec_arg = f"{spec}:{partition}"
        else:
            spec_arg = spec
        for name, value in (("data_dir", args.data_dir), ("rounds", args.rounds), ("local_epochs", args.local_epochs)):
            if value:
                fields[name] = value
        c = cli.make_config(spec_arg, overrides + variant, **fields)  # the method's own settings win
        # another model than the paper's for the dataset (--config.model=vit) is its own setting and folder
        own = paper.get(c.dataset, {}).get("model", default_config().model)
        setting = c.dataset + ("_reduced" if args.reduced else "") + (f"_{c.model}" if c.model != own else "")
        name = run_name(algorithm, c)

        def log(line: str, setting: str = setting) -> None:
            print(line)
            if line.startswith("note: "):  # the dataset's provenance caveat (e.g. a pseudo split)
                notes.setdefault(setting, line.removeprefix("note: "))

        if args.vmap_seeds:
            runs = fedbat_jax.sweep_records(c, seeds)
        else:
            runs = {seed: fedbat_jax.run(c, Path(args.workdir) / setting / partition / name / f"seed{seed}",
                                         progress=True, log=log, allow_change=args.allow_change)}
        for seed, records in runs.items():
            s = report.summarize(records, args.target)
            rows.append({"dataset": setting, "model": c.model, "partition": partition, "algorithm": name,
                         "error_feedback": c.error_feedback, "seed": seed, "rounds": s["rounds"],
                         "local_epochs": c.local_epochs, "final_acc": s["final"], "last5_acc": s["last5"],
                         "best_acc": s["best"],
                         f"rounds_to_{args.target:g}": s["rounds_to_target"], "uplink_MB": s["uplink_mb"],
                         "train_s": s["seconds"],
                         **{name: s[name] for name, _ in report.CLIENT_ENDPOINTS if name in s}})
            curves.setdefault((setting, partition), {}).setdefault(name, []).append(records)
        report.write_table(rows, out.with_suffix(".md"), out.with_suffix(".csv"))
    for (setting, partition), results in curves.items():
        report.plot_curves(results, Path(f"{out}_{setting}_{partition}.png"), f"{setting} ({partition})")
    note = (f"Command: `python {' '.join(sys.argv)}`  \nMachine: {machine.describe()}, "
            f"wall time of this invocation {time.time() - started:.0f} s "
            f"(runs already complete in the workdir are read back, not rerun)."
            + "".join(f"  \nNote ({k}): {v}." for k, v in notes.items()))
    text = note + "\n\n" + statistics(rows)
    text += "\nEvery run:\n\n" + report.write_table(rows, out.with_suffix(".md"), out.with_suffix(".csv"))
    out.with_suffix(".md").write_text(text)
    print(text)
    return 0


def parser() -> cli.ArgumentParser:
    ap = cli.ArgumentParser(prog="study", description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", type=cli.names, default=[],
                    help="comma list of the paper's datasets (experiments/configs/paper.py)")
    ap.add_argument("--reduced", action="store_true", help="the paper configs' reduced CPU variants")
    ap.add_argument("--data-dir", default="")
    ap.add_argument("--partitions", type=cli.names, default=["iid", "dirichlet", "label_count"])
    ap.add_argument("--algorithms", type=cli.names, default=["fedavg", "fedbat"],
                    help="comma list of methods NAME[+ef|+ef21][@FIELD=VALUE...] (NAME: an algorithm, or a compressor "
                         "with FedAvg's training)")
    ap.add_argument("--bits", type=int, default=4, help="bits for qsgd")
    ap.add_argument("--seeds", type=cli.int_list, default=[0], help="comma list, e.g. 0,1,2")
    ap.add_argument("--rounds", type=int, default=0, help="0: the config's")
    ap.add_argument("--local-epochs", type=int, default=0, help="0: the config's")
    ap.add_argument("--target", type=float, default=0.8, help="accuracy for the rounds-to-target column")
    ap.add_argument("--workdir", default="runs/study")
    ap.add_argument("--out", default="docs/results/study")
    ap.add_argument("--vmap-seeds", action="store_true", help="each cell's seeds as one vmapped program")
    ap.add_argument("--allow-change", type=cli.names, default=[],
                    help="settings a resumed run may change (rounds: extend the runs of an earlier, shorter study)")
    ap.add_argument("--tables-from", type=cli.names, default=[],
                    help="comma list of study CSVs: write OUT.md's statistics from their rows, running nothing")
    return ap


if __name__ == "__main__":
    sys.exit(cli.guarded("study", lambda: main(*cli.parse_args(parser(), sys.argv[1:]))))
