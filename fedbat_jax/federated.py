"""The federated algorithm on one screen (REFERENCE.md section 1), as pure functions over explicit state.

In FedJAX's ``fed_avg`` shape: a sampled client runs ``client_init`` -> ``client_step`` x S_k ->
``client_final`` (encode its update, decode the payload as the server will, weight it); the algorithm's
``fold`` sums the clients' weighted contributions into an ``Aggregate`` as they arrive and ``server_update``
applies it; ``server_init`` sits beside it, as optax pairs ``init`` and ``update``. A ``Learner`` is this for one
model: the binarized leaves, the compressor, local settings, the server optimizer and the ``Algorithm``'s hooks
(``fedbat_jax.algorithms``: per-client and server state, a gradient correction, a message to the server).
The round that calls these functions in order is ``fedbat_jax.rounds``; *how* the cohort's clients execute (a
host loop, packed lanes in one scan, lanes sharded over devices, padded groups inside a whole-run program, a
debugger's loop) is a backend in ``fedbat_jax.backends``.

All randomness derives from ``(seed, round, client)``: ``plan_round`` draws the cohort and each client's key
from the run's root key ``PRNGKey(seed)``, on the device, so a round (or a whole run) can be jitted.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedbat_jax import privacy
from fedbat_jax.algorithms import ALGORITHMS, Algorithm
from fedbat_jax.binarization import warmup_steps
from fedbat_jax.compressors import Compressor
from fedbat_jax.local import (ClientState, FederatedData, LocalConfig, client_update, epoch_orders, init_client,
                              make_local_step)

Params = Any
# Sub-streams of a round key, and of a client's key.
COHORT, CLIENTS, NOISE = 0, 1, 2
SHUFFLE, STEPS, UPLOAD = 0, 1, 2


class ClientRow(NamedTuple):
    """One client's row of the N-client table: what it keeps between the rounds it is sampled in."""

    compressor: Any  # the compressor's state (an error-feedback residual or estimate; () if none)
    algorithm: Any  # the algorithm's state (SCAFFOLD's control variate; () if none)


class ServerState(NamedTuple):
    params: Params
    batch_stats: Any
    client_table: ClientRow  # every one of the N clients' rows, stacked on axis 0 (the run loop keeps it in host
    # memory; a round gathers the cohort's K rows and scatters them back: fedbat_jax.rounds)
    opt_state: Any  # the server optimizer's state (with EF21: the running estimate, then the optimizer's)
    algorithm_state: Any = ()  # the algorithm's server state (SCAFFOLD's control variate), sent with the model
    dp: Any = ()  # user-level DP: the clip and the rounds charged (``privacy.DPState``; () without DP)


class Broadcast(NamedTuple):
    """What the server sends every sampled client: the model and the algorithm's server state."""

    params: Params
    batch_stats: Any
    algorithm_state: Any
    dp: Any = ()  # the server's DP state: its clip is applied where the server decodes (not sent to clients)


class Sampling(NamedTuple):
    """How a round's cohort is drawn. ``slots``: the clients a round trains (a fixed shape inside jitted programs).
    Uniform: ``slots`` of the N clients without replacement. Poisson: each of the N with probability
    ``expected / N``; those drawn fill the first slots (in id order), clients not drawn pad the rest (``valid``
    False: no steps, no weight, their rows untouched); a round drawing more than ``slots`` drops the highest ids
    and reports them (``poisson_overflow``). ``fixed_denominator`` (DP): each client's weight is ``w_k /
    expected`` over ``w_k``'s mean, whatever the cohort drawn, not ``w_k`` normalised over it."""

    slots: int
    expected: float
    poisson: bool = False
    fixed_denominator: bool = False


