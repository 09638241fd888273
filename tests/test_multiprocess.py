"""Multi-process runs on the CPU (gloo collectives), through ``python -m fedbat_jax.launch``: 2 processes x 2
devices give the numbers of 1 process x 4 devices and of 1 x 1; process 0 alone writes the workdir; a killed
process stops the job promptly, leaves the last checkpoint intact, and the same command resumes it exactly."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import fedbat_jax as fb
from conftest import subprocess_env, tiny
from fedbat_jax import cli
from fedbat_jax.workdir import read_checkpoint

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "experiments/configs/mnist5k.py")
# logreg keeps each process's compile and rounds short; every client trains one epoch of 400 digits
SETTINGS = ["--config.model=logreg", "--config.local_epochs=1", "--config.checkpoint_every=1"]
NUMBERS = ("train_loss", "test_loss", "test_accuracy")
ROUNDS = 8


def env(devices: int = 0) -> dict:
    """The tests' subprocess environment (XLA cache, fast compiles), with ``devices`` forced CPU devices."""
    e = dict(os.environ, PYTHONPATH=str(ROOT), **subprocess_env())
    if devices:
        e["XLA_FLAGS"] += f" --xla_force_host_platform_device_count={devices}"
    return e


def launch_command(workdir: Path, algorithm: str, rounds: int) -> list[str]:
    return [sys.executable, "-m", "fedbat_jax.launch", "--processes", "2", "--devices-per-process", "2", "--",
            f"--workdir={workdir}", f"--config={CONFIG}", f"--config.algorithm={algorithm}",
            f"--config.rounds={rounds}", "--progress=false", *SETTINGS]


def metrics(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def assert_same_numbers(a: list[dict], b: list[dict], rtol: float) -> None:
    assert [r["round"] for r in a] == [r["round"] for r in b]
    for name in NUMBERS:
        np.testing.assert_allclose([r[name] for r in a], [r[name] for r in b], rtol=rtol, err_msg=name)


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """One uninterrupted 2 x 2 launcher run per algorithm: (workdir, its process 0 output)."""
    runs = {}

    def get(algorithm: str, rounds: int = ROUNDS):
        if (algorithm, rounds) not in runs:
            w = tmp_path_factory.mktemp(f"mp-{algorithm}") / "run"
            out = subprocess.run(launch_command(w, algorithm, rounds), env=env(), capture_output=True, text=True,
                                 timeout=300)
            assert out.returncode == 0, out.stdout + out.stderr
            runs[algorithm, rounds] = (w, out.stdout)
        return runs[algorithm, rounds]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["fedbat", "ef_signsgd"])
