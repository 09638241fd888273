"""Host memory a run needs, estimated before it allocates, and a one-line refusal when it cannot fit.

The run loop keeps the N-client table in host memory (``rounds.host_zeros``) and writes it into every checkpoint:
N rows of what the compressor (error feedback's residual) and the algorithm (SCAFFOLD's control variate, FedDyn's
gradient) keep per client, shaped like the model. With the dataset in memory it is what grows with the settings::

    table = num_clients x (compressor row + algorithm row)       checkpoint ~ table + model
    need  = table + dataset (its arrays as loaded)

A centralised dataset's loader declares its size (``fedbat_jax.data.datasets.Footprint``), so the check runs
before any data loads; a natural federation's client count is known once its files are read, so its check runs
then, still before the table is allocated. The limit is the smallest of ``max_host_memory`` (GiB, when set), the
memory the kernel reports available (``MemAvailable``) and what the address-space limit (``ulimit -v``) leaves.
"""
from __future__ import annotations

import resource
from pathlib import Path
from typing import Any, NamedTuple

import jax

from fedbat_jax.errors import ConfigError
from fedbat_jax.payloads import tree_bytes

GIB = 2 ** 30


class Need(NamedTuple):
    """A run's host-memory estimate, in bytes, and what drives it."""

    clients: int
    compressor_row: int  # per client: the compressor's (error feedback's) state
    algorithm_row: int  # per client: the algorithm's
    params: int
    dataset: int

    @property
    def table(self) -> int:
        return self.clients * (self.compressor_row + self.algorithm_row)

    @property
    def total(self) -> int:
        return self.table + self.dataset

    @property
    def checkpoint(self) -> int:
        return self.table + self.params


def need(learner, params: Any, clients: int, dataset_bytes: int) -> Need:
    """The estimate for ``clients`` rows of ``learner``'s table over ``params`` (arrays or shapes)."""
    row = jax.eval_shape(learner.fresh_row, params)
    return Need(clients, tree_bytes(row.compressor), tree_bytes(row.algorithm), tree_bytes(params), dataset_bytes)


def limits(config) -> list[tuple[int, str, bool]]:
    """The host memory this run may use: ``(bytes, what sets them, net)``, ``net`` where the figure is what is
    left beside what this process holds already (the machine's MemAvailable, the ``ulimit -v`` headroom), not the
    run's whole budget (``max_host_memory``)."""
    out = []
    if config.max_host_memory > 0:
        out.append((int(config.max_host_memory * GIB), f"allowed (max_host_memory={config.max_host_memory:g})", False))
    meminfo = _meminfo()
    if "MemAvailable" in meminfo:
        out.append((meminfo["MemAvailable"], "available on this machine (MemAvailable)", True))
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        out.append((max(soft - _status("VmSize"), 0), "left by the address-space limit (ulimit -v)", True))
    return out


def check(config, est: Need, when: str = "", loaded: bool = False) -> None:
    """A ConfigError naming the sizes and the settings behind them when ``est`` exceeds what is available.
    ``loaded``: the dataset is in this process's memory already, so a net limit is set against the table alone."""
    short = [(limit - need, limit, why) for limit, why, net in limits(config)
             for need in [est.table if loaded and net else est.total] if need > limit]
    if not short:
        return
    _, limit, why = min(short)
    parts = [f"{name} {b / 2 ** 20:.2f} MB" for name, b in
             ((f"error_feedback={config.error_feedback}/compressor", est.compressor_row),
              (f"algorithm={config.algorithm}", est.algorithm_row)) if b]
    raise ConfigError(
        f"this run needs about {est.total / GIB:.1f} GiB of host memory{when}: a per-client table of "
        f"num_clients={est.clients} x {(est.compressor_row + est.algorithm_row) / 2 ** 20:.2f} MB "
        f"({', '.join(parts) or 'nothing'}; model={config.model}) = {est.table / GIB:.2f} GiB, written into every "
        f"checkpoint (~{est.checkpoint / GIB:.2f} GiB each), plus the dataset's {est.dataset / GIB:.2f} GiB"
        f"{' (loaded)' if loaded else ''}; "
        f"only {limit / GIB:.1f} GiB are {why}. Lower num_clients, use a smaller model_width or a method without "
        "per-client state, or set --config.max_host_memory")


def _meminfo() -> dict[str, int]:
    try:
        lines = Path("/proc/meminfo").read_text().splitlines()
    except OSError:
        return {}
    out = {}
    for line in lines:
        name, _, value = line.partition(":")
        fields = value.split()
        if fields and fields[0].isdigit():
            out[name] = int(fields[0]) * (1024 if fields[1:] == ["kB"] else 1)
    return out


def _status(field: str) -> int:
    """A size from /proc/self/status in bytes (0 where unknown)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0
