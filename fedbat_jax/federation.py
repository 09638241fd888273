"""A federation assembled from a config and a dataset: the one step shared by the run loop and ``make_train``.

    federation = build_federation(config, load_dataset(config.dataset, config.data_dir or None))
    federation.learner    # the algorithm on this model (fedbat_jax.federated.Learner): compressor, binarized leaves
    federation.roster     # per-client constants: sizes, local steps, warm-up steps, aggregation weights
    federation.data       # the training set on the device, each client as a padded row of sample indices
    federation.variables  # the model's initial variables (seed's round-0 key)
    federation.sampling   # how a round's cohort is drawn (K of N, or Poisson in fixed slots)

``config`` has been validated by the entry point (``fedbat_jax.config.validate``); nothing here validates again.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fedbat_jax.algorithms import ALGORITHMS
from fedbat_jax.binarization import binarized_mask
from fedbat_jax.compressors import COMPRESSORS, with_error_feedback
from fedbat_jax.config import (CENTRALISED_CLIENTS, compressor_name, error_feedback_name, model_from_config,
                               partition_method)
from fedbat_jax.data import DATASETS, Dataset, partition
from fedbat_jax.data.clients import choose_clients, keep_clients, natural_parts
from fedbat_jax.errors import ConfigError
from fedbat_jax import privacy
from fedbat_jax.federated import Learner, Roster, Sampling, make_roster, round_key
from fedbat_jax.local import FederatedData, LocalConfig
from fedbat_jax.memory import Need, need
from fedbat_jax.optimizers import server_optimizer


class Federation(NamedTuple):
    learner: Learner
    roster: Roster
    data: FederatedData
    model: Any
    variables: Any  # the initial model: {"params": ..., "batch_stats": ...}
    parts: list  # each client's sample indices into the training set
    dataset: Dataset
    sampling: Sampling  # how a round's cohort is drawn


def build_federation(config: ml_collections.ConfigDict, ds: Dataset) -> Federation:
    """The federation of ``config`` on the loaded dataset ``ds`` (``config.dataset`` is not read)."""
    ds, parts = client_parts(config, ds)
    if config.clients_per_round > len(parts):
        raise ConfigError(f"clients_per_round ({config.clients_per_round}) must be <= the federation's "
                          f"{len(parts)} clients")
    model = model_from_config(config, ds.num_classes)
    variables = jax.jit(model.init)(round_key(config.seed, 0), ds.sample_input())
    roster = make_roster([len(p) for p in parts], config.local_epochs, config.batch_size, config.phi,
                         config.aggregation_weights, config.max_client_examples, config.local_steps)
    _refuse_batch_norm(config, variables)
    learner = make_learner(config, model, variables["params"], ds, roster.epochs)
    learner = learner._replace(privacy=privacy.from_config(config, len(parts)))
    return Federation(learner, roster, federated_data(ds, parts, config.batch_size), model, variables, parts, ds,
                      sampling_of(config, len(parts)))


def sampling_of(config: ml_collections.ConfigDict, num_clients: int) -> Sampling:
    """How the settings draw a round's cohort from ``num_clients``: ``clients_per_round`` of them, or each with
    probability ``clients_per_round / num_clients`` in ``poisson_slots`` places (0: the size a Binomial cohort
    exceeds with probability below ``privacy.TAIL``). With DP the weights have a fixed denominator."""
    k, dp = config.clients_per_round, privacy.enabled(config)
    if config.sampling != "poisson":
        return Sampling(k, float(k), fixed_denominator=dp)
    slots = config.poisson_slots
    if not slots:
        from scipy.stats import binom

        slots = int(binom.isf(privacy.TAIL, num_clients, k / num_clients)) + 1
    return Sampling(min(slots, num_clients), float(k), poisson=True, fixed_denominator=dp)


def memory_need(config: ml_collections.ConfigDict, federation: Federation | None = None) -> Need | None:
    """The host memory of the run loop's N-client table and the dataset (``fedbat_jax.memory``): of a built
    ``federation``, or before any data loads from the dataset loader's ``footprint`` (``None`` when it has none,
    or when the federation's clients are only known from its files: a natural one)."""
    if federation is not None:
        ds = federation.dataset
        data = sum(a.nbytes for a in (ds.x_train, ds.y_train, ds.x_test, ds.y_test))
        return need(federation.learner, federation.variables["params"], len(federation.parts), data)
    footprint = getattr(DATASETS[config.dataset], "footprint", None)
    if footprint is None or partition_method(config.partition, False) == "natural":
        return None
    model, standin, variables = _standin(config, footprint)
    data = footprint.examples * (standin.x_train.nbytes + 4)
    return need(make_learner(config, model, variables["params"], standin), variables["params"],
                config.num_clients or CENTRALISED_CLIENTS, data)


def check_before_loading(config: ml_collections.ConfigDict) -> None:
    """What the settings and the model's shapes refuse before any data loads (the dataset loader's ``footprint``
    gives the input; a natural federation's model is checked once its files are read): user-level DP on a model
    with BatchNorm."""
    footprint = getattr(DATASETS[config.dataset], "footprint", None)
    if privacy.enabled(config) and footprint is not None:  # (the model is traced for its shapes only with DP on)
        _refuse_batch_norm(config, _standin(config, footprint)[2])


