"""Timing rounds, for the benchmarks (experiments/bench.py, scale.py, gpu_check.py): one loop, one formula.

    exp = fb.build(config)
    t = time_rounds(exp, rounds=3)        # round 1 compiles; rounds 2..4 are timed
    t.median, t.first, samples_per_round(exp) / t.median

Speed is measured, never asserted: these numbers go to JSON files and tables, not to tests.
"""
from __future__ import annotations

import time
from typing import Any, NamedTuple

import jax
import numpy as np

from fedbat_jax.data import Dataset


class Timed(NamedTuple):
    """One timed round: its wall seconds, the CPU seconds of this process's threads (XLA's included) meanwhile,
    the new server state and the round's metrics."""

    seconds: float
    cpu_seconds: float
    server: Any
    metrics: dict


class RoundTimes(NamedTuple):
    first: float  # seconds of round 1 (compilation included)
    times: list  # seconds of each timed round after it
    server: Any  # the server state after the last round
    train_loss: float  # of the last round

    @property
    def median(self) -> float:
        return float(np.median(self.times))

    @property
    def compile_s(self) -> float:
        """Round 1 less a timed round: the compilation estimate."""
        return max(0.0, self.first - self.median)


def timed_round(exp, server, r: int) -> Timed:
    """Round ``r``, timed (waiting for its result): wall and process CPU seconds, the new server state, metrics."""
    t0, c0 = time.perf_counter(), time.process_time()
    server, m = exp.run_round(server, r)
    jax.block_until_ready((server, m["train_loss"]))
    return Timed(time.perf_counter() - t0, time.process_time() - c0, server, m)


def time_rounds(exp, rounds: int, server=None, first_round: int = 1) -> RoundTimes:
    """Run round ``first_round`` (compiles) and then ``rounds`` more, timing each."""
    server = exp.server if server is None else server
    first, _, server, m = timed_round(exp, server, first_round)
    times = []
    for r in range(first_round + 1, first_round + 1 + rounds):
        seconds, _, server, m = timed_round(exp, server, r)
        times.append(seconds)
    return RoundTimes(first, times, server, float(m["train_loss"]))


def cohort_examples(exp, r: int) -> int:
    """Training examples round ``r`` of ``exp`` processes: over its cohort, every full pass over a client's round
    examples (``m_k``) and the batches of a last partial pass (``local_steps``)."""
    from fedbat_jax.rounds import cohort

    roster, c = exp.federation.roster, exp.config
    k = cohort(c.seed, r, len(roster.sizes), c.clients_per_round)
    used = roster.sizes if roster.used is None else roster.used
    full, rest = np.divmod(roster.num_steps[k], roster.per_epoch[k])
    return int(np.sum(full * used[k] + rest * roster.batch))


def samples_per_round(exp) -> int:
    """Training samples a round processes: the mean client size x clients per round x local epochs."""
    c = exp.config
    return int(np.mean([len(p) for p in exp.parts]) * c.clients_per_round * c.local_epochs)


def random_pixels(n: int, classes: int = 10) -> Dataset:
    """32x32x3 images of uniform random pixels with CIFAR's crop+flip, for timing ResNet-10 where no CIFAR
    files are at hand (speed does not depend on pixel values; the name says what they are)."""
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, classes, n).astype(np.int32)
    return Dataset("random pixels (timing only)", x, y, x[:256], y[:256], classes, (0.5,) * 3, (0.25,) * 3,
                   augment="crop_flip")
