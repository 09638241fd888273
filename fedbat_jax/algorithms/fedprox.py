"""FedProx (Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020): local training adds the
proximal term ``prox_mu / 2 * ||w - w_global||^2`` to each client's loss, which keeps its model near the broadcast
one. Its gradient ``prox_mu * (w - w_global)`` is added to the gradient of every trainable leaf; ``w`` is the
client's full-precision weight (``w_global + u`` on a leaf that trains binarized, so FedProx composes with the
``fedbat`` compressor as a pull of the latent update towards 0). ``prox_mu = 0`` is FedAvg, bit for bit.

    python -m fedbat_jax.main --config.algorithm=fedprox --config.prox_mu=0.01 [--config.compressor=...]
"""
from __future__ import annotations

import jax

from fedbat_jax.algorithms import Algorithm
from fedbat_jax.registry import NON_NEGATIVE, Setting


def correct(grad, *, local, broadcast, context, config):
    """``g + mu (w - w_global)``: the gradient of the loss plus the proximal term's."""
    return jax.tree.map(lambda g, w, w0: g + config.prox_mu * (w - w0), grad, local, broadcast)


FEDPROX = Algorithm("FedProx: local training adds prox_mu/2 ||w - w_global||^2 (any compressor)",
                    settings=(Setting("prox_mu", 0.01, "fedprox: weight mu of the proximal term "
                                                       "mu/2 ||w - w_global||^2 in local training",
                                      NON_NEGATIVE),),
                    correct=correct)
