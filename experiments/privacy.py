"""Privacy-utility curves (issue 42): does 1-bit learned binarization survive user-level DP noise?

    python experiments/privacy.py --data-dir ../shared/data --workdir ../runs/privacy --out docs/results/privacy
    python experiments/privacy.py --data-dir D --workdir W --out O --epsilons 4 --seeds 0 --config.rounds=3  # a look

The design, fixed before the runs (``experiments/configs/privacy.py`` is the federation):

* Fashion-MNIST over N = 1,000 IID clients (60 examples each), logistic regression, Poisson sampling with
  q = 0.1 (100 clients a round in expectation), 2 local epochs of batch 16, 50 rounds, delta = 1 / N;
* methods: FedAvg (float32 upload), FedBAT (learned step size), stochastic binarization, EDEN (1 bit each);
* epsilon in {1, 4, 8} (the noise multiplier solved for it by dp-accounting's RDP accountant, Poisson,
  add-or-remove-one-client) and no DP (the same sampling and uniform weights, nothing clipped or noised);
* the clip: adaptive (Andrew et al.: the median decoded-upload norm, initial 0.2, eta 0.2, count noise
  E[K] / 20) for every method alike, so no method gets tuning the others do not;
* seeds 0, 1, 2 (each seed: the model's initialisation, the cohorts, the clients' and the server's noise);
* endpoint: the mean test accuracy over the last 5 rounds (primary); the final round (secondary); at each
  epsilon every method minus FedBAT, paired by seed, Holm over the three comparisons;
* the confound tried: a fixed clip instead, the same grid {0.05, 0.2, 0.8} for every method at epsilon 4 (equal
  tuning effort), each method at its best clip on the same seeds (optimistic for every method alike).

Added after the first results showed no method losing a measurable point at epsilon 1 (so the design above
could not show an interaction): ``--low-epsilons`` (default 0.25, 0.5), one more program per method with the
same settings at those epsilons, to find where DP noise starts to cost accuracy and whether it costs the 1-bit
uploads more. (Epsilon 0.125 needs z = 12.3, which adaptive clipping's count noise E[K] / 20 = 5 cannot pair
with: z < 2 sigma_b is refused.)

Each (method, part) is one ``fb.sweep`` program over its seeds x noise multipliers (x clips), kept in
``W/<method>/<part>.json`` so a finished program is read back. Writes ``OUT.md``, ``OUT_runs.csv`` (one row per
run), ``OUT_curves.csv.gz`` (per-seed accuracy and clip every round) and ``OUT.png``.
"""
from __future__ import annotations

import csv
import gzip
import json
import sys
import time
from pathlib import Path

import numpy as np

import fedbat_jax as fb
from fedbat_jax import cli, machine, privacy, report
from fedbat_jax.errors import ConfigError

METHODS = ("fedavg", "fedbat", "stoch_binary", "eden")
EPSILONS = (1.0, 4.0, 8.0)
LOW_EPSILONS = (0.25, 0.5)  # added after the first results (see above)
SEEDS = (0, 1, 2)
CLIPS = (0.05, 0.2, 0.8)  # the confound's fixed clips, at CONFOUND_EPSILON
CONFOUND_EPSILON = 4.0
INITIAL_CLIP = 0.2
REFERENCE = "fedbat"
CONFIG = str(Path(__file__).resolve().parent / "configs" / "privacy.py")
ENDPOINTS = (("last5_acc", "last-5 mean"), ("final_acc", "final"))


def parser() -> cli.ArgumentParser:
    ap = cli.ArgumentParser(prog="privacy", description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="")
    ap.add_argument("--workdir", default="", help="each program's records are kept here (a rerun reads them back)")
    ap.add_argument("--out", default="docs/results/privacy")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--epsilons", default=",".join(f"{e:g}" for e in EPSILONS))
    ap.add_argument("--low-epsilons", default=",".join(f"{e:g}" for e in LOW_EPSILONS),
                    help="the extension's epsilons, one more program ('' = none)")
    ap.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    ap.add_argument("--no-confound", action="store_true", help="skip the fixed-clip programs")
    return ap


