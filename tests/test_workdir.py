"""Runs that never lie: a workdir holds one run, divergence stops it, and crashes lose nothing."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import fedbat_jax as fb
from conftest import tiny
from fedbat_jax.errors import ConfigError, DivergenceError, WorkdirError
from fedbat_jax import runner
from fedbat_jax.workdir import Workdir, read_checkpoint, restore_tree, save_checkpoint, strict_json

REPO = Path(__file__).resolve().parents[1]
RESULTS = ("round", "test_accuracy", "test_loss", "train_loss", "uplink_bits", "downlink_bits")



def results(records):
    return [{k: r[k] for k in RESULTS} for r in records]


def snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.name != ".lock"}


def strict_lines(path: Path) -> list[dict]:
    def refuse(token):
        raise ValueError(f"non-JSON token {token}")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 2-round run (checkpoints after rounds 1 and 2) and its records."""
    folder = tmp_path_factory.mktemp("finished")
    return folder, fb.run(tiny(), folder)


@pytest.fixture
def workdir(finished, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(finished[0], folder)
    return folder


@pytest.mark.parametrize("change,needle", [
    (dict(lr=0.05), "other settings (lr 0.1 -> 0.05); use a new --workdir"),
    (dict(algorithm="fedavg"), "algorithm 'fedbat' -> 'fedavg'"),
    (dict(num_clients=10), "num_clients 8 -> 10"),
    (dict(model_width=16), "model_width 0 -> 16"),
    (dict(algorithm="ef_signsgd", seed=3), "algorithm 'fedbat' -> 'ef_signsgd', seed 0 -> 3"),
    (dict(rounds=1), "has completed 2 rounds; rounds must be >= 2"),
    (dict(rounds=4), "(rounds 2 -> 4); use a new --workdir, or add --allow_change=rounds to continue"),
])
@pytest.mark.slow
def test_a_resume_with_other_settings_is_refused_and_writes_nothing(workdir, change, needle):
    before = snapshot(workdir)
    with pytest.raises(WorkdirError) as e:
        fb.run(tiny(**change), workdir)
    assert needle in str(e.value) and "\n" not in str(e.value)
    assert snapshot(workdir) == before


def test_a_run_stopped_before_its_first_checkpoint_still_owns_its_workdir(workdir, finished):
    """Killed (or out of disk) before the first checkpoint: config.json and metrics.jsonl are there, no
    checkpoint. Other settings are refused in one line naming the fields, and nothing is written; the same
    settings start the run again from round 1."""
    for name in ("checkpoint.npz", "checkpoint.prev.npz"):
        (workdir / name).unlink()
    before = snapshot(workdir)
    for change, needle in [(dict(lr=0.05), "holds a run with other settings (lr 0.1 -> 0.05); use a new --workdir"),
                           (dict(rounds=4), "(rounds 2 -> 4); use a new --workdir, or add --allow_change=rounds")]:
        with pytest.raises(WorkdirError) as e:
            fb.run(tiny(**change), workdir)
        assert needle in str(e.value) and "\n" not in str(e.value)
        assert snapshot(workdir) == before
    assert results(fb.run(tiny(), workdir)) == results(finished[1])


def test_settings_that_do_not_change_numbers_resume_freely(workdir, finished):
    records = fb.run(tiny(eval_every=2, checkpoint_every=5, client_threads=2, data_dir=""), workdir)
    assert results(records) == results(finished[1])


@pytest.mark.slow
def test_an_allowed_change_extends_the_run(workdir, finished, tmp_path):
    records = fb.run(tiny(rounds=3), workdir, allow_change=["rounds"])
    straight = fb.run(tiny(rounds=3), tmp_path / "straight")
    assert results(records) == results(straight) and results(records[:2]) == results(finished[1])
    assert json.loads((workdir / "config.json").read_text())["rounds"] == 3
    with pytest.raises(ConfigError, match="--allow_change takes rounds"):
        fb.run(tiny(lr=0.2), workdir, allow_change=["lr"])


def test_one_run_per_workdir(tmp_path):
    config = tiny()
    with Workdir(tmp_path, config):
        with pytest.raises(WorkdirError, match=f"in use by another run \\(pid {os.getpid()}\\)"):
            Workdir(tmp_path, config)
    Workdir(tmp_path, config).close()  # released on exit
    (tmp_path / ".lock").write_text("999999\n")  # left behind by a killed run: not held, so no block
    Workdir(tmp_path, config).close()


def test_a_checkpoint_stores_leaves_by_path_and_refuses_a_mismatch(tmp_path):
    tree = {"params": {"Dense_0": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}}, "step": jnp.int32(4)}
    save_checkpoint(tmp_path / "c.npz", tree, 7)
    r, arrays = read_checkpoint(tmp_path / "c.npz")
    assert r == 7 and set(arrays) == {"params/Dense_0/kernel", "params/Dense_0/bias", "step"}
    back = restore_tree(arrays, tree)
    assert jax.tree.all(jax.tree.map(lambda a, b: np.array_equal(a, b) and a.dtype == b.dtype, back, tree))
    wider = {"params": {"Dense_0": {"kernel": jnp.ones((3, 4)), "bias": jnp.zeros(4)}}, "step": jnp.int32(4)}
    with pytest.raises(WorkdirError, match=r"params/Dense_0/bias is float32\[2\], this config's is float32\[4\]"):
        restore_tree(arrays, wider)
    with pytest.raises(WorkdirError, match="it has no params/Dense_1/kernel"):
        restore_tree(arrays, {**tree, "params": {**tree["params"], "Dense_1": {"kernel": jnp.ones(1)}}})
    with pytest.raises(WorkdirError, match="it has step, which this config's state does not"):
        restore_tree(arrays, {"params": tree["params"]})
    save_checkpoint(tmp_path / "c.npz", tree, 8)  # the previous one is kept until the new one is complete
    assert read_checkpoint(tmp_path / "checkpoint.prev.npz")[0] == 7 and not list(tmp_path.glob("*.tmp"))


