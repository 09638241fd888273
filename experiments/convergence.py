"""Convergence rates on a strongly convex federated problem: the paper's theorem checked (REFERENCE.md 5).

    python experiments/convergence.py                 # the study: docs/results/convergence.{csv,md,png}
    python experiments/convergence.py --quick --out /tmp/conv     # a few rounds and seeds (the tests)
    python experiments/convergence.py --config.rounds=300 --seeds=16

The problem is ``experiments/configs/convergence.py``: multinomial logistic regression with an L2 term
``lambda/2 ||w||^2`` (``mu = lambda``), full participation. From the data the script computes the
smoothness ``L = lambda_max(X^T X / n) / 2 + lambda`` (the softmax Hessian is at most 1/2) and sets the
theorem's schedule ``eta_t = 2 / (mu (gamma + t))`` with ``gamma = max(8 L / mu, E)``, ``E`` the local
steps per round and ``t`` the local steps over the run. ``F*`` comes from L-BFGS in float64 (scipy).

Every row runs its seeds as one program (``fedbat_jax.sweep``: ``fedbat_jax.make_train`` vmapped, the seeds
split over every device) that records the training objective ``F(w_t)`` after every round. The slope of
``log(F(w_t) - F*)`` against ``log t`` is fitted per seed over the last decade of rounds; the table gives its
mean and 95% interval.

Every seed's curve is written to ``PREFIX_curves.csv.gz`` and every statistic of the tables is computed from those
printed curves (``cell_stats``), so a committed table can be recomputed from the repository alone
(``tests/test_results.py`` does). Finished cells are kept in ``--cells`` (default ``PREFIX_cells/``, not committed)
under a hash of the settings that differ from the defaults, so a rerun reads them back.
"""
from __future__ import annotations

import csv
import json
import math
import shlex
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from fedbat_jax import cli, machine, report
from fedbat_jax.data import load_dataset
from fedbat_jax.models import make_model
from fedbat_jax.objective import model_inputs
from fedbat_jax.sweeps import compile_sweep

