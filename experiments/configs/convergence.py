"""The convergence-rate study's problem (experiments/convergence.py): strongly convex federated logistic
regression on the 4,000 bundled MNIST training digits (offline), full participation.

10 clients of the digits, all sampled every round, 1 local epoch of batch 20, L2 term lambda = 0.01
(``weight_decay``; mu = lambda). The learning rate is the theorem's ``beta / (gamma + t)``; the study sets
``lr_beta`` and ``lr_gamma`` from the problem's L and mu (REFERENCE.md section 5).
"""
from fedbat_jax.config import default_config


def get_config(partition: str = "iid"):
    c = default_config()
    c.update(dataset="mnist5k", model="logreg", num_clients=10, clients_per_round=10, local_epochs=1,
             batch_size=20, rounds=500, weight_decay=0.01, lr_schedule="inverse_time", eval_every=100,
             partition=partition or "iid", labels_per_client=3)
    return c