def base_config(method: str, args, overrides: list[str]):
    fields, variant = cli.method_fields(method)
    fields["dp_clip"] = INITIAL_CLIP
    if args.data_dir:
        fields["data_dir"] = args.data_dir
    return cli.make_config(CONFIG, variant + overrides, **fields)


def noise_multipliers(config, epsilons: list[float]) -> dict[float, float]:
    """Each epsilon's noise multiplier after ``config.rounds`` rounds at delta 1/N (dp-accounting's calibration)."""
    accountant = privacy.accountant_for(config, config.num_clients, 1.0)
    return {e: privacy.solve_noise_multiplier(e, accountant, config.rounds) for e in epsilons}


def parts(z: dict[float, float], epsilons: list[float], low: list[float], confound: bool,
          ) -> dict[str, tuple[dict, dict]]:
    """The programs of one method: name -> (config changes, grid); ``z``: each epsilon's noise multiplier."""
    out = {"dp": ({}, {"dp_noise_multiplier": [z[e] for e in epsilons]}),
           "nodp": ({"dp_clip": 0.0, "dp_adaptive_quantile": 0.0}, None)}
    if low:
        out["dp_low"] = ({}, {"dp_noise_multiplier": [z[e] for e in low]})
    if confound and CONFOUND_EPSILON in z:
        out["fixed_clip"] = ({"dp_adaptive_quantile": 0.0},
                             {"dp_noise_multiplier": [z[CONFOUND_EPSILON]], "dp_clip": list(CLIPS)})
    return out


def run_part(config, changes: dict, grid: dict | None, seeds: list[int], kept: Path) -> list[dict]:
    """A program's runs (``fb.sweep``), read back from ``kept`` when that file holds this very program (its
    settings, grid and seeds): one dict per run with its seed, settings, per-round accuracy, clip and epsilon."""
    c = config.copy_and_resolve_references()
    c.update(**changes)
    key = json.dumps({"config": {k: v for k, v in c.items() if k != "data_dir"}, "grid": grid, "seeds": seeds},
                     sort_keys=True)
    if kept.is_file():
        stored = json.loads(kept.read_text())
        if stored.get("key") == key:
            return stored["runs"]
    t0 = time.perf_counter()
    records = fb.sweep(c, seeds, grid)
    seconds = time.perf_counter() - t0
    runs = [{"seed": r["seed"], "settings": r["settings"], "seconds": seconds / len(records),
             **{name: np.asarray(r["metrics"][name], np.float64).tolist()
                for name in ("test_accuracy", "uplink_bits", "dp_clip", "epsilon", "cohort_size")
                if name in r["metrics"]}} for r in records]
    kept.parent.mkdir(parents=True, exist_ok=True)
    kept.write_text(json.dumps({"key": key, "runs": runs}))
    return runs


def row_of(method: str, part: str, run: dict, epsilons: dict[float, float]) -> dict:
    acc = run["test_accuracy"]
    z = run["settings"].get("dp_noise_multiplier")
    eps = "none" if part == "nodp" else f"{min(epsilons, key=lambda e: abs(epsilons[e] - z)):g}"
    clip = "adaptive" if part.startswith("dp") else ("-" if part == "nodp" else f"{run['settings']['dp_clip']:g}")
    return dict(algorithm=method, epsilon=eps, clip=clip, seed=run["seed"], noise_multiplier=z or 0.0,
                epsilon_reached=run["epsilon"][-1] if "epsilon" in run else None,
                last5_acc=float(np.mean(acc[-5:])), final_acc=acc[-1], best_acc=max(acc),
                final_clip=run["dp_clip"][-1] if "dp_clip" in run else None,
                uplink_MB=sum(run["uplink_bits"]) / 8e6)