def test_the_machine_is_recorded_and_a_resume_on_another_is_warned_about(workdir, monkeypatch, capsys):
    """XLA:CPU's sums depend on the thread count, so a resume elsewhere is allowed, said and recorded."""
    from fedbat_jax import machine

    here = machine.fingerprint()
    history = json.loads((workdir / "machine.json").read_text())
    assert history == [dict(here, from_round=1)]
    fb.run(tiny(), workdir, log=lambda s: None)  # the same machine: no warning, nothing appended
    assert "another machine" not in capsys.readouterr().err
    assert json.loads((workdir / "machine.json").read_text()) == history

    elsewhere = dict(here, cpu_threads=here["cpu_threads"] + 1)
    monkeypatch.setattr(machine, "fingerprint", lambda: elsewhere)
    fb.run(tiny(), workdir, log=lambda s: None)
    warned = [w for w in capsys.readouterr().err.splitlines() if "another machine" in w]
    assert len(warned) == 1 and f"cpu_threads {here['cpu_threads']} -> {here['cpu_threads'] + 1}" in warned[0]
    assert "rounds after 2" in warned[0]
    assert json.loads((workdir / "machine.json").read_text()) == history + [dict(elsewhere, from_round=3)]

    (workdir / "machine.json").write_text("{not json")
    fb.run(tiny(), workdir, log=lambda s: None)  # an unreadable record is said, and the run goes on
    assert "machine.json is unreadable" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncate", "empty", "garbage"])
