"""FedBAT vs FedAvg (make run): run both, print final/best accuracy and uplink, plot the curves.

    python experiments/compare.py [--config experiments/configs/mnist5k.py[:ARG]] [--workdir runs/compare]
                                  [--config.FIELD=VALUE ...]

Each algorithm runs in WORKDIR/<algorithm> (resumed if interrupted); the plot is WORKDIR/compare.png.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from report import plot_curves, summarize

from fedbat_jax.config import apply_overrides, load_config
from fedbat_jax.errors import FedBatError
from fedbat_jax.train import run

ALGORITHMS = ("fedbat", "fedavg")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(Path(__file__).parent / "configs" / "mnist5k.py"))
    ap.add_argument("--workdir", default="runs/compare")
    args, overrides = ap.parse_known_args()
    workdir = Path(args.workdir)
    results = {}
    try:
        for name in ALGORITHMS:
            config = load_config(args.config)
            config.algorithm = name
            unknown = apply_overrides(config, overrides)
            if unknown:
                ap.error(f"unrecognized arguments: {' '.join(unknown)} (fields are set as --config.FIELD=VALUE)")
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
    plot_curves(results, png, f"{config.dataset} ({config.partition})")
    print(f"plot: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
