"""FedNova (Wang et al., "Tackling the Objective Inconsistency Problem in Heterogeneous Federated Optimization",
NeurIPS 2020): normalised averaging.

FedAvg sums the clients' updates ``y_k - x`` by their weights ``p_k``. A client that takes more local steps moves
further, so FedAvg converges to a point that over-weights the clients with more local work (``local_epochs`` over
unequal client sizes, say) instead of the weighted optimum. FedNova divides each update by the client's local work
``a_k`` and rescales the sum by the cohort's mean work:

    x <- x + tau_eff sum_k p_k (y_k - x) / a_k,     tau_eff = sum_k p_k a_k

For local SGD with heavy-ball momentum ``rho`` (the ``momentum`` setting) over ``S_k`` steps,
``a_k = (S_k - rho (1 - rho^S_k) / (1 - rho)) / (1 - rho)``; without momentum ``a_k = S_k``. The server planned every
``S_k``, so nothing extra travels: the uplink is the compressor's payload alone, and the normalisation applies to
each decoded update, so FedNova composes with every compressor. With equal ``S_k`` it is FedAvg (up to rounding).

    python -m fedbat_jax.main --config.algorithm=fednova [--config.compressor=...]
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from fedbat_jax.algorithms import Algorithm


def local_work(num_steps, config) -> jax.Array:
    """``a_k`` of clients that took ``num_steps`` local SGD steps with the ``momentum`` setting's heavy ball."""
    s = jnp.maximum(jnp.asarray(num_steps, jnp.float32), 1.0)
    rho = float(config.momentum)
    if rho == 0.0:
        return s
    return (s - rho * (1.0 - rho ** s) / (1.0 - rho)) / (1.0 - rho)


def update_scale(client, config) -> jax.Array:
    """``1 / a_k``."""
    return 1.0 / local_work(client.num_steps, config)


def server_step(config) -> optax.GradientTransformationExtraArgs:
    """The pseudo-gradient ``-sum_k p_k (y_k - x) / a_k`` times ``tau_eff = sum_k p_k a_k``."""

    def update(pseudo_gradient, state, params=None, *, sums, **extra):
        tau_eff = jnp.sum(sums.inputs.weight * local_work(sums.inputs.num_steps, config))
        return jax.tree.map(lambda g: tau_eff * g, pseudo_gradient), state

    return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update)


FEDNOVA = Algorithm("FedNova: each update normalised by its client's local work, rescaled by the cohort's mean "
                    "(any compressor)", update_scale=update_scale, server_step=server_step)
