"""How a round's clients execute: interchangeable backends over the pure functions of ``fedbat_jax.federated``.

A backend's contract is narrow. A ``Backend`` is a record: its ``name`` (the ``backend`` setting's value),
``run(sent, data, inputs, rows) -> (Aggregate, rows)``, the ``devices`` it uses, its ``loop`` (what drives the
local steps: ``python``, a jitted call per step; ``scan``, one compiled loop; ``eager``, no compilation at all)
and whether ``run`` is ``traceable`` (jittable and vmappable as a whole: what ``make_train`` needs). ``run`` trains
every client of ``inputs`` (a stacked ``ClientInput``) from the broadcast ``sent`` with the learner's
``client_init`` / ``client_step``, and hands each finished client to ``finish``: the learner's ``client_final`` and
``fold`` (the algorithm's aggregation) and the client's new row, written at its place in the cohort's ``rows``.
Gathering those K rows from the N-client table and scattering them back is the round's (``fedbat_jax.rounds``).

* ``host`` (the CPU default): each client's jitted steps from a Python loop (``host.py``);
* ``fused`` (the GPU/TPU default): clients packed into lanes, one ``lax.scan``, optionally sharded (``fused.py``);
* ``padded``: a pure ``run`` over padded groups of clients, what ``make_train`` traces (``padded.py``);
* ``debug``: no compilation, one client at a time, for stepping through a round in pdb (``debug.py``).

A new backend is one file with a ``make(learner, config, longest) -> Backend`` plus one line in ``BACKENDS``.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from fedbat_jax.federated import Aggregate, Broadcast, Client, ClientInput, Learner
from fedbat_jax.local import FederatedData
from fedbat_jax.registry import Registry


def _unchanged(tree: Any) -> Any:
    return tree


class Backend(NamedTuple):
    name: str  # the ``backend`` setting's value that selects it
    run: Callable[[Broadcast, FederatedData, ClientInput, Any], "tuple[Aggregate, Any]"]
    devices: int  # devices the cohort is spread over
    loop: str  # what drives the local steps: "python" (a jitted call per step), "scan" or "eager"
    place: Callable[[Any], Any] = _unchanged  # lays out, once, what every round reads (the data) as run wants
    traceable: bool = False  # run is jittable and vmappable whole (make_train traces it)


# ---- what every backend does with finished clients -------------------------------------------------------
def finish(learner: Learner, sent: Broadcast, acc: Aggregate, rows: Any, clients: Client, inputs: ClientInput,
           done: jax.Array) -> tuple[Aggregate, Any]:
    """The finished clients among a batch of lanes (leading axis; ``done`` marks them, and ``inputs.valid`` the
    clients drawn): each one's upload (``client_final``), folded into ``acc`` by the algorithm, and its new row
    written into the cohort's ``rows`` (at its ``inputs.slot``; other rows untouched)."""
    n = jax.tree.leaves(rows)[0].shape[0] if jax.tree.leaves(rows) else 0
    done = done & inputs.valid  # a Poisson cohort's padding: never folded in, its row untouched
    mine = jax.tree.map(lambda x: x[inputs.slot], rows)
    contributions, mine = jax.vmap(learner.client_final, (None, 0, 0, 0))(sent, clients, mine, inputs)
    dest = jnp.where(done, inputs.slot, n)  # n is out of bounds: dropped
    rows = jax.tree.map(lambda t, r: t.at[dest].set(r, mode="drop"), rows, mine)
    return learner.fold(acc, contributions, done), rows


def start_clients(learner: Learner, sent: Broadcast, rows: Any, inputs: ClientInput) -> Client:
    """A batch of clients (leading axis) starting from the broadcast, each with its row of the cohort's ``rows``."""
    mine = jax.tree.map(lambda x: x[inputs.slot], rows)
    return jax.vmap(learner.client_init, (None, 0, 0))(sent, mine, inputs)


def select_rows(rows: jax.Array, a: Any, b: Any) -> Any:
    """Per lane (leading axis): ``a`` where ``rows`` is True, else ``b``."""
    return jax.tree.map(lambda x, y: jnp.where(rows.reshape(rows.shape + (1,) * (x.ndim - 1)), x, y), a, b)


def one_client(inputs: ClientInput, i: int) -> ClientInput:
    return jax.tree.map(lambda x: x[i], inputs)


def batch_of_one(tree: Any) -> Any:
    return jax.tree.map(lambda x: x[None], tree)


# ---- the registry: the ``backend`` setting's values ---------------------------------------------------
# name -> make(learner, config, the federation's longest client in steps) -> Backend
BACKENDS = Registry("backend", {
    "host": "fedbat_jax.backends.host:make",
    "fused": "fedbat_jax.backends.fused:make",
    "padded": "fedbat_jax.backends.padded:make",
    "debug": "fedbat_jax.backends.debug:make",
})


def resolve_backend(setting: str) -> str:
    """The backend the ``backend`` setting names: ``auto`` is ``host`` on one CPU process and ``fused``
    elsewhere (on accelerators, and across processes)."""
    if setting != "auto":
        return setting
    return "host" if jax.default_backend() == "cpu" and jax.process_count() == 1 else "fused"


def make_backend(config, learner: Learner, longest: int) -> Backend:
    """The backend of ``config.backend`` (with its settings) for this learner."""
    return BACKENDS[resolve_backend(config.backend)](learner, config, longest)
