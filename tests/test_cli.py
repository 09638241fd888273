"""The command line: a tiny run end to end, and one clear line + exit 2 for every kind of bad input."""
from __future__ import annotations

import json
import shutil

import pytest

from fedbat_jax.main import main

TINY = ["--config.num_clients=4", "--config.clients_per_round=2", "--config.rounds=1", "--config.local_epochs=1",
        "--config.batch_size=128", "--progress=false"]


def run_cli(capsys, *args):
    code = main(["fedbat_jax.main", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_tiny_run_writes_metrics(tmp_path, capsys):
    code, out, err = run_cli(capsys, f"--workdir={tmp_path}", "--config=experiments/configs/mnist5k.py", *TINY)
    assert code == 0, err
    rec = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert {"round", "test_accuracy", "test_loss", "train_loss", "uplink_bits", "downlink_bits",
            "round_seconds"} <= set(rec)
    assert "clients, samples per client" in out  # the one-line partition summary


@pytest.mark.parametrize("override,needle", [
    ("--config.algorithm=fedsgd", "unknown algorithm"),
    ("--config.dataset=imagenet", "unknown dataset"),
    ("--config.model=vgg", "unknown model"),
    ("--config.partition=pathological", "unknown partition"),
    ("--config.clients_per_round=200", "clients_per_round"),
    ("--config.rounds=0", "rounds must be a positive integer"),
    ("--config.batch_size=-64", "batch_size must be a positive integer"),
    ("--config.local_epochs=0", "local_epochs"),
    ("--config.lr=0", "lr must be > 0"),
    ("--config.lr=-0.1", "lr must be > 0"),
    ("--config.dirichlet_beta=0", "dirichlet_beta must be > 0"),
    ("--config.labels_per_client=0", "labels_per_client"),
    ("--config.labels_per_client=11", "labels_per_client"),
    ("--config.phi=1.5", "phi must be in [0, 1]"),
    ("--config.phi=-0.1", "phi must be in [0, 1]"),
    ("--config.alpha_min=0.1", "alpha_min"),
    ("--config.bits=3", "bits must be one of 1, 2, 4, 8"),
    ("--config.lane_loop=vectorised", "unknown lane_loop"),
    ("--config.lane_loop=host", "lane_loop=host is now called lane_loop=python"),
    ("--config.execution=fused", "config field 'execution' is now called 'backend'"),
    ("--config.padded_group=-1", "padded_group must be >= 0"),
    ("--config.error_feedback=ef3", "unknown error_feedback 'ef3'"),
    ("--config.num_devices=64", "num_devices (64) exceeds"),
    ("--config.num_devices=-1", "num_devices must be >= 0"),
    ("--config.num_processes=2", "num_processes=2 needs coordinator_address"),
    ("--config.num_processes=0", "num_processes must be >= 1"),
    ("--config.process_id=1", "process_id must be in [0, num_processes = 1)"),
    ("--config.coordinator_address=localhost", "coordinator_address must be '', auto or HOST:PORT"),
    ("--config.coordinator_address=host:99999", "coordinator_address must be '', auto or HOST:PORT"),
    ("--config.lr=inf", "lr must be a finite number"),
    ("--config.rho=nan", "rho must be a finite number"),
    ("--config.alpha_max=inf", "alpha_max must be a finite number"),
    ("--config.partition_seed=-5", "partition_seed must be in [0, 2**32)"),
    ("--allow_change=lr", "--allow_change takes rounds"),
    ("--config.lr_schedule=step", "unknown lr_schedule 'step'"),
    ("--config.compressor=nope", "unknown compressor 'nope'; choose one of: auto, "),
    ("--config.algorithm=signsgd --config.compressor=topk", "algorithm=signsgd is fedavg with compressor=scaled_sign"),
    ("--config.algorithm=fedavg --config.compressor=topk --config.topk_fraction=2", "topk_fraction must be in (0, 1]"),
    ("--config.algorithm=fedprox --config.prox_mu=-1", "prox_mu must be >= 0"),
    ("--config.backend=nope", "unknown backend 'nope'; choose one of: auto, debug, fused, host, padded"),
    ("--config.dataset=fashon_mnist",
     "cifar100, cifar100_fed, fashion_mnist, femnist, mnist, mnist5k, shakespeare, svhn; did you mean "
     "'fashion_mnist'?"),
    ("--config.prox_mu=fast", "--config.prox_mu: could not convert 'fast' to float"),
    ("--config.server_optimizer=sgdm", "unknown server_optimizer 'sgdm'"),
    ("--config.alpha_rule=min", "unknown alpha_rule 'min'"),
    ("--config.alpha_bounds=scaled", "unknown alpha_bounds 'scaled'"),
    ("--config.momentum=1.0", "momentum must be in [0, 1)"),
    ("--config.server_b2=1.0", "server_b2 must be in [0, 1)"),
    ("--config.weight_decay=-0.1", "weight_decay must be >= 0"),
    ("--config.lr_gamma=0", "lr_gamma must be > 0"),
    ("--config.server_lr=nan", "server_lr must be a finite number"),
    ("--config.no_such_field=1", "unknown config field 'no_such_field'"),
    ("--config.lrr=0.001", "unknown config field 'lrr'; did you mean 'lr'?"),
    ("--config.lr=fast", "could not convert"),
    ("--config=experiments/configs/nope.py", "nope.py"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, override, needle):
    code, out, err = run_cli(capsys, f"--workdir={tmp_path}", *override.split())
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err, err
    assert not (tmp_path / "metrics.jsonl").exists()


def test_missing_workdir(capsys):
    code, _, err = run_cli(capsys, "--config.rounds=1")
    assert code == 2 and "--workdir is required" in err


def test_missing_data_dir(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("FEDBAT_DATA_DIR", raising=False)
    code, _, err = run_cli(capsys, f"--workdir={tmp_path}", "--config.dataset=fashion_mnist",
                           f"--config.data_dir={tmp_path / 'nowhere'}")
    assert code == 2 and "nowhere" in err and len(err.strip().splitlines()) == 1


def test_corrupt_data_file(tmp_path, capsys, shared_data):
    data = tmp_path / "data" / "fashion_mnist"
    shutil.copytree(shared_data / "fashion_mnist", data)
    victim = data / "t10k-labels-idx1-ubyte.gz"
    victim.write_bytes(victim.read_bytes()[:-100])  # truncated download
    code, _, err = run_cli(capsys, f"--workdir={tmp_path / 'w'}", "--config.dataset=fashion_mnist",
                           f"--config.data_dir={tmp_path / 'data'}")
    assert code == 2 and "t10k-labels-idx1-ubyte.gz" in err and len(err.strip().splitlines()) == 1


def test_help_lists_every_setting_with_its_default(capsys):
    from fedbat_jax.config import SETTINGS

    code, out, _ = run_cli(capsys, "--help")
    assert code == 0 and "--workdir=DIR" in out and "--allow_change" in out
    for name, default, *_ in SETTINGS:
        assert f"--config.{name}={default}" in out


@pytest.mark.parametrize("kind", ["a file", "not creatable"])
def test_unusable_workdir_is_one_line_before_data_loads(tmp_path, capsys, kind):
    target = tmp_path / "file"
    target.write_text("keep me")
    workdir = target if kind == "a file" else target / "sub"
    code, _, err = run_cli(capsys, f"--workdir={workdir}", "--config.dataset=fashion_mnist",
                           f"--config.data_dir={tmp_path / 'nowhere'}")  # data would fail: the workdir fails first
    assert code == 2 and len(err.strip().splitlines()) == 1 and str(workdir) in err and "nowhere" not in err
    assert target.read_text() == "keep me"


@pytest.mark.slow
def test_divergence_is_one_line_exit_3_and_strict_json(tmp_path, capsys):
    args = [a for a in TINY if "rounds" not in a]
    code, _, err = run_cli(capsys, f"--workdir={tmp_path}", "--config=experiments/configs/mnist5k.py", *args,
                           "--config.rounds=3", "--config.lr=1000", "--config.checkpoint_every=1")
    lines = err.strip().splitlines()
    assert code == 3 and len(lines) == 1 and "diverged" in lines[0] and "Traceback" not in err, err
    bad = int(lines[0].split("round ")[1].split()[0])

    def refuse(token):
        raise ValueError(token)

    records = [json.loads(x, parse_constant=refuse) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == list(range(1, bad))  # the diverged round is not written


def test_a_stop_says_whether_a_rerun_resumes(capsys):
    from fedbat_jax import cli
    from fedbat_jax.errors import Terminated

    def stopped():
        raise Terminated()

    assert cli.guarded("run", stopped) == 143
    assert "resume from the last checkpoint" in capsys.readouterr().err
    assert cli.guarded("ste_check", stopped, resumes=False) == 143
    err = capsys.readouterr().err
    assert "start over" in err and "resume" not in err
