"""The run loop and its Python API: build an experiment from a config, run rounds, evaluate, log, checkpoint.

    import fedbat_jax as fb
    cfg = fb.default_config(); cfg.rounds = 5
    records = fb.run(cfg)               # one dict per round, as in metrics.jsonl
    exp = fb.build(cfg)                 # the pieces: exp.run_round(exp.server, 1), exp.evaluate(server), ...
"""
from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from fedbat_jax import distributed, memory, privacy, stopping
from fedbat_jax.backends import Backend, make_backend, one_client
from fedbat_jax.config import default_config, partition_method, validate
from fedbat_jax.data.checks import one_line
from fedbat_jax.data import Dataset, format_histograms, label_histograms, load_dataset, size_summary
from fedbat_jax.errors import ConfigError, DivergenceError, Terminated, WorkdirError
from fedbat_jax.evaluation import host_evaluator
from fedbat_jax.federated import ServerState, plan_round
from fedbat_jax.federation import Federation, build_federation, check_before_loading, memory_need
from fedbat_jax.rounds import host_table, host_zeros, make_round, wire_sizes
from fedbat_jax.workdir import (CHECKPOINT_FILE, CONFIG_FILE, RENAMED_VALUES, Workdir, read_checkpoint,
                                restore_tree)

__all__ = ["Experiment", "build", "build_from_data", "load_run", "run"]


class Experiment(NamedTuple):
    """A run's pieces: its federation, its backend, its round, the initial server state, the evaluation."""

    config: ml_collections.ConfigDict
    federation: Federation
    backend: Backend
    run_round: Callable[[ServerState, int], tuple[ServerState, dict]]  # (server, r) -> (server, metrics)
    server: ServerState  # the initial global model, its client table in host memory
    evaluate: Callable[[ServerState], dict]  # -> {test_loss, test_accuracy, and per test client when natural}
    wire: dict  # exact uplink_bits and downlink_bits of one round (of the expected cohort under Poisson sampling)
    accountant: privacy.Accountant | None = None  # user-level DP with noise: epsilon after each round

    @property
    def dataset(self) -> Dataset:
        return self.federation.dataset

    @property
    def parts(self) -> list:
        return self.federation.parts

    @property
    def model(self):
        return self.federation.model


def build(config: ml_collections.ConfigDict) -> Experiment:
    """Everything a run needs, from the config alone (data on the device, model, jitted round)."""
    validate(config)
    distributed.start(config)  # (first: sizing the table traces the model, which starts the XLA backend)
    _fits_before_loading(config)
    return _build(config, load_dataset(config.dataset, config.data_dir or None))


def build_from_data(config: ml_collections.ConfigDict, ds: Dataset) -> Experiment:
    """As ``build``, on a ``Dataset`` already in memory (``config.dataset`` and ``data_dir`` are not read)."""
    validate(config)
    distributed.start(config)
    return _build(config, ds)


def _fits_before_loading(config: ml_collections.ConfigDict) -> None:
    """Refuse (one line) what the settings and the model's shapes refuse (``check_before_loading``) and a run whose
    N-client table and dataset cannot fit in host memory, where the dataset's loader says its size
    (``fedbat_jax.memory``); a natural federation is checked once its files are read."""
    check_before_loading(config)
    est = memory_need(config)
    if est is not None:
        memory.check(config, est, " (estimated before loading the data)")


