"""The paper's settings (REFERENCE.md section 3), one config for every dataset.

    --config=experiments/configs/paper.py:fashion_mnist                   # IID
    --config=experiments/configs/paper.py:fashion_mnist:dirichlet         # Non-IID-1 (Dirichlet label skew)
    --config=experiments/configs/paper.py:cifar10:label_count             # Non-IID-2 (a fixed share of the classes)
    --config=experiments/configs/paper.py:cifar10:dirichlet,reduced       # the same on a 2-core CPU in minutes

DATASET is fashion_mnist, svhn (CNN4, 100 rounds), cifar10 or cifar100 (ResNet-10 with crop+flip, 200
rounds); PARTITION is iid (default), dirichlet or label_count. Everything not listed here is
``fedbat_jax.config.default_config()``'s value, which is the reference's. These datasets need their files:
``--config.data_dir=DIR`` or ``FEDBAT_DATA_DIR`` (see docs/data.md).
"""
from fedbat_jax.config import default_config, did_you_mean
from fedbat_jax.errors import ConfigError

PAPER_SETTINGS = {
    "fashion_mnist": dict(model="cnn4", rounds=100, dirichlet_beta=0.3, labels_per_client=3),
    "svhn": dict(model="cnn4", rounds=100, dirichlet_beta=0.3, labels_per_client=3),
    "cifar10": dict(model="resnet10", rounds=200, dirichlet_beta=0.3, labels_per_client=3),
    "cifar100": dict(model="resnet10", rounds=200, dirichlet_beta=0.1, labels_per_client=10),
}
PARTITIONS = ("iid", "dirichlet", "label_count")
FEDERATION = dict(num_clients=100, clients_per_round=10)  # the paper's: 100 clients, 10 a round
# The reduced variant keeps the dataset, model family, partition and local-training rule but shrinks the
# federation so that a run takes minutes on a 2-core CPU: 20 clients, 5 per round, 2 local epochs,
# 20 rounds, and ResNet-10 at width 16 (1/16 of the paper's multiply-adds).
REDUCED = dict(num_clients=20, clients_per_round=5, local_epochs=2, rounds=20)
REDUCED_WIDTH = {"resnet10": 16}


def get_config(arg: str = ""):
    dataset, _, rest = (arg or "").partition(":")
    if dataset not in PAPER_SETTINGS:
        raise ConfigError(f"paper.py takes DATASET[:PARTITION][,reduced] with DATASET one of: "
                          f"{', '.join(PAPER_SETTINGS)} (got {arg!r}{did_you_mean(dataset, PAPER_SETTINGS)})")
    words = [w.strip() for w in rest.split(",") if w.strip()]
    reduced = "reduced" in words
    words = [w for w in words if w != "reduced"]
    if len(words) > 1 or (words and words[0] not in PARTITIONS):
        raise ConfigError(f"paper.py:{dataset}: the argument after the dataset must be PARTITION[,reduced] with "
                          f"PARTITION one of: {', '.join(PARTITIONS)} (got {rest!r})")
    c = default_config()
    c.dataset = dataset
    c.update(FEDERATION, **PAPER_SETTINGS[dataset])
    c.partition = words[0] if words else "iid"
    if reduced:
        c.update(REDUCED)
        c.model_width = REDUCED_WIDTH.get(c.model, 0)
    return c