def _refuse_batch_norm(config: ml_collections.ConfigDict, variables: Any) -> None:
    if privacy.enabled(config) and variables.get("batch_stats"):
        raise ConfigError(f"dp_clip: model={config.model} uploads its BatchNorm statistics outside the clipped, "
                          "noised sum; use a model without BatchNorm (logreg, vit, emnist_cnn)")


def _standin(config: ml_collections.ConfigDict, footprint) -> tuple[Any, Dataset, Any]:
    """The model, a one-example stand-in of the dataset and the model's variables' shapes, from the loader's
    ``footprint`` (no data read)."""
    example = np.zeros((1,) + footprint.example, footprint.dtype)
    channels = footprint.example[-1]
    standin = Dataset(config.dataset, example, np.zeros(1, np.int32), example, np.zeros(1, np.int32),
                      footprint.num_classes, (0.0,) * channels, (1.0,) * channels)
    model = model_from_config(config, footprint.num_classes)
    return model, standin, jax.eval_shape(model.init, round_key(config.seed, 0), standin.sample_input())


def client_parts(config: ml_collections.ConfigDict, ds: Dataset) -> tuple[Dataset, list[np.ndarray]]:
    """The clients: a natural federation's own (all, or a seeded ``num_clients`` of them, with only their
    examples kept), or ``num_clients`` cut from a centralised training set by the ``partition`` method."""
    method = partition_method(config.partition, ds.is_natural)
    if method == "natural":
        if not ds.is_natural:
            raise ConfigError(f"partition=natural needs a dataset whose examples belong to clients; {ds.name} is "
                              "centralised: use partition=iid, dirichlet or label_count")
        ds = keep_clients(ds, choose_clients(len(ds.client_ids), config.num_clients, config.partition_seed))
        return ds, natural_parts(ds.train_clients, len(ds.client_ids))
    if ds.y_train.ndim != 1:
        raise ConfigError(f"partition={method} splits by label, and {ds.name}'s targets are sequences: use "
                          "partition=natural")
    if config.labels_per_client > ds.num_classes:
        raise ConfigError(f"labels_per_client must be in [1, {ds.num_classes}] for {ds.name}, "
                          f"got {config.labels_per_client}")
    parts = partition(ds.x_train, ds.y_train, config.num_clients or CENTRALISED_CLIENTS, method,
                      seed=config.partition_seed, dirichlet_beta=config.dirichlet_beta,
                      labels_per_client=config.labels_per_client, min_size=config.min_client_size)
    # a natural dataset cut another way: its examples no longer belong to its clients
    return ds._replace(train_clients=None, test_clients=None, client_ids=(), test_client_ids=()), parts


def make_learner(config: ml_collections.ConfigDict, model, params: Any, ds: Dataset, epochs: int = 0) -> Learner:
    """The algorithm of ``config`` on this model: its compressor (with its error feedback) and the leaves it
    compresses, the leaves that train binarized, local-training settings, server optimizer, the algorithm.
    ``epochs``: the most passes over its examples a client makes in a round (0: ``local_epochs``)."""
    algorithm = ALGORITHMS[config.algorithm]
    spec = COMPRESSORS[compressor_name(config)]
    upload_mask = binarized_mask(params, spec.compresses)
    train_mask = upload_mask if spec.learned_scale else binarized_mask(params, None)
    feedback = error_feedback_name(config)
    options = {}
    if feedback == "ef21":
        options = dict(relative=config.ef21_alpha == "relative", momentum=config.ef21_momentum, cap=config.ef21_cap,
                       multiplier=config.ef21_multiplier)
    compressor = with_error_feedback(spec.make(upload_mask, params, config), feedback, upload_mask, **options)
    local = LocalConfig(lr=config.lr, batch_size=config.batch_size, rho=config.rho, alpha_min=config.alpha_min,
                        alpha_max=config.alpha_max, bits=config.bits,
                        augment=(ds.augment or "none") if config.augment == "auto" else config.augment,
                        alpha_rule=config.alpha_rule, alpha_init_scale=config.alpha_init_scale,
                        alpha_bounds=config.alpha_bounds, ste=config.ste,
                        momentum=config.momentum, weight_decay=config.weight_decay, lr_schedule=config.lr_schedule,
                        lr_beta=config.lr_beta, lr_gamma=config.lr_gamma, rounds=config.rounds,
                        max_examples=config.max_client_examples, pad_ids=ds.pad_ids, unscored_ids=ds.unscored_ids)
    return Learner(model, train_mask, compressor, local, epochs or config.local_epochs, server_optimizer(config),
                   algorithm, ml_collections.FrozenConfigDict(config), probes=bool(config.alpha_metrics))


def federated_data(ds: Dataset, parts: list, batch_size: int) -> FederatedData:
    """Put the training set on the device once, each client as a zero-padded row of sample indices."""
    sizes = np.array([len(p) for p in parts], np.int32)
    index = np.zeros((len(parts), int(sizes.max()) + batch_size), np.int32)
    for i, p in enumerate(parts):
        index[i, : len(p)] = p
    return FederatedData(jnp.asarray(ds.x_train), jnp.asarray(ds.y_train, jnp.int32), jnp.asarray(index),
                         jnp.asarray(sizes), jnp.asarray(ds.mean, jnp.float32), jnp.asarray(ds.std, jnp.float32))
