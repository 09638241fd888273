"""FedBAT vs FedAvg (make run): run both, print final/best accuracy and uplink, plot the curves.

    python experiments/compare.py [--config experiments/configs/mnist5k.py[:ARG]] [--workdir runs/compare]
                                  [--config.FIELD=VALUE ...]

Each algorithm runs in WORKDIR/<algorithm> (resumed if interrupted); the plot is WORKDIR/compare.png.
"""
from __future__ import annotations

import sys
from pathlib import Path

import fedbat_jax as fb
from fedbat_jax import cli, report

ALGORITHMS = ("fedbat", "fedavg")
DEFAULT_CONFIG = str(Path(__file__).parent / "configs" / "mnist5k.py")


def main(args, overrides: list[str]) -> int:
    workdir = Path(args.workdir)
    results = {}
    for name in ALGORITHMS:
        config = cli.make_config(args.config, overrides, algorithm=name)
        results[name] = fb.run(config, workdir / name, progress=True, log=print)
    rows = {name: report.summarize(records) for name, records in results.items()}
    print(f"\n{config.dataset}, {config.partition}, {config.num_clients} clients "
          f"({config.clients_per_round} per round), "
          f"{config.local_epochs} local epochs, {rows['fedbat']['rounds']} rounds")
    print("| algorithm | final acc | best acc | uplink MB (total) | train s |")
    print("|---|---|---|---|---|")
    for name, s in rows.items():
        print(f"| {name} | {s['final']:.4f} | {s['best']:.4f} | {s['uplink_mb']:.2f} | {s['seconds']:.1f} |")
    ratio = rows["fedavg"]["uplink_mb"] / rows["fedbat"]["uplink_mb"]
    print(f"FedBAT sends {ratio:.1f}x less uplink than FedAvg; accuracy gap (final) "
          f"{100 * (rows['fedavg']['final'] - rows['fedbat']['final']):+.2f} points")
    png = workdir / "compare.png"
    report.plot_curves({name: [records] for name, records in results.items()}, png,
                       f"{config.dataset} ({config.partition})")
    print(f"plot: {png}")
    return 0


def parser() -> cli.ArgumentParser:
    ap = cli.ArgumentParser(prog="compare", description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="runs/compare")
    return ap


if __name__ == "__main__":
    sys.exit(cli.guarded("compare", lambda: main(*cli.parse_args(parser(), sys.argv[1:], DEFAULT_CONFIG))))
