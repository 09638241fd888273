"""The platform: typed payloads, one extension mechanism, the learner's upload against hand numbers, the debug
backend against host, host against fused at a tight tolerance, make_train's backend."""
from __future__ import annotations

import types
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fedbat_jax as fb
from conftest import tiny
from fedbat_jax.backends import BACKENDS
from fedbat_jax.compressors import COMPRESSORS, ef21, full_precision, scaled_sign, stochastic_levels
from fedbat_jax.federated import Broadcast, Client, ClientInput, ClientRow, Learner
from fedbat_jax.local import LocalConfig, init_client
from fedbat_jax.payloads import Dense, PayloadError, decoder, payload_kind


class Toy(NamedTuple):  # not registered as a payload kind
    values: jax.Array


def test_a_payload_the_decoder_does_not_know_is_one_line_naming_the_leaf():
    template = {"a": {"kernel": jnp.zeros((4, 2))}, "b": jnp.zeros(3)}
    mask = {"a": {"kernel": True}, "b": False}
    levels = stochastic_levels(mask, template, 1, False)
    decode = levels.decode
    signs = scaled_sign(mask, template).encode(template, None, (), None)[0]
    good = levels.encode(template, jax.tree.map(lambda x: jnp.float32(1), template), (), jax.random.PRNGKey(0))[0]
    with pytest.raises(PayloadError, match=r"^payload leaf \['a'\]\['kernel'\]: this decoder reads Dense, Levels, "
                                           r"got Signs"):
        jax.jit(decode)(signs)  # at trace time
    with pytest.raises(PayloadError, match=r"payload leaf \['b'\]: .* got a bare"):
        decode({"a": good["a"], "b": jnp.zeros(3)})
    with pytest.raises(PayloadError, match=r"payload leaf \['b'\]: .* got a bare Toy, not a payload"):
        decode({"a": good["a"], "b": Toy(jnp.zeros(3))})
    decode(good)  # its own payload decodes
    # FedAvg's decoder knows only Dense, through the same mechanism
    with pytest.raises(PayloadError, match=r"^payload leaf \['a'\]\['kernel'\]: this decoder reads Dense, got Signs"):
        full_precision().decode(signs)
    np.testing.assert_array_equal(full_precision().decode({"b": Dense(jnp.ones(3))})["b"], np.ones(3))


def test_a_new_payload_kind_is_one_registration():
    @payload_kind
    class Halves(NamedTuple):
        values: jax.Array  # float16

    decode = decoder({"w": jnp.zeros(2)}, {Halves: lambda p, shape: p.values.astype(jnp.float32)})
    out = decode({"w": Halves(jnp.array([1.5, -2.0], jnp.float16))})
    np.testing.assert_array_equal(out["w"], [1.5, -2.0])


def test_every_registry_refuses_an_unknown_name_in_one_line_and_validate_reads_them():
    for registry in (fb.ALGORITHMS, fb.COMPRESSORS, fb.BACKENDS, fb.MODELS, fb.DATASETS):
        with pytest.raises(fb.ConfigError, match=rf"^unknown {registry.kind} 'nope'; choose one of: "):
            registry["nope"]
    from fedbat_jax.optimizers import LR_SCHEDULES, SERVER_OPTIMIZERS, learning_rate, server_optimizer

    with pytest.raises(fb.ConfigError, match="unknown server_optimizer 'lamb'"):
        server_optimizer(types.SimpleNamespace(server_optimizer="lamb"))
    with pytest.raises(fb.ConfigError, match="unknown lr_schedule 'step'"):
        learning_rate("step", 0.1, 1.0, 1.0, 0, 10)
    assert set(LR_SCHEDULES) == {"constant", "inverse_time", "cosine"} and "yogi" in SERVER_OPTIMIZERS
    # an entry registered at run time is a valid setting at once, and its settings' help comes from it
    BACKENDS["host_again"] = BACKENDS["host"]
    try:
        fb.validate(tiny(backend="host_again"))
    finally:
        del BACKENDS["host_again"]
    with pytest.raises(fb.ConfigError, match="unknown backend 'host_again'"):
        fb.validate(tiny(backend="host_again"))