def _build(config: ml_collections.ConfigDict, ds: Dataset) -> Experiment:
    federation = build_federation(config, ds)
    memory.check(config, memory_need(config, federation), loaded=True)  # before the table is allocated
    learner, roster = federation.learner, federation.roster
    params, batch_stats = federation.variables["params"], federation.variables.get("batch_stats", {})
    backend = make_backend(config, learner, int(roster.num_steps.max()))
    if backend.traceable:
        backend = backend._replace(run=jax.jit(backend.run))
    one_round = make_round(learner, roster, federation.sampling, backend)
    data = backend.place(federation.data)  # laid out once as the backend reads it (replicated over its devices)
    root = jax.random.PRNGKey(config.seed)
    per_client = wire_sizes(learner, params, batch_stats, 1)
    wire = {name: config.clients_per_round * bits for name, bits in per_client.items()}

    def run_round(server: ServerState, r: int) -> tuple[ServerState, dict]:
        """Round ``r``; consumes ``server`` (its host table is updated in place): keep the returned state."""
        server, stats = one_round(server._replace(client_table=host_table(server.client_table)), data, root, r)
        if "cohort_size" in stats:  # Poisson: what the clients drawn sent and received
            return server, {**stats, **{k: int(stats["cohort_size"]) * v for k, v in per_client.items()}}
        return server, {**stats, **wire}

    server = learner.server_init(params, batch_stats, config.num_clients, zeros=host_zeros)  # the table on the host
    evaluate = host_evaluator(federation.model, federation.dataset, config.eval_client_threshold)
    accountant = None
    if learner.privacy is not None and learner.privacy.noise_multiplier > 0:
        accountant = privacy.accountant_for(config, len(federation.parts), learner.privacy.noise_multiplier)
    return Experiment(config, federation, backend, run_round, server, evaluate, wire, accountant)


def load_run(workdir: str | Path, data_dir: str = "", dataset: Dataset | None = None,
             ) -> tuple[Experiment, ServerState, int]:
    """A workdir's run as it stands, read only (its lock is not taken): the experiment its ``config.json`` builds
    (``data_dir`` replaces the stored one when given; ``dataset``: already loaded), the server state of its newest
    checkpoint and that checkpoint's round. For looking at a finished or running run again."""
    path = Path(workdir)
    try:
        values = json.loads((path / CONFIG_FILE).read_text())
        r, arrays = read_checkpoint(path / CHECKPOINT_FILE)
        if not isinstance(values, dict):
            raise ValueError(f"{CONFIG_FILE} holds a JSON {type(values).__name__}")
    except (OSError, ValueError) as e:
        raise WorkdirError(f"{path} holds no readable {CONFIG_FILE} and {CHECKPOINT_FILE} ({one_line(e)})") from None
    config = default_config()
    config.update(**{k: RENAMED_VALUES.get((k, v), v) for k, v in values.items() if k in config})
    config.data_dir = data_dir or config.data_dir
    exp = build_from_data(config, dataset if dataset is not None else
                          load_dataset(config.dataset, config.data_dir or None))
    return exp, restore_tree(arrays, exp.server, str(path / CHECKPOINT_FILE)), r


class ClientUpdate(NamedTuple):
    """One client's finished round, before compression (``client_updates``)."""

    client: int  # its index in the federation
    steps: int  # local steps it took
    update: Any  # the latent update u on the binarized leaves, theta - w on the others
    scales: Any  # its learned step size per leaf (FedBAT; the initial value on leaves not binarized)


def client_updates(exp: Experiment, server: ServerState, r: int, count: int) -> list[ClientUpdate]:
    """The first ``count`` clients of round ``r``'s cohort (the clients drawn, under Poisson sampling) trained from
    ``server`` as round ``r`` trains them (the same keys and data order): what each would hand its compressor.
    Nothing is compressed, aggregated or written; for looking at the updates a compressor sees
    (``experiments/alpha_check.py``, ``compressor_stats.py``)."""
    config, federation = exp.config, exp.federation
    learner = federation.learner
    inputs = plan_round(jax.random.PRNGKey(config.seed), r, federation.roster, federation.data.index,
                        federation.sampling)
    sent, step = learner.broadcast(server), jax.jit(learner.client_step)
    out = []
    for i in range(min(count, int(jnp.sum(inputs.valid)))):  # (the drawn clients come first)
        inp = one_client(inputs, i)
        client = learner.client_init(sent, jax.tree.map(lambda x: x[int(inp.client)], server.client_table), inp)
        for t in range(int(inp.num_steps)):
            client = step(client, sent, federation.data, inp, t)
        update, scales = learner.finished_update(sent, client, inp)
        out.append(ClientUpdate(int(inp.client), int(inp.num_steps), update, scales))
    return out


