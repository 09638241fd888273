"""Many whole runs as one program, sharded over every device: seeds x a grid of traceable settings.

    import fedbat_jax as fb
    records = fb.sweep(cfg, seeds=[0, 1, 2])                                   # three seeds
    records = fb.sweep(cfg, [0, 1], grid={"lr": [0.01, 0.05], "rho": [3.0]})  # 2 seeds x 2 x 1 points
    records[1]   # {"seed": 0, "settings": {"lr": 0.05, "rho": 3.0}, "metrics": {"test_accuracy": [rounds], ...}}

The runs are every seed at every point of the grid (its cartesian product, the last name varying fastest),
seed-major: with ``P`` points, run ``i`` is ``seeds[i // P]`` at point ``i % P``, and the records come in that
order. Run i is ``make_train``'s ``train(jax.random.PRNGKey(seed), point)`` (``fedbat_jax.whole_run``): the
same run as the CLI with ``--config.seed=seed`` and the point's settings, up to the rounding of a differently
compiled program. ``config.seed`` is not used. A grid may hold only the settings a program can trace
(``whole_run.TRACEABLE``); the others fix shapes or step counts, so sweep them with one call per value.

The runs axis is split over every device of every process (``jax.devices()``, a 1-D mesh): each device
trains its share of the runs, vmapped. The run count is padded to a multiple of the device count by
repeating the last run (its copies' results are dropped). The dataset is replicated on every device and is an
argument of the program, not a constant compiled into it. In a multi-process job every process calls
``sweep`` with the same arguments and gets every record. The final server states are not kept (they are one
model per run; ``make_train`` returns them).

``compile_sweep`` splits compiling from running, to time them (``experiments/convergence.py``).
"""
from __future__ import annotations

import itertools
import time
import warnings
import numbers
from typing import Any, Callable, NamedTuple

import jax
import numpy as np
import ml_collections
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from fedbat_jax import distributed, privacy
from fedbat_jax.config import check_seed, validate
from fedbat_jax.data import Dataset
from fedbat_jax.errors import ConfigError
from fedbat_jax.backends.fused import global_array, replicate
from fedbat_jax.whole_run import TRACEABLE, build_train

AXIS = "runs"


class Sweep(NamedTuple):
    """A sweep compiled for the devices; ``run()`` runs it and returns the records."""
    runs: tuple  # (seed, settings) of each run, in order
    compiled: Any  # jax.stages.Compiled: (keys, hparams, data) -> metrics, [padded runs, rounds] each
    args: tuple  # its global arrays: keys and hparams split over the mesh's runs axis, the data replicated
    mesh: Mesh  # 1-D, over jax.devices()
    train: Callable  # make_train's function (its ``.data``: the dataset as device arrays)

    def run(self) -> list[dict]:
        """One ``{"seed", "settings", "metrics"}`` record per run; ``metrics``: numpy, a leading rounds axis (with
        DP, ``epsilon`` after each round, from the accountant on the host)."""
        metrics = {name: np.asarray(v) for name, v in self.compiled(*self.args).items()}  # replicated: every process
        rounds = metrics["train_loss"].shape[1]
        return [{"seed": seed, "settings": dict(settings),
                 "metrics": {**{name: v[i] for name, v in metrics.items()}, **self.epsilons(settings, rounds)}}
                for i, (seed, settings) in enumerate(self.runs)]

    def epsilons(self, settings: dict, rounds: int) -> dict:
        """``{"epsilon": [rounds]}`` of a run with these settings (``{}`` without DP noise)."""
        accountant = self.train.accountant
        if accountant is None:
            return {}
        accountant = accountant._replace(noise_multiplier=settings.get("dp_noise_multiplier",
                                                                       accountant.noise_multiplier))
        if accountant.noise_multiplier <= 0:
            return {}
        return {"epsilon": np.array([privacy.epsilon(accountant, r) for r in range(1, rounds + 1)])}


def sweep(config: ml_collections.ConfigDict, seeds, grid: dict | None = None, dataset: Dataset | None = None,
          metrics_fn: Callable[[Any, Any], dict] | None = None) -> list[dict]:
    """Every seed at every point of ``grid`` (``{setting: [values]}``, settings of ``whole_run.TRACEABLE``) as
    one program over all devices; one record per run, seed-major: ``{"seed": int, "settings": {name: float}``
    (the point; ``{}`` without a grid)``, "metrics": {name: np.ndarray [rounds]}}``. ``dataset`` and
    ``metrics_fn`` are ``make_train``'s. Bad seeds or grid: a one-line ``ConfigError``, before data loads."""
    return compile_sweep(config, seeds, grid, dataset, metrics_fn).run()


