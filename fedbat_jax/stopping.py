"""SIGTERM, the scheduler's stop (``scancel``, ``kill``, ``fedbat_jax.launch`` stopping its processes).

In a single process it raises ``Terminated`` at once: the run loop's workdir closes and the last checkpoint
stays. In a multi-process job a process stopped mid-collective would leave its peers in a failed collective,
so while the rounds run (``rounds_finish_first``) SIGTERM is only noted, and after every round the processes
agree (``fedbat_jax.distributed.stop_requests``) whether any of them got one: then they all stop together,
process 0 checkpoints that round, and each exits 143. The entry points install ``on_sigterm`` (``cli.guarded``).

``PEER_GONE`` is ``fedbat_jax.launch``'s word to the processes still running some seconds after another process
of their job ended: while the rounds run it raises ``PeerGone`` in the main thread, which a multi-process job
waits on in Python (``fedbat_jax.distributed.ready``), since a collective whose peer died does not always fail
(gloo can wait on a closed connection until the coordination service aborts the process, ~100 s later).
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

from fedbat_jax.errors import Terminated

_state = {"deferred": False, "requested": 0}  # requested: the first stop signal noted (SIGTERM or SIGINT), or 0
PEER_GONE = signal.SIGUSR1


class PeerGone(RuntimeError):
    """``PEER_GONE`` arrived while the rounds ran (``fedbat_jax.distributed.peer_lost`` makes it the job's line)."""


def _on_peer_gone(signum, frame) -> None:
    raise PeerGone("fedbat_jax.launch saw it end")


def on_sigterm(signum, frame) -> None:
    """The SIGTERM handler: raise ``Terminated`` now, or, inside ``rounds_finish_first``, note it (SIGINT too:
    there, a Ctrl-C passed on by fedbat_jax.launch stops the job the same way, and is said as an interruption)."""
    if not _state["deferred"]:
        raise Terminated()
    _state["requested"] = _state["requested"] or signum


@contextlib.contextmanager
def rounds_finish_first() -> Iterator[None]:
    """While inside, SIGTERM is noted for ``requested`` instead of raised (a SIGTERM that came before is kept),
    and ``PEER_GONE`` raises ``PeerGone`` (in the main thread; fedbat_jax.launch starts its processes with it
    ignored, so that outside the rounds it does nothing)."""
    main_thread = threading.current_thread() is threading.main_thread()
    if main_thread:
        previous = signal.signal(PEER_GONE, _on_peer_gone)
        previous_int = signal.signal(signal.SIGINT, on_sigterm)
    _state["deferred"] = True
    try:
        yield
    finally:
        _state["deferred"] = False
        if main_thread:
            signal.signal(PEER_GONE, previous)
            signal.signal(signal.SIGINT, previous_int)


def requested() -> int:
    """The stop signal this process got inside ``rounds_finish_first`` (SIGTERM or SIGINT), or 0."""
    return _state["requested"]
