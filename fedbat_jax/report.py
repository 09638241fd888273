"""For the study scripts (experiments/): summarize a run's records, aggregate seeds, write tables, plot accuracy
curves."""
from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import numpy as np


def t_interval(values) -> tuple[float, float, float]:
    """Mean and 95% t-interval of the mean over seeds (the mean itself twice for a single value)."""
    v = np.asarray(values, np.float64)
    mean = float(v.mean())
    if len(v) < 2:
        return mean, mean, mean
    from scipy import stats

    half = float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return mean, mean - half, mean + half


ENDPOINTS = (("final_acc", "final"), ("last5_acc", "last-5 mean"), ("best_acc", "best"))


def _present(endpoints, rows: list[dict]) -> list[tuple[str, str]]:
    """The endpoints some row has (CSVs of earlier studies lack ``last5_acc``: their cells show "-")."""
    return [(v, name) for v, name in endpoints if any(r.get(v) not in (None, "") for r in rows)]


def _has(runs: list[dict], v: str) -> bool:
    return all(r.get(v) not in (None, "") for r in runs)


def seed_table(rows: list[dict], keys=("dataset", "partition", "algorithm"), endpoints=ENDPOINTS) -> str:
    """Markdown: per cell (``keys``), the number of seeds and, per endpoint (final round, mean of the last 5
    evaluated rounds, best round), the mean over seeds with its 95% t-interval."""
    endpoints = _present(endpoints, rows)
    cells: dict[tuple, list[dict]] = {}
    for r in rows:
        cells.setdefault(tuple(r[k] for k in keys), []).append(r)
    lines = ["| " + " | ".join(keys) + " | n | " + " | ".join(f"{name} [95%]" for _, name in endpoints)
             + " | uplink MB |", "|" + "---|" * (len(keys) + len(endpoints) + 2)]
    for cell, runs in cells.items():
        values = []
        for v, _ in endpoints:
            if not _has(runs, v):
                values.append("-")
                continue
            mean, lo, hi = t_interval([r[v] for r in runs])
            values.append(f"{mean:.4f} [{lo:.4f}, {hi:.4f}]" if len(runs) > 1 else f"{mean:.4f}")
        lines.append("| " + " | ".join(map(str, cell)) + f" | {len(runs)} | " + " | ".join(values)
                     + f" | {runs[0]['uplink_MB']:.2f} |")
    return "\n".join(lines) + "\n"


def paired_table(rows: list[dict], a: str, b: str, endpoints=ENDPOINTS) -> str:
    """Markdown: per (dataset, partition), ``a`` minus ``b`` in points over the seeds both ran (paired: the same
    seed draws the same model and cohorts), mean and 95% t-interval per endpoint; "" when no seed has both."""
    endpoints = _present(endpoints, rows)
    by = {(r["dataset"], r["partition"], r["algorithm"], r["seed"]): r for r in rows}
    settings = list(dict.fromkeys((r["dataset"], r["partition"]) for r in rows))
    lines = []
    for d, p in settings:
        seeds = sorted(s for (d2, p2, alg, s) in by if (d2, p2, alg) == (d, p, a) and (d, p, b, s) in by)
        if not seeds:
            continue
        cells = []
        for v, _ in endpoints:
            if not _has([by[(d, p, x, s)] for x in (a, b) for s in seeds], v):
                cells.append("-")
                continue
            mean, lo, hi = t_interval([100 * (by[(d, p, a, s)][v] - by[(d, p, b, s)][v]) for s in seeds])
            cells.append(f"{mean:+.2f} [{lo:+.2f}, {hi:+.2f}]" if len(seeds) > 1 else f"{mean:+.2f}")
        lines.append(f"| {d} | {p} | {len(seeds)} | " + " | ".join(cells) + " |")
    if not lines:
        return ""
    head = ("| dataset | partition | seeds | "
            + " | ".join(f"{a} - {b}, {name} (points) [95%]" for _, name in endpoints)
            + " |\n|" + "---|" * (3 + len(endpoints)) + "\n")
    return head + "\n".join(lines) + "\n"


