"""``debug``: no compilation at all, one client at a time, so a researcher can step through a round in pdb.

    python -m pdb -m fedbat_jax.main --config.backend=debug --config.model=logreg --config.rounds=1
    (Pdb) break fedbat_jax/backends/debug.py:40      # each local step; or break in the learner's client_step

Every JAX operation runs eagerly (``jax.disable_jit``, the round's planning and server step too), so every value
is concrete: print it, plot it, change it. It computes what ``host`` computes, one operation at a time; it is
slow (seconds a step on CPU for CNN4), so keep the model and cohort small.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fedbat_jax.backends import Backend, batch_of_one, finish, one_client
from fedbat_jax.federated import Broadcast, ClientInput, Learner
from fedbat_jax.local import FederatedData


def debug(learner: Learner) -> Backend:
    """The cohort's clients one after another, every step an eager call (no jit anywhere)."""

    def run(sent: Broadcast, data: FederatedData, inputs: ClientInput, rows):
        with jax.disable_jit():
            rows = jax.tree.map(jnp.asarray, rows)  # the cohort's rows of a host table arrive as numpy arrays
            acc = learner.empty_aggregate(sent)
            for i in range(int(inputs.client.shape[0])):
                inp = one_client(inputs, i)
                client = learner.client_init(sent, jax.tree.map(lambda x: x[i], rows), inp)
                for t in range(int(np.asarray(inp.num_steps))):
                    client = learner.client_step(client, sent, data, inp, t)
                acc, rows = finish(learner, sent, acc, rows, batch_of_one(client), batch_of_one(inp),
                                   jnp.ones((1,), bool))
            return acc, rows

    return Backend("debug", run, 1, "eager")


def make(learner: Learner, config, longest: int) -> Backend:
    return debug(learner)
