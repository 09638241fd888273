"""User-level differential privacy: DP-FedAvg's clipped sum and server noise (McMahan et al., ICLR 2018), adaptive
clipping (Andrew et al., NeurIPS 2021), and the accounting, from Google's ``dp-accounting`` library.

The threat model is *central* DP: a trusted server sees each client's upload and releases only the noised sum.
Per round, with ``C`` the clip, ``z`` the noise multiplier and ``E[K]`` the expected cohort:

1. ``clip_decoded``: each sampled client's *decoded* upload ``d_k`` (what the server would add) is scaled to L2 norm
   at most ``C`` over the whole model: ``d_k min(1, C / ||d_k||)``. For a sign or level payload this scales its
   scale(s) (alpha, EDEN's scale, qsgd's norm); for top-k its kept values; the bits on the wire do not change;
2. ``privatize``: the server adds ``N(0, (z C)^2)`` per coordinate to ``sum_k clip(d_k)`` and divides by ``E[K]``
   (a fixed denominator, not the cohort drawn), the noise from a key of ``(seed, round)``; with adaptive clipping
   (``dp_adaptive_quantile`` = gamma) the clip then follows ``C <- C exp(-eta (b - gamma))``, ``b`` the noised
   fraction of clients whose norm was within ``C`` (its own noise ``sigma_b``; the update's multiplier becomes
   ``z_delta = (z^-2 - (2 sigma_b)^-2)^-1/2`` so that the pair costs what ``z`` alone would: Andrew et al., Thm 1).

``accountant_for`` and ``epsilon`` turn ``(z, sampling, rounds, delta)`` into epsilon with the library's RDP (or, for
Poisson sampling, PLD) accountant: Poisson sampling (``sampling=poisson``) is the add-or-remove-one-client
neighbourhood; uniform K-of-N sampling without replacement is replace-one-client (its epsilon is not comparable to
the Poisson one: a replacement is a removal and an addition). ``solve_noise_multiplier`` calibrates ``z`` to a
target epsilon before a run (``dp_target_epsilon``).
"""
from __future__ import annotations

import functools
import logging
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fedbat_jax.errors import ConfigError
from fedbat_jax.registry import ABOVE_ZERO, NON_NEGATIVE, Range, Setting

# The settings (core settings of ``fedbat_jax.config``, checked by ``check``).
SETTINGS: tuple[Setting, ...] = (
    Setting("sampling", "uniform", "how a round's cohort is drawn: uniform (clients_per_round of num_clients, "
                                   "without replacement) | poisson (each client with probability "
                                   "clients_per_round / num_clients: a cohort of varying size)",
            ("uniform", "poisson")),
    Setting("poisson_slots", 0, "sampling=poisson: the most clients a round trains (its fixed shape; 0 = auto, "
                                "the size a Binomial cohort exceeds with probability < 1e-12). A round that draws "
                                "more stops the run with one line", NON_NEGATIVE),
    Setting("dp_clip", 0.0, "user-level DP: each sampled client's decoded upload is clipped to this L2 norm "
                            "(0 = no DP; with dp_adaptive_quantile: the initial clip)", NON_NEGATIVE),
    Setting("dp_noise_multiplier", 0.0, "user-level DP: the server adds N(0, (z dp_clip)^2) per coordinate to the "
                                        "clipped sum (z; 0 = no noise, infinite epsilon)", NON_NEGATIVE),
    Setting("dp_delta", 0.0, "user-level DP: the delta epsilon is reported at (0 = 1 / num_clients)",
            Range(0, 1, high_open=True)),
    Setting("dp_target_epsilon", 0.0, "user-level DP: solve dp_noise_multiplier for this epsilon at dp_delta after "
                                      "`rounds` rounds, before the run (0 = use dp_noise_multiplier)",
            NON_NEGATIVE),
    Setting("dp_accountant", "rdp", "user-level DP: rdp | pld (dp-accounting's; pld needs sampling=poisson)",
            ("rdp", "pld")),
    Setting("dp_adaptive_quantile", 0.0, "user-level DP: the clip follows this quantile of the decoded uploads' "
                                         "norms (Andrew et al. 2021; 0 = a fixed clip)", Range(0, 1, high_open=True)),
    Setting("dp_clip_lr", 0.2, "adaptive clipping: the clip's geometric step eta (C <- C exp(-eta (b - gamma)))",
            ABOVE_ZERO),
    Setting("dp_count_stddev", 0.0, "adaptive clipping: the noise on the count of unclipped clients (0 = the "
                                    "expected cohort / 20, the paper's)", NON_NEGATIVE),
)
# The DP settings a program may trace (``fedbat_jax.whole_run.TRACEABLE``): a privacy-utility curve is one program.
TRACEABLE = ("dp_clip", "dp_noise_multiplier")
TAIL = 1e-12  # poisson_slots=0: the slots a Binomial(N, q) cohort exceeds with probability below this


