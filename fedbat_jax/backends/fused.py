"""``fused`` (the GPU/TPU default): one jitted ``lax.scan`` over steps of a ``vmap`` over *lanes*; clients are
packed into lanes back to back (``pack_lanes``) and a lane that finishes a client hands it to ``finish`` inside
the scan. Peak memory is O(lanes x client state + model). On XLA:CPU the same lane step runs as a jitted call
per step from Python (``lane_loop=python``), about 10x faster there. With a ``Mesh``, the lanes are sharded over
its ``clients`` axis (``shard_map``): the model and data are replicated, each device runs its own lanes, and the
aggregates are summed across devices once."""
from __future__ import annotations

import math
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fedbat_jax.registry import NON_NEGATIVE, Setting, declares
from fedbat_jax.backends import Backend, finish, select_rows
from fedbat_jax.federated import Aggregate, Broadcast, Client, ClientInput, Learner
from fedbat_jax.local import FederatedData

MESH_AXIS = "clients"


class LaneConsts(NamedTuple):
    """What every step of a lane schedule reads: the cohort's inputs, sample orders, contexts, the fresh state."""

    inputs: ClientInput
    orders: jax.Array  # [K, E, width]: small, unlike K client states
    contexts: Any  # [K, ...]: each client's algorithm context (() for most algorithms)
    fresh: Any  # ClientState of the broadcast model, one per lane


def lane_start(learner: Learner, sent: Broadcast, rows, inputs: ClientInput, num_lanes: int):
    """The constants of a lane schedule and its first carry ``(lanes, aggregate, rows)``."""
    orders = jax.vmap(learner.orders)(inputs)
    mine = jax.tree.map(lambda x: x[inputs.slot], rows)
    contexts = jax.vmap(learner.context, (None, 0), axis_size=inputs.client.shape[0])(sent, mine)
    fresh = jax.tree.map(lambda x: jnp.broadcast_to(x, (num_lanes,) + x.shape),
                         learner.fresh_state(sent.params, sent.batch_stats))
    first = jnp.zeros(num_lanes, jnp.int32)
    lanes0 = Client(fresh, orders[first], jax.tree.map(lambda x: x[first], contexts))
    return LaneConsts(inputs, orders, contexts, fresh), (lanes0, learner.empty_aggregate(sent), rows)


def lane_step(learner: Learner, sent: Broadcast, data: FederatedData, consts: LaneConsts, carry, sched_row):
    """One step of every lane (``sched_row``: int32 [4, lanes] = slot, t, first, last); finished clients
    handed to ``finish``."""
    lanes, acc, rows = carry
    k = consts.inputs.client.shape[0]
    slot, t, first, last = sched_row[0], sched_row[1], sched_row[2] > 0, sched_row[3] > 0
    active, c = slot < k, jnp.minimum(slot, k - 1)
    inp = jax.tree.map(lambda x: x[c], consts.inputs)
    starting = Client(consts.fresh, consts.orders[c], jax.tree.map(lambda x: x[c], consts.contexts))
    lanes = select_rows(first, starting, lanes)  # a lane starting a client
    step = jax.vmap(learner.client_step, (0, None, None, 0, 0))
    lanes = select_rows(active, step(lanes, sent, data, inp, t), lanes)
    done = active & last
    acc, rows = jax.lax.cond(jnp.any(done), lambda a, r: finish(learner, sent, a, r, lanes, inp, done),
                             lambda a, r: (a, r), acc, rows)
    return lanes, acc, rows


def lane_scan(learner: Learner, sent: Broadcast, rows, data: FederatedData, inputs: ClientInput,
              sched: jax.Array) -> tuple[Aggregate, Any]:
    """Run the schedule ``sched`` (int32 [4, lanes, T]: slot, t, first, last) over the cohort ``inputs``."""
    consts, carry = lane_start(learner, sent, rows, inputs, sched.shape[1])
    carry, _ = jax.lax.scan(lambda cr, row: (lane_step(learner, sent, data, consts, cr, row), None), carry,
                            jnp.moveaxis(sched, 2, 0))
    return carry[1], carry[2]


