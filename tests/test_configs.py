"""Every experiment config loads and validates, with the paper's parameters (REFERENCE.md section 3)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fedbat_jax.cli import load_config
from fedbat_jax.config import default_config, validate
from fedbat_jax.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
PAPER_CONFIG = ROOT / "experiments" / "configs" / "paper.py"


def paper_config(dataset: str, arg: str = ""):
    return load_config(f"{PAPER_CONFIG}:{dataset}" + (f":{arg}" if arg else ""))

PARTITIONS = ("iid", "dirichlet", "label_count")
# dataset: (model, rounds, Dirichlet beta, classes per client in label-count)
PAPER = {"fashion_mnist": ("cnn4", 100, 0.3, 3), "svhn": ("cnn4", 100, 0.3, 3),
         "cifar10": ("resnet10", 200, 0.3, 3), "cifar100": ("resnet10", 200, 0.1, 10)}


@pytest.mark.parametrize("dataset", sorted(PAPER))
@pytest.mark.parametrize("partition", PARTITIONS)
def test_paper_setting(dataset, partition):
    c = paper_config(dataset, partition)
    validate(c)
    model, rounds, beta, labels = PAPER[dataset]
    assert (c.dataset, c.model, c.rounds, c.partition) == (dataset, model, rounds, partition)
    assert (c.dirichlet_beta, c.labels_per_client, c.partition_seed) == (beta, labels, 1234)
    assert (c.num_clients, c.clients_per_round, c.local_epochs, c.batch_size, c.lr) == (100, 10, 10, 64, 0.1)
    assert (c.rho, c.phi, c.model_width, c.augment) == (6.0, 0.5, 0, "auto")


@pytest.mark.parametrize("dataset", sorted(PAPER))
def test_reduced_variant_keeps_the_setting_and_shrinks_the_federation(dataset):
    full, small = paper_config(dataset, "label_count"), paper_config(dataset, "label_count,reduced")
    validate(small)
    reduced = dict(num_clients=20, clients_per_round=5, local_epochs=2, rounds=20)
    assert {field: small[field] for field in reduced} == reduced
    same = ("dataset", "model", "partition", "dirichlet_beta", "labels_per_client", "batch_size", "lr", "rho", "phi")
    assert all(small[f] == full[f] for f in same)
    assert small.model_width == (16 if full.model == "resnet10" else 0)


def test_bad_argument_is_one_line():
    with pytest.raises(ConfigError, match="PARTITION"):
        paper_config("cifar10", "dirichlett")
    with pytest.raises(ConfigError, match="DATASET one of: fashion_mnist, svhn, cifar10, cifar100"):
        load_config(f"{PAPER_CONFIG}:mnist")


@pytest.mark.parametrize("args,needle", [
    (["--config=experiments/configs/paper.py:cifar10:iid,tiny"], "PARTITION[,reduced]"),
    (["experiments/configs/mnist5k.py"], "unrecognized arguments: experiments/configs/mnist5k.py"),
    (["--config=experiments/configs/mnist5k.py:iid:x"], "unknown partition 'iid:x'"),
    (["--config=CONFIG:42"], "must return a config"),
    (["--config=CONFIG:dict"], "must return a config"),
    (["--config=CONFIG:raise"], "get_config() raised RuntimeError: no such setting"),
    (["--config=experiments/configs/convergence.py", "--bogus"], "unrecognized arguments: --bogus"),
])
@pytest.mark.slow
def test_cli_rejects_bad_arguments_and_configs_in_one_line(tmp_path, args, needle):
    config = tmp_path / "config.py"
    config.write_text("def get_config(arg=''):\n    if arg == 'raise':\n        raise RuntimeError('no such setting')\n"
                      "    return {'42': 42, 'dict': {'lr': 0.1}}[arg]\n")
    args = [a.replace("CONFIG", str(config)) for a in args]
    out = subprocess.run([sys.executable, "-m", "fedbat_jax.main", *args, f"--workdir={tmp_path / 'w'}"], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1 and needle in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert not (tmp_path / "w").exists()


def test_script_overrides_use_the_cli_syntax_and_refuse_bad_input(tmp_path):
    from fedbat_jax.cli import apply_overrides
    from fedbat_jax.config import default_config

    c = default_config()
    rest = apply_overrides(c, ["--config.lr=0.05", "--config.tensorboard=true", "--rounds", "3"])
    assert (c.lr, c.tensorboard, rest) == (0.05, True, ["--rounds", "3"])
    for bad, needle in (("--config.lrr=1", "unknown config field 'lrr'; did you mean 'lr'?"),
                        ("--config.lr=fast", "could not convert 'fast' to float"),
                        ("--config.tensorboard=maybe", "could not convert 'maybe' to bool"),
                        ("--config.lr", "give a value")):
        with pytest.raises(ConfigError) as e:
            apply_overrides(default_config(), [bad])
        assert needle in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "nope.py"))


@pytest.mark.parametrize("algorithm,kind,words", [("fedavg", "ef", "sends every value exactly"),
                                                  ("ef_signsgd", "ef21", "use algorithm=signsgd"),
                                                  ("fedbat", "ef3", "unknown error_feedback")])
def test_error_feedback_is_refused_where_it_does_not_apply(algorithm, kind, words):
    from fedbat_jax.config import default_config
    from fedbat_jax.errors import ConfigError

    c = default_config()
    c.algorithm, c.error_feedback = algorithm, kind
    with pytest.raises(ConfigError, match=words):
        validate(c)


def test_true_for_a_number_setting_is_refused_not_stored_as_one():
    c = default_config()
    for assign in (lambda: setattr(c, "lr", True), lambda: c.update(lr=False), lambda: c.__setitem__("rho", True)):
        with pytest.raises(ConfigError, match="must be a number"):
            assign()
    assert c.lr == 0.1 and c.rho == 6.0
    c.lr = 2  # an int for a float setting is still a number
    assert c.lr == 2.0
    c.copy_and_resolve_references().tensorboard = True  # a bool setting takes a bool, in copies too
    with pytest.raises(ConfigError):
        c.copy_and_resolve_references().lr = True