def analysis(rows: list[dict], federation: str) -> str:
    """The tables: each (method, epsilon) over seeds, the adaptive clips reached, every method minus FedBAT per
    epsilon (Holm), and the fixed-clip confound. ``federation``: its label in the comparisons."""
    methods = list(dict.fromkeys(r["algorithm"] for r in rows))
    main_rows = sorted([dict(r, dataset=federation, partition=f"epsilon {r['epsilon']}") for r in rows
                        if r["clip"] in ("adaptive", "-")],
                       key=lambda r: (methods.index(r["algorithm"]), _epsilon_order(r["epsilon"]), str(r["seed"])))
    text = ("Test accuracy per method and epsilon (adaptive clip; 'none': no DP), mean over seeds with its 95% "
            "t-interval; final_clip: the adaptive clip after the last round (it follows the median norm of the "
            "method's decoded uploads):\n\n")
    text += report.seed_table(main_rows, keys=("algorithm", "partition"), endpoints=ENDPOINTS).replace(
        "| algorithm | partition |", "| algorithm | epsilon |", 1)
    clips = {}
    for r in main_rows:
        if r["final_clip"] is not None:
            clips.setdefault((r["algorithm"], r["partition"]), []).append(r["final_clip"])
    if clips:
        text += "\n| algorithm | epsilon | final clip (mean over seeds) |\n|---|---|---|\n" + "\n".join(
            f"| {a} | {p.removeprefix('epsilon ')} | {np.mean(v):.4g} |" for (a, p), v in clips.items()) + "\n"
    cost = [dict(r, dataset=federation, partition=r["algorithm"], algorithm=f"epsilon {r['epsilon']}")
            for r in main_rows]
    text += ("\nWhat DP costs each method: its accuracy at each epsilon minus its own accuracy without DP (last-5 "
             "mean, points), paired by seed, Holm over the method's epsilons:\n\n" + report.holm_table(
                 cost, "epsilon none", ENDPOINTS[0][0]).replace(
                 "| dataset | partition | method | seeds | method - epsilon none",
                 "| federation | method | epsilon | seeds | epsilon - none"))
    for value, label in ENDPOINTS:
        family = report.holm_table(main_rows, REFERENCE, value)
        kind = "primary" if value == ENDPOINTS[0][0] else "secondary"
        text += (f"\n{label} ({kind}): every method minus {REFERENCE} at each epsilon, paired by seed, p from the "
                 "paired t-test, Holm over the epsilon's comparisons:\n\n" + family.replace(
                     "| dataset | partition |", "| federation | epsilon |"))
    fixed = [r for r in rows if r["clip"] not in ("adaptive", "-")]
    if fixed:
        text += (f"\nThe confound: a fixed clip at epsilon {CONFOUND_EPSILON:g}, the same grid for every method "
                 "(last-5 mean [95%] over seeds):\n\n| algorithm | " + " | ".join(f"clip {c:g}" for c in CLIPS)
                 + " | adaptive |\n|---|" + "---|" * (len(CLIPS) + 1) + "\n")
        for m in dict.fromkeys(r["algorithm"] for r in fixed):
            cells = []
            for c in [f"{c:g}" for c in CLIPS] + ["adaptive"]:
                v = [r["last5_acc"] for r in rows if r["algorithm"] == m and r["clip"] == c
                     and r["epsilon"] == f"{CONFOUND_EPSILON:g}"]
                mean, lo, hi = report.t_interval(v) if v else (np.nan,) * 3
                cells.append(f"{mean:.4f} [{lo:.4f}, {hi:.4f}]" if v else "-")
            text += f"| {m} | " + " | ".join(cells) + " |\n"
    return text


def _epsilon_order(label: str) -> float:
    return float("inf") if label == "none" else float(label)


