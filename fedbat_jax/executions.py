"""How a round's clients execute: interchangeable backends over the pure functions of ``federated``.

An ``Execution`` is a record: its ``name`` (the ``execution`` setting's value), ``run(params, batch_stats,
data, inputs, states) -> (Aggregate, states)``, the ``devices`` it uses and its ``loop`` (what drives the
local steps: ``python``, a jitted call per step; ``scan``, one compiled loop). ``run`` trains every client of
``inputs`` (a stacked ``ClientInput``) from the broadcast model and folds each finished client into the
server's running ``Aggregate``, so memory holds a few clients' states, never the whole cohort's. ``states``
are the cohort's compressor states (row ``inputs.row[i]`` is client i's), gathered by the caller from the
N-client table and scattered back after: only K rows ever reach the devices.

* ``host`` (the CPU default): each client's jitted, donated step called from a Python loop, clients over
  threads, absorbed strictly in cohort order (so threads change no bit). Nothing is padded. On XLA:CPU a
  conv gradient inside ``lax.scan`` is many times slower than the same jitted step (jax issue 12868).
* ``fused`` (the GPU/TPU default): one jitted ``lax.scan`` over steps of a ``vmap`` over *lanes*; clients
  are packed into lanes back to back (``pack_lanes``) and a lane that finishes a client hands it to the
  aggregate inside the scan. Peak memory is O(lanes x client state + model). On XLA:CPU the same lane step
  runs as a jitted call per step from Python (``lane_loop=python``), about 10x faster there. With a
  ``Mesh``, the lanes are sharded over its ``clients`` axis (``shard_map``): the model and data are
  replicated, each device runs its own lanes, and the aggregates are summed across devices once.
* ``padded``: a pure ``run`` (jittable, vmappable; what ``make_train`` uses): groups of ``padded_group``
  clients, each group padded to its longest client (a ``fori_loop`` with a traced bound), groups in a scan.

A new backend is one constructor returning an ``Execution`` and one entry in ``EXECUTIONS``; the algorithm
does not change.
"""
from __future__ import annotations

import collections
import concurrent.futures
import math
from functools import partial
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fedbat_jax.config import resolve_execution
from fedbat_jax.federated import Aggregate, Client, ClientInput, Federated
from fedbat_jax.local import ClientData

MESH_AXIS = "clients"


class Execution(NamedTuple):
    name: str  # the ``execution`` setting's value that selects it
    run: Callable[[Any, Any, ClientData, ClientInput, Any], "tuple[Aggregate, Any]"]
    devices: int  # devices the cohort is spread over
    loop: str  # what drives the local steps: "python" (a jitted call per step) or "scan" (one compiled loop)
    place: Callable[[Any], Any] = lambda tree: tree  # lays out, once, what every round reads (the data) as run wants


# ---- what every backend does with finished clients -------------------------------------------------------
def empty_aggregate(params, batch_stats) -> Aggregate:
    zeros = lambda t: jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), t)  # noqa: E731
    return Aggregate(zeros(params), zeros(batch_stats), jnp.float32(0), jnp.float32(0))


def absorb(fed: Federated, params, acc: Aggregate, states: Any, clients: Client, inputs: ClientInput,
           done: jax.Array) -> tuple[Aggregate, Any]:
    """Add the finished clients among a batch of lanes (leading axis; ``done`` marks them) to ``acc``, and
    write their new compressor state into the cohort's ``states`` (at ``inputs.row``; other rows untouched)."""
    n = jax.tree.leaves(states)[0].shape[0] if jax.tree.leaves(states) else 0
    rows = jax.tree.map(lambda x: x[inputs.row], states)
    contrib, rows = jax.vmap(fed.client_final, (None, 0, 0, 0))(params, clients, rows, inputs)

    def add(a, c):
        keep = done.reshape(done.shape + (1,) * (c.ndim - 1))
        return a + jnp.sum(jnp.where(keep, c, 0.0), axis=0)

    dest = jnp.where(done, inputs.row, n)  # n is out of bounds: dropped
    states = jax.tree.map(lambda t, r: t.at[dest].set(r, mode="drop"), states, rows)
    return jax.tree.map(add, acc, contrib), states


