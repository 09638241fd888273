"""How much work the fused backend wastes on padding, with and without lane packing.

For many sampled cohorts of a partition, compares the step-cells a fused round computes when every
client of the cohort is padded to the longest one (K lanes x max_k S_k) with the packed lanes
(`fedbat_jax.backends.fused.pack_lanes`), against the useful work sum_k S_k. Host-side arithmetic only.

    python experiments/lane_packing.py [--dataset fashion_mnist --data-dir DIR] [--partition dirichlet]
                                       [--config=FILE[:ARG]] [--config.FIELD=VALUE ...]
"""
from __future__ import annotations

import sys

import numpy as np

import fedbat_jax as fb
from fedbat_jax import cli
from fedbat_jax.backends.fused import pack_lanes
from fedbat_jax.rounds import cohort


def parser() -> cli.ArgumentParser:
    ap = cli.ArgumentParser(prog="lane_packing", description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="mnist5k")
    ap.add_argument("--data-dir", default="")
    ap.add_argument("--partition", default="dirichlet")
    ap.add_argument("--beta", type=float, default=0.3)
    ap.add_argument("--num-clients", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=100)
    return ap


def main(args, overrides: list[str]) -> int:
    c = cli.make_config(args.config or cli.DEFAULT_CONFIG_FILE, overrides, dataset=args.dataset, data_dir=args.data_dir,
                        partition=args.partition, dirichlet_beta=args.beta, num_clients=args.num_clients,
                        clients_per_round=10, local_epochs=10, batch_size=64)
    exp = fb.build(c)
    steps_all = exp.federation.roster.num_steps
    quantum = max(1, int(steps_all.max()) // 8)
    useful, padded, packed, lanes = [], [], [], []
    for r in range(1, args.rounds + 1):
        steps = steps_all[cohort(c.seed, r, c.num_clients, c.clients_per_round)]
        sched = pack_lanes(steps, 0, quantum, cap=int(steps_all.max()))
        useful.append(steps.sum())
        padded.append(len(steps) * steps.max())
        packed.append(sched.shape[1] * sched.shape[2])
        lanes.append(sched.shape[1])
    u = np.sum(useful)
    part = f"{args.partition} (beta {args.beta})" if args.partition == "dirichlet" else args.partition
    print(f"{args.dataset} {part}, {args.num_clients} clients, 10 per round, "
          f"10 epochs, batch 64, {args.rounds} cohorts; client steps min {steps_all.min()} / "
          f"median {int(np.median(steps_all))} / max {steps_all.max()}")
    print(f"pad every client to the longest: {np.sum(padded) / u:.2f}x the useful steps "
          f"({100 * u / np.sum(padded):.0f}% useful)")
    print(f"packed lanes ({np.mean(lanes):.1f} lanes on average): {np.sum(packed) / u:.2f}x the useful steps "
          f"({100 * u / np.sum(packed):.0f}% useful)")
    return 0


if __name__ == "__main__":
    sys.exit(cli.guarded("lane_packing", lambda: main(*cli.parse_args(parser(), sys.argv[1:]))))
