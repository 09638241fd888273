"""Multi-process runs on JAX's own runtime (``jax.distributed``): one process per host or GPU group, each
running the same program on the same data; the fused execution's mesh spans every device of every process.

The settings ``coordinator_address`` ("" one process; ``auto`` JAX's cluster detection, as on SLURM, Open
MPI or TPU pods; ``HOST:PORT`` process 0's coordinator), ``num_processes`` and ``process_id`` start it;
``start`` joins the job and checks the device settings against the devices: every entry point calls it once,
after ``config.validate`` and before anything touches a device. ``fedbat_jax.launch`` starts such a job on one
machine.
"""
from __future__ import annotations

import jax

from fedbat_jax.backends import resolve_execution
from fedbat_jax.errors import ConfigError


def start(config) -> None:
    """Join the job the settings describe (if any), then check the device settings against the devices: the one
    place a run touches the devices first. One-line ``ConfigError`` for what does not fit."""
    initialize(config)
    if config.num_devices > jax.device_count():
        raise ConfigError(f"num_devices ({config.num_devices}) exceeds the {jax.device_count()} "
                          f"{jax.default_backend()} devices")
    if config.lane_loop == "python" and (config.num_devices or jax.device_count()) > 1:
        raise ConfigError("lane_loop=python runs on one device; use lane_loop=scan or num_devices=1")
    if jax.process_count() > 1 and resolve_execution(config.execution) != "fused":
        raise ConfigError(f"execution={config.execution} runs on one process; a multi-process run uses "
                          "execution=fused")


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
