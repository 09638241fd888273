"""FedBAT vs FedAvg (make run): run both, print final/best accuracy and uplink, plot the curves.

    python experiments/compare.py [--config experiments/configs/mnist5k.py] [--workdir runs/compare]
                                  [--set FIELD=VALUE ...]

Each algorithm runs in WORKDIR/<algorithm> (resumed if interrupted); the plot is WORKDIR/compare.png.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from fedbat_jax.errors import FedBatError
from fedbat_jax.train import run

ALGORITHMS = ("fedbat", "fedavg")


def load_config(path: str, algorithm: str, overrides: list[str]):
    spec = importlib.util.spec_from_file_location("experiment_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    c.algorithm = algorithm
    for item in overrides:
        field, _, value = item.partition("=")
        if field not in c:
            raise FedBatError(f"unknown config field {field!r} in --set {item}")
        c[field] = type(c[field])(value) if not isinstance(c[field], bool) else value.lower() in ("1", "true")
    return c


def summarize(records: list[dict]) -> dict:
    accs = [r["test_accuracy"] for r in records if r["test_accuracy"] is not None]
    return {"final": accs[-1], "best": max(accs), "uplink_mb": sum(r["uplink_bits"] for r in records) / 8e6,
            "seconds": sum(r["round_seconds"] for r in records), "rounds": len(records)}


def plot(results: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for name, records in results.items():
        pts = [(r["round"], r["test_accuracy"]) for r in records if r["test_accuracy"] is not None]
        up, cum = [], 0.0
        for r in records:
            cum += r["uplink_bits"] / 8e6
            if r["test_accuracy"] is not None:
                up.append((cum, r["test_accuracy"]))
        ax1.plot(*zip(*pts), label=name)
        ax2.plot(*zip(*up), label=name)
    ax1.set(xlabel="round", ylabel="test accuracy", title=title)
    ax2.set(xlabel="cumulative uplink (MB)", ylabel="test accuracy", xscale="log")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(Path(__file__).parent / "configs" / "mnist5k.py"))
    ap.add_argument("--workdir", default="runs/compare")
    ap.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE")
    args = ap.parse_args()
    workdir = Path(args.workdir)
    results = {}
    try:
        for name in ALGORITHMS:
            config = load_config(args.config, name, args.set)
            results[name] = run(config, workdir / name, progress=True, log=print)
    except (FedBatError, ValueError, TypeError) as e:
        print(f"compare: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    rows = {name: summarize(records) for name, records in results.items()}
    print(f"\n{config.dataset}, {config.partition}, {config.num_clients} clients ({config.clients_per_round} per round), "
          f"{config.local_epochs} local epochs, {rows['fedbat']['rounds']} rounds")
    print(f"| algorithm | final acc | best acc | uplink MB (total) | train s |")
    print(f"|---|---|---|---|---|")
    for name, s in rows.items():
        print(f"| {name} | {s['final']:.4f} | {s['best']:.4f} | {s['uplink_mb']:.2f} | {s['seconds']:.1f} |")
    ratio = rows["fedavg"]["uplink_mb"] / rows["fedbat"]["uplink_mb"]
    print(f"FedBAT sends {ratio:.1f}x less uplink than FedAvg; accuracy gap (final) "
          f"{100 * (rows['fedavg']['final'] - rows['fedbat']['final']):+.2f} points")
    png = workdir / "compare.png"
    plot(results, png, f"{config.dataset} ({config.partition})")
    print(f"plot: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
