"""What a run's numbers depend on besides its settings and seed: the machine that computed them.

A run is deterministic given its config and seed *on one machine shape*. XLA splits a reduction (a
matmul's or a convolution's sum) over the threads it may use, so the same run under ``taskset -c 0`` and
on two cores differs in the last bits from the first round on, and training turns that into different
accuracies (the paper's Fashion-MNIST label-count setting, 2 rounds of 2 local epochs: round-1 train loss
1.33434 on 1 thread against 1.33455 on 2, round-2 test accuracy 0.1684 against 0.1664; each repeats to the
bit on its own thread count). Backends, device kinds, CPU models (XLA compiles for the host's vector
instructions) and jax versions may differ the same way.

    fingerprint()   {backend, device_kind, devices, cpu, cpu_threads, jax}: what may change the numbers
    describe(fp)    one line for a results file's "Machine:" line
    differences(old, new)  the fields that differ, for a resume's warning
"""
from __future__ import annotations

import os
import platform

import jax


def cpu_threads() -> int:
    """The CPUs this process may run on (``taskset`` and cgroup cpusets narrow it), which XLA:CPU sizes its
    thread pool by."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def fingerprint() -> dict:
    devices = jax.devices()
    return {"backend": devices[0].platform, "device_kind": devices[0].device_kind, "devices": len(devices),
            "cpu": cpu_model(), "cpu_threads": cpu_threads(), "jax": jax.__version__}


def cpu_model() -> str:
    """The CPU's model name where Linux says it, else the architecture."""
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        name = ""
    return name or platform.processor() or platform.machine()


def describe(fp: dict | None = None) -> str:
    """``"AMD EPYC 7B13, 2 CPU threads, cpu: 1 x cpu, jax 0.10.2"``: a results file's "Machine:" line."""
    fp = fp or fingerprint()
    return (f"{fp['cpu']}, {fp['cpu_threads']} CPU thread{'s' * (fp['cpu_threads'] != 1)}, "
            f"{fp['backend']}: {fp['devices']} x {fp['device_kind']}, jax {fp['jax']}")


def differences(old: dict, new: dict) -> str:
    """``"cpu_threads 2 -> 1, ..."`` for the fields whose values differ ("" when none do)."""
    return ", ".join(f"{k} {old.get(k)!r} -> {new[k]!r}" for k in new if k in old and old[k] != new[k])
