"""Where FedBAT's learned step sizes sit: from a workdir's newest checkpoint, a few clients of the next round train
step by step, and for every binarized tensor of each the learned alpha, mean |u| of its finished update and the
share of coordinates the upload clips (|u| > alpha) are printed (and written as JSON with ``--out``).

    python experiments/alpha_check.py ../runs/natural/shakespeare_char_lstm/natural/fedbat/seed0 \
        --data-dir ../shared/data --clients 3

Nothing is written into the workdir.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import numpy as np

import fedbat_jax as fb
from fedbat_jax import cli
from fedbat_jax.errors import ConfigError


def alpha_rows(path: Path, data_dir: str, clients: int) -> list[dict]:
    exp, server, r = fb.load_run(path, data_dir)
    rows = []
    for c in fb.client_updates(exp, server, r + 1, clients):
        for (leaf, u), alpha, binarized in zip(jax.tree_util.tree_leaves_with_path(c.update),
                                               jax.tree.leaves(c.scales),
                                               jax.tree.leaves(exp.federation.learner.train_mask)):
            if binarized:
                u, alpha = np.abs(np.asarray(u)), float(alpha)
                rows.append({"round": r + 1, "client": c.client, "steps": c.steps,
                             "tensor": jax.tree_util.keystr(leaf, simple=True, separator="/"), "alpha": alpha,
                             "mean_abs_u": float(u.mean()), "clipped": float(np.mean(u > alpha))})
    return rows


def main(args, overrides: list[str]) -> int:
    if overrides:
        raise ConfigError(f"unrecognized arguments: {' '.join(overrides)}")
    rows = alpha_rows(Path(args.workdir), args.data_dir, args.clients)
    for row in rows:
        print(f"client {row['client']:5d} ({row['steps']:3d} steps) {row['tensor']:28s} alpha {row['alpha']:.5f}  "
              f"mean|u| {row['mean_abs_u']:.5f}  clipped {row['clipped']:6.1%}")
    if args.out:
        Path(args.out).write_text(json.dumps({"command": " ".join(["python"] + sys.argv), "rows": rows}, indent=1))
    return 0


def parser() -> cli.ArgumentParser:
    ap = cli.ArgumentParser(prog="alpha_check", description=__doc__.splitlines()[0])
    ap.add_argument("workdir")
    ap.add_argument("--data-dir", default="")
    ap.add_argument("--clients", type=int, default=3)
    ap.add_argument("--out", default="")
    return ap


if __name__ == "__main__":
    sys.exit(cli.guarded("alpha_check", lambda: main(*cli.parse_args(parser(), sys.argv[1:]))))
