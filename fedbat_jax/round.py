"""One federated round of the run loop, top to bottom (REFERENCE.md section 1):

1. ``plan_round``: K of N clients from ``(seed, r)`` and each one's ``ClientInput`` (data rows, size, steps,
   warm-up count, weights, key);
2. the execution backend (``fedbat_jax.executions``): every client's local steps from the broadcast model,
   each finished client's payload encoded, decoded and added to the running ``Aggregate``;
3. ``server_update``: the new global model.

``wire_bits`` gives the exact uplink and downlink sizes from the payload's shapes alone.
"""
from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fedbat_jax.bits import payload_bits
from fedbat_jax.executions import Execution
from fedbat_jax.federated import Federated, Roster, ServerState, plan_round, sample_cohort
from fedbat_jax.local import ClientData

Params = Any


def cohort(seed: int, r: int, num_clients: int, k: int) -> np.ndarray:
    """The clients sampled in round ``r`` of the run with this seed (host copy)."""
    return np.asarray(sample_cohort(jax.random.PRNGKey(seed), r, num_clients, k))


def wire_bits(fed: Federated, params: Params, batch_stats: Any, k: int) -> dict:
    """Exact sizes from the payload's shapes: what K clients send, and what the server sends them."""
    spec = lambda t: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), t)  # noqa: E731
    state = jax.eval_shape(fed.compressor.init, spec(params))
    scales = jax.tree.map(lambda x: jax.ShapeDtypeStruct((), jnp.float32), params)
    payload, _ = jax.eval_shape(fed.compressor.encode, spec(params), scales, state, jax.random.PRNGKey(0))
    stats = payload_bits(spec(batch_stats))  # BatchNorm statistics travel as float32
    return {"uplink_bits": k * (payload_bits(payload) + stats), "downlink_bits": k * (payload_bits(spec(params)) + stats)}


class Round:
    """A round of one experiment: ``run(server, r) -> (server, metrics)``, with its execution backend."""

    def __init__(self, fed: Federated, roster: Roster, data: ClientData, execution: Execution, clients_per_round: int,
                 seed: int, bits: dict):
        self.fed, self.roster, self.data, self.execution = fed, roster, data, execution
        self.seed, self.bits = seed, bits
        self.plan = jax.jit(partial(plan_round, roster=roster, k=clients_per_round))
        self.update = jax.jit(fed.server_update)

    def run(self, server: ServerState, r: int) -> tuple[ServerState, dict]:
        inputs = self.plan(jax.random.PRNGKey(self.seed), r, index=self.data.index)
        agg, compressor_states = self.execution.run(server, self.data, inputs)
        server, train_loss = self.update(server, agg, compressor_states)
        return server, {"train_loss": train_loss, **self.bits}