def select_rows(rows: jax.Array, a: Any, b: Any) -> Any:
    """Per lane (leading axis): ``a`` where ``rows`` is True, else ``b``."""
    return jax.tree.map(lambda x, y: jnp.where(rows.reshape(rows.shape + (1,) * (x.ndim - 1)), x, y), a, b)


def _one(inputs: ClientInput, i: int) -> ClientInput:
    return jax.tree.map(lambda x: x[i], inputs)


def _batch1(tree: Any) -> Any:
    return jax.tree.map(lambda x: x[None], tree)


# ---- host: a Python loop of jitted steps ----------------------------------------------------------------
def host(fed: Federated, threads: int = 1) -> Execution:
    """Each client's jitted steps from a Python loop, ``threads`` clients at a time, absorbed in cohort order."""
    init = jax.jit(fed.client_init)
    step = jax.jit(fed.client_step, donate_argnums=0)

    @partial(jax.jit, donate_argnums=(1, 2))
    def absorb_one(params, acc, states, client, inp):
        return absorb(fed, params, acc, states, _batch1(client), _batch1(inp), jnp.ones((1,), bool))

    def run(params, batch_stats, data: ClientData, inputs: ClientInput, states):
        num_steps = np.asarray(inputs.num_steps)

        def train_one(i: int) -> Client:
            inp = _one(inputs, i)
            client = init(params, batch_stats, inp)
            for t in range(int(num_steps[i])):
                client = step(client, params, data, inp, t)
            return client

        acc = empty_aggregate(params, batch_stats)
        k = len(num_steps)
        workers = max(1, min(threads, k))
        if workers == 1:
            for i in range(k):
                acc, states = absorb_one(params, acc, states, train_one(i), _one(inputs, i))
            return acc, states
        # Clients finish out of order; absorb them in cohort order (same sums as one thread), keeping at
        # most 2 x threads finished states waiting.
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            pending = collections.deque(pool.submit(train_one, i) for i in range(min(k, 2 * workers)))
            for i in range(k):
                client = pending.popleft().result()
                if i + len(pending) + 1 < k:
                    pending.append(pool.submit(train_one, i + len(pending) + 1))
                acc, states = absorb_one(params, acc, states, client, _one(inputs, i))
        return acc, states

    return Execution("host", run, 1, "python")


# ---- lanes: one scan over packed lanes, optionally sharded over devices ----------------------------------
class LaneConsts(NamedTuple):
    """What every step of a lane schedule reads: the cohort's inputs, sample orders and the fresh state."""

    inputs: ClientInput
    orders: jax.Array  # [K, E, width]: small, unlike K client states
    fresh: Any  # ClientState of the broadcast model, one per lane


def lane_start(fed: Federated, params, batch_stats, states, inputs: ClientInput, num_lanes: int):
    """The constants of a lane schedule and its first carry ``(lanes, aggregate, states)``."""
    orders = jax.vmap(fed.orders)(inputs)
    fresh = jax.tree.map(lambda x: jnp.broadcast_to(x, (num_lanes,) + x.shape), fed.fresh_state(params, batch_stats))
    lanes0 = Client(fresh, orders[jnp.zeros(num_lanes, jnp.int32)])
    return LaneConsts(inputs, orders, fresh), (lanes0, empty_aggregate(params, batch_stats), states)


def lane_step(fed: Federated, params, data: ClientData, consts: LaneConsts, carry, row):
    """One step of every lane (``row``: int32 [4, lanes] = slot, t, first, last); finished clients absorbed."""
    lanes, acc, states = carry
    k = consts.inputs.client.shape[0]
    slot, t, first, last = row[0], row[1], row[2] > 0, row[3] > 0
    active, c = slot < k, jnp.minimum(slot, k - 1)
    inp = jax.tree.map(lambda x: x[c], consts.inputs)
    lanes = select_rows(first, Client(consts.fresh, consts.orders[c]), lanes)  # a lane starting a client
    step = jax.vmap(fed.client_step, (0, None, None, 0, 0))
    lanes = select_rows(active, step(lanes, params, data, inp, t), lanes)
    done = active & last
    acc, states = jax.lax.cond(jnp.any(done), lambda a, st: absorb(fed, params, a, st, lanes, inp, done),
                               lambda a, st: (a, st), acc, states)
    return lanes, acc, states