# Every client's whole data each step, 20 steps a round: a batch as large as the largest client (10 clients of the
# 4,000 digits hold 399-402 each; 40 clients 99-102).
FULL_BATCH, FULL_BATCH_PP = dict(batch_size=402, local_epochs=20), dict(batch_size=102, local_epochs=20)
ROWS = {  # table row -> settings on top of the problem's config
    "fedavg": dict(algorithm="fedavg"),
    # Normalised averaging: on clients of unequal sizes (one local epoch: local work in proportion to size),
    # FedAvg optimises a surrogate that weights client k by p_k a_k; FedNova the weighted objective itself.
    "fednova": dict(algorithm="fednova"),
    "feddyn": dict(algorithm="feddyn"),
    # ... and at constant learning rates eta_0 and eta_0 / 10 (lr_factor), where the surrogate stays: FedAvg's gap
    # should not shrink with the rate, while what FedNova keeps (drift and SGD noise) should.
    **{f"{a}_const_sgd{tag}": dict(algorithm=a, lr_schedule="constant", lr_factor=f)
       for a in ("fednova", "feddyn") for tag, f in (("", 1.0), ("_lr10", 0.1))},
    "fedavg_const_sgd_lr10": dict(algorithm="fedavg", lr_schedule="constant", lr_factor=0.1),
    "fedbat": dict(algorithm="fedbat"),
    "fedbat_alpha_max": dict(algorithm="fedbat", alpha_rule="max_abs"),
    "stoch_binary": dict(algorithm="stoch_binary"),
    "signsgd": dict(algorithm="signsgd"),
    "ef_signsgd": dict(algorithm="ef_signsgd"),
    "qsgd2": dict(algorithm="qsgd", bits=2),
    "qsgd2_pp": dict(algorithm="qsgd", bits=2, num_clients=40, clients_per_round=10),  # beside fedbat_learned_max_pp
    # Diagnosis of learned-alpha FedBAT: the clip floor alpha_min 100x lower; the clip bounds following eta_t.
    "fedbat_floor_div100": dict(algorithm="fedbat", alpha_min=5e-6),
    "fedbat_bounds_lr": dict(algorithm="fedbat", alpha_bounds="lr"),
    "fedbat_alpha_max100": dict(algorithm="fedbat", alpha_max=100.0),
    # Error feedback (fedbat_jax.compressors.with_error_feedback) on the paper's learned-alpha operator.
    "fedbat_ef": dict(algorithm="fedbat", error_feedback="ef"),
    "fedbat_ef21": dict(algorithm="fedbat", error_feedback="ef21"),
    "signsgd_ef21": dict(algorithm="signsgd", error_feedback="ef21"),
    # EF21 repairs the clipping bias; bounds that follow eta_t let the upload's variance decay with it.
    "fedbat_ef21_bounds_lr": dict(algorithm="fedbat", error_feedback="ef21", alpha_bounds="lr"),
    "fedbat_ef_bounds_lr": dict(algorithm="fedbat", error_feedback="ef", alpha_bounds="lr"),
    # Where the bias sits: phi=1 trains in full precision (alpha stays at its initial 0.01), so the upload's
    # clipping is the only bias left; EF21 on top of it.
    "fedbat_phi1": dict(algorithm="fedbat", phi=1.0),
    "fedbat_phi1_ef21": dict(algorithm="fedbat", phi=1.0, error_feedback="ef21"),
    # Partial participation: 40 clients of 100 digits, 10 sampled a round (stale residuals and estimates).
    "fedavg_pp": dict(algorithm="fedavg", num_clients=40, clients_per_round=10),
    "fedbat_pp": dict(algorithm="fedbat", num_clients=40, clients_per_round=10),
    "fedbat_ef_pp": dict(algorithm="fedbat", error_feedback="ef", num_clients=40, clients_per_round=10),
    "fedbat_ef21_pp": dict(algorithm="fedbat", error_feedback="ef21", num_clients=40, clients_per_round=10),
    # Issue 23, diagnosis: where is learned-alpha FedBAT biased? Its binarization-aware training with the float32
    # latent uploaded (if this drifts, the latent itself is biased); the identity straight-through estimator (the
    # data gradient reaches every coordinate, not only |u| <= alpha), the learned alpha on the wire as usual.
    "fedbat_fp_upload": dict(algorithm="fedbat", upload_alpha="exact"),
    "fedbat_identity_ste": dict(algorithm="fedbat", ste="identity"),
    # ... and both: if the latent is still biased with the identity estimator, the bias is the binarized forward
    # pass itself (E[Q(u, alpha)] = clip(u, alpha): the latent is trained for the clipped model).
    "fedbat_identity_ste_fp_upload": dict(algorithm="fedbat", ste="identity", upload_alpha="exact"),
    # The 2-bit two-scale upload on the identity estimator's (unbiased) latent.
    "fedbat_identity_ste_learned_max": dict(algorithm="fedbat", ste="identity", upload_alpha="learned_max"),
    # Issue 40: is the float32 latent's plateau a fixed point of a biased objective? Then it stays when every step is
    # halved or quartered; a noise floor would fall with the step.
    "fedbat_fp_upload_lr_half": dict(algorithm="fedbat", upload_alpha="exact", lr_factor=0.5),
    "fedbat_fp_upload_lr_quarter": dict(algorithm="fedbat", upload_alpha="exact", lr_factor=0.25),
    # ... and the capped relative EF21 row's control (issue 40 item 4): the same training, c fixed on the wire at the
    # level the learned c settles at (0.4) and at the cap (0.5): does learning c matter, or its level?
    **{f"fedbat_identity_ste_ef21_relative_c{tag}": dict(algorithm="fedbat", ste="identity", error_feedback="ef21",
                                                         ef21_alpha="relative", ef21_multiplier=c)
       for tag, c in (("04", 0.4), ("05", 0.5))},
    # Repairs at 1 bit (and one at 2 bits), each with partial participation too.
    **{name + suffix: dict(settings, **pp) for name, settings in {
        "fedbat_upload_max": dict(algorithm="fedbat", upload_alpha="max"),
        "fedbat_identity_ste_upload_max": dict(algorithm="fedbat", ste="identity", upload_alpha="max"),
        "fedbat_ef21_relative": dict(algorithm="fedbat", error_feedback="ef21", ef21_alpha="relative"),
        "fedbat_ef21_relative_m": dict(algorithm="fedbat", error_feedback="ef21", ef21_alpha="relative",
                                       ef21_momentum=0.5),
        "fedbat_identity_ste_ef21_relative": dict(algorithm="fedbat", ste="identity", error_feedback="ef21",
                                                  ef21_alpha="relative"),
        # ... with the learned multiplier c capped below 1 (issue 40): the learned alpha on the wire, contractive?
        "fedbat_identity_ste_ef21_relative_cap05": dict(algorithm="fedbat", ste="identity", error_feedback="ef21",
                                                        ef21_alpha="relative", ef21_cap=0.5),
        "fedbat_learned_max": dict(algorithm="fedbat", upload_alpha="learned_max"),
        "eden": dict(algorithm="fedavg", compressor="eden"),
        "drive": dict(algorithm="fedavg", compressor="drive"),
    }.items() for suffix, pp in (("", {}), ("_pp", dict(num_clients=40, clients_per_round=10)))},
    # A constant learning rate (the schedule's eta_0). Local full-batch gradient descent (20 steps a round): FedAvg
    # drifts to a biased fixed point on heterogeneous clients; SCAFFOLD's control variates remove the drift, so
    # F - F* should fall geometrically. The _sgd rows keep the problem's mini-batches of 20: their gradient noise
    # leaves a floor at a constant learning rate, which control variates do not remove.
    "fedavg_const": dict(algorithm="fedavg", lr_schedule="constant", **FULL_BATCH),
    "scaffold_const": dict(algorithm="scaffold", lr_schedule="constant", **FULL_BATCH),
    "fedavg_const_pp": dict(algorithm="fedavg", lr_schedule="constant", num_clients=40, clients_per_round=10,
                            **FULL_BATCH_PP),
    "scaffold_const_pp": dict(algorithm="scaffold", lr_schedule="constant", num_clients=40, clients_per_round=10,
                              **FULL_BATCH_PP),
    "fedavg_const_sgd": dict(algorithm="fedavg", lr_schedule="constant"),
    "scaffold_const_sgd": dict(algorithm="scaffold", lr_schedule="constant"),
    "fedavg_const_sgd_pp": dict(algorithm="fedavg", lr_schedule="constant", num_clients=40, clients_per_round=10),
    "scaffold_const_sgd_pp": dict(algorithm="scaffold", lr_schedule="constant", num_clients=40, clients_per_round=10),
}
DEFAULT_ROWS = [name for name in ROWS if name not in ("fedbat_floor_div100", "fedbat_bounds_lr", "fednova", "feddyn")
                and "_const" not in name]  # (the constant-learning-rate rows: --rows, their own table)