def sweep_records(config: ml_collections.ConfigDict, seeds) -> dict[int, list[dict]]:
    """Every seed of one config as one program (``sweep``, the padded backend whatever the config's), each seed's
    records shaped like ``fedbat_jax.run``'s (``round_seconds``: the program's wall time split evenly)."""
    t0 = time.perf_counter()
    traced = config.copy_and_resolve_references()
    traced.backend = "auto"  # one traced program runs the padded backend, whatever the run loop's backend
    runs = sweep(traced, seeds)
    seconds = (time.perf_counter() - t0) / len(runs) / config.rounds

    def value(x):
        return None if np.isnan(x) else float(x)

    def records(m: dict) -> list[dict]:
        return [{"round": r + 1, "test_accuracy": value(m["test_accuracy"][r]), "test_loss": value(m["test_loss"][r]),
                 "train_loss": float(m["train_loss"][r]), "uplink_bits": int(m["uplink_bits"][r]),
                 "round_seconds": seconds} for r in range(config.rounds)]

    return {run["seed"]: records(run["metrics"]) for run in runs}


def compile_sweep(config: ml_collections.ConfigDict, seeds, grid: dict | None = None, dataset: Dataset | None = None,
                  metrics_fn: Callable[[Any, Any], dict] | None = None) -> Sweep:
    """``sweep``'s program, compiled for ``jax.devices()`` with its arguments placed, not yet run."""
    validate(config)  # the config's own errors first, without a grid point's name
    runs = tuple(itertools.product(seed_list(seeds), grid_points(config, grid)))
    distributed.start(config)  # a multi-process job joined before any device use
    train = build_train(config, dataset, metrics_fn)
    mesh = Mesh(np.array(jax.devices()), (AXIS,))
    split, replicated = NamedSharding(mesh, P(AXIS)), NamedSharding(mesh, P())
    padded = list(runs) + [runs[-1]] * (-len(runs) % mesh.size)  # repeats of the last run: dropped in run()
    keys = np.stack([np.asarray(jax.random.PRNGKey(seed)) for seed, _ in padded])
    hparams = {name: np.array([point[name] for _, point in padded], np.float32) for name in runs[0][1]}
    args = (global_array(keys, split), {k: global_array(v, split) for k, v in hparams.items()},
            replicate(mesh, train.data))

    def program(keys, hparams, data):
        return jax.vmap(train, in_axes=(0, 0, None))(keys, hparams, data)[1]  # the metrics; the servers are dropped

    compiled = jax.jit(program, in_shardings=(split, split, replicated),
                       out_shardings=replicated).lower(*args).compile()
    return Sweep(runs, compiled, args, mesh, train)


def seed_list(seeds) -> list[int]:
    """The seeds as ints, or a one-line ``ConfigError``."""
    if isinstance(seeds, (str, bytes)) or not np.iterable(seeds):
        raise ConfigError(f"seeds must be a list of integers, got {seeds!r}")
    seeds = list(seeds)
    if not seeds:
        raise ConfigError("seeds is empty: give at least one")
    bad = [s for s in seeds if not isinstance(s, numbers.Integral) or isinstance(s, bool)]
    if bad:
        raise ConfigError(f"seeds must be integers, got {bad[0]!r}")
    seeds = [int(s) for s in seeds]
    for s in seeds:
        check_seed("seeds", s)  # run i is the CLI's --config.seed=seed: the same range
    twice = sorted({s for s in seeds if seeds.count(s) > 1})
    if twice:
        warnings.warn(f"seeds {twice} appear more than once: their runs are identical", stacklevel=4)
    return seeds


def grid_points(config: ml_collections.ConfigDict, grid: dict | None) -> list[dict[str, float]]:
    """The grid's points in order (the last name fastest), each valid on ``config`` as ``validate`` checks a
    config (e.g. ``lr > 0``, ``alpha_min < alpha_max``), or a one-line ``ConfigError``; ``[{}]`` without a grid."""
    if grid is None:
        return [{}]
    if not isinstance(grid, dict):
        raise ConfigError(f"grid must be a dict of setting -> list of values, got {type(grid).__name__}")
    lists = {}
    for name, values in grid.items():
        if name not in TRACEABLE:
            raise ConfigError(f"grid setting {name!r} " + ("shapes the program: run one sweep per value"
                                                            if name in config else "is unknown")
                              + f"; a grid may hold {', '.join(TRACEABLE)}")
        if isinstance(values, (str, bytes, dict)) or not np.iterable(values):
            raise ConfigError(f"grid[{name!r}] must be a list of numbers, got {values!r}")
        lists[name] = list(values)
        if name in privacy.TRACEABLE and not privacy.enabled(config):
            raise ConfigError(f"grid setting {name!r} needs a config with DP on (dp_clip > 0)")
        if not lists[name]:
            raise ConfigError(f"grid[{name!r}] is empty: give at least one value")
        bad = [v for v in lists[name] if not isinstance(v, numbers.Real) or isinstance(v, bool)]
        if bad:
            raise ConfigError(f"grid[{name!r}] holds {bad[0]!r}, not a number")
        if name == "dp_clip" and min(lists[name]) <= 0:
            raise ConfigError(f"grid['dp_clip'] holds {min(lists[name])!r}: a DP program's clip must be > 0")
    points = [dict(zip(lists, map(float, values))) for values in itertools.product(*lists.values())]
    for point in points:
        c = config.copy_and_resolve_references()
        c.update(**point)
        try:
            validate(c)
        except ConfigError as e:
            raise ConfigError(f"grid point {point}: {e}") from None
    return points