def test_a_corrupt_checkpoint_falls_back_to_the_previous_one(workdir, finished, damage, capsys):
    ckpt = workdir / "checkpoint.npz"
    data = ckpt.read_bytes()
    ckpt.write_bytes({"truncate": data[: len(data) // 2], "empty": b"", "garbage": os.urandom(len(data))}[damage])
    records = fb.run(tiny(), workdir, log=lambda s: None)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]
    assert results(records) == results(finished[1])  # round 2 recomputed from round 1's checkpoint
    assert any("checkpoint.npz is unreadable" in w for w in warnings)
    assert any("previous checkpoint" in w and "(round 1)" in w for w in warnings)
    assert read_checkpoint(ckpt)[0] == 2


def test_no_readable_checkpoint_is_one_line_and_keeps_the_files(workdir):
    for name in ("checkpoint.npz", "checkpoint.prev.npz"):
        (workdir / name).write_bytes(b"PK\x03\x04 not really")
    before = snapshot(workdir)
    with pytest.raises(WorkdirError, match="no readable checkpoint"):
        fb.run(tiny(), workdir)
    assert snapshot(workdir) == before


@pytest.mark.slow
def test_a_truncated_last_metrics_line_is_dropped_with_a_warning_on_stderr(workdir, finished, capsys):
    # A crash while writing round 2's line: round 1 is the last checkpoint.
    os.replace(workdir / "checkpoint.prev.npz", workdir / "checkpoint.npz")
    metrics = workdir / "metrics.jsonl"
    text = metrics.read_text()
    metrics.write_text(text[: len(text) - 40])
    lines = []
    records = fb.run(tiny(), workdir, log=lines.append)
    err = capsys.readouterr().err
    assert "warning: " in err and "dropped an unreadable last line" in err
    assert not any("warning" in line for line in lines)  # the log (the CLI's stdout) holds the run's lines only
    assert results(records) == results(finished[1]) == results(strict_lines(metrics))


@pytest.mark.slow
def test_rounds_the_checkpoint_covers_but_the_metrics_lack_are_recomputed_never_dropped(workdir, finished, capsys):
    """Round 2's line cut short while round 2 is the checkpoint: the run resumes from round 1's checkpoint and
    recomputes round 2; with metrics.jsonl deleted nothing covers round 1, which is refused in one line."""
    metrics = workdir / "metrics.jsonl"
    text = metrics.read_text()
    metrics.write_text(text[: len(text) - 40])
    records = fb.run(tiny(), workdir, log=lambda s: None)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]
    assert any("lacks round(s) 2 of the checkpoint's 2" in w and "(round 1)" in w for w in warnings)
    assert results(records) == results(finished[1]) == results(strict_lines(metrics))
    metrics.unlink()
    before = snapshot(workdir)
    with pytest.raises(WorkdirError, match=r"lacks round\(s\) 1-2 of the checkpoint's 2, and no earlier checkpoint"):
        fb.run(tiny(), workdir)
    assert snapshot(workdir) == before


def test_a_foreign_metrics_line_is_refused_naming_it_and_nothing_changes(workdir):
    """Issue 41's case: a line of another run (round 1, other numbers) appended to a finished run's metrics, then
    a resume that extends it. Before, the foreign line silently replaced the run's own round 1 on disk."""
    metrics = workdir / "metrics.jsonl"
    own = strict_lines(metrics)
    foreign = dict(own[0], algorithm="fedavg", train_loss=0.123, test_accuracy=0.5)
    with metrics.open("a") as f:
        f.write(json.dumps(foreign) + "\n")
    before = snapshot(workdir)
    with pytest.raises(WorkdirError, match=r"metrics.jsonl lines 1 and 3 both hold round 1, with other values: one "
                                           r"of them is not this run's; remove it \(nothing was changed\)"):
        fb.run(tiny(rounds=3), workdir, allow_change=["rounds"])
    assert snapshot(workdir) == before


def test_a_metrics_line_unlike_the_checkpoints_record_of_its_round_is_refused(workdir):
    """The checkpoint keeps its round's metrics line: a line replaced in place (no duplicate to see) is found."""
    metrics = workdir / "metrics.jsonl"
    lines = strict_lines(metrics)
    lines[-1]["train_loss"] = 0.5  # round 2, the checkpoint's
    metrics.write_text("".join(json.dumps(r) + "\n" for r in lines))
    before = snapshot(workdir)
    with pytest.raises(WorkdirError, match=r"metrics.jsonl line 2 \(round 2\) is not the record checkpoint.npz holds"):
        fb.run(tiny(rounds=3), workdir, allow_change=["rounds"])
    assert snapshot(workdir) == before


def test_lines_after_the_checkpoint_leave_metrics_jsonl_with_a_copy(workdir, finished, capsys):
    """Round 2's line is past round 1's checkpoint: the resume recomputes it and keeps the old line aside."""
    os.replace(workdir / "checkpoint.prev.npz", workdir / "checkpoint.npz")
    round2 = strict_lines(workdir / "metrics.jsonl")[1]
    records = fb.run(tiny(), workdir, log=lambda s: None)
    assert "1 metrics line(s) after the checkpoint's round 1 will be recomputed" in capsys.readouterr().err
    assert strict_lines(workdir / "metrics.dropped.jsonl") == [round2]
    assert results(records) == results(finished[1]) == results(strict_lines(workdir / "metrics.jsonl"))


@pytest.mark.parametrize("damage", ["utf8", "config_list", "config_str", "checkpoint_folder"])
def test_malformed_files_are_one_line(workdir, damage):
    if damage == "utf8":
        lines = (workdir / "metrics.jsonl").read_bytes().splitlines()
        (workdir / "metrics.jsonl").write_bytes(b"\xff\xfe garbage\n" + b"\n".join(lines) + b"\n")
        needle = "line 1 is not a metrics record"
    elif damage.startswith("config"):
        (workdir / "config.json").write_text("[]" if damage == "config_list" else '"hello"')
        needle = "holds a JSON (list|str), not the run's settings"
    else:
        os.replace(workdir / "checkpoint.npz", workdir / "moved.npz")
        (workdir / "checkpoint.npz").mkdir()
        needle = "checkpoint.npz is a folder, not a checkpoint"
    with pytest.raises(WorkdirError, match=needle) as e:
        fb.run(tiny(), workdir)
    assert "\n" not in str(e.value)


@pytest.mark.slow
def test_divergence_stops_the_run_and_keeps_the_last_good_checkpoint(workdir, finished, monkeypatch):
    good = (workdir / "checkpoint.npz").read_bytes()
    plain_build = runner._build

    def poisoned(config, ds):  # the global model turns non-finite in round 3
        exp = plain_build(config, ds)

        def run_round(server, r):
            server, m = exp.run_round(server, r)
            if r == 3:
                server = server._replace(params=jax.tree.map(lambda x: x * jnp.nan, server.params))
            return server, m

        return exp._replace(run_round=run_round)

    monkeypatch.setattr(runner, "_build", poisoned)
    with pytest.raises(DivergenceError, match=r"round 3 diverged \(global model non-finite\).*checkpoint \(round 2\) "
                                              "is kept") as e:
        fb.run(tiny(rounds=4), workdir, allow_change=["rounds"])
    assert e.value.round == 3 and results(e.value.records) == results(finished[1])
    assert (workdir / "checkpoint.npz").read_bytes() == good
    assert results(strict_lines(workdir / "metrics.jsonl")) == results(finished[1])  # round 3 not written


def test_non_finite_values_are_written_as_null():
    line = strict_json({"round": 1, "test_loss": float("inf"), "train_loss": float("nan"), "test_accuracy": 0.5})
    assert json.loads(line) == {"round": 1, "test_loss": None, "train_loss": None, "test_accuracy": 0.5}


def test_the_python_config_refuses_unknown_fields_and_run_validates_like_the_cli(tmp_path):
    c = fb.default_config()
    with pytest.raises(AttributeError, match="lrr"):
        c.lrr = 0.001
    with pytest.raises(KeyError, match="nonexistent"):
        c.update(nonexistent=1)
    loose = ml_collections.ConfigDict({**tiny().to_dict(), "lrr": 0.001})
    with pytest.raises(ConfigError, match="unknown config field 'lrr'; did you mean 'lr'"):
        fb.run(loose, tmp_path / "w")
    for bad in (dict(lr=float("inf")), dict(rho=float("nan")), dict(alpha_max=float("inf")), dict(partition_seed=-5)):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            fb.run(tiny(**bad), tmp_path / "w")
    assert not (tmp_path / "w").exists()  # refused before the workdir (or the data) was touched


@pytest.mark.slow
def test_sigkill_mid_round_then_resume_equals_an_uninterrupted_run(tmp_path, xla_cache_env):
    """A real crash: SIGKILL while round 3 of 4 trains, then the same command again."""
    args = [sys.executable, "-m", "fedbat_jax.main", "--config=experiments/configs/mnist5k.py", "--progress=false",
            "--config.num_clients=6", "--config.clients_per_round=2", "--config.rounds=4", "--config.local_epochs=1",
            "--config.checkpoint_every=1", "--config.client_threads=1"]
    env = {**os.environ, **xla_cache_env, "PYTHONPATH": str(REPO)}
    killed = tmp_path / "killed"
    proc = subprocess.Popen([*args, f"--workdir={killed}"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        metrics = killed / "metrics.jsonl"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)  # round 3 is training (or round 2 is being checkpointed)
    assert proc.wait() == -signal.SIGKILL
    assert len((killed / "metrics.jsonl").read_text().splitlines()) < 4
    for folder in (killed, tmp_path / "straight"):  # resume; and the same run uninterrupted
        done = subprocess.run([*args, f"--workdir={folder}"], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
    assert results(strict_lines(killed / "metrics.jsonl")) == results(strict_lines(tmp_path / "straight" /
                                                                                     "metrics.jsonl"))
    assert [r["round"] for r in strict_lines(killed / "metrics.jsonl")] == [1, 2, 3, 4]


@pytest.mark.slow
@pytest.mark.parametrize("sig,status,words", [(signal.SIGTERM, 143, "terminated (SIGTERM)"),
                                              (signal.SIGINT, 130, "interrupted")])
def test_sigterm_and_sigint_of_a_real_run_are_one_line_and_resume(tmp_path, xla_cache_env, sig, status, words):
    """The signal a scheduler (SIGTERM) or Ctrl-C (SIGINT) sends mid-run: its own exit status and one line;
    the checkpoint kept; the same command finishes the run. The run starts with SIGINT ignored, as a script's
    `cmd &` starts it (and as pytest's workers are, when pytest itself runs in the background)."""
    args = [sys.executable, "-m", "fedbat_jax.main", "--config=experiments/configs/mnist5k.py", "--progress=false",
            "--config.model=logreg", "--config.rounds=40", "--config.local_epochs=1", "--config.checkpoint_every=1",
            f"--workdir={tmp_path / 'w'}"]
    env = {**os.environ, **xla_cache_env, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    metrics = tmp_path / "w" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not (metrics.exists() and
                                                                  len(metrics.read_text().splitlines()) >= 2):
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read()[-2000:]
    proc.send_signal(sig)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == status, err[-2000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and words in lines[0] and "rerun the same command to resume" in lines[0], err
    r, _ = read_checkpoint(tmp_path / "w" / "checkpoint.npz")
    assert 1 <= r < 40
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [rec["round"] for rec in strict_lines(metrics)] == list(range(1, 41))


def read_scalars(folder: Path) -> dict:
    """``{tag: [(step, value)]}`` from the TensorBoard event files in ``folder`` (TFRecord framing)."""
    import struct

    from tensorboardX.proto import event_pb2

    out = {}
    for file in sorted(folder.glob("events.out.tfevents.*")):
        data, i = file.read_bytes(), 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            event = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
            i += 12 + n + 4
            for v in event.summary.value:
                out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out


@pytest.mark.slow
def test_tensorboard_scalars_are_the_metrics(tmp_path):
    records = fb.run(tiny(tensorboard=True), tmp_path)
    scalars = read_scalars(tmp_path)
    assert [s for s, _ in scalars["train_loss"]] == [1, 2]
    np.testing.assert_allclose([v for _, v in scalars["train_loss"]], [r["train_loss"] for r in records], rtol=1e-6)
    assert {"test_accuracy", "uplink_bits", "round_seconds"} <= set(scalars)
    with pytest.raises(ConfigError, match="needs|workdir"):
        fb.run(tiny(tensorboard=True))


@pytest.mark.slow
def test_tensorboard_turned_on_later_shows_every_round_once(tmp_path):
    """Rounds 1-2 without TensorBoard, then 3-4 with it: the events hold rounds 1-4 once each, flushed as they
    are written (a crash cannot lose them in a buffer); a further resume rewrites them from metrics.jsonl."""
    fb.run(tiny(), tmp_path)
    fb.run(tiny(rounds=4, tensorboard=True), tmp_path, allow_change=["rounds"])
    records = strict_lines(tmp_path / "metrics.jsonl")
    scalars = read_scalars(tmp_path)
    assert [s for s, _ in scalars["train_loss"]] == [1, 2, 3, 4]
    np.testing.assert_allclose([v for _, v in scalars["train_loss"]], [r["train_loss"] for r in records], rtol=1e-6)
    fb.run(tiny(rounds=4, tensorboard=True), tmp_path)  # already complete: nothing runs, events rewritten once
    assert [s for s, _ in read_scalars(tmp_path)["train_loss"]] == [1, 2, 3, 4]


def test_a_checkpoint_and_config_of_older_names_still_resume(tmp_path):
    """Renamed since they were written: ServerState.client_states and then compressor_states (now
    client_table.compressor), lane_loop=host (now python) and the execution setting (now backend)."""
    import jax.numpy as jnp

    from fedbat_jax.federated import ClientRow, ServerState
    from fedbat_jax.workdir import read_checkpoint, restore_tree, result_changes, save_checkpoint

    like = ServerState({"w": jnp.zeros(2)}, {}, ClientRow({"w": jnp.zeros((3, 2))}, ()), ())
    for name in ("client_states", "compressor_states"):
        old = {"params": {"w": np.ones(2, np.float32)}, name: {"w": np.full((3, 2), 5.0, np.float32)}}
        save_checkpoint(tmp_path / "checkpoint.npz", old, 4)
        r, arrays = read_checkpoint(tmp_path / "checkpoint.npz")
        got = restore_tree(arrays, like)
        assert r == 4 and got.client_table.compressor["w"].tolist() == [[5.0, 5.0]] * 3
    new = tiny(lane_loop="python").to_dict()
    assert result_changes({**new, "lane_loop": "host"}, new) == {}
    changed = result_changes({**new, "lane_loop": "host"}, {**new, "lane_loop": "scan"})
    assert changed == {"lane_loop": ("python", "scan")}
    # the execution setting, now called backend: an old config.json's value is the backend's
    old = {("execution" if k == "backend" else k): v for k, v in new.items()}
    assert result_changes({**old, "execution": "auto"}, new) == {}
    assert result_changes({**old, "execution": "fused"}, new) == {"backend": ("fused", "auto")}


@pytest.mark.slow
def test_a_model_that_explodes_without_a_nan_is_a_divergence_naming_server_lr(tmp_path):
    """adam at server_lr=1e30 leaves finite weights near 1e30 whose test loss is not finite: that round is
    the divergence (not written, not checkpointed), and the message names the server's step, not lr."""
    with pytest.raises(DivergenceError, match=r"round 1 diverged \(test loss .* of a finite model\); no checkpoint "
                                              r"was written before it; try a smaller server_lr") as e:
        fb.run(tiny(server_optimizer="adam", server_lr=1e30, rounds=2), tmp_path / "w")
    assert e.value.round == 1 and e.value.records == []
    assert not (tmp_path / "w" / "checkpoint.npz").exists()
    assert (tmp_path / "w" / "metrics.jsonl").read_text() == ""


@pytest.mark.slow
def test_a_full_disk_while_checkpointing_is_one_line_and_leaves_no_temporary_file(workdir, finished, monkeypatch):
    import errno

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full)
    before = (workdir / "checkpoint.npz").read_bytes()
    with pytest.raises(WorkdirError, match=r"cannot write .*checkpoint.npz: No space left on device; [0-9.]+ MB free"):
        fb.run(tiny(rounds=3), workdir, allow_change=["rounds"])
    assert not list(workdir.glob("*.tmp")) and (workdir / "checkpoint.npz").read_bytes() == before


@pytest.fixture
def small_tmpfs(tmp_path):
    """A real 48 KB file system (a tmpfs), where this machine lets the tests mount one."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs is not allowed here (the injected-OSError test covers the same code)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@pytest.mark.slow
def test_a_real_full_disk_at_start_and_at_a_checkpoint_is_one_line(small_tmpfs, tmp_path):
    """A full disk when the run starts (nothing but the lock and config.json written) and when the second
    checkpoint does not fit: one line naming the file and the free space, no temporary file, the first
    checkpoint intact; with space again the run resumes and equals an uninterrupted one."""
    filler = small_tmpfs / "filler"
    with open(filler, "wb", buffering=0) as f, contextlib.suppress(OSError):  # fill it to the last byte
        while True:
            f.write(b"x" * 4096)
    with pytest.raises(WorkdirError, match=r"cannot write .*: No space left on device; [0-9.]+ KB free"):
        fb.run(tiny(model="logreg", rounds=3), small_tmpfs / "w")
    assert not list(small_tmpfs.rglob("*.tmp")) and not (small_tmpfs / "w").exists()  # not even its .lock
    filler.unlink()

    cfg = tiny(model="logreg", rounds=3)  # a 31 KB checkpoint: the first fits in 48 KB, a second beside it not
    with pytest.raises(WorkdirError, match=r"cannot write .*checkpoint.npz: No space left on device; [0-9.]+ KB free"):
        fb.run(cfg, small_tmpfs / "w")
    assert not list(small_tmpfs.rglob("*.tmp"))
    r, _ = read_checkpoint(small_tmpfs / "w" / "checkpoint.npz")
    assert r == 1
    shutil.copytree(small_tmpfs / "w", tmp_path / "moved")  # space again: the same run, elsewhere
    resumed, straight = fb.run(cfg, tmp_path / "moved"), fb.run(cfg, tmp_path / "straight")
    assert results(resumed) == results(straight)


@pytest.mark.slow
def test_a_read_only_file_system_names_the_lock_not_the_folder(small_tmpfs):
    """An existing run on a file system mounted read-only: the folder is there, its lock cannot be opened."""
    fb.run(tiny(model="logreg", rounds=1), small_tmpfs / "w")
    if subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], capture_output=True).returncode != 0:
        pytest.skip("remounting read-only is not allowed here")
    with pytest.raises(WorkdirError) as e:
        fb.run(tiny(model="logreg", rounds=1), small_tmpfs / "w")
    assert str(e.value) == f"cannot open {small_tmpfs / 'w' / '.lock'} (the workdir's lock): Read-only file system"


def test_a_run_refused_after_opening_a_new_workdir_leaves_nothing(tmp_path):
    """Missing data is found only after the workdir is opened: the folder this run created goes again."""
    with pytest.raises(fb.DataError):
        fb.run(tiny(dataset="fashion_mnist", data_dir=str(tmp_path / "nowhere")), tmp_path / "w")
    assert not (tmp_path / "w").exists()
    (tmp_path / "mine").mkdir()  # a folder of the user's: it stays, the lock this run added goes
    with pytest.raises(fb.DataError):
        fb.run(tiny(dataset="fashion_mnist", data_dir=str(tmp_path / "nowhere")), tmp_path / "mine")
    assert (tmp_path / "mine").is_dir() and not list((tmp_path / "mine").iterdir())
    with pytest.raises(ConfigError, match="allow_change applies to resuming a run in a workdir"):
        fb.run(tiny(), allow_change=["bogus"])


def test_sigterm_is_one_line_and_exit_143(capsys):
    import signal

    from fedbat_jax import cli

    def body():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
        return 0

    assert cli.guarded("fedbat_jax", body) == 143
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "terminated (SIGTERM); rerun the same command to resume" in err


def test_an_interrupt_inside_the_checkpoint_swap_never_leaves_the_run_without_checkpoint_npz(tmp_path, monkeypatch):
    """Ctrl-C may land between keeping the old checkpoint as checkpoint.prev.npz and renaming the new one into
    place: checkpoint.npz must exist at every instant (a real SIGINT found the old two-rename window)."""
    path = tmp_path / "checkpoint.npz"
    save_checkpoint(path, {"w": np.zeros(2)}, 1)
    real = os.replace

    def interrupted(src, dst):
        if str(src).endswith("checkpoint.npz.tmp"):  # the new checkpoint's own rename
            raise KeyboardInterrupt
        return real(src, dst)

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"w": np.ones(2)}, 2)
    monkeypatch.setattr(os, "replace", real)
    assert read_checkpoint(path)[0] == 1 and read_checkpoint(tmp_path / "checkpoint.prev.npz")[0] == 1
    save_checkpoint(path, {"w": np.ones(2)}, 2)
    assert read_checkpoint(path)[0] == 2 and read_checkpoint(tmp_path / "checkpoint.prev.npz")[0] == 1
