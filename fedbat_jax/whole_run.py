"""A whole federated run as one pure function (the purejaxrl ``make_train`` shape).

    train = fedbat_jax.make_train(config)
    server, metrics = jax.jit(train)(jax.random.PRNGKey(0))             # one run
    server, metrics = jax.jit(jax.vmap(train))(keys)                    # several seeds, one program
    server, metrics = jax.jit(jax.vmap(train))(keys, {"lr": lrs})       # a grid of a float setting

``train(key)`` samples every cohort on the device, runs ``config.rounds`` rounds in a ``lax.scan``, and
evaluates every ``eval_every`` rounds (and at the last). ``metrics`` holds arrays with a leading rounds
axis: ``test_accuracy`` and ``test_loss`` (NaN in rounds not evaluated), ``train_loss``, ``uplink_bits``
(float32: exact below 2^24 bits; ``Round.bits`` has the exact integers). With
``key = jax.random.PRNGKey(seed)`` it trains the same run as the CLI with ``--config.seed=seed``: the same
cohorts, batches and draws, equal up to the rounding of a differently compiled program.

Ragged clients are padded here (``fedbat_jax.executions.padded``): the cohort runs in groups of
``config.padded_group`` clients (0: all at once), and each group runs as many steps as its longest client,
the shorter ones' extra steps discarded. The run loop keeps the host and fused executions, which compute
no padded steps.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections

from fedbat_jax.config import validate
from fedbat_jax.data import Dataset, load_dataset
from fedbat_jax.errors import ConfigError
from fedbat_jax.evaluation import make_evaluate, test_set
from fedbat_jax.executions import padded
from fedbat_jax.federated import plan_round
from fedbat_jax.federation import build_federation
from fedbat_jax.round import wire_bits

# Settings that may be traced (passed per run in ``hparams``); the others fix shapes or step counts.
TRACEABLE = ("lr", "rho", "alpha_min", "alpha_max")


def make_train(config: ml_collections.ConfigDict, dataset: Dataset | None = None,
               metrics_fn: Callable[[Any, Any], dict] | None = None) -> Callable[..., tuple[Any, dict]]:
    """``train(key, hparams=None, data=None) -> (server_state, metrics)``, pure and jittable.

    ``hparams``: a dict of any of ``TRACEABLE`` (scalars, traced or not) overriding the config's values.
    ``data``: ``(client_data, test_set)`` as device arrays (default ``train.data``); pass it as an argument
    of ``jax.jit`` to keep a large dataset out of the compiled program's constants.
    ``metrics_fn(server_state, client_data) -> {name: scalar}``: extra metrics recorded after every round
    (e.g. the training objective over all clients' data, for a convergence-rate study).
    """
    validate(config)
    ds = dataset if dataset is not None else load_dataset(config.dataset, config.data_dir or None)
    fedn = build_federation(config, ds)
    fed, roster, model = fedn.fed, fedn.roster, fedn.model
    rounds, every, group = config.rounds, config.eval_every, config.padded_group  # read once: later edits don't leak in
    n, k = config.num_clients, config.clients_per_round
    n_test = len(ds.y_test)
    evaluate = make_evaluate(model, n_test)
    uplink = float(wire_bits(fed, fedn.variables["params"], fedn.variables.get("batch_stats", {}), k)["uplink_bits"])
    sample = jnp.zeros((1,) + ds.input_shape, jnp.float32)

    def train(key: jax.Array, hparams: dict | None = None, data: tuple | None = None):
        unknown = set(hparams or {}) - set(TRACEABLE)
        if unknown:
            raise ConfigError(f"hparams {sorted(unknown)} cannot be traced; these can: {', '.join(TRACEABLE)}")
        f = fed._replace(local=fed.local._replace(**(hparams or {})))
        clients, test = data if data is not None else train.data
        variables = model.init(jax.random.fold_in(key, 0), sample)
        server = f.server_init(variables["params"], variables.get("batch_stats", {}), n)
        run_clients = padded(f, group).run

        def one_round(server, r):
            inputs = plan_round(key, r, roster, clients.index, k)
            rows = jax.tree.map(lambda t: t[inputs.client], server.compressor_states)  # the cohort's K rows
            agg, rows = run_clients(server.params, server.batch_stats, clients, inputs, rows)
            table = jax.tree.map(lambda t, new: t.at[inputs.client].set(new), server.compressor_states, rows)
            server, train_loss = f.server_update(server._replace(compressor_states=table), agg)
            nan = jnp.float32(jnp.nan)
            loss, acc = jax.lax.cond((r % every == 0) | (r == rounds),
                                     lambda s: tuple(evaluate(s.params, s.batch_stats, test) / n_test),
                                     lambda s: (nan, nan), server)
            extra = metrics_fn(server, clients) if metrics_fn is not None else {}
            return server, {"test_accuracy": acc, "test_loss": loss, "train_loss": train_loss,
                            "uplink_bits": jnp.float32(uplink), **extra}

        return jax.lax.scan(one_round, server, jnp.arange(1, rounds + 1))

    train.data = (fedn.data, test_set(ds))
    return train
