"""The federated algorithm on one screen (REFERENCE.md section 1), as pure functions over explicit state.

In FedJAX's ``fed_avg`` shape: a sampled client runs ``client_init`` -> ``client_step`` x S_k ->
``client_final`` (encode its update, decode the payload as the server will, weight it); the server sums
the clients' weighted contributions into an ``Aggregate`` as they arrive and ``server_update`` applies it;
``server_init`` sits beside it, as optax pairs ``init`` and ``update``.
*How* the cohort's clients execute (a host loop, packed lanes in one scan, lanes sharded over devices,
padded groups inside a whole-run program) is a backend in ``fedbat_jax.executions``; they all call these
functions and nothing else.

All randomness derives from ``(seed, round, client)``: ``plan_round`` draws the cohort and each client's key
from the run's root key ``PRNGKey(seed)``, on the device, so a round (or a whole run) can be jitted.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedbat_jax.binarization import warmup_steps
from fedbat_jax.compressors import Compressor
from fedbat_jax.local import (ClientData, ClientState, LocalConfig, client_update, epoch_orders, init_client,
                              make_local_step)

Params = Any
# Sub-streams of a round key, and of a client's key.
COHORT, CLIENTS = 0, 1
SHUFFLE, STEPS, UPLOAD = 0, 1, 2


class ServerState(NamedTuple):
    params: Params
    batch_stats: Any
    compressor_states: Any  # each of the N clients' compressor state (e.g. an EF residual), stacked on axis 0
    # (the run loop keeps this table in host memory; a round gathers the cohort's rows and scatters them back)
    opt_state: Any  # the server optimizer's state (with EF21: the running estimate, then the optimizer's)


class Roster(NamedTuple):
    """Per-client constants of the federation, ``[N]`` each (numpy: they fix shapes and step counts)."""

    sizes: np.ndarray  # n_k
    num_steps: np.ndarray  # S_k = E * ceil(n_k / B)
    n_warm: np.ndarray  # full-precision warm-up steps, floor(phi * S_k)
    weight: np.ndarray  # unnormalised aggregation weight: n_k ('samples') or ceil(n_k / B) ('batches')


class ClientInput(NamedTuple):
    """What the server hands one sampled client for one round. All arrays: a cohort stacks on axis 0."""

    client: jax.Array  # int32: the client's id (its row of ``ServerState.compressor_states``)
    row: jax.Array  # int32: its place in the cohort (its row of the cohort's gathered compressor states)
    index: jax.Array  # int32 [max_n + B]: its sample indices into the training set, zero-padded
    size: jax.Array  # int32 n_k
    num_steps: jax.Array  # int32 S_k
    n_warm: jax.Array  # int32 warm-up steps
    weight: jax.Array  # float32 p_k, normalised over the cohort
    share: jax.Array  # float32 w_k, the client's weight normalised over the whole federation (EF21's server)
    key: jax.Array  # the client's key for this round
    first_step: jax.Array  # int32 (r - 1) * S_k: the client's step count at the round's start (lr schedules)


class Client(NamedTuple):
    """A client during local training: its state and each epoch's sample order."""

    state: ClientState
    orders: jax.Array  # int32 [E, max_n + B]


class Aggregate(NamedTuple):
    """What the server has received so far this round: weighted sums, so it needs no per-client storage."""

    update: Params  # sum_k p_k decode(payload_k)
    batch_stats: Any  # sum_k p_k batch_stats_k (uploaded in float32, averaged like the parameters)
    loss_sum: jax.Array  # sum of the clients' per-example training losses
    seen: jax.Array  # examples trained on


