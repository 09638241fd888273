"""The run loop and Python API: build a federation from a config, run rounds, evaluate, log, checkpoint.

    from fedbat_jax import train
    cfg = train.default_config(); cfg.rounds = 5
    records = train.run(cfg)            # one dict per round, as in metrics.jsonl
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fedbat_jax.algorithms import get_algorithm
from fedbat_jax.config import default_config, validate
from fedbat_jax.data import Dataset, format_histograms, label_histograms, load_dataset, partition, size_summary
from fedbat_jax.errors import ConfigError
from fedbat_jax import executions
from fedbat_jax.evaluation import make_evaluate, test_set
from fedbat_jax.federated import Federated, ServerState, make_roster
from fedbat_jax.local import ClientData, LocalConfig, binarized_mask
from fedbat_jax.models import make_model
from fedbat_jax.round import Round, init_server, round_key, wire_bits

__all__ = ["default_config", "Experiment", "build", "build_from_data", "run", "make_eval"]

METRICS_FILE = "metrics.jsonl"
CHECKPOINT_FILE = "checkpoint.npz"


class Experiment(NamedTuple):
    config: ml_collections.ConfigDict
    dataset: Dataset
    parts: list  # each client's sample indices
    model: Any
    round: Round
    server: ServerState  # the initial global model
    evaluate: Callable[[ServerState], tuple[float, float]]  # -> (test_loss, test_accuracy)


def client_data(ds: Dataset, parts: list, batch_size: int) -> ClientData:
    """Put the training set on the device once, each client as a zero-padded row of sample indices."""
    sizes = np.array([len(p) for p in parts], np.int32)
    index = np.zeros((len(parts), int(sizes.max()) + batch_size), np.int32)
    for i, p in enumerate(parts):
        index[i, : len(p)] = p
    return ClientData(jnp.asarray(ds.x_train), jnp.asarray(ds.y_train, jnp.int32), jnp.asarray(index),
                      jnp.asarray(sizes), jnp.asarray(ds.mean, jnp.float32), jnp.asarray(ds.std, jnp.float32))


def build(config: ml_collections.ConfigDict) -> Experiment:
    """Everything a run needs, from the config alone (data on the device, model, jitted round)."""
    validate(config)
    return _assemble(config, load_dataset(config.dataset, config.data_dir or None))


def build_from_data(config: ml_collections.ConfigDict, ds: Dataset) -> Experiment:
    """As ``build``, on a ``Dataset`` already in memory (``config.dataset`` and ``data_dir`` are not read)."""
    validate(config)
    return _assemble(config, ds)


def _assemble(config: ml_collections.ConfigDict, ds: Dataset) -> Experiment:
    """The experiment of a validated config on a loaded dataset."""
    if config.labels_per_client > ds.num_classes:
        raise ConfigError(f"labels_per_client must be in [1, {ds.num_classes}] for {ds.name}, "
                          f"got {config.labels_per_client}")
    parts = partition(ds.x_train, ds.y_train, config.num_clients, config.partition, seed=config.partition_seed,
                      dirichlet_beta=config.dirichlet_beta, labels_per_client=config.labels_per_client,
                      min_size=config.min_client_size)
    model = make_model(config.model, ds.num_classes, config.model_width)
    variables = jax.jit(model.init)(round_key(config.seed, 0), jnp.zeros((1,) + ds.input_shape, jnp.float32))
    fed = make_federated(config, model, variables["params"], ds)
    roster = make_roster([len(p) for p in parts], config.local_epochs, config.batch_size, config.phi,
                         config.aggregation_weights)
    name, execution = make_execution(config, fed, int(roster.num_steps.max()))
    bits = wire_bits(fed, variables["params"], variables["batch_stats"], config.clients_per_round)
    rnd = Round(fed, roster, client_data(ds, parts, config.batch_size), execution, name, config.clients_per_round,
                config.seed, bits)
    server = init_server(fed, variables["params"], variables["batch_stats"], config.num_clients)
    return Experiment(config, ds, parts, model, rnd, server, make_eval(model, ds))


def make_federated(config: ml_collections.ConfigDict, model, params: Any, ds: Dataset) -> Federated:
    """The algorithm of ``config`` on this model: binarized leaves, compressor, local-training settings."""
    algorithm = get_algorithm(config.algorithm)
    train_mask = binarized_mask(params, algorithm.train_predicate)
    compressor = algorithm.make_compressor(binarized_mask(params, algorithm.upload_predicate), params, config.bits)
    local = LocalConfig(lr=config.lr, batch_size=config.batch_size, rho=config.rho, alpha_min=config.alpha_min,
                        alpha_max=config.alpha_max, bits=config.bits,
                        augment=(ds.augment or "none") if config.augment == "auto" else config.augment)
    return Federated(model, train_mask, compressor, local, config.local_epochs)


def execution_name(config: ml_collections.ConfigDict) -> str:
    """``host`` on CPU and ``fused`` elsewhere unless the config names one."""
    if config.execution != "auto":
        return config.execution
    return "host" if jax.default_backend() == "cpu" else "fused"


def make_execution(config: ml_collections.ConfigDict, fed: Federated, longest: int) -> tuple[str, executions.Execution]:
    """The backend that runs a round's clients (``fedbat_jax.executions``), and its name."""
    name = execution_name(config)
    if name == "host":
        threads = config.client_threads or (2 if jax.default_backend() == "cpu" else 1)
        return name, executions.host(fed, threads)
    mesh = executions.make_mesh(config.num_devices)
    sharded = mesh.devices.size > 1  # (validate refused lane_loop=host with several devices)
    host_loop = config.lane_loop == "host" or (config.lane_loop == "auto" and not sharded
                                                and jax.default_backend() == "cpu")
    return name, executions.lanes(fed, config.lanes, longest, mesh if sharded else None, host_loop)


