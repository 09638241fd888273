"""SCAFFOLD (Karimireddy et al., "SCAFFOLD: Stochastic Controlled Averaging for Federated Learning", ICML 2020),
with option II control variates.

Each client ``i`` keeps a control variate ``c_i`` (a row of the N-client table, zeros at first) and the server
keeps ``c`` (its algorithm state, sent to the sampled clients with the model). Every local step follows the
corrected gradient ``g - c_i + c``. After its ``S_i`` steps the client sets

    c_i+ = c_i - c + (x - y_i) / sum_t eta_t      (option II; sum_t eta_t = S_i * lr at a constant lr)

and sends the change ``c_i+ - c_i`` beside its model update; the server adds ``sum_k w_k (c_k+ - c_k)`` to ``c``
(``w_k``: the client's share of the whole federation, so ``c`` stays the weighted mean of every client's ``c_i``,
the paper's ``c += |S|/N mean_k dc_k`` with equal shares). The model update is averaged as usual.

On the wire: the model update ``y_i - x`` goes through the compressor (``compressor=...``; float32 by default);
the control-variate change always travels as float32, one value per parameter, so a SCAFFOLD client's upload is
the compressor's payload plus ``32 x (number of parameters)`` bits, and its download the model plus ``c`` (both
counted exactly in ``uplink_bits``/``downlink_bits``). With a compressed update the control variate is formed from
the client's exact update, as in the compressed SCAFFOLD variants of the literature.

    python -m fedbat_jax.main --config.algorithm=scaffold [--config.compressor=stoch_binary]
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from fedbat_jax.algorithms import Algorithm, float32_zeros


def context(c, c_i, config):
    """What the client's steps add to their gradient: ``c - c_i``."""
    return jax.tree.map(jnp.subtract, c, c_i)


def correct(grad, *, local, broadcast, context, config):
    """``g + (c - c_i)``."""
    return jax.tree.map(jnp.add, grad, context)


def message(update, c_i, c_minus_ci, lr_sum, config):
    """Option II: ``c_i+ = (c_i - c) - update / sum_t eta_t`` (``update = y_i - x``, ``c_i - c`` the negated
    context); the message is ``c_i+ - c_i``."""
    new = jax.tree.map(lambda d, m: -d - m.astype(jnp.float32) / lr_sum, c_minus_ci, update)
    return new, jax.tree.map(jnp.subtract, new, c_i)


def state_update(c, weighted_changes, config):
    return jax.tree.map(jnp.add, c, weighted_changes)


SCAFFOLD = Algorithm("SCAFFOLD (option II): control variates correct every local step (any compressor; the "
                     "control-variate change travels as float32)",
                     row_init=float32_zeros, state_init=float32_zeros, context=context, correct=correct,
                     message=message, state_update=state_update)