def _upload_case(compressor, alpha0=0.02, a=0.1):
    params = {"w": jnp.zeros((2, 3))}
    mask = {"w": True}
    local = LocalConfig(lr=0.1, batch_size=4, rho=6.0, alpha_min=5e-4, alpha_max=5e-2)
    learner = Learner(None, mask, compressor(mask, params), local, 1)
    u = jnp.array([[0.3, -0.2, 0.5], [-0.4, 0.25, -0.1]])  # every |u| >= alpha: Q(u, alpha) = alpha sign(u)
    state = init_client(params, {}, mask, local)._replace(
        theta={"w": u}, a={"w": jnp.float32(a)}, alpha0={"w": jnp.float32(alpha0)}, loss_sum=jnp.float32(3.0),
        seen=jnp.float32(6.0))
    inp = ClientInput(jnp.int32(4), jnp.int32(0), jnp.zeros(8, jnp.int32), jnp.int32(6), jnp.int32(2), jnp.int32(1),
                      jnp.float32(0.25), jnp.float32(0.05), jax.random.PRNGKey(7), jnp.int32(0), jnp.bool_(True))
    row = learner.fresh_row(params)
    sent = Broadcast(params, {}, ())
    return learner.client_final(sent, Client(state, jnp.zeros((1, 8), jnp.int32), ()), row, inp), u


def test_client_final_is_fedbats_upload_with_the_learned_alpha_and_its_weight():
    """alpha = clip(alpha0 exp(rho a), alpha_min, alpha_max) = clip(0.02 e^0.6, ...) = 0.036442; every |u| > alpha,
    so the upload is alpha sign(u) whatever the draw, weighted by p_k = 0.25 (by w_k = 0.05 under EF21)."""
    alpha = 0.02 * np.exp(6.0 * 0.1)
    (contribution, row), u = _upload_case(lambda m, p: stochastic_levels(m, p, 1, True))
    np.testing.assert_allclose(contribution.update["w"], 0.25 * alpha * np.sign(u), rtol=1e-6)
    assert float(contribution.loss_sum) == 3.0 and float(contribution.seen) == 6.0 and row == ClientRow((), ())
    (contribution, row), _ = _upload_case(lambda m, p: ef21(stochastic_levels(m, p, 1, True), m))
    np.testing.assert_allclose(contribution.update["w"], 0.05 * alpha * np.sign(u), rtol=1e-6)
    np.testing.assert_allclose(row.compressor["w"], alpha * np.sign(u), rtol=1e-6)  # EF21's new estimate g
    # a step size past the clip: alpha_max
    (contribution, _), _ = _upload_case(lambda m, p: stochastic_levels(m, p, 1, True), a=1.0)
    np.testing.assert_allclose(contribution.update["w"], 0.25 * 0.05 * np.sign(u), rtol=1e-6)


@pytest.mark.slow
def test_debug_backend_equals_host_on_logreg():
    a = fb.run(tiny("fedbat", model="logreg", backend="debug", rounds=1, clients_per_round=2))
    b = fb.run(tiny("fedbat", model="logreg", backend="host", rounds=1, clients_per_round=2))
    for x, y in zip(a, b):
        assert x["uplink_bits"] == y["uplink_bits"]
        np.testing.assert_allclose(x["train_loss"], y["train_loss"], rtol=1e-6)
        np.testing.assert_allclose(x["test_loss"], y["test_loss"], rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["fedavg", "fedbat"])
def test_host_and_fused_agree_tightly_on_logreg(algorithm):
    """On logreg (no max-pool or ReLU ties to amplify rounding) the packed lanes compute the host loop's round to
    float32 rounding."""
    host = fb.build(tiny(algorithm, model="logreg", phi=1.0))
    fused = fb.build(tiny(algorithm, model="logreg", phi=1.0, backend="fused", lanes=2, lane_loop="scan"))
    a, b = host.run_round(host.server, 1)[0], fused.run_round(fused.server, 1)[0]
    for x, y, w in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), jax.tree.leaves(host.server.params)):
        np.testing.assert_allclose(np.asarray(y - w), np.asarray(x - w), rtol=2e-5, atol=1e-7)


