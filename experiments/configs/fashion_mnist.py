"""The paper's Fashion-MNIST setting (REFERENCE.md section 3): CNN4, 100 clients, 10 per round,
10 local epochs, batch 64, lr 0.1, 100 rounds, partition seed 1234.

    --config=experiments/configs/fashion_mnist.py              # IID
    --config=experiments/configs/fashion_mnist.py:dirichlet    # Non-IID-1: Dirichlet beta 0.3
    --config=experiments/configs/fashion_mnist.py:label_count  # Non-IID-2: 3 of 10 classes per client

Needs the Fashion-MNIST files: --config.data_dir=DIR or FEDBAT_DATA_DIR (see README).
"""
from fedbat_jax.config import default_config


def get_config(partition: str = "iid"):
    c = default_config()
    c.dataset = "fashion_mnist"
    c.model = "cnn4"
    c.partition = partition or "iid"
    c.dirichlet_beta = 0.3
    c.labels_per_client = 3
    c.num_clients = 100
    c.clients_per_round = 10
    c.local_epochs = 10
    c.rounds = 100
    return c
