"""A whole federated run as one pure function (the purejaxrl ``make_train`` shape).

    train = fedbat_jax.make_train(config)
    server, metrics = jax.jit(train)(jax.random.PRNGKey(0))             # one run
    server, metrics = jax.jit(jax.vmap(train))(keys)                    # several seeds, one program
    server, metrics = jax.jit(jax.vmap(train))(keys, {"lr": lrs})       # a grid of a float setting
    server, metrics = jax.jit(jax.vmap(train))(keys, {"dp_noise_multiplier": zs})   # DP on: a privacy curve

``train(key)`` samples every cohort on the device, runs ``config.rounds`` rounds in a ``lax.scan``, and
evaluates every ``eval_every`` rounds (and at the last). ``metrics`` holds arrays with a leading rounds
axis: ``test_accuracy`` and ``test_loss`` (NaN in rounds not evaluated), ``train_loss``, ``uplink_bits``
(float32: exact below 2^24 bits; the run loop's records have the exact integers). With
``key = jax.random.PRNGKey(seed)`` it trains the same run as the CLI with ``--config.seed=seed``: the same
cohorts, batches and draws, equal up to the rounding of a differently compiled program.

The round is ``fedbat_jax.rounds.make_round``'s, the run loop's own, with a traceable backend: ``backend=auto``
is ``padded`` here (the cohort runs in groups of ``config.padded_group`` clients, 0: all at once, and each group
runs as many steps as its longest client, the shorter ones' extra steps discarded); a backend that cannot be traced
(``host``, ``fused``, ``debug``) is refused in one line. The table of per-client state lives on the device.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections

from fedbat_jax import distributed, privacy
from fedbat_jax.backends import BACKENDS, Backend
from fedbat_jax.config import validate
from fedbat_jax.data import Dataset, load_dataset
from fedbat_jax.errors import ConfigError
from fedbat_jax.evaluation import dataset_evaluate, pooled_traced, test_set
from fedbat_jax.federated import Learner
from fedbat_jax.federation import build_federation, check_before_loading
from fedbat_jax.rounds import make_round, wire_sizes

# Settings that may be traced (passed per run in ``hparams``); the others fix shapes or step counts. The DP ones
# (``dp_clip``, ``dp_noise_multiplier``) need a config with DP on (``dp_clip > 0``).
LOCAL_TRACEABLE = ("lr", "rho", "alpha_min", "alpha_max")
TRACEABLE = LOCAL_TRACEABLE + privacy.TRACEABLE


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
    distributed.start(config)
    return build_train(config, dataset, metrics_fn)


def build_train(config: ml_collections.ConfigDict, dataset: Dataset | None = None,
                metrics_fn: Callable[[Any, Any], dict] | None = None) -> Callable[..., tuple[Any, dict]]:
    """``make_train`` on a config its caller has validated (``fb.sweep`` validates its grid points itself)."""
    if dataset is None:
        check_before_loading(config)
    ds = dataset if dataset is not None else load_dataset(config.dataset, config.data_dir or None)
    federation = build_federation(config, ds)
    learner, roster, model = federation.learner, federation.roster, federation.model
    rounds, every = config.rounds, config.eval_every  # read once: later edits don't leak in
    ds, k = federation.dataset, config.clients_per_round
    n = len(roster.sizes)
    longest = int(roster.num_steps.max())
    traced_backend(config, learner, longest)  # refuses an untraceable backend now, not when traced
    evaluate = dataset_evaluate(model, ds)
    variables = federation.variables
    uplink = float(wire_sizes(learner, variables["params"], variables.get("batch_stats", {}), 1)["uplink_bits"])
    sample = ds.sample_input()

    def train(key: jax.Array, hparams: dict | None = None, data: tuple | None = None):
        run_learner = with_hparams(learner, hparams or {})
        clients, test = data if data is not None else train.data
        variables = model.init(jax.random.fold_in(key, 0), sample)
        server = run_learner.server_init(variables["params"], variables.get("batch_stats", {}), n)
        one_round = make_round(run_learner, roster, federation.sampling, traced_backend(config, run_learner, longest),
                               jit=False)

        def round_and_metrics(server, r):
            server, stats = one_round(server, clients, key, r)
            cohort = stats.get("cohort_size", jnp.float32(k))  # Poisson: the clients drawn
            nan = jnp.float32(jnp.nan)
            loss, acc = jax.lax.cond((r % every == 0) | (r == rounds),
                                     lambda s: pooled_traced(evaluate(s.params, s.batch_stats, test)),
                                     lambda s: (nan, nan), server)
            extra = metrics_fn(server, clients) if metrics_fn is not None else {}
            return server, {"test_accuracy": acc, "test_loss": loss, **stats, "uplink_bits": cohort * uplink,
                            **extra}

        return jax.lax.scan(round_and_metrics, server, jnp.arange(1, rounds + 1))

    train.data = (federation.data, test_set(ds))
    # epsilon's accountant (the noise multiplier as solved for dp_target_epsilon); None without DP
    train.accountant = (privacy.accountant_for(config, n, learner.privacy.noise_multiplier)
                        if learner.privacy is not None else None)
    return train


def with_hparams(learner: Learner, hparams: dict) -> Learner:
    """The learner with ``hparams`` (``TRACEABLE`` settings, traced or not) replacing the config's values."""
    unknown = set(hparams) - set(TRACEABLE)
    if unknown:
        raise ConfigError(f"hparams {sorted(unknown)} cannot be traced; these can: {', '.join(TRACEABLE)}")
    dp = {name: v for name, v in hparams.items() if name in privacy.TRACEABLE}
    if dp and learner.privacy is None:
        raise ConfigError(f"hparams {sorted(dp)} need a config with DP on (dp_clip > 0)")
    local = {name: v for name, v in hparams.items() if name in LOCAL_TRACEABLE}
    learner = learner._replace(local=learner.local._replace(**local))
    if dp:
        learner = learner._replace(privacy=learner.privacy._replace(
            **{name.removeprefix("dp_"): v for name, v in dp.items()}))
    return learner


def traced_backend(config: ml_collections.ConfigDict, learner: Learner, longest: int) -> Backend:
    """The backend ``make_train`` traces: ``backend=auto`` is ``padded``; one that cannot be traced is refused."""
    name = "padded" if config.backend == "auto" else config.backend
    backend = BACKENDS[name](learner, config, longest)
    if not backend.traceable:
        raise ConfigError(f"make_train traces the whole run as one program, and backend={name} cannot be traced; "
                          "use backend=auto or padded (or fb.run for the run loop's backends)")
    return backend
