"""Whole rounds on a tiny config: FedAvg and FedBAT, both backends, bit counts, determinism, resume."""
from __future__ import annotations

import concurrent.futures
import json
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fedbat_jax as fb
from conftest import tiny
from fedbat_jax.payloads import Dense, Levels, is_payload, payload_bits

from fedbat_jax.backends.fused import pack_lanes
from fedbat_jax.rounds import cohort



@pytest.fixture(scope="module")
def fedbat_exp():
    return fb.build(tiny("fedbat"))


def _leaves_close(a, b, **kw):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **kw)


def test_bits_per_round_follow_the_formula(fedbat_exp):
    params = fedbat_exp.server.params
    kernels = [x.size for p, x in jax.tree_util.tree_leaves_with_path(params) if p[-1].key == "kernel"]
    others = sum(x.size for p, x in jax.tree_util.tree_leaves_with_path(params) if p[-1].key != "kernel")
    stats = sum(x.size for x in jax.tree.leaves(fedbat_exp.server.batch_stats))
    assert sum(kernels) == 389_920 and others == 960 and stats == 960  # REFERENCE.md section 3
    k = 3
    bits = fedbat_exp.wire
    assert bits["uplink_bits"] == k * (sum(kernels) + 32 * len(kernels) + 32 * (others + stats))
    assert bits["downlink_bits"] == k * 32 * (sum(kernels) + others + stats)
    fedavg = fb.build(tiny("fedavg")).wire
    assert fedavg["uplink_bits"] == k * 32 * (sum(kernels) + others + stats)
    assert fedavg["uplink_bits"] / bits["uplink_bits"] > 27  # about 30x smaller uplink


@pytest.mark.slow
def test_payload_round_trip(fedbat_exp):
    learner = fedbat_exp.federation.learner
    params = fedbat_exp.server.params
    update = jax.tree.map(lambda x: jax.random.normal(jax.random.PRNGKey(x.size), x.shape) * 0.01, params)
    scales = jax.tree.map(lambda x: jnp.float32(0.007), params)
    payload, _ = learner.compressor.encode(update, scales, (), jax.random.PRNGKey(0))
    decoded = learner.compressor.decode(payload)
    for path, m in jax.tree_util.tree_leaves_with_path(decoded):
        if path[-1].key == "kernel":
            np.testing.assert_allclose(np.abs(np.asarray(m)), np.float32(0.007))
    conv = decoded["BatchNorm_0"]["scale"]
    np.testing.assert_array_equal(conv, update["BatchNorm_0"]["scale"])  # full precision leaves exact
    payload_size = payload_bits(payload)
    kinds = jax.tree.leaves(payload, is_leaf=is_payload)
    assert {type(p) for p in kinds} == {Levels, Dense}
    assert payload_size == sum(p.levels.size * 8 + 32 if isinstance(p, Levels) else p.values.size * 32 for p in kinds)


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["fedavg", "fedbat"])
def test_round_trains_and_is_deterministic(algorithm):
    exp = fb.build(tiny(algorithm))
    s1, m1 = exp.run_round(exp.server, 1)
    s2, m2 = exp.run_round(exp.server, 1)
    _leaves_close(s1.params, s2.params, rtol=0, atol=0)  # same config and seed, same numbers
    assert np.isfinite(float(m1["train_loss"]))
    moved = [float(jnp.abs(a - b).max())
             for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(exp.server.params))]
    assert min(moved) > 0  # every leaf was updated
    if algorithm == "fedbat":  # binarized leaves move by a weighted average of +-alpha
        d = s1.params["Conv_2"]["kernel"] - exp.server.params["Conv_2"]["kernel"]
        assert float(jnp.abs(d).max()) <= 5e-2 + 1e-6


def _relative_update_error(exp_a, exp_b, r=1):
    """Per leaf, |update_a - update_b| / |update_b| of the global model after round r."""
    w0 = exp_b.server.params
    pa, pb = exp_a.run_round(exp_a.server, r)[0].params, exp_b.run_round(exp_b.server, r)[0].params
    return [float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b - w)) for a, b, w in
            zip(jax.tree.leaves(pa), jax.tree.leaves(pb), jax.tree.leaves(w0))]