def test_two_processes_equal_one_process(launched, tmp_path, algorithm):
    workdir, out = launched(algorithm)
    assert "devices: 4 (2 processes)" in out.splitlines()[0]
    assert (workdir / "process-1.log").is_file()
    two = metrics(workdir)
    assert [r["round"] for r in two] == list(range(1, ROUNDS + 1))  # each round written once, by process 0 alone

    four = tmp_path / "four"
    done = subprocess.run([sys.executable, "-m", "fedbat_jax.main", f"--workdir={four}", f"--config={CONFIG}",
                           f"--config.algorithm={algorithm}", f"--config.rounds={ROUNDS}", "--config.execution=fused",
                           "--progress=false", *SETTINGS], env=env(4), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "devices: 4" in done.stdout
    assert_same_numbers(two, metrics(four), rtol=1e-5)

    one = fb.run(cli.make_config(CONFIG, [f"--config.algorithm={algorithm}", f"--config.rounds={ROUNDS}", *SETTINGS]))
    assert_same_numbers(two, one, rtol=1e-4)


def _pid_of(workdir: Path, process_id: int) -> int | None:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                args = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"--workdir={workdir}".encode() in args and f"--config.process_id={process_id}".encode() in args:
                return int(entry.name)
    return None


@pytest.mark.slow
def test_killed_process_stops_the_job_and_the_same_command_resumes(launched, tmp_path):
    rounds = ROUNDS
    reference, _ = launched("fedbat")
    workdir = tmp_path / "run"
    command = launch_command(workdir, "fedbat", rounds)
    job = subprocess.Popen(command, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not ((workdir / "metrics.jsonl").exists() and len(metrics(workdir)) >= 2):
            assert job.poll() is None and time.monotonic() < deadline, "the job ended before round 2"
            time.sleep(0.05)
        victim = _pid_of(workdir, 1)
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        _, err = job.communicate(timeout=60)
    finally:
        if job.poll() is None:
            job.kill()
    assert time.monotonic() - killed < 60
    assert job.returncode != 0
    last = err.strip().splitlines()[-1]
    assert last.startswith("fedbat_jax.launch: process 1 of 2 was killed by SIGKILL"), err
    assert _pid_of(workdir, 0) is None  # process 0 was stopped too

    r, _ = read_checkpoint(workdir / "checkpoint.npz")  # intact: it reads
    assert 1 <= r < rounds

    again = subprocess.run(command, env=env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert_same_numbers(metrics(workdir), metrics(reference), rtol=1e-6)


@pytest.mark.slow
def test_launcher_bad_arguments_are_one_line(tmp_path):
    for args, expected in [(["--processes", "2"], "put the run's arguments after --"),
                           (["--processes", "0", "--", f"--workdir={tmp_path}"], "--processes must be >= 1"),
                           (["--processes", "2", "--", "--config.rounds=2"], "give the run's --workdir"),
                           (["--processes", "2", "--devices-per-process", "-1", "--", f"--workdir={tmp_path}"],
                            "--devices-per-process must be >= 0"),
                           (["--processes", "2", "--", f"--workdir={__file__}"], "is a file, not a folder")]:
        out = subprocess.run([sys.executable, "-m", "fedbat_jax.launch", *args], env=env(), capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 2
        assert out.stderr.strip().count("\n") == 0 and expected in out.stderr, out.stderr


@pytest.mark.slow
def test_a_failing_process_is_named_and_the_job_stops(tmp_path):
    """A bad setting fails in every process; the launcher reports one of them and returns its status."""
    out = subprocess.run([sys.executable, "-m", "fedbat_jax.launch", "--processes", "2", "--",
                          f"--workdir={tmp_path / 'w'}", f"--config={CONFIG}", "--config.lr=-1"],
                         env=env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "lr must be > 0" in out.stderr
    assert "fedbat_jax.launch: process" in out.stderr.strip().splitlines()[-1]


SWEEP = """
import json, sys
sys.path.insert(0, "tests")
import jax
import fedbat_jax as fb
from conftest import subprocess_env, tiny
c = tiny("fedbat", model="logreg", lr=0.02, batch_size=128)
c.coordinator_address, c.num_processes, c.process_id = sys.argv[1], 2, int(sys.argv[2])
records = fb.sweep(c, [0, 1], grid={"lr": [0.01, 0.02, 0.05, 0.1]})
runs = [[r["seed"], r["settings"]["lr"], {k: v.tolist() for k, v in r["metrics"].items()}] for r in records]
print("RESULT " + json.dumps({"devices": jax.device_count(), "processes": jax.process_count(), "runs": runs}))
"""


@pytest.mark.slow
def test_a_sweep_spans_the_devices_of_two_processes():
    """fb.sweep in a 2-process x 2-device job: 8 runs over 4 devices; every process gets every record, each
    equal to its run by make_train alone."""
    from fedbat_jax.launch import free_port

    address = f"127.0.0.1:{free_port()}"
    procs = [subprocess.Popen([sys.executable, "-c", SWEEP, address, str(i)], cwd=ROOT, env=env(2),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs[0][1][-2000:] + outs[1][1][-2000:]
    results = [json.loads(next(line[7:] for line in out.splitlines() if line.startswith("RESULT "))) for out, _ in outs]
    assert results[0] == results[1]  # every process holds every record
    assert results[0]["devices"] == 4 and results[0]["processes"] == 2
    c = tiny("fedbat", model="logreg", lr=0.02, batch_size=128)
    train = jax.jit(fb.make_train(c))
    assert [(s, lr) for s, lr, _ in results[0]["runs"]] == [(s, lr) for s in (0, 1) for lr in (0.01, 0.02, 0.05, 0.1)]
    for seed, lr, metrics in results[0]["runs"]:
        _, alone = train(jax.random.PRNGKey(seed), {"lr": lr})
        for name, values in metrics.items():
            np.testing.assert_allclose(values, np.asarray(alone[name]), rtol=1e-4, atol=1e-6, err_msg=name)
