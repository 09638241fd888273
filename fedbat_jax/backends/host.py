"""``host`` (the CPU default): each client's jitted, donated step called from a Python loop, clients over threads,
finished clients folded strictly in cohort order (so threads change no bit). Nothing is padded. On XLA:CPU a conv
gradient inside ``lax.scan`` is many times slower than the same jitted step (jax issue 12868)."""
from __future__ import annotations

import collections
import concurrent.futures
import signal
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from fedbat_jax.registry import NON_NEGATIVE, Setting, declares
from fedbat_jax.backends import Backend, batch_of_one, finish, one_client
from fedbat_jax.federated import Broadcast, Client, ClientInput, Learner
from fedbat_jax.local import FederatedData


def host(learner: Learner, threads: int = 1) -> Backend:
    """Each client's jitted steps from a Python loop, ``threads`` clients at a time, folded in cohort order."""
    init = jax.jit(learner.client_init)
    step = jax.jit(learner.client_step, donate_argnums=0)

    @jax.jit
    def empty(sent):
        return learner.empty_aggregate(sent)

    @partial(jax.jit, donate_argnums=(1, 2))
    def finish_one(sent, acc, rows, client, inp):
        return finish(learner, sent, acc, rows, batch_of_one(client), batch_of_one(inp), jnp.ones((1,), bool))

    def run(sent: Broadcast, data: FederatedData, inputs: ClientInput, rows):
        num_steps = np.asarray(inputs.num_steps)

        def row_of(i: int):  # read in the main thread, before a later finish_one donates ``rows``
            return jax.tree.map(lambda x: x[i], rows)

        def train_one(i: int, row) -> Client:
            inp = one_client(inputs, i)
            client = init(sent, row, inp)
            for t in range(int(num_steps[i])):
                client = step(client, sent, data, inp, t)
            return client

        acc = empty(sent)
        k = len(num_steps)
        workers = max(1, min(threads, k))
        if workers == 1:
            for i in range(k):
                acc, rows = finish_one(sent, acc, rows, train_one(i, row_of(i)), one_client(inputs, i))
            return acc, rows
        # Clients finish out of order; fold them in cohort order (same sums as one thread), keeping at most
        # 2 x threads finished states waiting.
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            pending = collections.deque(submit(pool, train_one, i, row_of(i)) for i in range(min(k, 2 * workers)))
            for i in range(k):
                client = pending.popleft().result()
                nxt = i + len(pending) + 1
                if nxt < k:
                    pending.append(submit(pool, train_one, nxt, row_of(nxt)))
                acc, rows = finish_one(sent, acc, rows, client, one_client(inputs, i))
        return acc, rows

    return Backend("host", run, 1, "python")


def submit(pool: concurrent.futures.ThreadPoolExecutor, fn, *args) -> concurrent.futures.Future:
    """``pool.submit``, with SIGTERM and SIGINT held back while it may start a thread (which then keeps them
    blocked; the main thread handles them): their handler raising inside CPython's ``Thread.start`` would leave
    the new thread to die at its start with a traceback on stderr, before the run's one line."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    try:
        return pool.submit(fn, *args)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


@declares(Setting("client_threads", 0, "host backend: clients trained concurrently (0 = auto)", NON_NEGATIVE))
def make(learner: Learner, config, longest: int) -> Backend:
    return host(learner, config.client_threads or (2 if jax.default_backend() == "cpu" else 1))