@pytest.mark.slow
def test_host_threads_and_fused_lanes_agree():
    """The backends compute the same round. Threads change nothing; the fused program (vmapped,
    in a scan) rounds differently, and training amplifies rounding-level differences quickly, so it
    must agree to a small fraction of the update (a wrong client, step or reset would be O(1))."""
    small = dict(batch_size=128, model_width=16)  # a half-width CNN4 (16 channels, not 32): the same programs
    host = fb.build(tiny("fedavg", **small))
    threaded = fb.build(tiny("fedavg", client_threads=2, **small))
    _leaves_close(threaded.run_round(threaded.server, 1)[0].params, host.run_round(host.server, 1)[0].params,
                  rtol=0, atol=0)
    # FedBAT with phi = 1 trains in full precision, as FedAvg does, and binarizes only the upload, whose
    # stochastic signs amplify such differences further.
    host = fb.build(tiny("fedbat", phi=1.0, **small))
    fused = fb.build(tiny("fedbat", phi=1.0, backend="fused", lanes=2, **small,  # lanes hold 2
                             lane_loop="scan"))  # the GPU/TPU program
    errors = _relative_update_error(fused, host)
    # (a stochastic sign flips where u sits near a threshold: binarized leaves get a looser bound)
    assert max(errors) < 0.3 and np.median(errors) < 0.05, errors


def test_the_host_backends_client_threads_start_with_sigterm_and_sigint_held():
    """A SIGTERM or Ctrl-C that lands while the host backend starts a client thread is handled in the main
    thread after the start, not inside it (CPython's ``Thread.start`` would leave the new thread to die at its
    start with a traceback on stderr, as a SIGTERM'd run once showed): the started threads keep them blocked."""
    from fedbat_jax.backends.host import submit

    held = {signal.SIGTERM, signal.SIGINT}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        masks = [submit(pool, signal.pthread_sigmask, signal.SIG_BLOCK, set()).result() for _ in range(3)]
    assert all(held <= mask for mask in masks)
    assert not held & signal.pthread_sigmask(signal.SIG_BLOCK, set())  # the main thread's mask is back


@pytest.mark.slow
def test_no_retrace_across_rounds(fedbat_exp):
    """After round 1 compiled everything, later rounds trace nothing (JAX reports every trace it makes)."""
    import jax.monitoring

    server, _ = fedbat_exp.run_round(fedbat_exp.server, 1)
    traces = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, seconds, **kw: traces.append(event) if event.endswith("jaxpr_trace_duration") else None)
    for r in range(2, 4):
        server, m = fedbat_exp.run_round(server, r)
        jax.block_until_ready(m["train_loss"])
    assert traces == []


def test_cohort_sampling():
    a = cohort(0, 5, 100, 10)
    assert len(set(a.tolist())) == 10 and a.min() >= 0 and a.max() < 100 and np.all(np.diff(a) > 0)
    np.testing.assert_array_equal(a, cohort(0, 5, 100, 10))
    assert not np.array_equal(a, cohort(0, 6, 100, 10))


def test_pack_lanes_covers_every_step_once():
    steps = np.array([100, 10, 12, 30, 95, 8, 40, 20, 9, 11])
    sched = pack_lanes(steps, quantum=10)
    slot, t, first, last = sched
    k = len(steps)
    for i, s in enumerate(steps):
        cells = np.argwhere(slot == i)
        assert len(cells) == s and len(set(cells[:, 0])) == 1  # one lane, all its steps
        lane = cells[0, 0]
        np.testing.assert_array_equal(t[lane][slot[lane] == i], np.arange(s))
        assert first[lane][slot[lane] == i][0] == 1 and last[lane][slot[lane] == i][-1] == 1
    assert sched.shape[2] % 10 == 0 and sched.shape[2] >= steps.max()
    work = (slot < k).sum()
    assert work == steps.sum()
    assert sched.shape[1] * sched.shape[2] < 0.6 * k * steps.max()  # far less than padding all to the max


@pytest.mark.slow
def test_run_writes_metrics_and_resumes_exactly(tmp_path):
    full = fb.run(tiny(rounds=3, checkpoint_every=1), tmp_path / "a")
    part = fb.run(tiny(rounds=2, checkpoint_every=1), tmp_path / "b")
    resumed = fb.run(tiny(rounds=3, checkpoint_every=1), tmp_path / "b", allow_change=["rounds"])
    lines = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in lines] == [1, 2, 3] and len(part) == 2
    for key in ("round", "test_accuracy", "test_loss", "train_loss", "uplink_bits", "downlink_bits"):
        assert [r[key] for r in full] == [r[key] for r in resumed] == [r[key] for r in lines]
    assert all(r["round_seconds"] > 0 for r in lines)