def _merge_rows(rows, new):
    """Across devices: each client's row comes from the one device that trained it (exact, no arithmetic)."""
    def merge(old, mine):
        changed = jnp.any((mine != old).reshape(old.shape[0], -1), axis=1)
        mask = changed.reshape((-1,) + (1,) * (old.ndim - 1))
        count = jax.lax.psum(changed.astype(jnp.int32), MESH_AXIS).reshape(mask.shape)
        summed = jax.lax.psum(jnp.where(mask, mine, jnp.zeros_like(mine)), MESH_AXIS)
        return jnp.where(count > 0, summed, old)

    return jax.tree.map(merge, rows, new)


def fused(learner: Learner, num_lanes: int, cap: int, mesh: jax.sharding.Mesh | None = None,
          loop: str = "scan") -> Backend:
    """Packed lanes (``num_lanes=0``: as few as keep each lane <= the longest client), over ``mesh`` if given.

    ``loop="python"``: the same lane steps, each a jitted call from Python instead of one ``lax.scan``
    (faster on XLA:CPU, where a conv gradient inside a scan is many times slower; one device only).
    """
    devices = mesh.devices.size if mesh is not None else 1
    if loop == "python" and devices > 1:
        raise ValueError("the python loop of lanes runs on one device")
    local = body = partial(lane_scan, learner)
    if devices > 1:
        from jax.sharding import PartitionSpec as P

        rep = P()

        def sharded(sent, rows, data, inputs, sched):
            acc, new = local(sent, rows, data, inputs, sched)
            return jax.lax.psum(acc, MESH_AXIS), _merge_rows(rows, new)

        body = _shard_map(sharded, mesh, in_specs=(rep, rep, rep, rep, P(None, MESH_AXIS, None)),
                          out_specs=(rep, rep))
    compiled = jax.jit(body, donate_argnums=(1,))
    place = partial(replicate, mesh) if devices > 1 else (lambda tree: tree)
    start = jax.jit(partial(lane_start, learner), static_argnums=3, donate_argnums=1)
    step = jax.jit(partial(lane_step, learner), donate_argnums=3)

    def run(sent: Broadcast, data: FederatedData, inputs: ClientInput, rows):
        steps = np.asarray(inputs.num_steps)
        sched = pack_lanes(steps, num_lanes, quantum=max(1, cap // 8), cap=cap, multiple=devices)
        if loop == "scan":
            return compiled(sent, rows, data, inputs, jnp.asarray(sched))
        consts, carry = start(sent, rows, inputs, sched.shape[1])
        for t in range(sched.shape[2]):
            carry = step(sent, data, consts, carry, sched[:, :, t])
        return carry[1], carry[2]

    return Backend("fused", run, devices, loop, place)


@declares(
    Setting("lanes", 0, "fused backend: parallel lanes (0 = auto); bounds a round's memory to lanes x client state",
            NON_NEGATIVE),
    Setting("lane_loop", "auto", "fused backend: scan (one lax.scan; GPU/TPU default) | python (a jitted lane step "
                                 "per Python call; the default on one CPU device)", ("auto", "scan", "python")),
    Setting("num_devices", 0, "fused backend: devices the lanes are sharded over (0 = all, of every process)",
            NON_NEGATIVE))
def make(learner: Learner, config, longest: int) -> Backend:
    """``lane_loop=auto``: the python loop on one CPU device, the scan elsewhere."""
    mesh = make_mesh(config.num_devices)
    sharded = mesh.devices.size > 1  # (validate refused lane_loop=python with several devices)
    loop = config.lane_loop
    if loop == "auto":
        loop = "python" if jax.default_backend() == "cpu" and not sharded else "scan"
    return fused(learner, config.lanes, longest, mesh if sharded else None, loop)


# ---- devices ---------------------------------------------------------------------------------------------
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
            if s == 0:  # a Poisson cohort's padding: no cell
                continue
            sched[0, j, pos:pos + s] = i
            sched[1, j, pos:pos + s] = np.arange(s)
            sched[2, j, pos] = 1
            sched[3, j, pos + s - 1] = 1
            pos += s
    return sched