def holm(pvalues) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (Holm 1979): the i-th smallest times ``m - i + 1``, made
    non-decreasing in that order and capped at 1; reject where the adjusted p is below the level."""
    p = np.asarray(pvalues, np.float64)
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate(p[order] * (len(p) - np.arange(len(p)))))
    out = np.empty_like(adjusted)
    out[order] = adjusted
    return out.tolist()


def holm_table(rows: list[dict], reference: str, value: str = "final_acc") -> str:
    """Markdown: per (dataset, partition), every method minus ``reference`` on one endpoint, paired by seed over the
    seeds both ran (points, mean and 95% t-interval), the paired t-test's two-sided p, and Holm's adjusted p over
    the family of the cell's comparisons against ``reference`` (methods with >= 2 paired seeds); "" when none."""
    from scipy import stats

    out = []
    for d, p in dict.fromkeys((r["dataset"], r["partition"]) for r in rows):
        cell = {(r["algorithm"], r["seed"]): r for r in rows if (r["dataset"], r["partition"]) == (d, p)}
        ref = {s: r for (m, s), r in cell.items() if m == reference and r.get(value) not in (None, "")}
        family = []
        for m in dict.fromkeys(m for m, _ in cell):
            seeds = sorted(s for (m2, s), r in cell.items() if m2 == m and s in ref and r.get(value) not in (None, ""))
            if m == reference or len(seeds) < 2:
                continue
            diffs = np.array([100 * (cell[(m, s)][value] - ref[s][value]) for s in seeds])
            mean, lo, hi = t_interval(diffs)
            pval = float(stats.ttest_1samp(diffs, 0.0).pvalue) if np.ptp(diffs) > 0 else float(mean == 0)
            family.append((m, len(seeds), mean, lo, hi, pval))
        for (m, n, mean, lo, hi, pval), adj in zip(family, holm([f[-1] for f in family])):
            out.append(f"| {d} | {p} | {m} | {n} | {mean:+.2f} [{lo:+.2f}, {hi:+.2f}] | {pval:.3g} | {adj:.3g} "
                       f"| {'yes' if adj < 0.05 else 'no'} |")
    if not out:
        return ""
    return (f"| dataset | partition | method | seeds | method - {reference} ({value}, points) [95%] | p | Holm p | "
            "Holm < 0.05 |\n|---|---|---|---|---|---|---|---|\n" + "\n".join(out) + "\n")


def blocked_table(rows: list[dict], reference: str, value: str = "final_acc") -> str:
    """Markdown: per (dataset, partition), every method minus ``reference`` in points, with a 95% interval from
    the seed-blocked two-way model ``value = method + seed + error`` over all the methods that ran the same seeds
    (the residual variance pooled over every method, ``(m - 1)(n - 1)`` degrees of freedom), so a difference's
    interval does not rest on its own 2 degrees of freedom at n = 3; a (dataset, partition) without a block
    of >= 2 seeds, or whose rows lack ``value``, is left out ("" when none is left). The block is the reference's seeds;
    a method that did not run all of them (a one-seed diagnosis run) is left out of the cell, not the cell itself."""
    from scipy import stats

    out = []
    for d, p in dict.fromkeys((r["dataset"], r["partition"]) for r in rows):
        cell = [r for r in rows if (r["dataset"], r["partition"]) == (d, p)]
        if not _has(cell, value):
            continue
        ran = {m: {r["seed"] for r in cell if r["algorithm"] == m} for m in dict.fromkeys(r["algorithm"] for r in cell)}
        if reference not in ran:
            continue
        seeds = sorted(ran[reference])  # the block is the reference's seeds: a method that ran fewer is left out
        methods = [m for m in ran if ran[m] >= ran[reference]]
        if len(seeds) < 2 or len(methods) < 2:
            continue
        by = {(r["algorithm"], r["seed"]): 100 * r[value] for r in cell}
        y = np.array([[by[(m, s)] for s in seeds] for m in methods])  # [methods, seeds]
        resid = y - y.mean(axis=1, keepdims=True) - y.mean(axis=0, keepdims=True) + y.mean()
        df = (len(methods) - 1) * (len(seeds) - 1)
        half = stats.t.ppf(0.975, df) * math.sqrt(2 * np.sum(resid**2) / df / len(seeds))
        ref = y[methods.index(reference)].mean()
        for m, row in zip(methods, y):
            if m != reference:
                diff = row.mean() - ref
                out.append(f"| {d} | {p} | {m} | {len(seeds)} | {diff:+.2f} | [{diff - half:+.2f}, {diff + half:+.2f}] "
                           f"| {df} |")
    if not out:
        return ""
    return (f"| dataset | partition | method | seeds | method - {reference} ({value}, points) | 95% (seed-blocked) | "
            "df |\n|---|---|---|---|---|---|---|\n" + "\n".join(out) + "\n")


