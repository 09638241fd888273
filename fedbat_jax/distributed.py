"""Multi-process runs on JAX's own runtime (``jax.distributed``): one process per host or GPU group, each
running the same program on the same data; the fused backend's mesh spans every device of every process.

The settings ``coordinator_address`` ("" one process; ``auto`` JAX's cluster detection, as on SLURM, Open
MPI or TPU pods; ``HOST:PORT`` process 0's coordinator), ``num_processes`` and ``process_id`` start it;
``start`` joins the job and checks the device settings against the devices: every entry point calls it once,
after ``config.validate`` and before anything touches a device. ``fedbat_jax.launch`` starts such a job on one
machine.

A job's processes stop together: ``stop_requests`` after each round says which of them got SIGTERM
(``fedbat_jax.stopping``), and a collective that fails because a peer died or went silent is ``peer_lost``
(one line, ``JobError``), not a runtime traceback, after which the process ends at once (``leave_lost_job``).
``ready`` waits for a round in Python, so that the launcher's word that a peer ended (``stopping.PEER_GONE``)
is heard even while a collective waits on that peer. ``heartbeat`` tells the launcher this process is alive.

A job's start is the slow part: every process loads and compiles at its own speed on a loaded machine, and the
CPU collectives' rendezvous (Gloo's) gives a peer only 30 s to arrive, a limit no setting changes. ``first_round``
lines the processes up at a barrier before the first round, and a failure before that round ends is a slow or
failed start (``SlowStart``, exit 75, which the launcher answers by starting the job again: a loaded machine's
skew is chance), never a lost process.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import Iterator, NoReturn

import jax
import numpy as np

from fedbat_jax.backends import resolve_backend
from fedbat_jax import stopping
from fedbat_jax.errors import ConfigError, JobError, SlowStart


def start(config) -> None:
    """Join the job the settings describe (if any), then check the device settings against the devices: the one
    place a run touches the devices first. One-line ``ConfigError`` for what does not fit."""
    initialize(config)
    if config.num_devices > jax.device_count():
        raise ConfigError(f"num_devices ({config.num_devices}) exceeds the {jax.device_count()} "
                          f"{jax.default_backend()} devices")
    if config.lane_loop == "python" and (config.num_devices or jax.device_count()) > 1:
        raise ConfigError("lane_loop=python runs on one device; use lane_loop=scan or num_devices=1")
    if jax.process_count() > 1 and resolve_backend(config.backend) != "fused":
        raise ConfigError(f"backend={config.backend} runs on one process; a multi-process run uses "
                          "backend=fused")


def initialize(config) -> None:
    """Join the job the settings describe (once per process; a later call with the same job is a no-op)."""
    address = config.coordinator_address
    if not address:
        return
    if jax.distributed.is_initialized():
        if address != "auto" and jax.process_count() != config.num_processes:
            raise ConfigError(f"this process already joined a job of {jax.process_count()} processes, not "
                              f"num_processes={config.num_processes}")
        return
    if address == "auto":
        args = {} if config.num_processes == 1 else dict(num_processes=config.num_processes,
                                                         process_id=config.process_id)
    else:
        args = dict(coordinator_address=address, num_processes=config.num_processes, process_id=config.process_id)
    # JAX's preemption service takes SIGTERM over in every process (and then ignores it): the job's own stop,
    # at the end of a round in every process together (``stop_requests``), keeps it
    jax.config.update("jax_enable_preemption_service", False)
    try:
        jax.distributed.initialize(**args)
    except (RuntimeError, ValueError) as e:
        raise ConfigError(f"coordinator_address={address}: could not join the job ({' '.join(str(e).split())})") from e


_START = {"started": False}  # whether this run's first round has ended
START_BARRIER_S = 600  # how long a process waits at the first round for the others (a dead one: the heartbeat's)


@contextlib.contextmanager
def first_round() -> Iterator[None]:
    """Around a job's first round: every process waits for the others at a coordination-service barrier first
    (however long their data loading and earlier compiles took), so that the round's first collective does not
    give up on a peer still starting. A failure before this round ends is a slow or failed start
    (``peer_lost``), which ``fedbat_jax.launch`` retries. Outside a multi-process job, nothing."""
    if jax.process_count() == 1:
        yield
        return
    from jax._src import distributed as jax_distributed  # (its client: the coordination service's barriers)

    _START["started"] = False  # (a second run in the same job starts again)
    jax_distributed.global_state.client.wait_at_barrier("fedbat_first_round", START_BARRIER_S * 1000)
    yield
    _START["started"] = True


def describe(devices: int) -> str:
    """``4`` on one process, ``4 (2 processes)`` on several: the devices a run uses, for its first log line."""
    n = jax.process_count()
    return f"{devices}" + (f" ({n} processes)" if n > 1 else "")


def stop_requests() -> dict[int, int]:
    """After a round, in every process of a job together: ``{process: signal}`` for the processes that got
    SIGTERM (or SIGINT) while the rounds ran (``{}`` in a single process, whose signal is raised at once)."""
    if jax.process_count() == 1:
        return {}
    from jax.experimental import multihost_utils

    flags = np.asarray(multihost_utils.process_allgather(np.int32(stopping.requested())))
    return {int(i): int(flags[i]) for i in np.flatnonzero(flags)}


def ready(x: jax.Array) -> jax.Array:
    """``x`` once computed. In a multi-process job the main thread waits in Python, where a signal handler runs
    (``stopping.PEER_GONE``), not in the runtime, where it would not until the computation ends."""
    if jax.process_count() > 1:
        while not x.is_ready():
            time.sleep(0.005)
    return x


# What a collective with a dead (connection closed) or silent (deadline) peer raises, by runtime.
_PEER_LOST = ("gloo", "nccl", "connection closed", "connection reset", "connection refused", "broken pipe",
              "heartbeat", "deadline_exceeded", "unavailable")


def peer_lost(e: BaseException, done: int) -> JobError | None:
    """The one-line ``JobError`` for a runtime error that says another process of the job died or went silent
    (``None`` for any other error, or in a single process: a bug keeps its traceback). Before this process's first
    round it is a slow or failed start, naming the processes the coordination service names."""
    text = " ".join(re.sub(r"\[[^\]]*\]:?", "", str(e)).split())  # (without the runtime's source paths)
    gone = isinstance(e, stopping.PeerGone) or any(word in text.lower() for word in _PEER_LOST)
    if jax.process_count() == 1 or not gone:
        return None
    kept = f"the last checkpoint (round {done}) is kept" if done else "no checkpoint was written yet"
    if not _START["started"] and not isinstance(e, stopping.PeerGone):
        late = sorted({int(t) for t in re.findall(r"task:(\d+)", text)} - {jax.process_index()})
        who = (f"process{'es' if len(late) > 1 else ''} {', '.join(map(str, late))}" if late else
               "another process")
        return SlowStart(f"process {jax.process_index()} of {jax.process_count()}: the job did not start: {who} "
                        f"did not reach the first round in time (a slow start, still loading or compiling, or a "
                        f"failed one) ({text[:160]}); {kept}")
    return JobError(f"process {jax.process_index()} of {jax.process_count()} lost another process of the job "
                    f"({text[:200]}); {kept}")


def leave_lost_job(code: int) -> NoReturn:
    """End a process whose job lost another process, now, with ``code``: at exit jax.distributed shuts down at a
    barrier of every process, where it would wait for the lost one until the coordination service aborts this
    process (~100 s, with a C++ stack). What the run wrote is closed by then; only the output is flushed."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


HEARTBEAT_ENV = "FEDBAT_HEARTBEAT"  # set by fedbat_jax.launch: the file this process touches while it is alive


def heartbeat(every_s: float = 1.0) -> None:
    """Under ``fedbat_jax.launch``: touch the file it named every ``every_s`` seconds from a daemon thread, which
    runs while the main thread compiles or waits in a collective (both release the GIL) and stops when the
    process is stopped (SIGSTOP) or hung holding the GIL: the launcher names a process whose file goes stale."""
    path = os.environ.get(HEARTBEAT_ENV)
    if not path:
        return

    def beat() -> None:
        while True:
            try:
                Path(path).touch()
            except OSError:
                return
            time.sleep(every_s)

    threading.Thread(target=beat, name="fedbat-heartbeat", daemon=True).start()