def run(config: ml_collections.ConfigDict, workdir: str | Path | None = None, progress: bool = False,
        log: Callable[[str], None] | None = None, allow_change: Iterable[str] = ()) -> list[dict]:
    """Run ``config.rounds`` rounds; return one record per round (also appended to workdir/metrics.jsonl).

    ``log`` takes the run's lines (its start, the resume); warnings (a dropped metrics line, a checkpoint fallback)
    then go to stderr, and without a ``log`` they are Python warnings. With a workdir (``fedbat_jax.workdir``), a
    run resumes from its last checkpoint there and reproduces the same numbers; a start whose settings would change
    the numbers of the run the workdir holds raises ``WorkdirError`` unless each changed field is named in
    ``allow_change`` (``rounds``, or a backend setting). A non-finite
    training loss or global model raises ``DivergenceError`` before that round is written or checkpointed.
    In a multi-process job (the settings ``coordinator_address``, ``num_processes``, ``process_id``; joined in
    ``validate``) every process holds the same replicated server state; process 0 writes the workdir (a folder
    all processes can read, to resume).
    """
    validate(config)  # before the workdir is touched or any data loads
    distributed.start(config)  # a multi-process job joined before anything touches a device
    _fits_before_loading(config)
    if workdir is None and list(allow_change):
        raise ConfigError("allow_change applies to resuming a run in a workdir: give one")
    if config.tensorboard and workdir is None:
        raise ConfigError("tensorboard=True writes into the workdir: give one")
    # with a log (the CLI's stdout), warnings are lines on stderr; without, Python warnings
    warn = (lambda s: print(f"warning: {s}", file=sys.stderr, flush=True)) if log else (
        lambda s: warnings.warn(s, stacklevel=3))
    folder = (Workdir(workdir, config, allow_change, warn, writer=jax.process_index() == 0)
              if workdir is not None else contextlib.nullcontext())
    with folder as wd:
        exp = _build(config, load_dataset(config.dataset, config.data_dir or None))
        server, done, records = wd.restore(exp.server) if wd else (exp.server, 0, [])
        if log:
            _log_start(exp, log)
            if wd and wd.changes:
                log("resuming with " + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in wd.changes.items()))
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=config.rounds, initial=done, desc=config.algorithm, unit="round")
        together = stopping.rounds_finish_first() if jax.process_count() > 1 else contextlib.nullcontext()
        with together, _one_line_if_a_peer_is_lost(wd):
            for r in range(done + 1, config.rounds + 1):
                server, rec = _round(exp, server, r, wd, records, first=r == done + 1)
                if bar is not None:
                    acc = rec["test_accuracy"]
                    bar.set_postfix_str(f"acc {acc:.4f}" if acc is not None else f"loss {rec['train_loss']:.4f}")
                    bar.update(1)
                if r < config.rounds:  # (a SIGTERM in the last round: the run is complete anyway)
                    _stop_if_asked(wd, server, r)
        if bar is not None:
            bar.close()
    return records


def _round(exp: Experiment, server: ServerState, r: int, wd: Workdir | None, records: list, first: bool = False,
           ) -> tuple[ServerState, dict]:
    """Round ``r`` of the run loop: train, evaluate when due, refuse a divergence, append, checkpoint when due.
    A job's processes start the ``first`` round together (``distributed.first_round``)."""
    config = exp.config
    t0 = time.perf_counter()
    with distributed.first_round() if first else contextlib.nullcontext():
        server, m = exp.run_round(server, r)
        train_loss = float(distributed.ready(m["train_loss"]))  # waits for the round to finish
    seconds = time.perf_counter() - t0
    model_finite = bool(_all_finite(server._replace(client_table=())))
    rec = {"round": r, "test_accuracy": None, "test_loss": None, "train_loss": train_loss,
           "uplink_bits": int(m["uplink_bits"]), "downlink_bits": int(m["downlink_bits"]),
           "round_seconds": round(seconds, 4)}
    rec.update({name: float(v) for name, v in m.items() if name not in rec})  # the learner's probes, if on
    if exp.accountant is not None:  # the accountant's state is the rounds charged, checkpointed in server.dp
        rec["epsilon"] = privacy.epsilon(exp.accountant, int(server.dp.rounds))
    if rec.get("poisson_overflow"):
        raise ConfigError(f"round {r} drew {int(rec['cohort_size'] + rec['poisson_overflow'])} clients, more than "
                          f"poisson_slots={int(rec['cohort_size'])}{_kept(wd)}; rerun with a larger "
                          "--config.poisson_slots (0 = auto)")
    if model_finite and (r % config.eval_every == 0 or r == config.rounds):
        rec.update(exp.evaluate(server))
    # A non-finite training loss, global model or evaluation is a divergence: that round is neither
    # written nor checkpointed, so null in metrics.jsonl only ever means "not evaluated".
    if not (math.isfinite(train_loss) and model_finite and math.isfinite(rec["test_loss"] or 0.0)):
        raise DivergenceError(_divergence_message(config, r, train_loss, model_finite, rec["test_loss"], wd),
                              r, records)
    records.append(rec)
    if wd:
        wd.append(rec)
        if r == config.rounds or (config.checkpoint_every and r % config.checkpoint_every == 0):
            wd.save(server, r)
    return server, rec


