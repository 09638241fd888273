"""Every experiment config loads and validates, with the paper's parameters (REFERENCE.md section 3)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fedbat_jax.config import PAPER_SETTINGS, REDUCED, load_config, paper_config, validate
from fedbat_jax.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]

PARTITIONS = ("iid", "dirichlet", "label_count")
# dataset: (model, rounds, Dirichlet beta, classes per client in label-count)
PAPER = {"fashion_mnist": ("cnn4", 100, 0.3, 3), "svhn": ("cnn4", 100, 0.3, 3),
         "cifar10": ("resnet10", 200, 0.3, 3), "cifar100": ("resnet10", 200, 0.1, 10)}


@pytest.mark.parametrize("dataset", sorted(PAPER))
@pytest.mark.parametrize("partition", PARTITIONS)
def test_paper_setting(dataset, partition):
    c = load_config(f"{ROOT / 'experiments' / 'configs' / dataset}.py:{partition}")
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
    for field, value in REDUCED.items():
        assert small[field] == value
    same = ("dataset", "model", "partition", "dirichlet_beta", "labels_per_client", "batch_size", "lr", "rho", "phi")
    assert all(small[f] == full[f] for f in same)
    assert small.model_width == (16 if full.model == "resnet10" else 0)


def test_bad_argument_is_one_line():
    with pytest.raises(ConfigError, match="PARTITION"):
        paper_config("cifar10", "dirichlett")
    assert set(PAPER_SETTINGS) == set(PAPER)


def test_cli_rejects_a_bad_config_argument(tmp_path):
    out = subprocess.run([sys.executable, "-m", "fedbat_jax.main", "--config=experiments/configs/cifar10.py:iid,tiny",
                          f"--workdir={tmp_path}"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "PARTITION[,reduced]" in out.stderr


def test_script_overrides_use_the_cli_syntax_and_refuse_bad_input(tmp_path):
    from fedbat_jax.config import apply_overrides, default_config

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
