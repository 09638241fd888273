"""SIGTERM, the scheduler's stop (``scancel``, ``kill``, ``fedbat_jax.launch`` stopping its processes).

In a single process it raises ``Terminated`` at once: the run loop's workdir closes and the last checkpoint
stays. In a multi-process job a process stopped mid-collective would leave its peers in a failed collective,
so while the rounds run (``rounds_finish_first``) SIGTERM is only noted, and after every round the processes
agree (``fedbat_jax.distributed.stop_requests``) whether any of them got one: then they all stop together,
process 0 checkpoints that round, and each exits 143. The entry points install ``on_sigterm`` (``cli.guarded``).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

from fedbat_jax.errors import Terminated

_state = {"deferred": False, "requested": False}


def on_sigterm(signum, frame) -> None:
    """The SIGTERM handler: raise ``Terminated`` now, or, inside ``rounds_finish_first``, note it."""
    if not _state["deferred"]:
        raise Terminated()
    _state["requested"] = True


@contextlib.contextmanager
def rounds_finish_first() -> Iterator[None]:
    """While inside, SIGTERM is noted for ``requested`` instead of raised (a SIGTERM that came before is kept)."""
    _state["deferred"] = True
    try:
        yield
    finally:
        _state["deferred"] = False


def requested() -> bool:
    """Whether this process got SIGTERM inside ``rounds_finish_first``."""
    return _state["requested"]
