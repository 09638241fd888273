"""One federated round, top to bottom (REFERENCE.md section 1): the run loop and ``make_train`` both call it.

    one_round = make_round(learner, roster, clients_per_round, backend)
    server, stats = one_round(server, data, jax.random.PRNGKey(seed), r)   # stats: train_loss (+ probes)

1. ``plan_round``: the cohort from ``(seed, r)`` (K of N, or Poisson: ``Sampling``) and each one's
   ``ClientInput`` (data rows, size, steps, warm-up count, weights, key);
2. ``gather``: the cohort's K rows of the N-client table (in host memory for the run loop, so only these rows
   reach the devices and a round's traffic and device memory do not grow with N; on the device in ``make_train``);
3. the backend (``fedbat_jax.backends``) runs every client's local steps from the broadcast model and folds each
   finished client's contribution into the ``Aggregate`` through the learner;
4. the server's step (``Learner.server_update``; with DP the clipped sum is noised from the round's key): the new
   global model and algorithm state;
5. ``scatter`` the K new rows back into the table.

``wire_sizes`` gives the exact uplink and downlink sizes from the payload's shapes alone.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from fedbat_jax.backends import Backend
from fedbat_jax.federated import (NOISE, Learner, Roster, Sampling, ServerState, as_sampling, plan_round,
                                  poisson_cohort, sample_cohort)
from fedbat_jax.payloads import payload_bits

Params = Any


def make_round(learner: Learner, roster: Roster, clients_per_round: int | Sampling, backend: Backend,
               jit: bool = True) -> Callable[..., tuple[ServerState, dict]]:
    """``one_round(server, data, root, r) -> (server, stats)``: ``stats`` holds the round's ``train_loss``, the
    learner's probes (``Learner.client_probes``) if on, DP's (``dp_clip``) if on and, under Poisson sampling,
    ``cohort_size`` and ``poisson_overflow`` (clients drawn beyond the slots). ``jit=False`` leaves the planning and the
    server step to be traced by the caller (``make_train``); an ``eager`` backend (``debug``) compiles nothing.

    With a host table (the run loop's) ``one_round`` consumes ``server``: the table is updated in place (as a
    donated device buffer would be), so keep the returned state, not the one passed in."""
    sampling = as_sampling(clients_per_round)
    n = len(roster.sizes)

    def plan(root, r, index):  # the cohort's inputs and, under Poisson sampling, its size (one draw, compiled once)
        inputs = plan_round(root, r, roster, index, sampling)
        return inputs, cohort_stats(root, r, n, sampling) if sampling.poisson else {}

    update = learner.server_update
    eager = backend.loop == "eager"
    if jit and not eager:
        plan, update = jax.jit(plan), jax.jit(update)

    def one_round(server: ServerState, data, root: jax.Array, r) -> tuple[ServerState, dict]:
        with jax.disable_jit() if eager else contextlib.nullcontext():
            inputs, cohort = plan(root, r, data.index)                                       # 1. the cohort
            rows = gather(server.client_table, inputs.client)                                # 2. its rows
            agg, rows = backend.run(learner.broadcast(server), data, inputs, rows)         # 3. clients train
            key = jax.random.fold_in(jax.random.fold_in(root, r), NOISE)
            new, stats = update(server._replace(client_table=()), agg, inputs, key)          # 4. server step
            table = scatter(server.client_table, inputs.client, rows)                        # 5. rows back
            return new._replace(client_table=table), {**stats, **cohort}

    return one_round


def cohort_stats(root: jax.Array, r, n: int, sampling: Sampling) -> dict:
    """A Poisson round's ``cohort_size`` (clients drawn and trained) and ``poisson_overflow`` (drawn beyond the
    slots, dropped: the run loop stops on one). Traced beside ``plan_round``, its draw is the plan's own (XLA
    computes the common subexpression once)."""
    _, valid, overflow = poisson_cohort(root, r, n, sampling)
    return {"cohort_size": jnp.sum(valid).astype(jnp.float32), "poisson_overflow": overflow.astype(jnp.float32)}


def gather(table: Any, clients: jax.Array) -> Any:
    """The cohort's rows of the N-client table: on the host for a host table (numpy), else on the device."""
    if not jax.tree.leaves(table):
        return table
    if _on_host(table):
        cohort = np.asarray(clients)
        return jax.tree.map(lambda t: t[cohort], table)
    return jax.tree.map(lambda t: t[clients], table)


def scatter(table: Any, clients: jax.Array, rows: Any) -> Any:
    """The table with the cohort's rows replaced by ``rows``: in place for a host table, functionally otherwise."""
    if not jax.tree.leaves(table):
        return table
    if _on_host(table):
        cohort = np.asarray(clients)
        for t, new in zip(jax.tree.leaves(table), jax.tree.leaves(rows)):
            t[cohort] = np.asarray(new)
        return table
    return jax.tree.map(lambda t, new: t.at[clients].set(new), table, rows)


def _on_host(table: Any) -> bool:
    return all(isinstance(t, np.ndarray) for t in jax.tree.leaves(table))


def host_table(table: Any) -> Any:
    """A table as writable host arrays (copied only where a leaf is not one yet: after a restore, say)."""
    return jax.tree.map(lambda x: x if isinstance(x, np.ndarray) and x.flags.writeable else np.array(x), table)


def host_zeros(shape, dtype) -> np.ndarray:
    """A zero table in host memory, its pages written now: a page first read as the kernel's shared zero page
    and written later costs a TLB shootdown across XLA's threads (tens of ms a round at 10,000 clients)."""
    table = np.empty(shape, dtype)
    table.fill(0)
    return table


def cohort(seed: int, r: int, num_clients: int, k: int) -> np.ndarray:
    """The clients sampled in round ``r`` of the run with this seed (host copy)."""
    return np.asarray(sample_cohort(jax.random.PRNGKey(seed), r, num_clients, k))


def wire_sizes(learner: Learner, params: Params, batch_stats: Any, k: int) -> dict:
    """Exact sizes from the payload's shapes: what K clients send (the compressed update, the algorithm's message,
    the BatchNorm statistics) and what the server sends them (the model, the algorithm's state, the statistics)."""
    params, batch_stats = _spec(params), _spec(batch_stats)
    state = jax.eval_shape(learner.compressor.init, params)
    scales = jax.tree.map(lambda x: jax.ShapeDtypeStruct((), jnp.float32), params)
    payload, _ = jax.eval_shape(learner.compressor.encode, params, scales, state, jax.random.PRNGKey(0))
    algorithm_state = jax.eval_shape(lambda p: learner.algorithm.state_init(p, learner.settings), params)
    stats = payload_bits(batch_stats)  # BatchNorm statistics travel as float32
    up = payload_bits(payload) + payload_bits(learner.message_shape(params)) + stats
    down = payload_bits(params) + payload_bits(algorithm_state) + stats
    return {"uplink_bits": k * up, "downlink_bits": k * down}


def _spec(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)
