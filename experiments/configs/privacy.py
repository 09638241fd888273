"""User-level DP on Fashion-MNIST over 1,000 clients (issue 42's privacy-utility study, ``experiments/privacy.py``).

    python -m fedbat_jax.main --config=experiments/configs/privacy.py --workdir=runs/dp \
        --config.data_dir=DIR --config.dp_target_epsilon=4

Multinomial logistic regression (CNN4 has BatchNorm, whose statistics would travel outside the noised sum, so DP
refuses it), 60 examples a client (IID), Poisson sampling of 100 clients a round in expectation (q = 0.1), 2 local
epochs in batches of 16, 50 rounds; the clip starts at 0.2 and follows the median decoded-upload norm (adaptive
clipping, the same rule for every method: no per-method tuning); delta = 1 / N. With ``dp_noise_multiplier = 0``
and no target the run is clipped but not noised (infinite epsilon); ``--config.dp_clip=0`` turns DP off (the same
sampling).
"""
from fedbat_jax.config import default_config


def get_config():
    c = default_config()
    c.update(dataset="fashion_mnist", model="logreg", num_clients=1000, clients_per_round=100, partition="iid",
             sampling="poisson", aggregation_weights="uniform", local_epochs=2, batch_size=16, rounds=50,
             dp_clip=0.2, dp_adaptive_quantile=0.5, dp_clip_lr=0.2, checkpoint_every=10)
    return c
