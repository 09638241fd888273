"""Client and server optimizers: the optax transformations and the learning-rate schedule a config names.

A client's local step is ``theta <- theta - lr_t * d`` where ``d`` is the gradient passed through
``client_direction`` (an optax ``GradientTransformation``: weight decay, then momentum; the identity by
default, which is the reference's plain SGD) and ``lr_t = learning_rate(...)`` at the client's step ``t``
counted over the whole run. This is optax's own ``sgd`` decomposition, with the schedule evaluated at the
run's step rather than the optimizer's per-round count (a client's optimizer state starts afresh each round).

The server treats the averaged client update as a negative pseudo-gradient and applies an optax optimizer
to it (Reddi et al., "Adaptive Federated Optimization", ICLR 2021): ``sgd`` with ``server_lr = 1`` is plain
FedAvg/FedBAT averaging, ``momentum`` FedAvgM, ``adam`` FedAdam, ``yogi`` FedYogi (optax's ``adam``
keeps its bias correction; Reddi et al.'s Algorithm 2 has none).
"""
from __future__ import annotations

import jax.numpy as jnp
import optax


def client_direction(momentum: float, weight_decay: float) -> optax.GradientTransformation:
    """The client's update direction from its gradient (``params``: the full-precision weights)."""
    parts = []
    if weight_decay:
        parts.append(optax.add_decayed_weights(weight_decay))
    if momentum:
        parts.append(optax.trace(decay=momentum))
    return optax.chain(*parts) if parts else optax.identity()


def learning_rate(schedule: str, lr, beta, gamma, t, total):
    """The client learning rate at its step ``t`` of ``total`` (both counted over the whole run)."""
    if schedule == "inverse_time":  # the convergence theorem's eta_t = beta / (gamma + t)
        return beta / (gamma + t)
    if schedule == "cosine":
        return lr * 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.minimum(t / total, 1.0)))
    return lr


def server_optimizer(name: str, lr: float, b1: float, b2: float, eps: float) -> optax.GradientTransformation:
    """The server's optimizer over the pseudo-gradient ``-(sum_k p_k decode(payload_k))``."""
    if name == "momentum":
        return optax.sgd(lr, momentum=b1)
    if name == "adam":
        return optax.adam(lr, b1=b1, b2=b2, eps=eps)
    if name == "yogi":
        return optax.yogi(lr, b1=b1, b2=b2, eps=eps)
    return optax.sgd(lr)