DEFAULT_CONFIG = str(Path(__file__).parent / "configs" / "convergence.py")


def parser() -> cli.ArgumentParser:
    ap = cli.ArgumentParser(prog="convergence", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/results/convergence", help="output prefix: PREFIX.csv, .md, .png "
                    "(finished cells are kept in PREFIX_cells/ and read back by a rerun)")
    ap.add_argument("--cells", default="", help="where finished cells are kept (default PREFIX_cells/)")
    ap.add_argument("--seeds", type=int, default=8, help="seeds per cell (the CLI's seeds config.seed + 0, 1, ...), "
                    "run as one vmapped program")
    ap.add_argument("--rows", type=cli.names, default=DEFAULT_ROWS,
                    help="table rows: " + ", ".join(ROWS))
    ap.add_argument("--partitions", type=cli.names, default=["iid", "label_count"])
    ap.add_argument("--quick", action="store_true",
                    help="30 rounds (unless --config.rounds is given) and 2 seeds (for the tests)")
    ap.add_argument("--probes", action="store_true",
                    help="also run each FedBAT row with alpha_metrics on (not cached) and write the cohort's mean "
                    "alpha_ratio, alpha_gain, alpha_rms and clipped per layer, seed and round to PREFIX_probes.csv.gz")
    ap.add_argument("--sweep_bench", type=int, default=0,
                    help="also time N seeds of fedbat vmapped against N runs one after another")
    ap.add_argument("--sweep_rounds", type=int, default=100, help="rounds of each run in --sweep_bench")
    return ap


# ---- the problem in float64: constants and optimum -----------------------------------------------------
def design(ds) -> tuple[np.ndarray, np.ndarray]:
    """The model's features of every training sample, float64, with a bias column: ``[n, d + 1]``."""
    x = ((ds.x_train.astype(np.float64) / 255.0 - ds.mean) / ds.std).reshape(len(ds.y_train), -1)
    x /= math.sqrt(x.shape[1])  # as the logreg model scales its input
    return np.hstack([x, np.ones((len(x), 1))]), np.asarray(ds.y_train)


def objective64(theta: np.ndarray, X: np.ndarray, y: np.ndarray, lam: float, k: int, v: np.ndarray | None = None):
    """The L2-regularised softmax loss and its gradient, float64; ``v``: example weights (default: the mean)."""
    W = theta.reshape(X.shape[1], k)
    z = X @ W
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    n = len(y)
    v = np.full(n, 1.0 / n) if v is None else v / v.sum()
    f = -np.sum(v * np.log(p[np.arange(n), y])) + 0.5 * lam * np.sum(W * W)
    p[np.arange(n), y] -= 1.0
    return f, (X.T @ (v[:, None] * p) + lam * W).ravel()


def surrogate_gap(config, X, y, lam, k, f_star) -> float:
    """``F(w~) - F*``, where ``w~`` minimises the objective FedAvg converges to as its learning rate vanishes with
    unequal local work (Wang et al. 2020, FedNova): clients weighted by ``p_k a_k``, here ``n_k S_k`` (one example of
    client k by its local steps ``S_k``). 0 when every client takes the same number of steps."""
    import fedbat_jax as fb

    exp = fb.build(config)
    roster, index = exp.federation.roster, np.asarray(exp.federation.data.index)
    v = np.zeros(len(y))
    for client, (n, steps) in enumerate(zip(roster.sizes, roster.num_steps)):
        v[index[client, :n]] = steps
    if len(set(roster.num_steps.tolist())) == 1:
        return 0.0
    return float(objective64(optimum(X, y, lam, k, v)[2].ravel(), X, y, lam, k)[0] - f_star)


def optimum(X, y, lam, k, v: np.ndarray | None = None) -> tuple[float, float, np.ndarray]:
    """``F*``, the gradient norm there and the minimiser ``[d + 1, k]``, by L-BFGS in float64."""
    from scipy.optimize import minimize

    res = minimize(objective64, np.zeros(X.shape[1] * k), args=(X, y, lam, k, v), jac=True, method="L-BFGS-B",
                   options=dict(maxiter=20000, gtol=1e-12, ftol=1e-16, maxcor=30))
    return float(res.fun), float(np.linalg.norm(objective64(res.x, X, y, lam, k, v)[1])), res.x.reshape(-1, k)


