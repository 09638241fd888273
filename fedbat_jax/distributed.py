"""Multi-process runs on JAX's own runtime (``jax.distributed``): one process per host or GPU group, each
running the same program on the same data; the fused execution's mesh spans every device of every process.

The settings ``coordinator_address`` ("" one process; ``auto`` JAX's cluster detection, as on SLURM, Open
MPI or TPU pods; ``HOST:PORT`` process 0's coordinator), ``num_processes`` and ``process_id`` start it;
``initialize`` runs before anything touches a device (``config.validate`` calls it). ``fedbat_jax.launch``
starts such a job on one machine.
"""
from __future__ import annotations

import jax

from fedbat_jax.errors import ConfigError


def check_address(config) -> None:
    """The multi-process settings, checked without touching a device (one-line ``ConfigError``)."""
    address, n, i = config.coordinator_address, config.num_processes, config.process_id
    if n < 1:
        raise ConfigError(f"num_processes must be >= 1, got {n!r}")
    if not 0 <= i < n:
        raise ConfigError(f"process_id must be in [0, num_processes = {n}), got {i!r}")
    if address in ("", "auto"):
        if address == "" and n > 1:
            raise ConfigError(f"num_processes={n} needs coordinator_address (HOST:PORT of process 0, or auto)")
        return
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"coordinator_address must be '', auto or HOST:PORT, got {address!r}")


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
    try:
        jax.distributed.initialize(**args)
    except (RuntimeError, ValueError) as e:
        raise ConfigError(f"coordinator_address={address}: could not join the job ({' '.join(str(e).split())})") from e


def describe(devices: int) -> str:
    """``4`` on one process, ``4 (2 processes)`` on several: the devices a run uses, for its first log line."""
    n = jax.process_count()
    return f"{devices}" + (f" ({n} processes)" if n > 1 else "")