def plot(rows: list[dict], path: Path, epsilons: list[float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = list(epsilons) + [max(epsilons) * 4]  # "none" drawn at the right
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for m in dict.fromkeys(r["algorithm"] for r in rows):
        means, los, his = [], [], []
        for e in [f"{e:g}" for e in epsilons] + ["none"]:
            v = [r["last5_acc"] for r in rows if r["algorithm"] == m and r["epsilon"] == e
                 and r["clip"] in ("adaptive", "-")]
            mean, lo, hi = report.t_interval(v)
            means.append(mean), los.append(mean - lo), his.append(hi - mean)
        ax.errorbar(xs, means, yerr=[los, his], marker="o", capsize=3, label=m)
    ax.set_xscale("log")
    ax.set_xticks(xs, [f"{e:g}" for e in epsilons] + ["no DP"])
    ax.set(xlabel="epsilon at delta = 1/N", ylabel="test accuracy, last-5 mean (95% over seeds)",
           title="Fashion-MNIST, 1,000 clients, logistic regression")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(args, overrides: list[str]) -> int:
    if not args.workdir:
        raise ConfigError("give --workdir (each program's records are kept there, so a rerun reads them back)")
    methods = [m for m in args.methods.split(",") if m]
    if not methods:
        raise ConfigError("--methods is empty: give at least one (e.g. fedavg,fedbat)")
    try:
        epsilons = [float(e) for e in args.epsilons.split(",") if e]
        low = [float(e) for e in args.low_epsilons.split(",") if e]
        seeds = [int(s) for s in args.seeds.split(",") if s]
    except ValueError as e:
        raise ConfigError(f"--epsilons takes numbers and --seeds integers ({e})") from None
    t0, rows, curves, compute = time.time(), [], [], 0.0
    first = None  # the first method's config and noise multipliers, for the header
    for method in methods:
        config = base_config(method, args, overrides)
        z = noise_multipliers(config, epsilons + low)
        first = first or (config, z)
        for part, (changes, grid) in parts(z, epsilons, low, not args.no_confound).items():
            print(f"{method} {part}: {grid or 'no DP'}", flush=True)
            for run in run_part(config, changes, grid, seeds, Path(args.workdir) / method / f"{part}.json"):
                row = row_of(method, part, run, z)
                rows.append(row)
                compute += run["seconds"]
                for r, acc in enumerate(run["test_accuracy"]):
                    curves.append((method, row["epsilon"], row["clip"], run["seed"], r + 1, f"{acc:.6e}",
                                   f"{run['dp_clip'][r]:.6e}" if "dp_clip" in run else ""))
    out = Path(args.out)
    report.write_rows(out.with_name(out.name + "_runs.csv"), rows)
    with gzip.open(out.with_name(out.name + "_curves.csv.gz"), "wt", newline="") as f:
        w = csv.writer(f)
        w.writerow(("algorithm", "epsilon", "clip", "seed", "round", "test_accuracy", "dp_clip"))
        w.writerows(curves)
    everything = sorted(epsilons + low)
    plot(rows, out.with_suffix(".png"), everything)
    c, zs = first
    federation = (f"{c.dataset}, {c.num_clients} clients ({c.partition}), {c.model}, Poisson q = "
                  f"{c.clients_per_round / c.num_clients:g}, {c.local_epochs} local epochs of batch {c.batch_size}, "
                  f"{c.rounds} rounds, delta = {c.dp_delta or 1 / c.num_clients:g}")
    header = (f"Command: `python {' '.join(sys.argv)}`  \nMachine: {machine.describe()}, wall time "
              f"{time.time() - t0:.0f} s (finished programs are read back; the programs' own time {compute:.0f} s)  "
              f"\nFederation: {federation}; seeds "
              f"{seeds}; noise multipliers " + ", ".join(f"epsilon {e:g}: {zs[e]:.4f}" for e in everything)
              + "\n\n")
    text = analysis(rows, f"{c.dataset}-{c.num_clients}")
    out.with_suffix(".md").write_text(header + text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(cli.guarded("privacy", lambda: main(*cli.parse_args(parser(), sys.argv[1:])), resumes=False))
