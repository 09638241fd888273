"""A multi-process run on one machine: ``python -m fedbat_jax.launch --processes N [--devices-per-process D]
-- <the arguments of python -m fedbat_jax.main>``.

It starts N copies of ``fedbat_jax.main`` joined through ``jax.distributed`` (a free local port as the
coordinator; ``--config.coordinator_address/num_processes/process_id`` appended), forwards process 0's
output, and writes process i's to ``WORKDIR/process-<i>.log``. ``--devices-per-process D`` gives each process
D devices: D forced host devices on a CPU (``--xla_force_host_platform_device_count``), GPUs ``i*D`` to
``i*D+D-1`` (``CUDA_VISIBLE_DEVICES``) on a GPU host.

Before anything starts, the run's arguments are checked as ``fedbat_jax.main`` checks them and the workdir's
lock is taken (held for the whole job and handed to process 0): a bad setting or a busy workdir is one line
and exit 2 within seconds, and touches nothing.

It never hangs on a broken job: when any process exits non-zero or is killed, the launcher stops the others
(SIGTERM, then SIGKILL after ``GRACE_S``) and exits non-zero with one line naming that process. A process
that stops answering (no heartbeat for ``--heartbeat-timeout`` seconds: stopped by SIGSTOP, or hung) is
named, killed, and the others stopped. SIGTERM or Ctrl-C to the launcher, or SIGTERM to any one process,
stops every process at the end of the round in progress, that round checkpointed. Rerun the same command to
resume from the last checkpoint. The processes run in their own session (Ctrl-C reaches the launcher, which
stops them as above) and get SIGTERM if the launcher itself dies.

A job whose processes did not all reach the first round in time (one still loading or compiling when another's
first collective gave up on it: exit 75 in that process) is started again, up to ``START_ATTEMPTS`` times in all
(the skew of a loaded machine is chance; a compilation cache the launcher provides, ``JAX_COMPILATION_CACHE_DIR``
unless set, spares process 0, which alone writes it, its compiles). A fresh workdir of a job that fails before
its first round is written is removed again, except the log of a process other than 0 that the failure line names.

Exit status: 0 when every process finished; 143 when the job stopped on SIGTERM, 130 on Ctrl-C; otherwise
the failed process's status (128 + the signal when it was killed); 1 when a process stopped answering; 2
for bad launcher or run arguments, or a busy workdir.

On a cluster, skip the launcher: start one ``python -m fedbat_jax.main ... --config.coordinator_address=auto``
per host (``srun``, ``mpirun``), as docs/scale.md shows.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fedbat_jax import cli, stopping

GRACE_S = 10.0  # how long a stopped process gets to exit after SIGTERM before SIGKILL
POLL_S = 0.1
SETTLE_S = 3.0  # after a failure, how long the other processes get to end by themselves, twice (see settle)
HEARTBEAT_S = 30.0  # --heartbeat-timeout's default
JAX_HEARTBEAT_S = 100  # jax.distributed's own: it aborts the survivors of a silent process after this long
EXIT_SILENT = 1
START_ATTEMPTS = 3  # starts of a job whose processes did not reach the first round in time (exit 75)
USAGE = ("python -m fedbat_jax.launch --processes N [--devices-per-process D] [--heartbeat-timeout S] -- "
         "--workdir=DIR [--config=FILE] [--config.FIELD=VALUE ...]")


def parser() -> cli.ArgumentParser:
    ap = cli.ArgumentParser(prog="fedbat_jax.launch", usage=USAGE,
                            description="Run python -m fedbat_jax.main as N processes of one job on this machine.")
    ap.add_argument("--processes", type=int, required=True, help="processes to start (>= 1)")
    ap.add_argument("--devices-per-process", type=int, default=0,
                    help="devices each process gets: forced CPU devices, or that many GPUs each (0: leave as is)")
    ap.add_argument("--heartbeat-timeout", type=float, default=HEARTBEAT_S,
                    help=f"seconds without a heartbeat after which a process is named as stopped or hung and the "
                         f"job is stopped (default {HEARTBEAT_S:g}; below jax.distributed's own {JAX_HEARTBEAT_S})")
    return ap


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def checked_workdir(main_args: list[str]) -> Path:
    """The run's workdir, after checking its arguments as ``fedbat_jax.main`` will (a bad setting is one line
    here, before any process starts or any file is created)."""
    from fedbat_jax import main as entry
    from fedbat_jax.config import validate

    config, args = cli.parse(entry.parser(), main_args, cli.DEFAULT_CONFIG_FILE)
    validate(config)
    if not args.workdir:
        raise cli.ConfigError("give the run's --workdir after -- (the other processes' logs go there)")
    return Path(args.workdir)


def process_env(i: int, devices: int, beat: Path | None = None, lock_fd: int | None = None,
                cache: Path | None = None) -> dict:
    """Process ``i``'s environment: its devices, and under the launcher its heartbeat file, the handed lock and
    the job's compilation cache (where the user set none)."""
    from fedbat_jax.distributed import HEARTBEAT_ENV
    from fedbat_jax.workdir import LOCK_FD_ENV

    env = dict(os.environ)
    if cache is not None and "JAX_COMPILATION_CACHE_DIR" not in env:
        env.update(JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    env.pop(LOCK_FD_ENV, None)
    env.pop(HEARTBEAT_ENV, None)
    if beat is not None:
        env[HEARTBEAT_ENV] = str(beat)
    if lock_fd is not None:
        env[LOCK_FD_ENV] = str(lock_fd)
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


def stop(procs: list[subprocess.Popen], how: int = signal.SIGTERM) -> None:
    """SIGTERM (or the launcher's own SIGINT, passed on so that every line tells the same story) every process
    still running, then SIGKILL those not gone after ``GRACE_S`` (a process blocked in a collective whose peer
    died does not run its Python signal handler)."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(how)
    deadline = time.monotonic() + GRACE_S
    for p in procs:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def settle(procs: list[subprocess.Popen]) -> list[int | None]:
    """After one process failed, up to ``SETTLE_S`` for the others to end on their own (a setting that is bad
    in one process is bad in all, and process 0's one-line reason is the one the user sees); then those still
    running, which may wait in a collective on the failed one, are told (``stopping.PEER_GONE``) and get
    ``SETTLE_S`` more to say so in their line. Their exit codes."""
    _wait(procs, SETTLE_S)
    running = [p for p in procs if p.poll() is None]
    for p in running:
        p.send_signal(stopping.PEER_GONE)
    if running:
        _wait(procs, SETTLE_S)
    return [p.poll() for p in procs]


def _wait(procs: list[subprocess.Popen], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(p.poll() is None for p in procs):
        time.sleep(POLL_S)


def _die_with_the_launcher() -> None:
    """In a started process (Linux): SIGTERM when the launcher dies, even by SIGKILL (no orphaned job); and
    ``stopping.PEER_GONE`` ignored but while the rounds run (its default would end the process)."""
    signal.signal(stopping.PEER_GONE, signal.SIG_IGN)
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def launch(processes: int, devices: int, heartbeat_s: float, main_args: list[str]) -> int:
    if processes < 1:
        raise cli.ConfigError(f"--processes must be >= 1, got {processes}")
    if devices < 0:
        raise cli.ConfigError(f"--devices-per-process must be >= 0, got {devices}")
    if not 1 <= heartbeat_s < JAX_HEARTBEAT_S:
        raise cli.ConfigError(f"--heartbeat-timeout must be in [1, {JAX_HEARTBEAT_S}) seconds (jax.distributed's own "
                              f"limit is {JAX_HEARTBEAT_S}), got {heartbeat_s:g}")
    workdir = checked_workdir(main_args)
    from fedbat_jax.workdir import hold_lock, make_folder

    created = make_folder(workdir)
    try:
        lock = hold_lock(workdir)  # a busy workdir: one line now, before a process starts or a log is opened
    except cli.FedBatError:
        if created:
            shutil.rmtree(workdir, ignore_errors=True)
        raise
    beats, code, named = Path(tempfile.mkdtemp(prefix="fedbat-launch-")), None, None
    try:
        for attempt in range(1, START_ATTEMPTS + 1):
            code, named = _run_job(processes, devices, heartbeat_s, main_args, workdir, lock, beats)
            if code != cli.EXIT_SLOW_START or attempt == START_ATTEMPTS:
                break
            print(f"fedbat_jax.launch: the job did not start in time (a process was still loading or compiling "
                  f"when another's first round began); starting it again (attempt {attempt + 1} of "
                  f"{START_ATTEMPTS})", file=sys.stderr)
    finally:
        shutil.rmtree(beats, ignore_errors=True)
        if created and code != 0:
            _remove_unstarted(workdir, named)
        lock.close()
    return code


def _remove_unstarted(workdir: Path, named: int | None) -> None:
    """A fresh job that failed before its first round was written leaves no trace of itself but the log of the
    process its failure line ``named`` (one other than 0); nothing is removed once a round is written."""
    from fedbat_jax.workdir import CHECKPOINT_FILE, LOCK_FILE, METRICS_FILE, PREVIOUS_CHECKPOINT_FILE

    metrics = workdir / METRICS_FILE
    if (workdir / CHECKPOINT_FILE).exists() or (workdir / PREVIOUS_CHECKPOINT_FILE).exists() or (
            metrics.exists() and metrics.read_bytes().strip()):
        return
    for path in workdir.iterdir():
        if named and path.name == f"process-{named}.log":
            continue
        if path.name != LOCK_FILE:  # (the lock goes with the folder, or stays while its logs do)
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    if {p.name for p in workdir.iterdir()} <= {LOCK_FILE}:
        shutil.rmtree(workdir, ignore_errors=True)


def _run_job(processes, devices, heartbeat_s, main_args, workdir, lock, beats) -> tuple[int, int | None]:
    """Run the job once: its exit status, and the process a failure line named (``None`` when none did)."""
    address = f"127.0.0.1:{free_port()}"
    procs, logs, files = [], [], [beats / f"process-{i}" for i in range(processes)]
    try:
        for i in range(processes):
            quiet = ["--progress=false"] if i > 0 else []
            out = None
            if i > 0:
                out = open(workdir / f"process-{i}.log", "w")
                logs.append(out)
            files[i].touch()  # the clock starts now
            lock_fd = lock.fileno() if i == 0 else None
            procs.append(subprocess.Popen([sys.executable, "-m", "fedbat_jax.main", *quiet, *main_args,
                                           *job_flags(address, processes, i)],
                                          env=process_env(i, devices, files[i], lock_fd, beats / "xla_cache"),
                                          stdout=out,
                                          stderr=subprocess.STDOUT if out else None,
                                          pass_fds=(lock_fd,) if lock_fd is not None else (),
                                          start_new_session=True, preexec_fn=_die_with_the_launcher))
        while True:
            codes = [p.poll() for p in procs]
            failed = [i for i, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                return _stop_failed_job(procs, failed[0], workdir)
            if all(c == 0 for c in codes):
                return 0, None
            now = time.time()
            silent = [(i, now - files[i].stat().st_mtime) for i, c in enumerate(codes) if c is None]
            silent = [(i, age) for i, age in silent if age > heartbeat_s]
            if silent:
                i, age = silent[0]
                procs[i].kill()  # first, so that its peers' collectives fail at once instead of waiting for it
                procs[i].wait()
                settle(procs)
                stop(procs)
                print(f"fedbat_jax.launch: process {i} of {processes} stopped answering (no heartbeat for "
                      f"{age:.0f} s: stopped, or hung; --heartbeat-timeout {heartbeat_s:g}){_log_of(workdir, i)}; "
                      f"killed it and stopped the others", file=sys.stderr)
                return EXIT_SILENT, i
            time.sleep(POLL_S)
    except KeyboardInterrupt:
        stop(procs, signal.SIGINT)  # each process ends the round in progress, checkpointed, and says "interrupted"
        raise
    except cli.Terminated:
        stop(procs)  # SIGTERM: each process ends the round in progress, checkpointed
        raise
    finally:
        for f in logs:
            f.close()


def _log_of(workdir: Path, i: int) -> str:
    return "" if i == 0 else f" (its output: {workdir / f'process-{i}.log'})"


def _stop_failed_job(procs: list[subprocess.Popen], i: int, workdir: Path) -> tuple[int, int | None]:
    """Process ``i`` was the first seen to fail: let the others end by themselves (a bad setting fails in every
    process, and process 0 prints its reason), stop the rest, say in one line which failed (not one that only
    lost it), return the exit status and the process named."""
    codes = settle(procs)
    stop(procs)
    n = len(procs)
    i = next((j for j, c in enumerate(codes) if c not in (None, 0, cli.EXIT_JOB_FAILED)), i)
    if all(c == cli.EXIT_TERMINATED for c in codes):
        print(f"fedbat_jax.launch: the job stopped on SIGTERM (all {n} processes, after the round in progress, "
              f"checkpointed); rerun the same command to resume", file=sys.stderr)
        return cli.EXIT_TERMINATED, None
    print(f"fedbat_jax.launch: process {i} of {n} {describe_exit(codes[i])}{_log_of(workdir, i)}; "
          f"stopped the others", file=sys.stderr)
    return (codes[i] if codes[i] > 0 else 128 - codes[i]), i


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv[1:])
    ours, main_args = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, None)

    def body() -> int:
        if main_args is None:
            args, rest = parser().parse_known_args(ours)
            if rest:
                raise cli.ConfigError(f"put the run's arguments after --, as in: python -m fedbat_jax.launch "
                                      f"--processes {args.processes} -- {' '.join(rest)}")
            raise cli.ConfigError(f"put the run's arguments after --: {USAGE}")
        args = parser().parse_args(ours)
        return launch(args.processes, args.devices_per_process, args.heartbeat_timeout, main_args)

    return cli.guarded("fedbat_jax.launch", body)


if __name__ == "__main__":
    sys.exit(main())