def make_eval(model, ds: Dataset, chunk: int = 1000) -> Callable[[ServerState], tuple[float, float]]:
    """Test loss and accuracy of the global model, BatchNorm in inference mode, over the whole test set."""
    test = test_set(ds, chunk)
    evaluate = jax.jit(make_evaluate(model, len(ds.y_test), chunk))

    def run(server: ServerState) -> tuple[float, float]:
        loss_sum, correct = np.asarray(evaluate(server.params, server.batch_stats, test), np.float64)
        return float(loss_sum / len(ds.y_test)), float(correct / len(ds.y_test))

    return run


# ---- checkpoints: the server state's leaves and the round, written atomically -------------------------
def save_checkpoint(path: Path, server: ServerState, r: int) -> None:
    leaves = {f"leaf_{i}": np.asarray(x) for i, x in enumerate(jax.tree.leaves(server))}
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, round=r, **leaves)
    os.replace(tmp, path)


def load_checkpoint(path: Path, like: ServerState) -> tuple[ServerState, int]:
    with np.load(path, allow_pickle=False) as f:
        leaves, treedef = jax.tree.flatten(like)
        restored = [jnp.asarray(f[f"leaf_{i}"], x.dtype) for i, x in enumerate(leaves)]
        return jax.tree.unflatten(treedef, restored), int(f["round"])


def _loop(exp: Experiment) -> str:
    loop = getattr(exp.round.execution, "loop", None)
    return f" ({loop} loop of lanes)" if loop else ""


def run(config: ml_collections.ConfigDict, workdir: str | Path | None = None, progress: bool = False,
        log: Callable[[str], None] | None = None) -> list[dict]:
    """Run ``config.rounds`` rounds; return one record per round (also appended to workdir/metrics.jsonl).

    With a workdir, a run resumes from its last checkpoint there and reproduces the same numbers. In a
    multi-process run (``jax.distributed.initialize()``) every process holds the same replicated server
    state; process 0 writes the workdir (a folder all processes can read, to resume).
    """
    exp = build(config)
    server, start, records = exp.server, 1, []
    metrics_path = ckpt_path = None
    writer = jax.process_index() == 0
    if workdir is not None:
        workdir = Path(workdir)
        if writer:
            workdir.mkdir(parents=True, exist_ok=True)
            (workdir / "config.json").write_text(config.to_json(indent=2))
        metrics_path, ckpt_path = workdir / METRICS_FILE, workdir / CHECKPOINT_FILE
        if ckpt_path.exists():
            server, done = load_checkpoint(ckpt_path, server)
            start = done + 1
            if metrics_path.exists():  # keep the records up to the checkpoint, drop any later partial ones
                lines = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
                records = [rec for rec in lines if rec["round"] <= done]
            if writer:
                metrics_path.write_text("".join(json.dumps(rec) + "\n" for rec in records))
        elif metrics_path.exists() and writer:
            metrics_path.unlink()
    if log:
        log(f"{config.algorithm} on {config.dataset} ({config.partition}): {size_summary(exp.parts)}; "
            f"execution {exp.round.execution_name}{_loop(exp)} on {jax.default_backend()}, devices: {exp.round.devices}")
        if exp.dataset.note:
            log(f"note: {config.dataset} data is a {exp.dataset.note}")
        if config.print_histograms:
            log(format_histograms(label_histograms(exp.parts, exp.dataset.y_train, exp.dataset.num_classes)))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.rounds, initial=start - 1, desc=config.algorithm, unit="round")
    for r in range(start, config.rounds + 1):
        t0 = time.perf_counter()
        server, m = exp.round.run(server, r)
        train_loss = float(m["train_loss"])  # waits for the round to finish
        seconds = time.perf_counter() - t0
        rec = {"round": r, "test_accuracy": None, "test_loss": None, "train_loss": train_loss,
               "uplink_bits": int(m["uplink_bits"]), "downlink_bits": int(m["downlink_bits"]),
               "round_seconds": round(seconds, 4)}
        if r % config.eval_every == 0 or r == config.rounds:
            rec["test_loss"], rec["test_accuracy"] = exp.evaluate(server)
        records.append(rec)
        if metrics_path is not None and writer:
            with metrics_path.open("a") as f:
                f.write(json.dumps(rec) + "\n")
            if r == config.rounds or (config.checkpoint_every and r % config.checkpoint_every == 0):
                save_checkpoint(ckpt_path, server, r)
        if bar is not None:
            acc = rec["test_accuracy"]
            bar.set_postfix_str(f"acc {acc:.4f}" if acc is not None else f"loss {train_loss:.4f}")
            bar.update(1)
    if bar is not None:
        bar.close()
    return records