def summarize(records: list[dict], target: float | None = None) -> dict:
    """Final, last-5- and last-10-round mean and best test accuracy, rounds to reach ``target``, total uplink MB,
    training seconds; for a natural federation also the final evaluation's per-client distribution
    (``CLIENT_ENDPOINTS``)."""
    evaluated = [r for r in records if r["test_accuracy"] is not None]
    accs = [r["test_accuracy"] for r in evaluated]
    reached = next((r["round"] for r in evaluated if target is not None and r["test_accuracy"] >= target), None)
    clients = {name: evaluated[-1][key] for name, key in CLIENT_ENDPOINTS if key in evaluated[-1]}
    return {"rounds": len(records), "final": accs[-1], "last5": float(np.mean(accs[-5:])),
            "last10": float(np.mean(accs[-10:])), "best": max(accs),
            "rounds_to_target": reached,
            "uplink_mb": sum(r["uplink_bits"] for r in records) / 8e6,
            "seconds": sum(r["round_seconds"] for r in records), **clients}


# A natural federation's per-client endpoints of the final evaluation: (study column, metrics.jsonl key).
CLIENT_ENDPOINTS = (("client_mean_acc", "client_accuracy_mean"), ("client_weighted_acc", "client_accuracy_weighted"),
                    ("client_p10_acc", "client_accuracy_p10"), ("clients_below", "client_accuracy_below"))


def write_table(rows: list[dict], md_path: Path, csv_path: Path | None = None, note: str = "") -> str:
    """A Markdown table (returned and written) and the same rows as CSV."""
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        cells = [f"{v:.4f}" if isinstance(v, float) and v < 1.5 else f"{v:.2f}" if isinstance(v, float)
                 else "-" if v is None else str(v) for v in row.values()]
        lines.append("| " + " | ".join(cells) + " |")
    text = (note + "\n\n" if note else "") + "\n".join(lines) + "\n"
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(text)
    if csv_path is not None:
        with csv_path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=cols)
            writer.writeheader()
            writer.writerows(rows)
    return text


def write_rows(path: Path, rows: list[dict]) -> None:
    """``rows`` (dicts with the same keys) as a CSV file, their keys the header; its folder made if need be."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def plot_curves(results: dict[str, list[list[dict]]], path: Path, title: str) -> None:
    """Test accuracy against round and against cumulative uplink MB: per name, the mean over its runs
    (seeds), with a shaded 95% t-interval band where there are two runs or more."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, runs in results.items():
        evaluated = [[r for r in records if r["test_accuracy"] is not None] for records in runs]
        n = min(len(e) for e in evaluated)
        acc = np.array([[r["test_accuracy"] for r in e[:n]] for e in evaluated])
        rounds = [r["round"] for r in evaluated[0][:n]]
        cum = np.cumsum([r["uplink_bits"] / 8e6 for r in runs[0]])
        uplink = [cum[r - 1] for r in rounds]
        bands = np.array([t_interval(acc[:, j]) for j in range(n)])
        label = f"{name} ({len(runs)} seeds)" if len(runs) > 1 else name
        for ax, x in ((ax1, rounds), (ax2, uplink)):
            line, = ax.plot(x, bands[:, 0], label=label)
            if len(runs) > 1:
                ax.fill_between(x, bands[:, 1], bands[:, 2], color=line.get_color(), alpha=0.2, lw=0)
    ax1.set(xlabel="round", ylabel="test accuracy", title=title)
    ax2.set(xlabel="cumulative uplink (MB)", ylabel="test accuracy", xscale="log")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_records(out: Path, records: list[dict], detail: str, table: str) -> str:
    """A study script's output: ``OUT.json`` (the records) and ``OUT.md`` (the command, the machine, ``detail``,
    then ``table``); returns the Markdown."""
    from fedbat_jax import machine  # here, so that rendering tables from CSVs never starts jax

    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(records, indent=1) + "\n")
    text = f"Command: `python {' '.join(sys.argv)}`  \nMachine: {machine.describe()}; {detail}\n\n" + table
    out.with_suffix(".md").write_text(text)
    return text
