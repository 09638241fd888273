"""Federated algorithms: what a method adds to the round of ``fedbat_jax.federated`` (local SGD from the broadcast
model, each client's update through the compressor, the server's step on their weighted average).

An ``Algorithm`` is a record of pure functions, every one optional (the defaults are FedAvg). On a client:

* ``row_init(params, config) -> row``: the algorithm's state of one client, a row of the N-client table
  (gathered for the cohort before the round and scattered back after, like an error-feedback residual);
* ``context(state, row, config) -> context``: what a client's local steps read, formed when it starts
  (``state``: the broadcast state below);
* ``correct(grad, *, local, broadcast, context, config) -> grad``: the local step's direction from the gradient
  of the trainable leaves (``local``: the client's full-precision weights, ``broadcast``: the model it started
  from); a loss term ``h(w)`` added to local training is its gradient added here;
* ``message(update, row, context, lr_sum, config) -> (row, message)``: after local training, the client's new
  row and a float32 message to the server (sent beside the compressed update, counted in ``uplink_bits``;
  ``lr_sum``: the sum of its local steps' learning rates).

On the server:

* ``state_init(params, config) -> state`` and ``state_update(state, messages, config) -> state``: state the server
  *broadcasts* with the model (counted in ``downlink_bits``; SCAFFOLD's ``c``); ``messages`` is
  ``sum_k w_k message_k``, each client weighted by its share ``w_k`` of the whole federation;
* ``update_scale(client, lr_sum, config) -> factor``: a factor on a sampled client's decoded update before it is
  summed (``client``: its ``ClientInput``; ``lr_sum``: the sum of its local steps' learning rates; FedNova's
  ``1 / a_k``);
* ``server_step(config) -> optax.GradientTransformationExtraArgs``: the algorithm's own server step. It sits in
  the chain after the compressor's server side and before the server optimizer, so it transforms the
  pseudo-gradient ``-sum_k p_k decode_k`` and may change the model in any way (FedDyn's ``- h / alpha``). Its
  ``update(pseudo_gradient, state, params, *, sums)`` receives ``sums``, a ``fedbat_jax.federated.Sums``: the
  cohort-weighted and federation-weighted sums of the decoded updates, the cohort's inputs and each client's sum
  of learning rates. Its state stays on
  the server (never broadcast, not counted on the wire) and is checkpointed with the server optimizer's.

``compressor`` is what the ``compressor=auto`` setting means for it (``fedbat_jax.compressors.COMPRESSORS``).
Several names here are FedAvg under a compressor's name (``alias=True``): ``fedbat`` is FedAvg with the
``fedbat`` compressor (whose kernels train binarized), ``signsgd`` with ``scaled_sign``, and so on; the other
algorithms compose with every compressor. A new algorithm is one file defining its ``Algorithm`` plus one line in
``ALGORITHMS`` (``fedprox.py``, ``scaffold.py``, ``feddyn.py`` and ``fednova.py`` show it); its settings come with it
(``settings``, ``check``).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from fedbat_jax.registry import Registry, Setting

Params = Any


def _nothing(params, config):
    return ()


def _no_context(state, row, config):
    return ()


def float32_zeros(params, config):
    """A float32 tree of zeros shaped like the parameters: a fresh row or state (SCAFFOLD's ``c_i`` and ``c``,
    FedDyn's ``g_k`` and ``h``)."""
    return jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), params)


class Algorithm(NamedTuple):
    """An entry of ``ALGORITHMS``: what the method adds to FedAvg's round (every hook optional)."""

    summary: str  # one line, for docs/methods.md and --help
    compressor: str = "none"  # what compressor=auto means for it
    error_feedback: str | None = None  # error feedback it always uses (ef_signsgd); None: the setting's
    alias: bool = False  # FedAvg under a compressor's name: the compressor setting must stay auto
    settings: tuple[Setting, ...] = ()  # settings this algorithm brings (e.g. prox_mu)
    check: Callable[[Any], None] | None = None  # check(config): its settings' ranges, one-line ConfigError
    # a client
    row_init: Callable[[Params, Any], Any] = _nothing
    context: Callable[[Any, Any, Any], Any] = _no_context
    correct: Callable | None = None  # None: the gradient as it is
    message: Callable | None = None  # None: the row unchanged, no message
    # the server
    state_init: Callable[[Params, Any], Any] = _nothing
    state_update: Callable | None = None  # None: the broadcast state unchanged
    update_scale: Callable | None = None  # None: each decoded update as it is
    server_step: Callable | None = None  # None: the pseudo-gradient goes to the server optimizer as it is


ALGORITHMS = Registry("algorithm", {
    "fedavg": Algorithm("FedAvg: local SGD, float32 upload, weighted average (compressor=auto: none)"),
    "fedbat": Algorithm("FedBAT (the paper): kernels train binarized, 1-bit upload with the learned step size",
                        compressor="fedbat", alias=True),
    "signsgd": Algorithm("FedAvg training, scaled-sign upload", compressor="scaled_sign", alias=True),
    "ef_signsgd": Algorithm("FedAvg training, scaled-sign upload with error feedback (ef)",
                            compressor="scaled_sign", error_feedback="ef", alias=True),
    "stoch_binary": Algorithm("FedAvg training, stochastic binarization with alpha = max|m|",
                              compressor="stoch_binary", alias=True),
    "qsgd": Algorithm("FedAvg training, bits-bit stochastic levels with alpha = max|m|", compressor="qsgd",
                      alias=True),
    "fedprox": "fedbat_jax.algorithms.fedprox:FEDPROX",
    "scaffold": "fedbat_jax.algorithms.scaffold:SCAFFOLD",
    "feddyn": "fedbat_jax.algorithms.feddyn:FEDDYN",
    "fednova": "fedbat_jax.algorithms.fednova:FEDNOVA",
})
