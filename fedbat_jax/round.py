"""One federated round (REFERENCE.md section 1): sample, broadcast, local training, upload, aggregate.

``Round.run(server, r)`` reads top to bottom:

1. ``sample_cohort``: K of N clients, uniformly without replacement, from ``(seed, r)``;
2. ``train``: every sampled client's local steps (``fedbat_jax.local``) from the broadcast model;
3. ``finish`` (one jitted function): each client's update -> ``compressor.encode`` -> payload ->
   ``compressor.decode`` -> weighted average into the global model.

Step 2 has two executions that compute the same numbers from the same keys:

* ``host``: each client's jitted step called from a Python loop, clients spread over threads. Each
  client runs exactly its own ``E * ceil(n_k / B)`` steps, so nothing is padded. Fastest on XLA:CPU,
  where a conv gradient inside ``lax.scan`` is many times slower than a jitted step.
* ``fused``: one jitted ``lax.scan`` over steps, ``vmap``-ped over *lanes*. Clients are packed into
  lanes back to back (longest first onto the least-loaded lane), so a cohort whose sizes differ 10x
  costs about ``sum_k S_k`` steps of work instead of ``K * max_k S_k``. The default on GPU/TPU.

All randomness derives from ``(seed, round, client)``: resuming at round r reproduces the run.
"""
from __future__ import annotations

import concurrent.futures
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fedbat_jax.algorithms import Algorithm
from fedbat_jax.binarize import warmup_steps
from fedbat_jax.bits import payload_bits
from fedbat_jax.local import (
    ClientData,
    ClientState,
    LocalConfig,
    binarized_mask,
    client_update,
    epoch_orders,
    init_client,
    make_local_step,
)

Params = Any


class ServerState(NamedTuple):
    params: Params
    batch_stats: Any
    client_states: Any  # compressor state of all N clients, stacked on a leading axis


class RoundConfig(NamedTuple):
    num_clients: int
    clients_per_round: int
    local_epochs: int
    phi: float
    seed: int
    aggregation_weights: str = "samples"  # 'samples' (n_k) or 'batches' (ceil(n_k / B), the reference)
    execution: str = "host"  # 'host' or 'fused'
    client_threads: int = 1  # host execution: clients trained concurrently
    lanes: int = 0  # fused execution: parallel lanes (0 = as few as keep every lane <= the longest client)


# ---- randomness: everything from (seed, round, client) -------------------------------------------
def round_key(seed: int, r: int) -> jax.Array:
    return jax.random.fold_in(jax.random.PRNGKey(seed), r)


def sample_cohort(seed: int, r: int, num_clients: int, k: int) -> np.ndarray:
    key = jax.random.fold_in(round_key(seed, r), 0)
    return np.sort(np.asarray(jax.random.choice(key, num_clients, (k,), replace=False)))


def client_keys(seed: int, r: int, cohort: np.ndarray) -> jax.Array:
    base = jax.random.fold_in(round_key(seed, r), 1)
    return jax.vmap(lambda c: jax.random.fold_in(base, c))(jnp.asarray(cohort))


# Sub-streams of a client's key.
SHUFFLE, STEPS, UPLOAD = 0, 1, 2