class Privacy(NamedTuple):
    """A run's DP mechanism (``clip`` and ``noise_multiplier`` may be traced)."""

    clip: Any  # C (the initial clip when adaptive)
    noise_multiplier: Any  # z: what the accountant charges
    expected_cohort: float  # E[K]: the fixed denominator
    quantile: float = 0.0  # gamma (0: a fixed clip)
    clip_lr: float = 0.2  # eta
    count_stddev: float = 0.0  # sigma_b (adaptive)

    @property
    def adaptive(self) -> bool:
        return self.quantile > 0


class DPState(NamedTuple):
    """The server's DP state, checkpointed with the model: the current clip and the rounds the accountant has
    charged (its whole state: every round is the same mechanism, so epsilon is a function of this count)."""

    clip: jax.Array  # float32
    rounds: jax.Array  # int32


def init(p: Privacy) -> DPState:
    return DPState(jnp.asarray(p.clip, jnp.float32), jnp.int32(0))


def clip_decoded(decoded: Any, clip: jax.Array) -> tuple[Any, jax.Array]:
    """``(d min(1, C / ||d||), 1[||d|| <= C])``: a decoded upload clipped to L2 norm ``clip`` over every leaf (a
    norm within the clip is multiplied by exactly 1, so not one bit changes)."""
    leaves = jax.tree.leaves(decoded)
    norm = jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves)) if leaves else jnp.float32(0)
    within = norm <= clip
    factor = jnp.where(within, jnp.float32(1), clip / jnp.maximum(norm, 1e-30))
    return jax.tree.map(lambda x: (factor * x).astype(x.dtype), decoded), within.astype(jnp.float32)


def update_noise_multiplier(p: Privacy) -> Any:
    """The multiplier on the update's noise: ``z``, or with adaptive clipping ``(z^-2 - (2 sigma_b)^-2)^-1/2``."""
    if not p.adaptive:
        return p.noise_multiplier
    z = jnp.asarray(p.noise_multiplier, jnp.float32)
    return jnp.where(z > 0, 1.0 / jnp.sqrt(jnp.maximum(z ** -2.0 - (2 * p.count_stddev) ** -2.0, 1e-30)), 0.0)


def privatize(update: Any, unclipped: jax.Array, state: DPState, key: jax.Array, p: Privacy,
              ) -> tuple[Any, DPState, dict]:
    """The server's step on ``update`` = ``sum_k clip(d_k) / E[K]`` (the clients' weights are ``1 / E[K]``):
    Gaussian noise of stddev ``z_delta C / E[K]`` per coordinate, and (adaptive) the clip's update from the noised
    count ``unclipped``. Returns the noised update, the new state and the round's ``dp_clip`` (the clip used) and,
    when adaptive, ``dp_unclipped`` (the noised fraction within it)."""
    std = update_noise_multiplier(p) * state.clip / p.expected_cohort
    noise_key, count_key = jax.random.split(key)
    if not (isinstance(p.noise_multiplier, (int, float)) and p.noise_multiplier == 0):  # traced: always drawn
        leaves, tree = jax.tree.flatten(update)
        keys = jax.random.split(noise_key, max(len(leaves), 1))
        update = jax.tree.unflatten(tree, [x + std * jax.random.normal(k, x.shape, x.dtype)
                                           for x, k in zip(leaves, keys)])
    stats = {"dp_clip": state.clip}
    clip = state.clip
    if p.adaptive:
        b = (unclipped + p.count_stddev * jax.random.normal(count_key, ())) / p.expected_cohort
        clip = state.clip * jnp.exp(-p.clip_lr * (b - p.quantile))
        stats["dp_unclipped"] = b
    return update, DPState(clip.astype(jnp.float32), state.rounds + 1), stats


# ---- the settings --------------------------------------------------------------------------------------------
def enabled(c) -> bool:
    return c.dp_clip > 0


def check(c, algorithm, error_feedback: str) -> None:
    """The DP settings together (one line each), before any data loads. ``algorithm``: the ``Algorithm`` record."""
    dp = enabled(c)
    if not dp:
        for name in ("dp_noise_multiplier", "dp_target_epsilon", "dp_adaptive_quantile"):
            if c[name] > 0:
                raise ConfigError(f"{name}={c[name]} needs dp_clip > 0 (the clip bounds each client's "
                                  "contribution, which the noise is scaled to)")
        return
    if c.aggregation_weights != "uniform":
        raise ConfigError(f"dp_clip needs aggregation_weights=uniform (got {c.aggregation_weights}): a client's "
                          "weight must not depend on its data, or its clipped update's sensitivity is not dp_clip")
    hooks = [name for name in ("message", "update_scale", "server_step") if getattr(algorithm, name) is not None]
    if hooks:
        raise ConfigError(f"dp_clip does not compose with algorithm={c.algorithm}: its {hooks[0]} sends or scales "
                          "client data outside the clipped, noised sum; use fedavg, fedprox or a compressor alias")
    if error_feedback == "ef21":
        raise ConfigError("dp_clip does not compose with error_feedback=ef21: its server estimate sums every "
                          "client's state by its share of the federation, outside the clipped sum; use ef or none")
    if c.dp_target_epsilon > 0 and c.dp_noise_multiplier > 0:
        raise ConfigError("set dp_target_epsilon or dp_noise_multiplier, not both: the target solves for the "
                          "noise multiplier")
    if c.dp_accountant == "pld" and c.sampling != "poisson":
        raise ConfigError("dp_accountant=pld has no sampling-without-replacement event in dp-accounting; use "
                          "sampling=poisson or dp_accountant=rdp")
    if c.dp_adaptive_quantile > 0 and c.dp_noise_multiplier > 0:
        sigma_b = count_stddev(c, c.clients_per_round)
        if c.dp_noise_multiplier >= 2 * sigma_b:
            raise ConfigError(f"adaptive clipping needs dp_noise_multiplier < 2 x dp_count_stddev = {2 * sigma_b:g} "
                              f"(got {c.dp_noise_multiplier}): raise dp_count_stddev")