def _stop_if_asked(wd: Workdir | None, server: ServerState, r: int) -> None:
    """In a multi-process job, after every round: if any process got SIGTERM (or SIGINT from the launcher), every
    process stops here together, round ``r`` checkpointed (a single process's signal was raised at once)."""
    signalled = distributed.stop_requests()
    if not signalled:
        return
    if wd and wd.checkpoint_round != r:
        wd.save(server, r)
    who = ("process " if len(signalled) == 1 else "processes ") + ", ".join(map(str, signalled))
    raise Terminated(f"{who} of {jax.process_count()} got it; every process stopped after round {r}, "
                     f"which is checkpointed", interrupted=signal.SIGINT in signalled.values())


@contextlib.contextmanager
def _one_line_if_a_peer_is_lost(wd: Workdir | None):
    """A collective that fails because another process of the job died or went silent is one line
    (``JobError``), not a runtime traceback; any other error keeps its traceback."""
    try:
        yield
    except (jax.errors.JaxRuntimeError, RuntimeError, ValueError) as e:  # (an allgather's failure is a ValueError)
        lost = distributed.peer_lost(e, wd.checkpoint_round if wd else 0)
        if lost is None:
            raise
        raise lost from None


def _divergence_message(config, r: int, train_loss: float, model_finite: bool, test_loss, wd) -> str:
    """The one line of a diverged round: what went non-finite, what is kept, the setting most likely at fault
    (the clients' lr when their training loss blew up; the server's step when the clients were finite)."""
    what = (f"training loss {train_loss}" if not math.isfinite(train_loss) else
            "global model non-finite" if not model_finite else f"test loss {test_loss} of a finite model")
    server_steps = config.server_optimizer != "sgd" or config.server_lr != 1.0
    if math.isfinite(train_loss) and server_steps:
        hint = f"try a smaller server_lr (now {config.server_lr}, server_optimizer={config.server_optimizer})"
    else:
        hint = f"try a smaller lr (now {config.lr})"
    return f"round {r} diverged ({what}){_kept(wd)}; {hint}"


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
    config, backend = exp.config, exp.backend
    loop = f" ({backend.loop} loop of lanes)" if backend.name == "fused" else ""
    partition = partition_method(config.partition, exp.dataset.is_natural)
    log(f"{config.algorithm} on {config.dataset} ({partition}): {size_summary(exp.parts)}; "
        f"backend {backend.name}{loop} on {jax.default_backend()}, "
        f"devices: {distributed.describe(backend.devices)}")
    if exp.dataset.note:
        log(f"note: {config.dataset} data is a {exp.dataset.note}")
    p = exp.federation.learner.privacy
    if p is not None:
        solved = f" (solved for epsilon {config.dp_target_epsilon})" if config.dp_target_epsilon else ""
        eps = (f"; epsilon after {config.rounds} rounds {privacy.epsilon(exp.accountant, config.rounds):.4g} at delta "
               f"{exp.accountant.delta:.3g} ({config.dp_accountant}, {config.sampling} sampling)"
               if exp.accountant else "; no noise: epsilon is infinite")
        log(f"user-level DP: clip {p.clip:g}{' (adaptive)' if p.adaptive else ''}, noise multiplier "
            f"{p.noise_multiplier:.6g}{solved}{eps}")
    if config.print_histograms and exp.dataset.y_train.ndim == 1:  # (a sequence's targets have no label)
        log(format_histograms(label_histograms(exp.parts, exp.dataset.y_train, exp.dataset.num_classes)))