def make_roster(sizes: np.ndarray, local_epochs: int, batch_size: int, phi: float, weighting: str) -> Roster:
    sizes = np.asarray(sizes, np.int32)
    per_epoch = -(-sizes // batch_size)
    steps = (local_epochs * per_epoch).astype(np.int32)
    n_warm = np.array([warmup_steps(phi, int(s)) for s in steps], np.int32)
    weight = (sizes if weighting == "samples" else per_epoch).astype(np.float32)
    return Roster(sizes, steps, n_warm, weight)


def round_key(seed: int, r: int) -> jax.Array:
    """Round ``r``'s key of the run with this seed (round 0 initialises the model)."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), r)


def sample_cohort(root: jax.Array, r, n: int, k: int) -> jax.Array:
    """Round ``r``'s cohort: K of N clients uniformly without replacement, sorted."""
    key = jax.random.fold_in(jax.random.fold_in(root, r), COHORT)
    return jnp.sort(jax.random.choice(key, n, (k,), replace=False))


def plan_round(root: jax.Array, r, roster: Roster, index: jax.Array, k: int) -> ClientInput:
    """Round ``r``'s cohort and every sampled client's input (keys from ``(root, r, client)``)."""
    cohort = sample_cohort(root, r, roster.sizes.shape[0], k)
    base = jax.random.fold_in(jax.random.fold_in(root, r), CLIENTS)
    keys = jax.vmap(lambda c: jax.random.fold_in(base, c))(cohort)
    w = jnp.asarray(roster.weight)[cohort]
    return ClientInput(cohort.astype(jnp.int32), jnp.arange(k, dtype=jnp.int32), index[cohort], jnp.asarray(roster.sizes)[cohort],
                       jnp.asarray(roster.num_steps)[cohort], jnp.asarray(roster.n_warm)[cohort], w / w.sum(),
                       w / jnp.asarray(roster.weight).sum(), keys, (r - 1) * jnp.asarray(roster.num_steps)[cohort])


class Federated(NamedTuple):
    """One federated algorithm: the model, which leaves train binarized, the compressor, local settings."""

    model: Any
    train_mask: Params  # static bools: leaves trained binarized
    compressor: Compressor
    local: LocalConfig  # its floats may be traced (a grid of lr values as one vmapped program)
    local_epochs: int
    server_optimizer: optax.GradientTransformation = optax.sgd(1.0)  # plain averaging

    # ---- a client -------------------------------------------------------------------------------
    def fresh_state(self, params: Params, batch_stats: Any) -> ClientState:
        return init_client(params, batch_stats, self.train_mask, self.local)

    def orders(self, inp: ClientInput) -> jax.Array:
        return epoch_orders(jax.random.fold_in(inp.key, SHUFFLE), inp.index, inp.size, self.local_epochs)

    def client_init(self, params: Params, batch_stats: Any, inp: ClientInput) -> Client:
        """The broadcast model as the client's starting point, and its epochs' shuffles."""
        return Client(self.fresh_state(params, batch_stats), self.orders(inp))

    def client_step(self, client: Client, params: Params, data: ClientData, inp: ClientInput, t) -> Client:
        """Local step ``t`` (0-based) of ``S_k``: one optimizer step on the t-th mini-batch."""
        step = make_local_step(self.model, self.train_mask, self.local)
        key = jax.random.fold_in(jax.random.fold_in(inp.key, STEPS), t)
        lr = self.local.lr_at(inp.first_step + t, inp.num_steps)
        return client._replace(state=step(client.state, params, data, client.orders, inp.size, inp.n_warm, t, key,
                                          lr))

    def client_final(self, params: Params, client: Client, comp_state: Any, inp: ClientInput):
        """Upload: encode the finished update, decode the payload as the server does, weight it by p_k (by
        w_k, the share of the whole federation, when the compressor's server keeps an estimate: EF21).

        Returns ``(Aggregate contribution, the client's new compressor state)``.
        """
        last_lr = self.local.lr_at(inp.first_step + inp.num_steps - 1, inp.num_steps)
        update, scales = client_update(params, client.state, self.train_mask, self.local, last_lr)
        payload, comp_state = self.compressor.encode(update, scales, comp_state,
                                                     jax.random.fold_in(inp.key, UPLOAD))
        p = inp.weight if self.compressor.server is None else inp.share
        s = client.state
        return Aggregate(_scaled(p, self.compressor.decode(payload)), _scaled(inp.weight, s.batch_stats), s.loss_sum,
                         s.seen), comp_state

    # ---- the server -------------------------------------------------------------------------------
    def server_transform(self) -> optax.GradientTransformation:
        """What turns the received sum into the server's step: the compressor's server side (EF21's running
        estimate), if any, then the server optimizer."""
        if self.compressor.server is None:
            return self.server_optimizer
        return optax.chain(self.compressor.server, self.server_optimizer)

    def server_init(self, params: Params, batch_stats: Any, num_clients: int, zeros=jnp.zeros) -> ServerState:
        """The server before round 1: the initial model, every client's fresh compressor state, the optimizer's.
        ``zeros=round.host_zeros`` keeps the N-client table in host memory (the run loop's)."""
        one = jax.eval_shape(self.compressor.init, params)
        table = jax.tree.map(lambda x: zeros((num_clients,) + x.shape, x.dtype), one)
        return ServerState(params, batch_stats, table, self.server_transform().init(params))

    def server_update(self, server: ServerState, agg: Aggregate) -> tuple[ServerState, jax.Array]:
        """The new global model: the server optimizer's step on the pseudo-gradient ``-sum_k p_k
        decode(payload_k)`` (plain averaging: ``w + sum_k p_k decode(payload_k)``); BatchNorm statistics averaged.
        Returns it (its compressor states as given) with the round's mean training loss."""
        pseudo_gradient = jax.tree.map(jnp.negative, agg.update)
        updates, opt_state = self.server_transform().update(pseudo_gradient, server.opt_state, server.params)
        params = optax.apply_updates(server.params, updates)
        return (server._replace(params=params, batch_stats=agg.batch_stats, opt_state=opt_state),
                agg.loss_sum / jnp.maximum(agg.seen, 1.0))


def _scaled(p: jax.Array, tree: Any) -> Any:
    return jax.tree.map(lambda x: p * x, tree)