class Round:
    """Builds the jitted pieces of a round once; ``run`` executes one round."""

    def __init__(self, model, data: ClientData, sizes: np.ndarray, params: Params, batch_stats: Any,
                 algorithm: Algorithm, local: LocalConfig, cfg: RoundConfig):
        self.data, self.sizes, self.cfg, self.local = data, np.asarray(sizes), cfg, local
        self.train_mask = binarized_mask(params, algorithm.train_predicate)
        upload_mask = binarized_mask(params, algorithm.upload_predicate)
        self.compressor = algorithm.make_compressor(upload_mask, params, local.bits)
        self.bits = self._count_bits(params, batch_stats)
        steps_per_epoch = -(-self.sizes // local.batch_size)
        self.num_steps = cfg.local_epochs * steps_per_epoch  # S_k for every client
        self.weights = (self.sizes if cfg.aggregation_weights == "samples" else steps_per_epoch).astype(np.float32)
        step = make_local_step(model, self.train_mask, local)

        def keyed_step(state, params, data, orders, n, n_warm, t, ck):
            key = jax.random.fold_in(jax.random.fold_in(ck, STEPS), t)
            return step(state, params, data, orders, n, n_warm, t, key)

        self._keyed_step = keyed_step
        self._step = jax.jit(keyed_step, donate_argnums=0)
        self._orders = jax.jit(self._orders_fn)
        self._init = jax.jit(lambda p, bs: init_client(p, bs, self.train_mask))
        self._stack = jax.jit(lambda states: jax.tree.map(lambda *x: jnp.stack(x), *states))
        self._finish = jax.jit(self._finish_impl)
        self._fused = jax.jit(self._fused_impl)

    # ---- the round, top to bottom ----------------------------------------------------------------
    def run(self, server: ServerState, r: int) -> tuple[ServerState, dict]:
        cfg = self.cfg
        cohort = sample_cohort(cfg.seed, r, cfg.num_clients, cfg.clients_per_round)
        keys = client_keys(cfg.seed, r, cohort)
        n_warm = np.array([warmup_steps(cfg.phi, int(s)) for s in self.num_steps[cohort]], np.int32)
        train = self._train_fused if cfg.execution == "fused" else self._train_host
        states = train(server, cohort, keys, n_warm)
        server, train_loss = self._finish(server, jnp.asarray(cohort), states,
                                          jnp.asarray(self.weights[cohort]), keys)
        return server, {"train_loss": train_loss, **self.bits}

    def _finish_impl(self, server: ServerState, cohort, states: ClientState, weights, keys):
        """Upload and aggregate: encode each client's update, decode the payloads, average."""
        comp = self.compressor
        updates, scales = jax.vmap(client_update, (None, 0, None, None))(server.params, states, self.train_mask,
                                                                           self.local)
        mine = jax.tree.map(lambda s: s[cohort], server.client_states)
        upload_keys = jax.vmap(lambda k: jax.random.fold_in(k, UPLOAD))(keys)
        payloads, mine = jax.vmap(comp.encode)(updates, scales, mine, upload_keys)
        received = jax.vmap(comp.decode)(payloads)
        p = weights / weights.sum()
        avg = lambda x: jnp.tensordot(p, x, axes=1)  # noqa: E731
        params = jax.tree.map(lambda w, m: w + avg(m), server.params, received)
        batch_stats = jax.tree.map(avg, states.batch_stats)  # uploaded in float32, averaged like params
        client_states = jax.tree.map(lambda a, m: a.at[cohort].set(m), server.client_states, mine)
        train_loss = states.loss_sum.sum() / jnp.maximum(states.seen.sum(), 1.0)
        return ServerState(params, batch_stats, client_states), train_loss

    # ---- bits on the wire ------------------------------------------------------------------------
    def _count_bits(self, params: Params, batch_stats: Any) -> dict:
        """Exact sizes from the payload's shapes: what K clients send, and what the server sends them."""
        spec = lambda t: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), t)  # noqa: E731
        state = jax.eval_shape(self.compressor.init, spec(params))
        scales = jax.tree.map(lambda x: jax.ShapeDtypeStruct((), jnp.float32), params)
        payload, _ = jax.eval_shape(self.compressor.encode, spec(params), scales, state, jax.random.PRNGKey(0))
        stats = payload_bits(spec(batch_stats))  # BatchNorm statistics travel as float32
        k = self.cfg.clients_per_round
        return {"uplink_bits": k * (payload_bits(payload) + stats),
                "downlink_bits": k * (payload_bits(spec(params)) + stats)}

    def init_server(self, params: Params, batch_stats: Any) -> ServerState:
        one = self.compressor.init(params)
        stacked = jax.tree.map(lambda x: jnp.zeros((self.cfg.num_clients,) + x.shape, x.dtype), one)
        return ServerState(params, batch_stats, stacked)

    # ---- execution 1: host loop of jitted steps, clients over threads ------------------------------
    def _train_host(self, server: ServerState, cohort, keys, n_warm) -> ClientState:
        def one(i: int) -> ClientState:
            c, ck = int(cohort[i]), keys[i]
            n = jnp.int32(self.sizes[c])
            orders = self._orders(ck, self.data.index[c], n)
            state = self._init(server.params, server.batch_stats)
            nw = jnp.int32(n_warm[i])
            for t in range(int(self.num_steps[c])):
                state = self._step(state, server.params, self.data, orders, n, nw, t, ck)
            return state

        threads = max(1, min(self.cfg.client_threads, len(cohort)))
        if threads == 1:
            states = [one(i) for i in range(len(cohort))]
        else:
            with concurrent.futures.ThreadPoolExecutor(threads) as pool:
                states = list(pool.map(one, range(len(cohort))))
        return self._stack(states)

    # ---- execution 2: one jitted scan over steps, vmapped over packed lanes -------------------------
    def _train_fused(self, server: ServerState, cohort, keys, n_warm) -> ClientState:
        steps = self.num_steps[cohort]
        longest = int(self.num_steps.max())
        sched = pack_lanes(steps, self.cfg.lanes, quantum=max(1, longest // 8), cap=longest)
        return self._fused(server.params, server.batch_stats, jnp.asarray(cohort), keys, jnp.asarray(n_warm),
                           jnp.asarray(sched))

    def _fused_impl(self, params, batch_stats, cohort, keys, n_warm, sched):
        k, num_lanes = cohort.shape[0], sched.shape[1]
        n = self.data.sizes[cohort]
        orders = jax.vmap(self._orders_fn)(keys, self.data.index[cohort], n)
        init = init_client(params, batch_stats, self.train_mask)
        lanes0 = jax.tree.map(lambda x: jnp.broadcast_to(x, (num_lanes,) + x.shape), init)
        out0 = jax.tree.map(lambda x: jnp.broadcast_to(x, (k,) + x.shape), init)
        lane_step = jax.vmap(self._keyed_step, (0, None, None, 0, 0, 0, 0, 0))

        def body(carry, row):
            lanes, out = carry
            slot, t, first, last = row[0], row[1], row[2] > 0, row[3] > 0
            active, c = slot < k, jnp.minimum(slot, k - 1)
            lanes = _select_rows(first, lanes0, lanes)  # a lane starting a client starts from the broadcast
            new = lane_step(lanes, params, self.data, orders[c], n[c], n_warm[c], t, keys[c])
            lanes = _select_rows(active, new, lanes)
            dest = jnp.where(active & last, slot, k)  # k is out of bounds: dropped
            out = jax.tree.map(lambda o, x: o.at[dest].set(x, mode="drop"), out, lanes)
            return (lanes, out), None

        (_, out), _ = jax.lax.scan(body, (lanes0, out0), jnp.moveaxis(sched, 2, 0))
        return out

    def _orders_fn(self, ck, row, n):
        return epoch_orders(jax.random.fold_in(ck, SHUFFLE), row, n, self.cfg.local_epochs)


def _select_rows(rows: jax.Array, a: Any, b: Any) -> Any:
    """Per lane (leading axis): ``a`` where ``rows`` is True, else ``b``."""
    return jax.tree.map(lambda x, y: jnp.where(rows.reshape(rows.shape + (1,) * (x.ndim - 1)), x, y), a, b)


def pack_lanes(steps: np.ndarray, lanes: int = 0, quantum: int = 1, cap: int | None = None) -> np.ndarray:
    """Pack clients' step sequences into lanes: int32 ``[4, lanes, T]`` rows (slot, t, first, last).

    Longest client first onto the least-loaded lane. ``lanes=0`` picks the fewest lanes that still keep
    ``T`` at the longest client's step count. ``T`` is rounded up to a multiple of ``quantum``, but not
    past ``cap`` (the longest client of the whole federation), so few distinct shapes are compiled.
    Idle cells have slot = K (no client).
    """
    steps = np.asarray(steps, np.int64)
    k = len(steps)
    auto = lanes <= 0
    lanes = min(k, max(1, math.ceil(steps.sum() / max(1, steps.max())))) if auto else min(lanes, k)
    while True:  # LPT; in auto mode add a lane while the packing overshoots the longest client by > quantum
        load = np.zeros(lanes, np.int64)
        assign = [[] for _ in range(lanes)]
        for i in np.argsort(-steps, kind="stable"):
            j = int(np.argmin(load))
            assign[j].append(int(i))
            load[j] += steps[i]
        if not auto or load.max() <= steps.max() + quantum or lanes >= k:
            break
        lanes += 1
    t_len = int(math.ceil(load.max() / quantum) * quantum)
    if cap is not None:
        t_len = max(int(load.max()), min(t_len, cap))
    sched = np.zeros((4, lanes, t_len), np.int32)
    sched[0] = k
    for j, clients in enumerate(assign):
        pos = 0
        for i in clients:
            s = int(steps[i])
            sched[0, j, pos:pos + s] = i
            sched[1, j, pos:pos + s] = np.arange(s)
            sched[2, j, pos] = 1
            sched[3, j, pos + s - 1] = 1
            pos += s
    return sched
