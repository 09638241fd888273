"""One federated round of the run loop, top to bottom (REFERENCE.md section 1):

1. ``plan_round``: K of N clients from ``(seed, r)`` and each one's ``ClientInput`` (data rows, size, steps,
   warm-up count, weights, key);
2. gather: the cohort's K rows of the N-client compressor-state table (held in host memory; only these rows
   reach the devices, so a round's traffic and device memory do not grow with N);
3. the execution backend (``fedbat_jax.executions``): every client's local steps from the broadcast model,
   each finished client's payload encoded, decoded and added to the running ``Aggregate``;
4. scatter the K new rows back into the table; ``server_update``: the new global model.

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
    """A round of one experiment: ``run(server, r) -> (server, metrics)``, with its execution backend.

    ``run`` consumes ``server``: its host table of compressor states is updated in place (as a donated
    device buffer would be), so keep the returned state, not the one passed in. A table on the device is
    copied to the host first.
    """

    def __init__(self, fed: Federated, roster: Roster, data: ClientData, execution: Execution, clients_per_round: int,
                 seed: int, bits: dict):
        self.fed, self.roster, self.data, self.execution = fed, roster, data, execution
        self.placed = execution.place(data)  # the data as the backend reads it (replicated over its devices)
        self.seed, self.bits = seed, bits
        self.plan = jax.jit(partial(plan_round, roster=roster, k=clients_per_round))
        self.update = jax.jit(fed.server_update)

    def run(self, server: ServerState, r: int) -> tuple[ServerState, dict]:
        inputs = self.plan(jax.random.PRNGKey(self.seed), r, index=self.data.index)
        cohort = np.asarray(inputs.client)
        table = jax.tree.map(_host, server.compressor_states)
        rows = jax.tree.map(lambda t: t[cohort], table)
        agg, rows = self.execution.run(server.params, server.batch_stats, self.placed, inputs, rows)
        server, train_loss = self.update(server._replace(compressor_states=()), agg)
        for t, new in zip(jax.tree.leaves(table), jax.tree.leaves(rows)):
            t[cohort] = np.asarray(new)
        return server._replace(compressor_states=table), {"train_loss": train_loss, **self.bits}


def host_zeros(shape, dtype) -> np.ndarray:
    """A zero table in host memory, its pages written now: a page first read as the kernel's shared zero page
    and written later costs a TLB shootdown across XLA's threads (tens of ms a round at 10,000 clients)."""
    table = np.empty(shape, dtype)
    table.fill(0)
    return table


def _host(x) -> np.ndarray:
    """A table leaf as a writable host array (copied only when it is not one yet)."""
    return x if isinstance(x, np.ndarray) and x.flags.writeable else np.array(x)
