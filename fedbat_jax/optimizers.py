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

from fedbat_jax.registry import ABOVE_ZERO, UNIT, Registry, Setting, declares


def client_direction(momentum: float, weight_decay: float) -> optax.GradientTransformation:
    """The client's update direction from its gradient (``params``: the full-precision weights)."""
    parts = []
    if weight_decay:
        parts.append(optax.add_decayed_weights(weight_decay))
    if momentum:
        parts.append(optax.trace(decay=momentum))
    return optax.chain(*parts) if parts else optax.identity()


def _constant(lr, beta, gamma, t, total):
    return lr


@declares(Setting("lr_beta", 1.0, "inverse_time schedule: numerator beta", ABOVE_ZERO),
          Setting("lr_gamma", 1.0, "inverse_time schedule: offset gamma", ABOVE_ZERO))
def _inverse_time(lr, beta, gamma, t, total):  # the convergence theorem's eta_t = beta / (gamma + t)
    return beta / (gamma + t)


def _cosine(lr, beta, gamma, t, total):
    return lr * 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.minimum(t / total, 1.0)))


# The ``lr_schedule`` setting: name -> (lr, lr_beta, lr_gamma, t, total) -> the learning rate at step t.
LR_SCHEDULES = Registry("lr_schedule", {"constant": _constant, "inverse_time": _inverse_time, "cosine": _cosine})


def learning_rate(schedule: str, lr, beta, gamma, t, total):
    """The client learning rate at its step ``t`` of ``total`` (both counted over the whole run)."""
    return LR_SCHEDULES[schedule](lr, beta, gamma, t, total)


def _sgd(c) -> optax.GradientTransformation:
    return optax.sgd(c.server_lr)


# The server optimizers' own settings (``server_lr`` is every one's, a core setting).
B1 = Setting("server_b1", 0.9, "server optimizer: momentum (FedAvgM) or first-moment decay (adam, yogi)", UNIT)
B2 = Setting("server_b2", 0.99, "server optimizer: second-moment decay (adam, yogi)", UNIT)
EPS = Setting("server_eps", 1e-3, "server optimizer: adaptivity tau (adam, yogi)", ABOVE_ZERO)


@declares(B1)
def _momentum(c) -> optax.GradientTransformation:
    return optax.sgd(c.server_lr, momentum=c.server_b1)


@declares(B1, B2, EPS)
def _adam(c) -> optax.GradientTransformation:
    return optax.adam(c.server_lr, b1=c.server_b1, b2=c.server_b2, eps=c.server_eps)


@declares(B1, B2, EPS)
def _yogi(c) -> optax.GradientTransformation:
    return optax.yogi(c.server_lr, b1=c.server_b1, b2=c.server_b2, eps=c.server_eps)


# The ``server_optimizer`` setting: name -> (config) -> the optax transform over the pseudo-gradient.
SERVER_OPTIMIZERS = Registry("server_optimizer", {"sgd": _sgd, "momentum": _momentum, "adam": _adam, "yogi": _yogi})


def server_optimizer(config) -> optax.GradientTransformation:
    """The server's optimizer over the pseudo-gradient ``-(sum_k p_k decode(payload_k))``, as the settings
    ``server_optimizer``, ``server_lr``, ``server_b1``, ``server_b2``, ``server_eps`` say."""
    return SERVER_OPTIMIZERS[config.server_optimizer](config)
