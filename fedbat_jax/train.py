"""The run loop and Python API: build a federation from a config, run rounds, evaluate, log, checkpoint.

    from fedbat_jax import train
    cfg = train.default_config(); cfg.rounds = 5
    records = train.run(cfg)            # one dict per round, as in metrics.jsonl
"""
from __future__ import annotations

import contextlib
import math
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fedbat_jax.algorithms import get_algorithm
from fedbat_jax.config import default_config, validate
from fedbat_jax.data import Dataset, format_histograms, label_histograms, load_dataset, partition, size_summary
from fedbat_jax.errors import ConfigError, DivergenceError
from fedbat_jax import executions
from fedbat_jax.compressors import with_error_feedback
from fedbat_jax.evaluation import make_evaluate, test_set
from fedbat_jax.federated import Federated, ServerState, make_roster
from fedbat_jax.local import ClientData, LocalConfig, binarized_mask
from fedbat_jax.models import make_model
from fedbat_jax.optimizers import server_optimizer
from fedbat_jax.round import Round, round_key, wire_bits
from fedbat_jax.workdir import Workdir

__all__ = ["default_config", "Experiment", "build", "build_from_data", "run", "make_eval"]

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
    batch_stats = variables.get("batch_stats", {})
    bits = wire_bits(fed, variables["params"], batch_stats, config.clients_per_round)
    rnd = Round(fed, roster, client_data(ds, parts, config.batch_size), execution, name, config.clients_per_round,
                config.seed, bits)
    server = fed.server_init(variables["params"], batch_stats, config.num_clients)
    return Experiment(config, ds, parts, model, rnd, server, make_eval(model, ds))


def make_federated(config: ml_collections.ConfigDict, model, params: Any, ds: Dataset) -> Federated:
    """The algorithm of ``config`` on this model: binarized leaves, compressor, local-training settings."""
    algorithm = get_algorithm(config.algorithm)
    train_mask = binarized_mask(params, algorithm.train_predicate)
    upload_mask = binarized_mask(params, algorithm.upload_predicate)
    compressor = with_error_feedback(algorithm.make_compressor(upload_mask, params, config.bits), config.error_feedback,
                                     upload_mask)
    local = LocalConfig(lr=config.lr, batch_size=config.batch_size, rho=config.rho, alpha_min=config.alpha_min,
                        alpha_max=config.alpha_max, bits=config.bits,
                        augment=(ds.augment or "none") if config.augment == "auto" else config.augment,
                        alpha_rule=config.alpha_rule, alpha_bounds=config.alpha_bounds, momentum=config.momentum,
                        weight_decay=config.weight_decay,
                        schedule=config.lr_schedule, beta=config.lr_beta, gamma=config.lr_gamma, rounds=config.rounds)
    server = server_optimizer(config.server_optimizer, config.server_lr, config.server_b1, config.server_b2,
                              config.server_eps)
    return Federated(model, train_mask, compressor, local, config.local_epochs, server)


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

    def evaluate_server(server: ServerState) -> tuple[float, float]:
        loss_sum, correct = np.asarray(evaluate(server.params, server.batch_stats, test), np.float64)
        return float(loss_sum / len(ds.y_test)), float(correct / len(ds.y_test))

    return evaluate_server


def _loop(exp: Experiment) -> str:
    loop = getattr(exp.round.execution, "loop", None)
    return f" ({loop} loop of lanes)" if loop else ""


def run(config: ml_collections.ConfigDict, workdir: str | Path | None = None, progress: bool = False,
        log: Callable[[str], None] | None = None, allow_change: Iterable[str] = ()) -> list[dict]:
    """Run ``config.rounds`` rounds; return one record per round (also appended to workdir/metrics.jsonl).

    With a workdir (``fedbat_jax.workdir``), a run resumes from its last checkpoint there and reproduces
    the same numbers; a resume whose settings would change the numbers raises ``WorkdirError`` unless
    each changed field is named in ``allow_change`` (``rounds``, or an execution setting). A non-finite
    training loss or global model raises ``DivergenceError`` before that round is written or checkpointed.
    In a multi-process run (``jax.distributed.initialize()``) every process holds the same replicated
    server state; process 0 writes the workdir (a folder all processes can read, to resume).
    """
    validate(config)  # before the workdir is touched or any data loads
    if config.tensorboard and workdir is None:
        raise ConfigError("tensorboard=True writes into the workdir: give one")
    warn = (lambda s: log(f"warning: {s}")) if log else (lambda s: warnings.warn(s, stacklevel=3))
    folder = (Workdir(workdir, config, allow_change, warn, writer=jax.process_index() == 0)
              if workdir is not None else contextlib.nullcontext())
    with folder as wd:
        exp = build(config)
        server, done, records = wd.restore(exp.server) if wd else (exp.server, 0, [])
        if log:
            _log_start(exp, log)
            if wd and wd.changes:
                log("resuming with " + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in wd.changes.items()))
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=config.rounds, initial=done, desc=config.algorithm, unit="round")
        for r in range(done + 1, config.rounds + 1):
            t0 = time.perf_counter()
            server, m = exp.round.run(server, r)
            train_loss = float(m["train_loss"])  # waits for the round to finish
            seconds = time.perf_counter() - t0
            model_finite = bool(_all_finite(server))
            if not (math.isfinite(train_loss) and model_finite):
                raise DivergenceError(f"round {r} diverged (training loss {train_loss}, global model "
                                      f"{'finite' if model_finite else 'non-finite'}){_kept(wd)}; try a smaller lr",
                                      r, records)
            rec = {"round": r, "test_accuracy": None, "test_loss": None, "train_loss": train_loss,
                   "uplink_bits": int(m["uplink_bits"]), "downlink_bits": int(m["downlink_bits"]),
                   "round_seconds": round(seconds, 4)}
            if r % config.eval_every == 0 or r == config.rounds:
                rec["test_loss"], rec["test_accuracy"] = exp.evaluate(server)
            records.append(rec)
            if wd:
                wd.append(rec)
                if r == config.rounds or (config.checkpoint_every and r % config.checkpoint_every == 0):
                    wd.save(server, r)
            if bar is not None:
                acc = rec["test_accuracy"]
                bar.set_postfix_str(f"acc {acc:.4f}" if acc is not None else f"loss {train_loss:.4f}")
                bar.update(1)
        if bar is not None:
            bar.close()
    return records


def _kept(wd: Workdir | None) -> str:
    """What a diverged run leaves behind, for its error line."""
    if wd is None:
        return ""
    if wd.checkpoint_round:
        return f"; the last good checkpoint (round {wd.checkpoint_round}) is kept"
    return "; no checkpoint was written before it"


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in leaves])) if leaves else jnp.array(True)


def _log_start(exp: Experiment, log: Callable[[str], None]) -> None:
    config = exp.config
    log(f"{config.algorithm} on {config.dataset} ({config.partition}): {size_summary(exp.parts)}; "
        f"execution {exp.round.execution_name}{_loop(exp)} on {jax.default_backend()}, devices: {exp.round.devices}")
    if exp.dataset.note:
        log(f"note: {config.dataset} data is a {exp.dataset.note}")
    if config.print_histograms:
        log(format_histograms(label_histograms(exp.parts, exp.dataset.y_train, exp.dataset.num_classes)))