def lane_scan(fed: Federated, params, batch_stats, states, data: ClientData, inputs: ClientInput,
              sched: jax.Array) -> tuple[Aggregate, Any]:
    """Run the schedule ``sched`` (int32 [4, lanes, T]: slot, t, first, last) over the cohort ``inputs``."""
    consts, carry = lane_start(fed, params, batch_stats, states, inputs, sched.shape[1])
    carry, _ = jax.lax.scan(lambda cr, row: (lane_step(fed, params, data, consts, cr, row), None), carry,
                            jnp.moveaxis(sched, 2, 0))
    return carry[1], carry[2]


def _merge_states(states, new):
    """Across devices: each client's row comes from the one device that trained it (exact, no arithmetic)."""
    def merge(old, mine):
        changed = jnp.any((mine != old).reshape(old.shape[0], -1), axis=1)
        mask = changed.reshape((-1,) + (1,) * (old.ndim - 1))
        count = jax.lax.psum(changed.astype(jnp.int32), MESH_AXIS).reshape(mask.shape)
        summed = jax.lax.psum(jnp.where(mask, mine, jnp.zeros_like(mine)), MESH_AXIS)
        return jnp.where(count > 0, summed, old)

    return jax.tree.map(merge, states, new)


def fused(fed: Federated, num_lanes: int, cap: int, mesh: jax.sharding.Mesh | None = None,
          loop: str = "scan") -> Execution:
    """Packed lanes (``num_lanes=0``: as few as keep each lane <= the longest client), over ``mesh`` if given.

    ``loop="python"``: the same lane steps, each a jitted call from Python instead of one ``lax.scan``
    (faster on XLA:CPU, where a conv gradient inside a scan is many times slower; one device only).
    """
    devices = mesh.devices.size if mesh is not None else 1
    if loop == "python" and devices > 1:
        raise ValueError("the python loop of lanes runs on one device")
    local = body = partial(lane_scan, fed)
    if devices > 1:
        from jax.sharding import PartitionSpec as P

        rep = P()

        def sharded(params, batch_stats, states, data, inputs, sched):
            acc, new = local(params, batch_stats, states, data, inputs, sched)
            return jax.lax.psum(acc, MESH_AXIS), _merge_states(states, new)

        body = _shard_map(sharded, mesh, in_specs=(rep, rep, rep, rep, rep, P(None, MESH_AXIS, None)),
                          out_specs=(rep, rep))
    compiled = jax.jit(body, donate_argnums=(2,))
    place = (lambda tree: tree) if devices == 1 else partial(replicate, mesh)
    start = jax.jit(partial(lane_start, fed), static_argnums=4, donate_argnums=2)
    step = jax.jit(partial(lane_step, fed), donate_argnums=3)

    def run(params, batch_stats, data: ClientData, inputs: ClientInput, states):
        steps = np.asarray(inputs.num_steps)
        sched = pack_lanes(steps, num_lanes, quantum=max(1, cap // 8), cap=cap, multiple=devices)
        if loop == "scan":
            return compiled(params, batch_stats, states, data, inputs, jnp.asarray(sched))
        consts, carry = start(params, batch_stats, states, inputs, sched.shape[1])
        for t in range(sched.shape[2]):
            carry = step(params, data, consts, carry, sched[:, :, t])
        return carry[1], carry[2]

    return Execution("fused", run, devices, loop, place)


def replicate(mesh: jax.sharding.Mesh, tree: Any) -> Any:
    """``tree`` copied onto every device of ``mesh`` once (so no round moves it again)."""
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return jax.tree.map(lambda x: global_array(np.asarray(x), sharding), tree)


def global_array(host: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
    """``host`` (the same on every process) as one array laid out by ``sharding``, each process placing the
    parts its own devices hold (``jax.device_put`` of a host array covers one process only)."""
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def _shard_map(f, mesh, in_specs, out_specs):
    try:
        shard_map = jax.shard_map
        return shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)
    except (AttributeError, TypeError):  # older jax
        from jax.experimental.shard_map import shard_map

        return shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_rep=False)


def make_mesh(num_devices: int = 0) -> jax.sharding.Mesh:
    """A 1-D mesh named ``clients`` over the first ``num_devices`` local devices (0: all of them)."""
    devices = jax.local_devices() if jax.process_count() == 1 else jax.devices()
    n = num_devices or len(devices)
    return jax.sharding.Mesh(np.array(devices[:n]), (MESH_AXIS,))


def pack_lanes(steps: np.ndarray, lanes: int = 0, quantum: int = 1, cap: int | None = None,
               multiple: int = 1) -> np.ndarray:
    """Pack clients' step sequences into lanes: int32 ``[4, lanes, T]`` rows (slot, t, first, last).

    Longest client first onto the least-loaded lane. ``lanes=0`` picks the fewest lanes that still keep
    ``T`` at the longest client's step count. ``T`` is rounded up to a multiple of ``quantum``, but not
    past ``cap`` (the longest client of the whole federation), so few distinct shapes are compiled. The
    lane count is rounded up to a multiple of ``multiple`` (the devices sharing them). Idle cells have
    slot = K (no client).
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
    total = -(-lanes // multiple) * multiple
    sched = np.zeros((4, total, t_len), np.int32)
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


# ---- padded groups: a pure round (make_train) -------------------------------------------------------------
def padded(fed: Federated, group: int = 0) -> Execution:
    """Groups of ``group`` clients (0: the whole cohort) as lanes; each group runs to its longest client
    (shorter clients are padded: their extra steps are computed and discarded); groups in a ``lax.scan``.
    ``run`` is jittable and vmappable: nothing in it reads a concrete value."""

    def run(params, batch_stats, data: ClientData, inputs: ClientInput, states) -> tuple[Aggregate, Any]:
        k = inputs.client.shape[0]
        g = min(group or k, k)
        num_groups = -(-k // g)
        pad = num_groups * g - k
        padded_inputs = jax.tree.map(lambda x: jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)]), inputs)
        valid = jnp.arange(num_groups * g) < k  # padding slots repeat the last client and are never absorbed
        grouped = jax.tree.map(lambda x: x.reshape((num_groups, g) + x.shape[1:]), (padded_inputs, valid))
        step = jax.vmap(fed.client_step, (0, None, None, 0, None))

        def one_group(carry, xs):
            acc, states = carry
            inp, real = xs
            clients = jax.vmap(fed.client_init, (None, None, 0))(params, batch_stats, inp)

            def body(t, cl):
                return select_rows(t < inp.num_steps, step(cl, params, data, inp, t), cl)

            clients = jax.lax.fori_loop(0, jnp.max(inp.num_steps), body, clients)
            return absorb(fed, params, acc, states, clients, inp, real), None

        (acc, states), _ = jax.lax.scan(one_group, (empty_aggregate(params, batch_stats), states), grouped)
        return acc, states

    return Execution("padded", run, 1, "scan")


# ---- the registry: the ``execution`` setting's values ---------------------------------------------------
def _fused(fed: Federated, config, longest: int) -> Execution:
    """``lane_loop=auto``: the python loop on one CPU device, the scan elsewhere."""
    mesh = make_mesh(config.num_devices)
    sharded = mesh.devices.size > 1  # (validate refused lane_loop=python with several devices)
    loop = config.lane_loop
    if loop == "auto":
        loop = "python" if jax.default_backend() == "cpu" and not sharded else "scan"
    return fused(fed, config.lanes, longest, mesh if sharded else None, loop)


# name -> (algorithm, config, the federation's longest client in steps) -> Execution
EXECUTIONS: dict[str, Callable[[Federated, Any, int], Execution]] = {
    "host": lambda fed, config, longest: host(fed, config.client_threads or
                                              (2 if jax.default_backend() == "cpu" else 1)),
    "fused": _fused,
    "padded": lambda fed, config, longest: _jitted(padded(fed, config.padded_group)),  # (make_train traces it whole)
}


def _jitted(execution: Execution) -> Execution:
    return execution._replace(run=jax.jit(execution.run))


def make_execution(config, fed: Federated, longest: int) -> Execution:
    """The backend of ``config.execution`` (with its settings) for this algorithm."""
    return EXECUTIONS[resolve_execution(config.execution)](fed, config, longest)