def count_stddev(c, expected_cohort: float) -> float:
    return c.dp_count_stddev or expected_cohort / 20


def from_config(c, num_clients: int) -> Privacy | None:
    """The run's mechanism (``None`` without DP); ``dp_target_epsilon`` solved for ``z`` here."""
    if not enabled(c):
        return None
    z = c.dp_noise_multiplier
    if c.dp_target_epsilon > 0:
        z = solve_noise_multiplier(c.dp_target_epsilon, accountant_for(c, num_clients, 1.0), c.rounds)
    k = float(c.clients_per_round)
    return Privacy(c.dp_clip, z, k, c.dp_adaptive_quantile, c.dp_clip_lr, count_stddev(c, k))


# ---- accounting (dp-accounting) -------------------------------------------------------------------------------
class Accountant(NamedTuple):
    """What the accountant needs: one round's mechanism, its sampling and the delta epsilon is reported at."""

    noise_multiplier: float
    poisson: bool
    num_clients: int
    cohort: int  # K (expected K under Poisson)
    delta: float
    kind: str = "rdp"  # rdp | pld


def accountant_for(c, num_clients: int, noise_multiplier: float | None = None) -> Accountant:
    z = c.dp_noise_multiplier if noise_multiplier is None else noise_multiplier
    return Accountant(float(z), c.sampling == "poisson", int(num_clients), int(c.clients_per_round),
                      c.dp_delta or 1.0 / num_clients, c.dp_accountant)


def _library():
    logging.getLogger("absl").setLevel(logging.ERROR)  # RDP's fractional orders warn when they do not converge
    import dp_accounting
    return dp_accounting


def dp_event(a: Accountant, noise_multiplier: float | None = None):
    """One round as a ``dp_accounting`` event: a Gaussian mechanism, Poisson-sampled (probability K/N) or sampled
    without replacement (K of N)."""
    dpa = _library()
    gaussian = dpa.GaussianDpEvent(a.noise_multiplier if noise_multiplier is None else noise_multiplier)
    if a.poisson:
        return dpa.PoissonSampledDpEvent(a.cohort / a.num_clients, gaussian)
    return dpa.SampledWithoutReplacementDpEvent(a.num_clients, a.cohort, gaussian)


def _fresh(a: Accountant):
    dpa = _library()
    if a.kind == "pld":
        return dpa.pld.PLDAccountant()
    relation = dpa.NeighboringRelation.ADD_OR_REMOVE_ONE if a.poisson else dpa.NeighboringRelation.REPLACE_ONE
    return dpa.rdp.RdpAccountant(neighboring_relation=relation)


@functools.lru_cache(maxsize=4096)
def epsilon(a: Accountant, rounds: int) -> float:
    """Epsilon at ``a.delta`` after ``rounds`` rounds (``inf`` without noise, 0 before the first round)."""
    if rounds <= 0:
        return 0.0
    if a.noise_multiplier <= 0:
        return math.inf
    acc = _fresh(a)
    acc.compose(dp_event(a), int(rounds))
    return float(acc.get_epsilon(a.delta))


def solve_noise_multiplier(target_epsilon: float, a: Accountant, rounds: int) -> float:
    """The smallest noise multiplier whose epsilon after ``rounds`` rounds is at most ``target_epsilon`` (the
    library's calibration, to a relative tolerance of 1e-4)."""
    dpa = _library()
    try:
        return float(dpa.calibrate_dp_mechanism(
            lambda: _fresh(a), lambda z: dpa.SelfComposedDpEvent(dp_event(a, z), int(rounds)), target_epsilon,
            a.delta, dpa.LowerEndpointAndGuess(1e-3, 1.0), tol=1e-4 * target_epsilon))
    except (ValueError, RuntimeError) as e:
        raise ConfigError(f"no noise multiplier reaches epsilon {target_epsilon} at delta {a.delta:g} after "
                          f"{rounds} rounds ({e})") from None


__all__ = ["Accountant", "DPState", "Privacy", "SETTINGS", "TRACEABLE", "accountant_for", "check", "clip_decoded",
           "dp_event", "epsilon", "from_config", "init", "privatize", "solve_noise_multiplier"]
