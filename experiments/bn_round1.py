"""Why round 1 scores 10%: the averaged model with averaged BatchNorm running statistics vs. its own batch statistics.

    python experiments/bn_round1.py [--config.algorithm=fedavg] [--config.dataset=mnist5k] [--config.data_dir=DIR]

Runs one round (mnist5k: 10 clients, 5 per round, 2 local epochs) and evaluates the new global model on the
test set twice: BatchNorm in inference mode (the averaged running statistics, as every round's metric) and
BatchNorm normalising with the statistics of each 1,000 test examples (train mode, nothing written back).
"""
from __future__ import annotations

import sys

import jax

import fedbat_jax as fb
from fedbat_jax import cli
from fedbat_jax.evaluation import dataset_evaluate, pooled, test_set


def main(args, overrides: list[str]) -> int:
    c = cli.make_config(args.config or cli.DEFAULT_CONFIG_FILE, overrides, algorithm="fedavg", dataset="mnist5k",
                        num_clients=10, clients_per_round=5, local_epochs=2, rounds=1)
    exp = fb.build(c)
    server, _ = exp.run_round(exp.server, 1)
    ds = exp.dataset
    test = test_set(ds)
    for name, running in (("averaged running statistics", True), ("each chunk's own statistics", False)):
        evaluate = jax.jit(dataset_evaluate(exp.model, ds, running_stats=running))
        _, accuracy = pooled(evaluate(server.params, server.batch_stats, test))
        print(f"round 1, {c.algorithm}, BatchNorm with {name}: test accuracy {accuracy:.4f}")
    return 0


if __name__ == "__main__":
    ap = cli.ArgumentParser(prog="bn_round1", description=__doc__.splitlines()[0])
    sys.exit(cli.guarded("bn_round1", lambda: main(*cli.parse_args(ap, sys.argv[1:]))))
