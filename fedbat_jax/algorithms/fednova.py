"""FedNova (Wang et al., "Tackling the Objective Inconsistency Problem in Heterogeneous Federated Optimization",
NeurIPS 2020): normalised averaging.

FedAvg sums the clients' updates ``y_k - x`` by their weights ``p_k``. A client that takes more local steps moves
further, so FedAvg converges to the optimum of a surrogate objective that over-weights the clients with more
local work (one local epoch over unequal client sizes, say) instead of the weighted objective. FedNova divides each
update by the client's local work ``a_k`` and rescales the sum by the cohort's mean work:

    x <- x + tau_eff sum_k p_k (y_k - x) / a_k,     tau_eff = sum_k p_k a_k

``a_k`` is the sum of the client's local learning rates (``S_k`` steps of a constant ``lr``: ``S_k lr``; under a
schedule, the steps it took at each rate); with heavy-ball momentum ``rho`` (the ``momentum`` setting) it is
``lr (S_k - rho (1 - rho^S_k) / (1 - rho)) / (1 - rho)``, the mean rate of the round times that. A common factor
of every ``a_k`` cancels, so this is the paper's ``a_k = S_k`` at a constant rate. The server planned every
``S_k`` and knows the schedule, so nothing extra travels: the uplink is the compressor's payload alone, and the
normalisation applies to each decoded update, so FedNova composes with every compressor. With equal ``a_k`` it
is FedAvg (up to rounding).

    python -m fedbat_jax.main --config.algorithm=fednova [--config.compressor=...]
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from fedbat_jax.algorithms import Algorithm


def local_work(lr_sum, num_steps, config) -> jax.Array:
    """``a_k`` of clients whose ``num_steps`` local steps summed to ``lr_sum`` (heavy ball: the ``momentum``
    setting)."""
    lr_sum = jnp.asarray(lr_sum, jnp.float32)
    rho = float(config.momentum)
    if rho == 0.0:
        return lr_sum
    s = jnp.maximum(jnp.asarray(num_steps, jnp.float32), 1.0)
    return lr_sum / s * (s - rho * (1.0 - rho ** s) / (1.0 - rho)) / (1.0 - rho)


def update_scale(client, lr_sum, config) -> jax.Array:
    """``1 / a_k`` (0 for a client that took no step: its update is 0)."""
    a = local_work(lr_sum, client.num_steps, config)
    return jnp.where(a > 0, 1.0 / jnp.where(a > 0, a, 1.0), 0.0)


def server_step(config) -> optax.GradientTransformationExtraArgs:
    """The pseudo-gradient ``-sum_k p_k (y_k - x) / a_k`` times ``tau_eff = sum_k p_k a_k``."""

    def update(pseudo_gradient, state, params=None, *, sums, **extra):
        tau_eff = jnp.sum(sums.inputs.weight * local_work(sums.lr_sums, sums.inputs.num_steps, config))
        return jax.tree.map(lambda g: tau_eff * g, pseudo_gradient), state

    return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update)


FEDNOVA = Algorithm("FedNova: each update normalised by its client's local work, rescaled by the cohort's mean "
                    "(any compressor)", update_scale=update_scale, server_step=server_step)
