"""What one local step costs a client, FedAvg against FedBAT, per model (issue 25: a client's cost).

For each model the script compiles one client's local step (``fedbat_jax.local.make_local_step``: forward,
backward and the SGD update of one batch of 64) with every binarized leaf in its binarized phase (FedBAT) or
none binarized (FedAvg), and reads XLA's own analyses of the compiled program: ``memory_analysis()`` (the
arguments, outputs and temporaries: the step's peak is their sum less the aliased bytes) and ``cost_analysis()``
(FLOPs, bytes accessed). It also times the step (median of ``--repeats`` calls after one warm-up), and the
FedBAT operator alone (``effective_params`` forward and its VJP on the model's tree: the draw, the select and
the straight-through backward pass), and counts the client's state: the model's float32 parameters and, for
FedBAT, the latent update (one float32 copy of every binarized tensor) and one step-size exponent per tensor.

    python experiments/client_cost.py --out docs/results/client_cost [--models cnn4,vit] [--repeats 10]

Writes OUT.json (one record per model and algorithm) and OUT.md (the table). Pixels are random (speed and
memory do not depend on their values); the batch is the paper's 64.
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from fedbat_jax import cli, report
from fedbat_jax.binarization import binarized_mask, default_binarize_predicate
from fedbat_jax.local import FederatedData, LocalConfig, effective_params, init_client, make_local_step
from fedbat_jax.models import make_model
from fedbat_jax.payloads import tree_bytes
from fedbat_jax.registry import Registry

# (model, input shape, width): the paper's CNN4 and ResNet-10, the new ViT and MobileNet-style net, logreg.
MODELS = Registry("--models model", {
    "logreg": ((28, 28, 1), 0), "cnn4": ((28, 28, 1), 0), "resnet10": ((32, 32, 3), 0),
    "vit": ((28, 28, 1), 0), "mobilenet": ((28, 28, 1), 0),
})
BATCH = 64


def _median_seconds(fn, repeats: int) -> float:
    jax.block_until_ready(fn())  # compile and warm up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def measure(name: str, algorithm: str, repeats: int) -> dict:
    shape, width = MODELS[name]
    model = make_model(name, 10, width)
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 256, (BATCH,) + shape, dtype=np.uint8))
    labels = jnp.asarray(rng.integers(0, 10, BATCH).astype(np.int32))
    variables = model.init(jax.random.key(0), jnp.zeros((1,) + shape))
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    predicate = default_binarize_predicate if algorithm == "fedbat" else (lambda path, leaf: False)
    mask = binarized_mask(params, predicate)
    cfg = LocalConfig(lr=0.1, batch_size=BATCH)
    step = make_local_step(model, mask, cfg)
    data = FederatedData(images, labels, jnp.arange(2 * BATCH, dtype=jnp.int32)[None] % BATCH,
                         jnp.array([BATCH], jnp.int32), jnp.zeros(shape[-1]), jnp.ones(shape[-1]))
    orders = data.index[:, :BATCH + BATCH]
    state = init_client(params, batch_stats, mask, cfg)
    # t = 1 > n_warm = 0: a binarized step (FedAvg has nothing to binarize and takes the same step)
    args = (state, params, data, orders, jnp.int32(BATCH), jnp.int32(0), jnp.int32(1), jax.random.key(1),
            jnp.float32(0.1))
    jitted = jax.jit(step)
    compiled = jitted.lower(*args).compile()
    memory, cost = compiled.memory_analysis(), compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    peak = (memory.argument_size_in_bytes + memory.output_size_in_bytes + memory.temp_size_in_bytes
            - memory.alias_size_in_bytes)
    binarized = [x for x, b in zip(jax.tree.leaves(params), jax.tree.leaves(mask)) if b]
    record = {
        "model": name, "algorithm": algorithm, "input": "x".join(map(str, shape)), "batch": BATCH,
        "params": int(sum(x.size for x in jax.tree.leaves(params))), "binarized": int(sum(x.size for x in binarized)),
        "param_bytes": tree_bytes(params) + tree_bytes(batch_stats),
        # FedBAT's extra client state: the latent update (a float32 copy of each binarized tensor), a and alpha0
        "latent_bytes": tree_bytes(binarized) + 2 * 4 * len(binarized),
        "peak_bytes": int(peak), "temp_bytes": int(memory.temp_size_in_bytes),
        "gflops": float(cost.get("flops", float("nan"))) / 1e9,
        "gbytes_accessed": float(cost.get("bytes accessed", float("nan"))) / 1e9,
        "step_ms": 1e3 * _median_seconds(lambda: jitted(*args), repeats),
    }
    if algorithm == "fedbat":  # the operator alone: w + Q(u, alpha) on every binarized leaf, and its VJP
        u = jax.tree.map(lambda w, b: 0.01 * jnp.ones_like(w) if b else w, params, mask)
        alpha = jax.tree.map(lambda w: jnp.float32(0.01), params)

        def operator(u, alpha):
            out, vjp = jax.vjp(lambda u_, a_: effective_params(params, u_, a_, mask, jnp.bool_(True),
                                                                  jax.random.key(2)), u, alpha)
            return vjp(out)

        op = jax.jit(operator)
        record["operator_ms"] = 1e3 * _median_seconds(lambda: op(u, alpha), repeats)
        op_cost = op.lower(u, alpha).compile().cost_analysis()
        op_cost = op_cost[0] if isinstance(op_cost, list) else op_cost
        record["operator_gbytes_accessed"] = float(op_cost.get("bytes accessed", float("nan"))) / 1e9
    return record


def table(records: list[dict]) -> str:
    rows = ["| model | params (binarized) | params + stats MB | FedBAT latent MB | peak step MB FedAvg / FedBAT | "
            "GFLOPs a step FedAvg / FedBAT | step ms FedAvg / FedBAT | operator ms (share of the FedBAT step) |",
            "|---|---|---|---|---|---|---|---|"]
    by = {(r["model"], r["algorithm"]): r for r in records}
    for name in dict.fromkeys(r["model"] for r in records):
        a, b = by[(name, "fedavg")], by[(name, "fedbat")]
        rows.append(
            f"| {name} ({a['input']}) | {a['params']:,} ({b['binarized']:,}) | {a['param_bytes'] / 1e6:.2f} | "
            f"{b['latent_bytes'] / 1e6:.2f} ({b['latent_bytes'] / a['param_bytes']:.2f}x the model) | "
            f"{a['peak_bytes'] / 1e6:.1f} / {b['peak_bytes'] / 1e6:.1f} | {a['gflops']:.3f} / {b['gflops']:.3f} | "
            f"{a['step_ms']:.1f} / {b['step_ms']:.1f} | {b['operator_ms']:.1f} "
            f"({b['operator_ms'] / b['step_ms']:.0%}) |")
    return "\n".join(rows) + "\n"


def main(args, overrides: list[str]) -> int:
    if overrides:
        raise cli.ConfigError(f"client_cost.py takes no --config overrides (got {overrides[0]})")
    for name in args.models:
        MODELS[name]  # an unknown one is a one-line error
    records = []
    for name in args.models:
        for algorithm in ("fedavg", "fedbat"):
            records.append(measure(name, algorithm, args.repeats))
            print(json.dumps(records[-1]), flush=True)
    print(report.write_records(Path(args.out), records, f"one client, batch {BATCH}, median of {args.repeats} calls.",
                               table(records)))
    return 0


def parser() -> cli.ArgumentParser:
    ap = cli.ArgumentParser(prog="client_cost", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/results/client_cost")
    ap.add_argument("--models", type=cli.names, default=list(MODELS))
    ap.add_argument("--repeats", type=int, default=10)
    return ap


if __name__ == "__main__":
    sys.exit(cli.guarded("client_cost", lambda: main(*cli.parse_args(parser(), sys.argv[1:])), resumes=False))
