"""``padded``: a pure ``run`` (jittable, vmappable; what ``make_train`` traces): groups of ``padded_group``
clients side by side, each group padded to its longest client (a ``fori_loop`` with a traced bound: the shorter
clients' extra steps are computed and discarded), groups in a ``lax.scan``. Nothing in it reads a concrete value."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from fedbat_jax.registry import NON_NEGATIVE, Setting, declares
from fedbat_jax.backends import Backend, finish, select_rows, start_clients
from fedbat_jax.federated import Aggregate, Broadcast, ClientInput, Learner
from fedbat_jax.local import FederatedData


def padded(learner: Learner, group: int = 0) -> Backend:
    """Groups of ``group`` clients (0: the whole cohort) as lanes, each run to its longest client."""

    def run(sent: Broadcast, data: FederatedData, inputs: ClientInput, rows) -> tuple[Aggregate, Any]:
        k = inputs.client.shape[0]
        g = min(group or k, k)
        num_groups = -(-k // g)
        pad = num_groups * g - k
        padded_inputs = jax.tree.map(lambda x: jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)]), inputs)
        valid = jnp.arange(num_groups * g) < k  # padding slots repeat the last client and are never folded in
        grouped = jax.tree.map(lambda x: x.reshape((num_groups, g) + x.shape[1:]), (padded_inputs, valid))
        step = jax.vmap(learner.client_step, (0, None, None, 0, None))

        def one_group(carry, xs):
            acc, rows = carry
            inp, real = xs
            clients = start_clients(learner, sent, rows, inp)

            def body(t, cl):
                return select_rows(t < inp.num_steps, step(cl, sent, data, inp, t), cl)

            clients = jax.lax.fori_loop(0, jnp.max(inp.num_steps), body, clients)
            return finish(learner, sent, acc, rows, clients, inp, real), None

        (acc, rows), _ = jax.lax.scan(one_group, (learner.empty_aggregate(sent), rows), grouped)
        return acc, rows

    return Backend("padded", run, 1, "scan", traceable=True)


@declares(Setting("padded_group", 0, "padded backend (make_train): clients trained side by side, each group run to "
                  "its longest client (0 = the whole cohort); bounds memory to padded_group x client state",
                  NON_NEGATIVE))
def make(learner: Learner, config, longest: int) -> Backend:
    return padded(learner, config.padded_group)  # the run loop jits it; make_train traces it whole
