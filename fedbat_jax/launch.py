"""A multi-process run on one machine: ``python -m fedbat_jax.launch --processes N [--devices-per-process D]
-- <the arguments of python -m fedbat_jax.main>``.

It starts N copies of ``fedbat_jax.main`` joined through ``jax.distributed`` (a free local port as the
coordinator; ``--config.coordinator_address/num_processes/process_id`` appended), forwards process 0's
output, and writes process i's to ``WORKDIR/process-<i>.log``. ``--devices-per-process D`` gives each process
D devices: D forced host devices on a CPU (``--xla_force_host_platform_device_count``), GPUs ``i*D`` to
``i*D+D-1`` (``CUDA_VISIBLE_DEVICES``) on a GPU host.

It never hangs on a broken job: when any process exits non-zero or is killed, the launcher stops the others
(SIGTERM, then SIGKILL after ``GRACE_S``) and exits non-zero with one line naming that process. Ctrl-C or
SIGTERM stops them all. Rerun the same command to resume from the last checkpoint.

Exit status: 0 when every process finished; otherwise the failed process's status (128 + the signal when
it was killed), 130 on Ctrl-C, 143 on SIGTERM; 2 for bad launcher arguments.

On a cluster, skip the launcher: start one ``python -m fedbat_jax.main ... --config.coordinator_address=auto``
per host (``srun``, ``mpirun``), as the README shows.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from fedbat_jax import cli

GRACE_S = 10.0  # how long a stopped process gets to exit after SIGTERM before SIGKILL
POLL_S = 0.1
SETTLE_S = 3.0  # after a failure, how long the other processes get to end by themselves before they are stopped
USAGE = ("python -m fedbat_jax.launch --processes N [--devices-per-process D] -- --workdir=DIR "
         "[--config=FILE] [--config.FIELD=VALUE ...]")


def parser() -> cli.ArgumentParser:
    ap = cli.ArgumentParser(prog="fedbat_jax.launch", usage=USAGE,
                            description="Run python -m fedbat_jax.main as N processes of one job on this machine.")
    ap.add_argument("--processes", type=int, required=True, help="processes to start (>= 1)")
    ap.add_argument("--devices-per-process", type=int, default=0,
                    help="devices each process gets: forced CPU devices, or that many GPUs each (0: leave as is)")
    return ap


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def workdir_of(main_args: list[str]) -> Path:
    """The ``--workdir`` among the main module's arguments (the last one wins, as in argparse)."""
    found = None
    for i, arg in enumerate(main_args):
        if arg.startswith("--workdir="):
            found = arg.split("=", 1)[1]
        elif arg == "--workdir" and i + 1 < len(main_args):
            found = main_args[i + 1]
    if not found:
        raise cli.ConfigError("give the run's --workdir after -- (the other processes' logs go there)")
    return Path(found)


def process_env(i: int, devices: int) -> dict:
    env = dict(os.environ)
    if devices:
        flags = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
        env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"])
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i * devices + d) for d in range(devices))
    return env


def job_flags(address: str, processes: int, i: int) -> list[str]:
    """The settings that make a ``fedbat_jax.main`` process rank ``i`` of a job (none for a single process)."""
    if processes == 1:
        return []
    return [f"--config.coordinator_address={address}", f"--config.num_processes={processes}",
            f"--config.process_id={i}"]


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM every process still running, then SIGKILL those not gone after ``GRACE_S`` (a process blocked
    in a collective whose peer died does not run its Python signal handler)."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + GRACE_S
    for p in procs:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def settle(procs: list[subprocess.Popen]) -> list[int | None]:
    """After one process failed, up to ``SETTLE_S`` for the others to end on their own (a setting that is bad
    in one process is bad in all, and process 0's one-line reason is the one the user sees); their exit codes."""
    deadline = time.monotonic() + SETTLE_S
    while time.monotonic() < deadline and any(p.poll() is None for p in procs):
        time.sleep(POLL_S)
    return [p.poll() for p in procs]


def launch(processes: int, devices: int, main_args: list[str]) -> int:
    if processes < 1:
        raise cli.ConfigError(f"--processes must be >= 1, got {processes}")
    if devices < 0:
        raise cli.ConfigError(f"--devices-per-process must be >= 0, got {devices}")
    workdir = workdir_of(main_args)
    if workdir.exists() and not workdir.is_dir():
        raise cli.ConfigError(f"workdir {workdir} is a file, not a folder")
    if processes > 1:
        workdir.mkdir(parents=True, exist_ok=True)
    address = f"127.0.0.1:{free_port()}"
    procs, logs = [], []
    try:
        for i in range(processes):
            quiet = ["--progress=false"] if i > 0 else []
            out = None
            if i > 0:
                out = open(workdir / f"process-{i}.log", "w")
                logs.append(out)
            procs.append(subprocess.Popen([sys.executable, "-m", "fedbat_jax.main", *quiet, *main_args,
                                           *job_flags(address, processes, i)],
                                          env=process_env(i, devices), stdout=out,
                                          stderr=subprocess.STDOUT if out else None))
        while True:
            codes = [p.poll() for p in procs]
            failed = [i for i, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                i = failed[0]  # the first to fail is the one named
                codes = settle(procs)  # a bad setting fails in every process: let process 0 print its reason
                stop(procs)
                where = "" if i == 0 else f" (its output: {workdir / f'process-{i}.log'})"
                print(f"fedbat_jax.launch: process {i} of {processes} {describe_exit(codes[i])}{where}; "
                      f"stopped the others", file=sys.stderr)
                return codes[i] if codes[i] > 0 else 128 - codes[i]
            if all(c == 0 for c in codes):
                return 0
            time.sleep(POLL_S)
    except (KeyboardInterrupt, cli.Terminated):
        stop(procs)
        raise
    finally:
        for f in logs:
            f.close()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv[1:])
    ours, main_args = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, None)

    def body() -> int:
        args = parser().parse_args(ours)
        if main_args is None:
            raise cli.ConfigError(f"put the run's arguments after --: {USAGE}")
        return launch(args.processes, args.devices_per_process, main_args)

    return cli.guarded("fedbat_jax.launch", body)


if __name__ == "__main__":
    sys.exit(main())
