"""FedDyn (Acar et al., "Federated Learning Based on Dynamic Regularization", ICLR 2021), Algorithm 1.

Client ``k`` keeps ``g_k``, the gradient of its loss at its last local model (a row of the N-client table, zeros at
first). Its local training minimises the dynamically regularised loss

    L_k(w) - <g_k, w> + alpha/2 ||w - x||^2        (x: the broadcast model; alpha: ``feddyn_alpha``)

so every local step follows ``grad L_k(w) - g_k + alpha (w - x)``. Afterwards it sets ``g_k <- g_k - alpha (y_k - x)``
(the first-order condition of that minimum) and uploads ``y_k - x`` through the compressor, nothing else.

The server keeps ``h`` (its server-step state: never broadcast, so not counted in ``downlink_bits``) and sets

    h <- h - alpha sum_k w_k (y_k - x)             (w_k: the client's share of the whole federation)
    x <- x + sum_k p_k (y_k - x) - h / alpha        (p_k: its weight in the cohort)

With ``aggregation_weights=uniform`` these are the paper's ``1/m`` and ``1/|P_t|`` exactly; with the default
``samples`` every client counts by its examples, in both sums. The sums are of the decoded updates, so FedDyn
composes with every compressor (the uplink is the compressor's payload alone); the client's ``g_k`` is formed from
its exact update, as SCAFFOLD's control variate is. Under another server optimizer the optimizer acts on FedDyn's
step, ``-(sum_k p_k (y_k - x) - h / alpha)`` as a pseudo-gradient.

    python -m fedbat_jax.main --config.algorithm=feddyn --config.feddyn_alpha=0.01 [--config.compressor=...]
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedbat_jax.algorithms import Algorithm, float32_zeros
from fedbat_jax.registry import ABOVE_ZERO, Setting


def context(state, g_k, config):
    return g_k


def correct(grad, *, local, broadcast, context, config):
    """``grad - g_k + alpha (w - x)``."""
    return jax.tree.map(lambda g, gk, w, x: g - gk + config.feddyn_alpha * (w - x), grad, context, local, broadcast)


def message(update, g_k, context, lr_sum, config):
    """``g_k <- g_k - alpha (y_k - x)``; no message."""
    return jax.tree.map(lambda gk, u: gk - config.feddyn_alpha * u.astype(jnp.float32), g_k, update), ()


class ServerH(NamedTuple):
    h: Any  # the server's h, the model's shapes (float32)


def server_step(config) -> optax.GradientTransformationExtraArgs:
    """``h <- h - alpha * sums.federation``; the pseudo-gradient ``-sums.cohort`` becomes
    ``-sums.cohort + h / alpha``."""
    alpha = config.feddyn_alpha

    def init(params):
        return ServerH(float32_zeros(params, config))

    def update(pseudo_gradient, state, params=None, *, sums, **extra):
        h = jax.tree.map(lambda h, d: h - alpha * d, state.h, sums.federation)
        return jax.tree.map(lambda g, hh: g + hh / alpha, pseudo_gradient, h), ServerH(h)

    return optax.GradientTransformationExtraArgs(init, update)


FEDDYN = Algorithm("FedDyn: dynamic regularisation, per-client gradient state and the server's h (any compressor)",
                   settings=(Setting("feddyn_alpha", 0.01, "feddyn: weight alpha of the dynamic regulariser "
                                                           "(local) and of h (server)", ABOVE_ZERO),),
                   row_init=float32_zeros, context=context, correct=correct, message=message,
                   server_step=server_step)