class Roster(NamedTuple):
    """Per-client constants of the federation, ``[N]`` each (numpy: they fix shapes and step counts)."""

    sizes: np.ndarray  # n_k
    num_steps: np.ndarray  # S_k = E * ceil(m_k / B), or the fixed local_steps (m_k = min(n_k, max_client_examples))
    n_warm: np.ndarray  # full-precision warm-up steps, floor(phi * S_k)
    weight: np.ndarray  # unnormalised aggregation weight: m_k ('samples'), ceil(m_k / B) ('batches') or 1 ('uniform')
    used: np.ndarray | None = None  # m_k: the examples a client trains on in a round (None: n_k)
    batch: int = 1  # B

    @property
    def epochs(self) -> int:
        """The most passes over its round's examples any client makes (``local_steps`` may need several)."""
        return int(np.max(-(-self.num_steps // self.per_epoch))) if len(self.sizes) else 1

    @property
    def per_epoch(self) -> np.ndarray:
        """ceil(m_k / B): a client's batches in one pass over its round's examples."""
        return -(-(self.sizes if self.used is None else self.used) // self.batch)


class ClientInput(NamedTuple):
    """What the server hands one sampled client for one round. All arrays: a cohort stacks on axis 0."""

    client: jax.Array  # int32: the client's id (its row of ``ServerState.client_table``)
    slot: jax.Array  # int32: its place in the cohort (the index of its row among the cohort's gathered rows)
    index: jax.Array  # int32 [max_n + B]: its sample indices into the training set, zero-padded
    size: jax.Array  # int32 n_k
    num_steps: jax.Array  # int32 S_k
    n_warm: jax.Array  # int32 warm-up steps
    weight: jax.Array  # float32 p_k, normalised over the cohort
    share: jax.Array  # float32 w_k, the client's weight normalised over the whole federation (EF21's server)
    key: jax.Array  # the client's key for this round
    first_step: jax.Array  # int32 (r - 1) * S_k: the client's step count at the round's start (lr schedules)
    valid: jax.Array  # bool: a client drawn this round (False: a Poisson cohort's padding, never trained or folded)


class Client(NamedTuple):
    """A client during local training: its state, each epoch's sample order, the algorithm's context."""

    state: ClientState
    orders: jax.Array  # int32 [E, max_n + B]
    context: Any  # Algorithm.context(server state, its row): what its local steps read (() if nothing)


class Sums(NamedTuple):
    """What an algorithm's ``server_step`` receives (``update(pseudo_gradient, state, params, sums=...)``): the
    round's decoded updates summed two ways, exactly, and the cohort they came from."""

    cohort: Params  # sum_k p_k s_k decode_k: weights p_k normalised over the cohort (the mean of the sampled clients)
    federation: Params  # sum_k w_k s_k decode_k: shares w_k of the whole federation (sum_k w_k < 1 when K < N)
    inputs: ClientInput  # the cohort's inputs, stacked: p_k (weight), w_k (share), S_k (num_steps), n_k (size), ...
    lr_sums: jax.Array  # [K] each client's sum of its local steps' learning rates (the schedule is the server's)


class Aggregate(NamedTuple):
    """What the server has received so far this round: weighted sums, so it needs no per-client storage."""

    update: Params  # sum_k p_k s_k decode(payload_k) (s_k: the algorithm's update_scale, 1 by default)
    batch_stats: Any  # sum_k p_k batch_stats_k (uploaded in float32, averaged like the parameters)
    loss_sum: jax.Array  # sum of the clients' per-example training losses
    seen: jax.Array  # examples trained on
    messages: Any  # sum_k w_k message_k: the algorithm's messages (() if none)
    probes: Any = ()  # sum_k p_k probe_k: the cohort's mean of each per-client diagnostic (``Learner.probes``)
    unclipped: Any = ()  # user-level DP: the count of clients whose decoded upload was within the clip


def make_roster(sizes: np.ndarray, local_epochs: int, batch_size: int, phi: float, aggregation_weights: str,
                max_examples: int = 0, local_steps: int = 0) -> Roster:
    """Each client's steps, warm-up and weight: ``local_epochs`` passes over its ``m_k = min(n_k, max_examples)``
    examples (0: all ``n_k``) in batches of ``batch_size``, or exactly ``local_steps`` steps when > 0."""
    sizes = np.asarray(sizes, np.int32)
    used = np.minimum(sizes, max_examples).astype(np.int32) if max_examples else sizes
    per_epoch = -(-used // batch_size)
    steps = np.full_like(sizes, local_steps) if local_steps else (local_epochs * per_epoch).astype(np.int32)
    n_warm = np.array([warmup_steps(phi, int(s)) for s in steps], np.int32)
    weight = {"samples": used, "batches": per_epoch, "uniform": np.ones_like(used)}[aggregation_weights]
    return Roster(sizes, steps, n_warm, weight.astype(np.float32), used, batch_size)


def round_key(seed: int, r: int) -> jax.Array:
    """Round ``r``'s key of the run with this seed (round 0 initialises the model)."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), r)


def sample_cohort(root: jax.Array, r, n: int, k: int) -> jax.Array:
    """Round ``r``'s cohort: K of N clients uniformly without replacement, sorted."""
    key = jax.random.fold_in(jax.random.fold_in(root, r), COHORT)
    return jnp.sort(jax.random.choice(key, n, (k,), replace=False))


def as_sampling(k: int | Sampling) -> Sampling:
    """A cohort size as ``Sampling`` (K of N uniformly); a ``Sampling`` as it is."""
    return k if isinstance(k, Sampling) else Sampling(k, float(k))


def poisson_cohort(root: jax.Array, r, n: int, sampling: Sampling) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Round ``r``'s Poisson cohort in ``sampling.slots`` places: ``(clients, drawn, overflow)``; each of the N
    clients is drawn with probability ``expected / N``; the drawn ones first (by id), then clients not drawn."""
    key = jax.random.fold_in(jax.random.fold_in(root, r), COHORT)
    drawn = jax.random.uniform(key, (n,)) < sampling.expected / n
    clients = jnp.argsort(~drawn, stable=True)[:sampling.slots]
    return clients, drawn[clients], jnp.maximum(jnp.sum(drawn) - sampling.slots, 0)


def plan_round(root: jax.Array, r, roster: Roster, index: jax.Array, k: int | Sampling) -> ClientInput:
    """Round ``r``'s cohort and every sampled client's input (keys from ``(root, r, client)``); ``k``: the cohort
    size, or how it is drawn (``Sampling``)."""
    sampling = as_sampling(k)
    n = roster.sizes.shape[0]
    if sampling.poisson:
        cohort, valid, _ = poisson_cohort(root, r, n, sampling)
    else:
        cohort, valid = sample_cohort(root, r, n, sampling.slots), jnp.ones((sampling.slots,), bool)
    base = jax.random.fold_in(jax.random.fold_in(root, r), CLIENTS)
    keys = jax.vmap(lambda c: jax.random.fold_in(base, c))(cohort)
    w = jnp.where(valid, jnp.asarray(roster.weight)[cohort], 0.0)
    if sampling.fixed_denominator:
        p = w / (sampling.expected * float(roster.weight.mean()))
    else:
        p = w / (jnp.maximum(w.sum(), 1e-30) if sampling.poisson else w.sum())
    steps = jnp.where(valid, jnp.asarray(roster.num_steps)[cohort], 0)
    return ClientInput(cohort.astype(jnp.int32), jnp.arange(sampling.slots, dtype=jnp.int32), index[cohort],
                       jnp.asarray(roster.sizes)[cohort], steps, jnp.asarray(roster.n_warm)[cohort], p,
                       w / jnp.asarray(roster.weight).sum(), keys, (r - 1) * jnp.asarray(roster.num_steps)[cohort],
                       valid)


class Learner(NamedTuple):
    """One federated algorithm on one model: which leaves train binarized, the compressor, local settings, the
    server optimizer and the algorithm's hooks (``settings``: the run's frozen config, which the hooks read)."""

    model: Any
    train_mask: Params  # static bools: leaves trained binarized
    compressor: Compressor
    local: LocalConfig  # its floats may be traced (a grid of lr values as one vmapped program)
    local_epochs: int
    server_optimizer: optax.GradientTransformation = optax.sgd(1.0)  # plain averaging
    algorithm: Algorithm = ALGORITHMS["fedavg"]
    settings: Any = None
    probes: bool = False  # every round, per binarized leaf, the cohort's mean diagnostics (``client_probes``)
    privacy: privacy.Privacy | None = None  # user-level DP: each decoded upload clipped, the sum noised

    # ---- a client -------------------------------------------------------------------------------
    def fresh_state(self, params: Params, batch_stats: Any) -> ClientState:
        return init_client(params, batch_stats, self.train_mask, self.local)

    def orders(self, inp: ClientInput) -> jax.Array:
        return epoch_orders(jax.random.fold_in(inp.key, SHUFFLE), inp.index, inp.size, self.local_epochs,
                            self.local.max_examples)

    def client_init(self, sent: Broadcast, row: ClientRow, inp: ClientInput) -> Client:
        """The broadcast model as the client's starting point, its epochs' shuffles, the algorithm's context."""
        return Client(self.fresh_state(sent.params, sent.batch_stats), self.orders(inp), self.context(sent, row))

    def context(self, sent: Broadcast, row: ClientRow) -> Any:
        """What the algorithm's local steps read for this client (``Algorithm.context``)."""
        return self.algorithm.context(sent.algorithm_state, row.algorithm, self.settings)

    def client_step(self, client: Client, sent: Broadcast, data: FederatedData, inp: ClientInput, t) -> Client:
        """Local step ``t`` (0-based) of ``S_k``: one optimizer step on the t-th mini-batch."""
        step = make_local_step(self.model, self.train_mask, self.local, self._correct())
        key = jax.random.fold_in(jax.random.fold_in(inp.key, STEPS), t)
        lr = self.local.lr_at(inp.first_step + t, inp.num_steps)
        state = step(client.state, sent.params, data, client.orders, inp.size, inp.n_warm, t, key, lr, client.context)
        return client._replace(state=state)

    def client_final(self, sent: Broadcast, client: Client, row: ClientRow, inp: ClientInput,
                     ) -> tuple[Aggregate, ClientRow]:
        """Upload: encode the finished update, decode the payload as the server does, weight it by p_k (by
        w_k, the share of the whole federation, on the leaves the compressor's server keeps an estimate of: EF21); the
        algorithm's message weighted by w_k. Returns ``(its contribution to the Aggregate, its new row)``."""
        s = client.state
        update, scales = self.finished_update(sent, client, inp)
        payload, compressor_row = self.compressor.encode(update, scales, row.compressor,
                                                         jax.random.fold_in(inp.key, UPLOAD))
        algorithm_row, message = row.algorithm, ()
        if self.algorithm.message is not None:
            algorithm_row, message = self.algorithm.message(update, row.algorithm, client.context, s.lr_sum,
                                                            self.settings)
        decoded, unclipped = self.compressor.decode(payload), ()
        if self.privacy is not None:  # the server clips what it decodes, before summing it
            decoded, unclipped = privacy.clip_decoded(decoded, sent.dp.clip)
        contribution = Aggregate(self._weighted(decoded, inp, s.lr_sum),
                                 _scaled(inp.weight, s.batch_stats), s.loss_sum, s.seen, _scaled(inp.share, message),
                                 _scaled(inp.weight, self.client_probes(update, scales, s.alpha0)), unclipped)
        return contribution, ClientRow(compressor_row, algorithm_row)

    def finished_update(self, sent: Broadcast, client: Client, inp: ClientInput) -> tuple[Params, Params]:
        """The client's finished update (``u`` on the binarized leaves, ``theta - w`` elsewhere) and its learned step
        size per leaf, as the upload compresses them."""
        last_lr = self.local.lr_at(inp.first_step + inp.num_steps - 1, inp.num_steps)
        return client_update(sent.params, client.state, self.train_mask, self.local, last_lr)

    def _weighted(self, update: Params, inp: ClientInput, lr_sum: jax.Array) -> Params:
        """A decoded update weighted by p_k; the leaves the compressor's server keeps an estimate of by w_k; times
        the algorithm's ``update_scale`` s_k, if it has one."""
        if self.algorithm.update_scale is not None:
            update = _scaled(self.algorithm.update_scale(inp, lr_sum, self.settings), update)
        return jax.tree.map(lambda x, b: (inp.share if b else inp.weight) * x, update, self._estimated(update))

    def _estimated(self, tree: Params) -> Params:
        """Per leaf: whether the compressor's server keeps an estimate of it (EF21), so it is summed by w_k
        (``Compressor.estimated``; ``None`` with a server: every leaf)."""
        if self.compressor.server is None:
            return jax.tree.map(lambda _: False, tree)
        if self.compressor.estimated is None:
            return jax.tree.map(lambda _: True, tree)
        return self.compressor.estimated

    # ---- the server -------------------------------------------------------------------------------
    def broadcast(self, server: ServerState) -> Broadcast:
        return Broadcast(server.params, server.batch_stats, server.algorithm_state, server.dp)

    def empty_aggregate(self, sent: Broadcast) -> Aggregate:
        """Nothing received yet: zeros of the update, statistics and messages (a message's shape from
        ``client_final``'s, traced abstractly)."""

        def zeros(t):
            return jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), t)

        ones = jax.tree.map(lambda _: jnp.float32(1), sent.params)
        probes = jax.eval_shape(self.client_probes, sent.params, ones, ones)
        return Aggregate(zeros(sent.params), zeros(sent.batch_stats), jnp.float32(0), jnp.float32(0),
                         zeros(self.message_shape(sent.params)), zeros(probes),
                         jnp.float32(0) if self.privacy is not None else ())

    def client_probes(self, update: Params, scales: Params, alpha0: Params) -> dict:
        """One client's diagnostics (``probes`` on, else ``{}``), per binarized leaf ``L``: ``alpha_ratio/L``, its
        training step size over ``mean|u|`` of its finished update; ``alpha_gain/L``, that step size over
        ``alpha0`` (``alpha_init_scale x mean|u|`` when warm-up ended: what learning multiplied it by, so a run with
        ``rho=0`` and ``alpha_init_scale`` = the gain holds the learned level); ``alpha_rms/L``, that step size over
        ``rms(u)`` (relative EF21's multiplier ``c`` before ``ef21_cap``: a cap below it replaces the learned alpha on
        the wire); and ``clipped/L``, the share of coordinates with ``|u| > alpha`` (the upload draws them at
        +-alpha: their magnitude beyond alpha is lost).
        The server averages them over the cohort by p_k; they change no number of the run."""
        if not self.probes:
            return {}
        out = {}
        for (path, u), alpha, a0, binarized in zip(jax.tree_util.tree_leaves_with_path(update),
                                                   jax.tree.leaves(scales), jax.tree.leaves(alpha0),
                                                   jax.tree.leaves(self.train_mask)):
            if binarized:
                name = jax.tree_util.keystr(path, simple=True, separator="/")
                a = jnp.asarray(alpha, jnp.float32)
                mag = jnp.abs(u.astype(jnp.float32))
                out[f"alpha_ratio/{name}"] = a / jnp.maximum(jnp.mean(mag), 1e-30)
                out[f"alpha_gain/{name}"] = a / jnp.maximum(jnp.asarray(a0, jnp.float32), 1e-30)
                out[f"alpha_rms/{name}"] = a / jnp.maximum(jnp.sqrt(jnp.mean(jnp.square(mag))), 1e-30)
                out[f"clipped/{name}"] = jnp.mean((mag > a).astype(jnp.float32))
        return out

    def fold(self, acc: Aggregate, contributions: Aggregate, done: jax.Array) -> Aggregate:
        """Add the finished clients among a batch of contributions (leading axis; ``done`` marks them): the
        aggregation is a sum of the weighted contributions, in the batch's order."""

        def add(a, c):
            keep = done.reshape(done.shape + (1,) * (c.ndim - 1))
            return a + jnp.sum(jnp.where(keep, c, 0.0), axis=0)

        return jax.tree.map(add, acc, contributions)

    def server_transform(self) -> optax.GradientTransformation:
        """What turns the received sum into the server's step: the compressor's server side (EF21's running
        estimate), the algorithm's ``server_step`` (FedDyn's), each if any, then the server optimizer."""
        chain = [self.compressor.server] if self.compressor.server is not None else []
        if self.algorithm.server_step is not None:
            chain.append(self.algorithm.server_step(self.settings))
        return optax.chain(*chain, self.server_optimizer) if chain else self.server_optimizer

    def server_init(self, params: Params, batch_stats: Any, num_clients: int, zeros=jnp.zeros) -> ServerState:
        """The server before round 1: the initial model, every client's fresh row, the optimizer's and the
        algorithm's state. ``zeros=rounds.host_zeros`` keeps the N-client table in host memory (the run loop's)."""
        one = jax.eval_shape(self.fresh_row, params)
        table = jax.tree.map(lambda x: zeros((num_clients,) + x.shape, x.dtype), one)
        return ServerState(params, batch_stats, table, self.server_transform().init(params),
                           self.algorithm.state_init(params, self.settings),
                           privacy.init(self.privacy) if self.privacy is not None else ())

    def fresh_row(self, params: Params) -> ClientRow:
        """A client's row before it is first sampled."""
        return ClientRow(self.compressor.init(params), self.algorithm.row_init(params, self.settings))

    def server_update(self, server: ServerState, agg: Aggregate, cohort: ClientInput, key: jax.Array | None = None,
                      ) -> tuple[ServerState, jax.Array]:
        """The new global model: the server optimizer's step on the pseudo-gradient ``-sum_k p_k
        decode(payload_k)`` (plain averaging: ``w + sum_k p_k decode(payload_k)``), through the algorithm's
        ``server_step`` if it has one; BatchNorm statistics averaged; the broadcast state updated from the messages.
        With DP the sum of clipped uploads is noised first (``privacy.privatize``, from ``key``: the round's).
        ``cohort``: the round's inputs, stacked. Returns the state (its client table as given) and the round's
        statistics: ``train_loss`` (the mean training loss), the cohort's ``probes`` if on, DP's if on."""
        update, dp, dp_stats = agg.update, server.dp, {}
        if self.privacy is not None:
            update, dp, dp_stats = privacy.privatize(update, agg.unclipped, server.dp, key, self.privacy)
        pseudo_gradient = jax.tree.map(jnp.negative, update)
        extra = {}
        if self.algorithm.server_step is not None:
            extra["sums"] = self.sums(agg, cohort)
        updates, opt_state = self.server_transform().update(pseudo_gradient, server.opt_state, server.params,
                                                            **extra)
        params = optax.apply_updates(server.params, updates)
        state = server.algorithm_state
        if self.algorithm.state_update is not None:
            state = self.algorithm.state_update(state, agg.messages, self.settings)
        return (server._replace(params=params, batch_stats=agg.batch_stats, opt_state=opt_state,
                                algorithm_state=state, dp=dp),
                {"train_loss": agg.loss_sum / jnp.maximum(agg.seen, 1.0), **(agg.probes or {}), **dp_stats})

    def sums(self, agg: Aggregate, cohort: ClientInput) -> Sums:
        """The round's decoded updates summed by p_k and by w_k. ``w_k = p_k sum_j w_j`` over the cohort, so
        either sum is the other times or over ``sum_j w_j``, exactly (the leaves EF21 estimates arrive by w_k)."""
        covered = jnp.sum(cohort.share)
        estimated = self._estimated(agg.update)
        fed = jax.tree.map(lambda x, b: x if b else covered * x, agg.update, estimated)
        mean = jax.tree.map(lambda x, b: x / covered if b else x, agg.update, estimated)
        return Sums(mean, fed, cohort, self.lr_sums(cohort))

    def lr_sums(self, cohort: ClientInput) -> jax.Array:
        """``[K]``: each client's sum of its round's learning rates, from the plan (what its ``lr_sum`` adds up)."""

        def one(first, steps):
            return jax.lax.fori_loop(0, steps, lambda t, acc: acc + self.local.lr_at(first + t, steps),
                                     jnp.float32(0))

        return jax.vmap(one)(cohort.first_step, cohort.num_steps)

    # ---- shapes -----------------------------------------------------------------------------------
    def message_shape(self, params: Params) -> Any:
        """The shapes of a client's message to the server (``()`` without one)."""
        if self.algorithm.message is None:
            return ()
        spec = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.float32), params)
        row = jax.eval_shape(lambda p: self.algorithm.row_init(p, self.settings), spec)
        state = jax.eval_shape(lambda p: self.algorithm.state_init(p, self.settings), spec)
        context = jax.eval_shape(lambda st, r: self.algorithm.context(st, r, self.settings), state, row)
        out = jax.eval_shape(lambda u, r, c: self.algorithm.message(u, r, c, jnp.float32(1), self.settings),
                             spec, row, context)
        return out[1]

    def _correct(self):
        correct = self.algorithm.correct
        if correct is None:
            return None
        return lambda grad, weights, params, context: correct(grad, local=weights, broadcast=params, context=context,
                                                              config=self.settings)


def _scaled(p: jax.Array, tree: Any) -> Any:
    return jax.tree.map(lambda x: p * x, tree)
