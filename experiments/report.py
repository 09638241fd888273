"""Shared by the study scripts: summarize a run's records, write tables, plot accuracy curves."""
from __future__ import annotations

import csv
from pathlib import Path


def summarize(records: list[dict], target: float | None = None) -> dict:
    """Final and best test accuracy, rounds to reach ``target``, total uplink MB, training seconds."""
    evaluated = [r for r in records if r["test_accuracy"] is not None]
    accs = [r["test_accuracy"] for r in evaluated]
    reached = next((r["round"] for r in evaluated if target is not None and r["test_accuracy"] >= target), None)
    return {"rounds": len(records), "final": accs[-1], "best": max(accs), "rounds_to_target": reached,
            "uplink_mb": sum(r["uplink_bits"] for r in records) / 8e6,
            "seconds": sum(r["round_seconds"] for r in records)}


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


def gap_table(rows: list[dict], method: str = "fedbat", baseline: str = "fedavg") -> str:
    """Markdown: per (dataset, partition, seed), ``method`` against ``baseline`` (final and best accuracy in
    points, uplink ratio); "" when no such pair ran."""
    by = {(r["dataset"], r["partition"], r["seed"], r["algorithm"]): r for r in rows}
    lines = []
    for (d, p, s, a), r in by.items():
        base = by.get((d, p, s, baseline))
        if a != method or base is None:
            continue
        lines.append(f"| {d} | {p} | {s} | {base['final_acc']:.4f} | {r['final_acc']:.4f} | "
                     f"{100 * (r['final_acc'] - base['final_acc']):+.2f} | {100 * (r['best_acc'] - base['best_acc']):+.2f} | "
                     f"{base['uplink_MB'] / r['uplink_MB']:.1f}x |")
    if not lines:
        return ""
    head = (f"| dataset | partition | seed | {baseline} final | {method} final | final gap (points) | "
            f"best gap (points) | uplink saved |\n|---|---|---|---|---|---|---|---|\n")
    return head + "\n".join(lines) + "\n"


def plot_curves(results: dict[str, list[dict]], path: Path, title: str) -> None:
    """Test accuracy against round and against cumulative uplink MB, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, records in results.items():
        by_round, by_uplink, cum = [], [], 0.0
        for r in records:
            cum += r["uplink_bits"] / 8e6
            if r["test_accuracy"] is not None:
                by_round.append((r["round"], r["test_accuracy"]))
                by_uplink.append((cum, r["test_accuracy"]))
        ax1.plot(*zip(*by_round), label=name)
        ax2.plot(*zip(*by_uplink), label=name)
    ax1.set(xlabel="round", ylabel="test accuracy", title=title)
    ax2.set(xlabel="cumulative uplink (MB)", ylabel="test accuracy", xscale="log")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