def local_steps(config, n: int) -> int:
    """E: a client's local steps per round (``local_steps`` if set, else its epochs' batches when ``n`` samples are
    split evenly over the config's clients)."""
    if config.local_steps:
        return config.local_steps
    return config.local_epochs * math.ceil(n // config.num_clients / config.batch_size)


def constants(X, lam, steps_per_round) -> dict:
    L = 0.5 * float(np.linalg.eigvalsh(X.T @ X / len(X))[-1]) + lam
    mu = lam
    gamma = max(8.0 * L / mu, float(steps_per_round))
    return dict(L=L, mu=mu, kappa=L / mu, gamma=gamma, beta=2.0 / mu, lr0=2.0 / (mu * gamma), E=steps_per_round)


def suboptimality_metric(model, lam: float, X: np.ndarray, w_star: np.ndarray):
    """``metrics_fn`` for make_train: ``F(w_t) - F*`` over every client's data, accurate far below float32's
    resolution of F itself (about 1e-7 of F): it is computed from ``delta = logits(w) - logits(w*)``, which
    the model (linear in its parameters) gives exactly as ``logits(w - w*)``, as
    ``mean_i [log(sum_j p*_ij exp(delta_ij)) - delta_i,y_i] + lambda/2 (w - w*).(w + w*)``. Near the optimum the
    log term is ``log1p(sum_j p*_ij expm1(delta_ij))``; far from it (the sum below -1/2) it is the log-sum-exp of
    ``log p* + delta``, where the first form underflows to log(0) in float32 once ``p*`` is nearly one-hot
    (lambda = 0.001: F - F* about 1 gave -inf). Its two terms come too: ``ce_gap`` (the data loss's) and ``l2_gap``
    (``lambda/2 (||w||^2 - ||w*||^2)``), which tell a row whose loss drifts from one whose weights grow."""
    from scipy.special import log_softmax

    log_p_star = log_softmax(X @ w_star, axis=1)  # float64
    p_star = jnp.asarray(np.exp(log_p_star), jnp.float32)
    log_p_star = jnp.asarray(log_p_star, jnp.float32)
    star = {"Dense_0": {"kernel": jnp.asarray(w_star[:-1], jnp.float32), "bias": jnp.asarray(w_star[-1], jnp.float32)}}

    def metric(server, clients):
        x = model_inputs(clients.inputs, clients.mean, clients.std)
        diff = jax.tree.map(jnp.subtract, server.params, star)
        delta = model.apply({"params": diff}, x)
        picked = jnp.take_along_axis(delta, clients.labels[:, None], axis=1)[:, 0]
        near = jnp.sum(p_star * jnp.expm1(delta), axis=1)
        far = jax.nn.logsumexp(log_p_star + delta, axis=1)
        ce_gap = jnp.mean(jnp.where(near > -0.5, jnp.log1p(jnp.maximum(near, -0.5)), far) - picked)
        l2_gap = 0.5 * lam * sum(jnp.sum(d * (w + s)) for d, w, s in
                                 zip(jax.tree.leaves(diff), jax.tree.leaves(server.params), jax.tree.leaves(star)))
        return {"suboptimality": ce_gap + l2_gap, "ce_gap": ce_gap, "l2_gap": l2_gap}

    return metric


# ---- slopes --------------------------------------------------------------------------------------------
def _seed_slopes(subopt: np.ndarray, window: np.ndarray, floor: float) -> np.ndarray:
    """Per seed, the slope of log(max(subopt, floor)) against log(round) over the rounds ``window`` marks."""
    r = np.arange(1, subopt.shape[1] + 1)
    return np.asarray([np.polyfit(np.log(r[window]), np.log(np.maximum(s[window], floor)), 1)[0] for s in subopt])


def slopes(subopt: np.ndarray) -> tuple[float, float, float]:
    """Mean slope of log(subopt) vs log(round) over the last decade of rounds, with a 95% t-interval over seeds."""
    rounds = subopt.shape[1]
    return report.t_interval(_seed_slopes(subopt, np.arange(1, rounds + 1) >= max(rounds // 10, 1), 1e-12))


# The window where the bound 1/(gamma + t) is steep (rounds 250-500 of 500: slope about -0.93), and the criterion
# applied to every row: F - F* keeps falling at the bound's rate if (gamma + t)(F - F*) grows by at most GROWTH_MAX
# over the window (its means over the first and the last 25 rounds; the upper end of its 95% interval over seeds),
# i.e. its slope is within about log2(1.25) = 0.32 of the bound's over one doubling of t, *and* it ends below where
# it started (F - F* of round 1, the mean over seeds): a row that blew up and is falling back steeply is not
# converging. A row that drifts or plateaus grows about 2x (slope near 0) or more.
GROWTH_MAX = 1.25


def window(subopt: np.ndarray, gamma: float, steps: int) -> dict:
    """Over the last half of the rounds (250-500 of 500): the slope of log(F - F*) per seed, the bound's slope,
    and the growth of ``(gamma + t)(F - F*)`` from its first to its last 25 rounds (means; t = E x round), each
    with its 95% interval over seeds; ``converges``: the growth's upper end is at most GROWTH_MAX and the last round's
    F - F* is below the first round's."""
    rounds = subopt.shape[1]
    r = np.arange(1, rounds + 1)
    first = rounds // 2
    w = r >= first
    per_seed = _seed_slopes(subopt, w, 1e-30)
    scaled = (gamma + steps * r) * subopt
    block = max(1, rounds // 20)  # 25 rounds at each end of the window: a sampled cohort moves one round's value
    growth = scaled[:, -block:].mean(axis=1) / np.maximum(scaled[:, first - 1:first - 1 + block].mean(axis=1), 1e-30)
    bound = float(np.polyfit(np.log(r[w]), -np.log(gamma + steps * r[w]), 1)[0])
    (s, s_lo, s_hi), (g, g_lo, g_hi) = report.t_interval(per_seed), report.t_interval(growth)
    return dict(window=f"{first}-{rounds}", w_slope=round(s, 3), w_slope_lo=round(s_lo, 3), w_slope_hi=round(s_hi, 3),
                w_bound=round(bound, 3), growth=round(g, 3), growth_lo=round(g_lo, 3), growth_hi=round(g_hi, 3),
                converges=bool(g_hi <= GROWTH_MAX and subopt[:, -1].mean() < subopt[:, 0].mean()))


def at_round(subopt: np.ndarray, r: int) -> dict:
    """``F - F*`` at round ``r`` (1-based): mean over seeds and its 95% t-interval, as CSV columns."""
    if r > subopt.shape[1]:
        return {}
    mean, lo, hi = report.t_interval(subopt[:, r - 1])
    return {f"subopt_r{r}": float(f"{mean:.4e}"), f"subopt_r{r}_lo": float(f"{lo:.4e}"),
            f"subopt_r{r}_hi": float(f"{hi:.4e}")}


# ---- the study -----------------------------------------------------------------------------------------
def seed_list(config, seeds: int) -> list[int]:
    """Run i is the CLI's ``--config.seed=config.seed + i``."""
    return [config.seed + i for i in range(seeds)]


def run_cell(config, ds, seeds: int, metric):
    """The cell's seeds as one sweep: ``F(w_t) - F*`` ``[seeds, rounds]``, the seconds to build and compile the
    program (compiled apart, to time it), the seconds to run it."""
    t0 = time.perf_counter()
    sweep = compile_sweep(config, seed_list(config, seeds), dataset=ds, metrics_fn=metric)
    t1 = time.perf_counter()
    records = sweep.run()
    t2 = time.perf_counter()
    return np.stack([r["metrics"]["suboptimality"] for r in records]).astype(np.float64), t1 - t0, t2 - t1


def cell_settings(config) -> dict:
    """The settings that define a cell: those that differ from the defaults, less the runtime ones (where the data
    lives, how often to evaluate). A setting added later, at its default, leaves every finished cell's key as it was."""
    from fedbat_jax.config import RUNTIME_FIELDS, default_config

    default = default_config()
    return {k: v for k, v in config.to_dict().items()
            if k not in RUNTIME_FIELDS and (k not in default or default[k] != v)}


def cached_cell(folder: Path, config, ds, seeds: int, metric):
    """``run_cell``, kept in ``folder`` under a hash of the cell's settings (``cell_settings``, stored beside the
    curves): a rerun reads finished cells back."""
    import hashlib

    settings = cell_settings(config)
    key = hashlib.sha256(json.dumps([settings, seeds], sort_keys=True).encode()).hexdigest()[:16]
    path = folder / f"{config.partition}_{config.algorithm}_{key}.npz"
    if path.is_file():
        with np.load(path) as f:
            return f["subopt"], float(f["compile_s"]), float(f["run_s"])
    subopt, compile_s, run_s = run_cell(config, ds, seeds, metric)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, subopt=subopt, compile_s=compile_s, run_s=run_s, settings=json.dumps(settings, sort_keys=True))
    tmp.replace(path)
    return subopt, compile_s, run_s


# ---- the per-seed curves, committed: every statistic of the tables is recomputed from them -------------------------
CURVE_COLUMNS = ("algorithm", "partition", "gamma", "steps", "seed", "round", "suboptimality")
CURVE_FORMAT = ".6e"  # 7 significant digits: the curves as committed, and so as every statistic is computed


# alpha_metrics' per-layer diagnostics, and F - F*'s two terms (suboptimality_metric)
PROBES = ("alpha_ratio", "alpha_gain", "alpha_rms", "clipped", "ce_gap", "l2_gap")


def probe_curves(config, ds, seeds: int, metric, subopt: np.ndarray) -> dict[str, np.ndarray]:
    """The cell run again with ``alpha_metrics`` on: ``probe -> [seeds, rounds]`` (the cohort's p_k-weighted mean of
    each per-layer diagnostic, ``Learner.client_probes``, and the two terms of F - F*). The probes change no number
    of the run, so its ``F(w_t) - F*`` must be the cell's (``subopt``), and a mismatch is an error."""
    probed = config.copy_and_resolve_references()
    probed.alpha_metrics = True
    records = compile_sweep(probed, seed_list(probed, seeds), dataset=ds, metrics_fn=metric).run()
    again = np.stack([r["metrics"]["suboptimality"] for r in records]).astype(np.float64)
    if not np.allclose(again, subopt, rtol=1e-5, atol=0.0):
        raise RuntimeError(f"{config.algorithm}: the run with alpha_metrics on differs from its cell "
                           f"(max |diff| {np.max(np.abs(again - subopt)):.3g}): the probes changed the run")
    names = [k for k in records[0]["metrics"] if k.split("/", 1)[0] in PROBES]
    return {k: np.stack([np.asarray(r["metrics"][k], np.float64) for r in records]) for k in names}


def write_probes(path: Path, cells: list[tuple[dict, dict[str, np.ndarray]]]) -> None:
    """``PREFIX_probes.csv.gz``: ``algorithm, partition, seed, round`` and one column per probe (``probe_curves``)."""
    import gzip

    names = sorted({k for _, probes in cells for k in probes})
    with gzip.open(path, "wt", newline="") as f:
        w = csv.writer(f)
        w.writerow(["algorithm", "partition", "seed", "round", *names])
        for row, probes in cells:
            for i, seed in enumerate(row["seed_list"]):
                for r in range(next(iter(probes.values())).shape[1]):
                    w.writerow([row["algorithm"], row["partition"], seed, r + 1,
                                *(format(probes[k][i, r], ".5g") if k in probes else "" for k in names)])


def write_curves(path: Path, cells: list[tuple[dict, np.ndarray]]) -> None:
    """``PREFIX_curves.csv.gz``: every seed's F(w_t) - F* per round (``CURVE_FORMAT``), with the cell's gamma and local
    steps, the inputs of ``cell_stats``. ``cells``: ``(row, subopt [seeds, rounds])``, row carrying algorithm,
    partition, gamma, steps and its seed list."""
    import gzip

    with gzip.open(path, "wt", newline="") as f:
        w = csv.writer(f)
        w.writerow(CURVE_COLUMNS)
        for row, subopt in cells:
            for seed, curve in zip(row["seed_list"], subopt):
                for r, v in enumerate(curve, start=1):
                    w.writerow([row["algorithm"], row["partition"], repr(row["gamma"]), row["steps"], seed, r,
                                format(v, CURVE_FORMAT)])


def read_curves(path: Path) -> dict[tuple[str, str], tuple[float, int, np.ndarray]]:
    """``(algorithm, partition) -> (gamma, steps, subopt [seeds, rounds])`` from ``write_curves``'s file."""
    import gzip

    cells: dict = {}
    with gzip.open(path, "rt", newline="") as f:
        for r in csv.DictReader(f):
            cell = cells.setdefault((r["algorithm"], r["partition"]), (float(r["gamma"]), int(r["steps"]), {}))
            cell[2].setdefault(int(r["seed"]), []).append(float(r["suboptimality"]))
    return {k: (g, e, np.array([curves[s] for s in sorted(curves)])) for k, (g, e, curves) in cells.items()}


def cell_stats(subopt: np.ndarray, gamma: float, steps: int) -> dict:
    """Every statistic a table row prints, from the cell's per-seed curves alone: the last decade's slope, the
    bound's, the window's criterion (``window``) and F - F* at round 100 and at the end."""
    slope, lo, hi = slopes(subopt)
    rounds = subopt.shape[1]
    bound, _, _ = slopes(1.0 / (gamma + steps * np.arange(1, rounds + 1))[None])
    return dict(seeds=subopt.shape[0], rounds=rounds, slope=round(slope, 3), slope_lo=round(lo, 3),
                slope_hi=round(hi, 3), bound_slope=round(bound, 3), **window(subopt, gamma, steps),
                final_suboptimality=float(f"{subopt[:, -1].mean():.4e}"),
                **at_round(subopt, 100), **at_round(subopt, rounds))


def sweep_bench(config, ds, n: int, metric) -> dict:
    """N seeds as one vmapped program (a sweep) against the same N runs one after another (each compiled once,
    the data an argument of both)."""
    sweep = compile_sweep(config, seed_list(config, n), dataset=ds, metrics_fn=metric)
    keys = [jax.random.PRNGKey(seed) for seed, _ in sweep.runs]
    data = sweep.train.data
    single = jax.jit(sweep.train).lower(keys[0], None, data).compile()
    t0 = time.perf_counter()
    batched = sweep.run()
    t1 = time.perf_counter()
    one_by_one = [jax.block_until_ready(single(k, None, data)) for k in keys]
    t2 = time.perf_counter()
    # Bit-equality is not expected: batching changes the matmuls' summation order in the last bits, and
    # stochastic rounding turns such differences into different draws. The runs agree in distribution.
    a = np.asarray([r["metrics"]["suboptimality"][-1] for r in batched])
    b = np.asarray([np.asarray(m["suboptimality"])[-1] for _, m in one_by_one])
    return dict(seeds=n, rounds=config.rounds, vmapped_s=t1 - t0, sequential_s=t2 - t1, speedup=(t2 - t1) / (t1 - t0),
                final_mean_vmapped=float(a.mean()), final_mean_sequential=float(b.mean()),
                final_std_vmapped=float(a.std(ddof=1)), final_std_sequential=float(b.std(ddof=1)))


def main(args, overrides: list[str]) -> int:
    base = cli.make_config(args.config, overrides)
    if args.quick and not any(a.startswith("--config.rounds=") for a in overrides):
        base.rounds = 30
    seeds = 2 if args.quick and args.seeds == 8 else args.seeds
    unknown = set(args.rows) - set(ROWS)
    if unknown:
        raise cli.ConfigError(f"unknown rows {sorted(unknown)}; choose from {', '.join(ROWS)}")
    ds = load_dataset(base.dataset, base.data_dir or None)
    lam = base.weight_decay
    X, y = design(ds)
    steps = local_steps(base, len(y))
    const = constants(X, lam, steps)
    f_star, grad_norm, w_star = optimum(X, y, lam, ds.num_classes)
    metric = suboptimality_metric(make_model(base.model, ds.num_classes), lam, X, w_star)
    print(f"L {const['L']:.4f}  mu {const['mu']}  kappa {const['kappa']:.2f}  gamma {const['gamma']:.1f}  "
          f"beta {const['beta']:.1f}  eta_0 {const['lr0']:.4f}  E {steps}  F* {f_star:.10f} (|grad| {grad_norm:.1e})",
          flush=True)
    rows, curves, cells, probed, notes = [], {}, [], [], []
    for partition in args.partitions:
        for name in args.rows:
            c = base.copy_and_resolve_references()
            row = dict(ROWS[name])
            factor = row.pop("lr_factor", 1.0)
            c.update(partition=partition, lr_beta=const["beta"], lr_gamma=const["gamma"], **row)
            if c.lr_schedule == "constant":
                c.lr = const["lr0"] * factor  # the schedule's first step, held (times the row's lr_factor)
            else:
                c.lr_beta = const["beta"] * factor  # the schedule scaled: eta_t x lr_factor at every step
            subopt, compile_s, run_s = cached_cell(Path(args.cells or f"{args.out}_cells"), c, ds, seeds, metric)
            if note := nonfinite(name, partition, subopt):
                notes.append(note)
                print(f"warning: non-finite F - F*: {note}", file=sys.stderr, flush=True)
            steps_c = local_steps(c, len(y))
            cells.append((dict(algorithm=name, partition=partition, gamma=const["gamma"], steps=steps_c,
                               seed_list=seed_list(c, seeds)), subopt))
            if args.probes and c.algorithm == "fedbat":
                probed.append((cells[-1][0], probe_curves(c, ds, seeds, metric, subopt)))
            rounded = as_printed(subopt)  # the statistics are those of the committed (printed) curves
            curves[(partition, name)] = rounded.mean(axis=0)
            rows.append(dict(algorithm=name, partition=partition, clients=f"{c.clients_per_round}/{c.num_clients}",
                             **cell_stats(rounded, const["gamma"], steps_c),
                             surrogate_gap=float(f"{surrogate_gap(c, X, y, lam, ds.num_classes, f_star):.4e}"),
                             compile_s=round(compile_s, 1), run_s=round(run_s, 1)))
            print(json.dumps(rows[-1]), flush=True)
    bench = None
    if args.sweep_bench:
        c = base.copy_and_resolve_references()
        c.update(rounds=args.sweep_rounds, lr_beta=const["beta"], lr_gamma=const["gamma"])
        bench = sweep_bench(c, ds, args.sweep_bench, metric)
    if bench:
        print(json.dumps(bench), flush=True)
    write(Path(args.out), rows, curves, const, f_star, grad_norm, bench, base, notes)
    write_curves(Path(f"{args.out}_curves.csv.gz"), cells)
    if probed:
        write_probes(Path(f"{args.out}_probes.csv.gz"), probed)
    return 0


def as_printed(subopt: np.ndarray) -> np.ndarray:
    """The curves as ``write_curves`` prints them (``CURVE_FORMAT``), so a table equals its recomputation."""
    return np.vectorize(lambda v: float(format(v, CURVE_FORMAT)))(subopt)


def nonfinite(name: str, partition: str, subopt: np.ndarray) -> str | None:
    """Which seeds and rounds of a cell's ``[seeds, rounds]`` curves are inf or NaN, in words; None if none are."""
    bad = ~np.isfinite(subopt)
    if not bad.any():
        return None
    rounds = np.flatnonzero(bad.any(axis=0)) + 1
    return (f"{name} ({partition}): {int(bad.any(axis=1).sum())} of {len(subopt)} seeds, {int(bad.sum())} values, "
            f"rounds {rounds[0]}-{rounds[-1]}")


def write(prefix: Path, rows, curves, const, f_star, grad_norm, bench, base, notes=()) -> None:
    report.write_rows(prefix.with_name(prefix.name + ".csv"), rows)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    lines = [
        "# Convergence rates on strongly convex federated logistic regression",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine.describe()}, {time.strftime('%Y-%m-%d')}",
        "",
        f"Problem: {base.dataset} ({base.num_clients} clients, all sampled each round), logreg with "
        f"lambda = {const['mu']}, {base.local_epochs} local epoch(s) of batch {base.batch_size} "
        f"(E = {const['E']} local steps per round), {base.rounds} rounds.",
        f"Constants: L = {const['L']:.4f}, mu = {const['mu']}, kappa = L/mu = {const['kappa']:.2f}, "
        f"gamma = max(8 kappa, E) = {const['gamma']:.1f}, beta = 2/mu = {const['beta']:.1f}, "
        f"eta_t = beta / (gamma + t), eta_0 = {const['lr0']:.4f}.",
        f"F* = {f_star:.10f} (L-BFGS, float64; gradient norm there {grad_norm:.1e}).",
        "",
        "Slope: log(F(w_t) - F*) against log(round), fitted per seed over the last decade of rounds; mean and 95% "
        "interval over seeds. -1 is the theorem's O(1/T); `bound` is the slope of the theorem's bound "
        "1/(gamma + t) itself over the same rounds (t = E x round): what O(1/T) looks like before t >> gamma.",
        "",
        f"Window: rounds {rows[0]['window']}, where the bound is steep (its slope there: `w bound`). `w slope` is the "
        "slope fitted over the window alone; `growth` is the mean of (gamma + t)(F - F*) over the window's last 25 "
        "rounds over its first 25, mean [95%] over seeds: about 1 at the bound's rate, 2 or more for a row that "
        "plateaus or drifts. "
        f"**Criterion** (`rate`): a row keeps the bound's rate if the growth's upper end is at most {GROWTH_MAX} "
        "(its slope within 0.32 of the bound's over the window's doubling of t) and its final F - F* is below its "
        "first round's (a row that blew up and falls back steeply is not converging).",
        "",
        "| algorithm | partition | clients (sampled/all) | seeds | rounds | slope | 95% interval | bound | "
        "w slope [95%] | w bound | growth [95%] | rate | F - F* at round 100 [95%] | final F - F* [95%] |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['algorithm']} | {r['partition']} | {r['clients']} | {r['seeds']} | {r['rounds']} | "
              f"{r['slope']:.3f} | "
              f"[{r['slope_lo']:.3f}, {r['slope_hi']:.3f}] | {r['bound_slope']:.3f} | "
              f"{r['w_slope']:.3f} [{r['w_slope_lo']:.3f}, {r['w_slope_hi']:.3f}] | {r['w_bound']:.3f} | "
              f"{r['growth']:.2f} [{r['growth_lo']:.2f}, {r['growth_hi']:.2f}] | {'yes' if r['converges'] else 'no'} | "
              f"{_cell(r, 100)} | {_cell(r, r['rounds'])} |" for r in rows]
    if notes:
        lines += ["", "**Non-finite F - F\\*** (a row's statistics above are not defined where its curves are not; "
                  "a host run of the same config tells a diverging model from a failing metric): "
                  + "; ".join(notes) + "."]
    gaps = {(r["partition"], r["clients"]): r["surrogate_gap"] for r in rows if r["surrogate_gap"] > 0}
    if gaps:
        lines += ["", "FedAvg's limit with unequal local work (clients of unequal sizes, one epoch each): as its "
                  "learning rate vanishes it reaches the optimum of the objective that weights client k by p_k S_k "
                  "(Wang et al. 2020), whose F - F* is "
                  + "; ".join(f"{g:.3e} ({p}, {c} clients)" for (p, c), g in gaps.items())
                  + ". FedNova's limit is F* itself."]
    lines += ["", "Rows with `_const` run at the constant learning rate eta_0 instead of the schedule: `_const` itself "
              "with local full-batch gradient descent (each client's whole data every step, 20 local epochs of one "
              "step: E = 20 as above), `_const_sgd` with the problem's mini-batches of 20. `_pp` rows sample 10 of 40 "
              "clients a round."]
    if bench:
        lines += ["", f"Sweep speed: {bench['seeds']} seeds of fedbat ({bench['rounds']} rounds) as one vmapped "
                  "program "
                  f"{bench['vmapped_s']:.1f} s, one after another {bench['sequential_s']:.1f} s: "
                  f"**{bench['speedup']:.2f}x** (compile excluded). Final F - F*: vmapped "
                  f"{bench['final_mean_vmapped']:.3e} +- {bench['final_std_vmapped']:.1e}, one by one "
                  f"{bench['final_mean_sequential']:.3e} +- {bench['final_std_sequential']:.1e} "
                  "(mean +- sd over seeds; "
                  "not bit-equal: batching changes summation order and stochastic rounding amplifies it)."]
    prefix.with_name(prefix.name + ".md").write_text("\n".join(lines) + "\n")
    plot(prefix.with_name(prefix.name + ".png"), curves)


def _cell(row: dict, r: int) -> str:
    if f"subopt_r{r}" not in row:
        return ""
    return f"{row[f'subopt_r{r}']:.3e} [{row[f'subopt_r{r}_lo']:.2e}, {row[f'subopt_r{r}_hi']:.2e}]"


def plot(path: Path, curves) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    partitions = sorted({p for p, _ in curves})
    fig, axes = plt.subplots(1, len(partitions), figsize=(7 * len(partitions), 5.5), squeeze=False)
    styles = ["-", "--", ":", "-."]  # 10 colours a style: each row keeps its own look
    for ax, partition in zip(axes[0], partitions):
        for i, ((p, name), mean) in enumerate((k, v) for k, v in curves.items() if k[0] == partition):
            r = np.arange(1, len(mean) + 1)
            ax.loglog(r, np.maximum(mean, 1e-12), styles[(i // 10) % 4], color=f"C{i % 10}", label=name)
        r = np.arange(1, len(mean) + 1)
        anchor = curves[(partition, "fedavg")] if (partition, "fedavg") in curves else mean
        ax.loglog(r, anchor[len(r) // 10] * (len(r) // 10 + 1) / r, "k--", lw=0.8, label="slope -1")
        ax.set(title=partition, xlabel="round", ylabel="F(w_t) - F* (mean over seeds)")
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(cli.guarded("convergence", lambda: main(*cli.parse_args(parser(), sys.argv[1:], DEFAULT_CONFIG))))