def test_make_train_refuses_a_backend_it_cannot_trace():
    with pytest.raises(fb.ConfigError, match="make_train traces the whole run as one program, and backend=host"):
        fb.make_train(tiny(backend="host"))


def test_a_compressor_spec_says_which_leaves_and_whether_they_train_binarized():
    assert COMPRESSORS["fedbat"].learned_scale and not COMPRESSORS["stoch_binary"].learned_scale
    assert COMPRESSORS["none"].compresses is None
    with pytest.raises(fb.ConfigError, match="algorithm=signsgd is fedavg with compressor=scaled_sign"):
        fb.validate(tiny("signsgd", compressor="qsgd"))
    with pytest.raises(fb.ConfigError, match="does not apply to fedavg with compressor=none"):
        fb.validate(tiny("fedavg", error_feedback="ef"))


def test_plugin_settings_collide_loudly_naming_both_owners():
    """A plugin setting that shadows a core one, or a name two entries declare differently, is refused naming both
    owners; the same Setting shared by two entries (eden and drive's rotation_blocks) is one setting."""
    from fedbat_jax.algorithms import Algorithm
    from fedbat_jax.config import plugin_settings
    from fedbat_jax.registry import Registry, Setting

    mu = Setting("prox_mu", 0.01, "fedprox's")
    shared = Registry("algorithm", {"a": Algorithm("a", settings=(mu,)), "b": Algorithm("b", settings=(mu,))})
    assert [s.name for s in plugin_settings([shared])] == ["prox_mu"]
    two = Registry("algorithm", {"fedprox": Algorithm("p", settings=(mu,)),
                                 "mine": Algorithm("m", settings=(Setting("prox_mu", 0.1, "mine"),))})
    with pytest.raises(fb.ConfigError, match="setting 'prox_mu' of algorithm 'mine' is declared differently by "
                                             "algorithm 'fedprox'"):
        plugin_settings([two])
    core = Registry("algorithm", {"mine": Algorithm("m", settings=(Setting("lr", 1.0, "mine"),))})
    with pytest.raises(fb.ConfigError, match="setting 'lr' of algorithm 'mine' shadows the core setting"):
        plugin_settings([core])
    # any registry's entry: a function entry marked with @declares (a backend here) against an algorithm's
    from fedbat_jax.registry import declares

    backends = Registry("backend", {"mine": declares(Setting("prox_mu", 0.5, "mine"))(lambda *a: None)})
    with pytest.raises(fb.ConfigError, match="setting 'prox_mu' of backend 'mine' is declared differently by "
                                             "algorithm 'fedprox'"):
        plugin_settings([two.__class__("algorithm", {"fedprox": two["fedprox"]}), backends])


def test_a_payload_kind_sharing_a_field_it_does_not_have_is_refused():
    """``shared`` fields are left off the wire; a misspelt one would silently count the field it meant."""
    with pytest.raises(PayloadError, match=r"payload kind Keyed: shared names 'kee', not one of its fields "
                                           r"\(values, key\)"):
        @payload_kind
        class Keyed(NamedTuple):
            values: jax.Array
            key: jax.Array
            shared = ("kee",)


@pytest.mark.parametrize("field, value, needle", [("prox_mu", -1.0, "prox_mu must be >= 0"),
                                                  ("feddyn_alpha", 0.0, "feddyn_alpha must be > 0"),
                                                  ("topk_fraction", 2.0, "topk_fraction must be in (0, 1]")])
def test_every_entrys_check_runs_when_it_is_not_the_active_one(field, value, needle):
    c = fb.default_config()
    c.update(algorithm="fedavg", **{field: value})  # none of these settings' entries is active
    with pytest.raises(fb.ConfigError, match=needle.replace("(", r"\(").replace("]", r"\]")):
        fb.validate(c)
