"""Why round 1 scores 10%: the averaged model with averaged BatchNorm running statistics vs. its own batch statistics.

    python experiments/bn_round1.py [--algorithm fedavg] [--dataset mnist5k] [--data-dir DIR]

Runs one round (mnist5k: 10 clients, 5 per round, 2 local epochs) and evaluates the new global model on the
test set twice: BatchNorm in inference mode (the averaged running statistics, as every round's metric) and
BatchNorm normalising with the test set's own statistics (train mode, nothing written back).
"""
from __future__ import annotations

import argparse

import jax.numpy as jnp

from fedbat_jax import train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--algorithm", default="fedavg")
    ap.add_argument("--dataset", default="mnist5k")
    ap.add_argument("--data-dir", default="")
    args = ap.parse_args()
    c = train.default_config()
    c.update(dataset=args.dataset, data_dir=args.data_dir, algorithm=args.algorithm, num_clients=10,
             clients_per_round=5, local_epochs=2, rounds=1)
    exp = train.build(c)
    server, _ = exp.round.run(exp.server, 1)
    ds = exp.dataset
    x = (jnp.asarray(ds.x_test, jnp.float32) / 255.0 - jnp.asarray(ds.mean)) / jnp.asarray(ds.std)
    variables = {"params": server.params, "batch_stats": server.batch_stats}
    running = exp.model.apply(variables, x, train=False)
    own, _ = exp.model.apply(variables, x, train=True, mutable=["batch_stats"])
    for name, logits in (("averaged running statistics", running), ("the test set's own statistics", own)):
        print(f"round 1, {args.algorithm}, BatchNorm with {name}: test accuracy "
              f"{float((logits.argmax(-1) == jnp.asarray(ds.y_test)).mean()):.4f}")


if __name__ == "__main__":
    main()
