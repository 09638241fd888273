"""One client's local training (REFERENCE.md section 1, steps 3-5), as pure functions.

FedBAT works on any Flax model's parameter pytree: a predicate picks the *binarized* leaves (default:
every conv and dense ``kernel``). For those the client trains a latent update ``u`` (starting at 0)
and a step-size exponent ``a``; the forward pass uses ``w + u`` during warm-up and ``w + Q(u, alpha)``
after it. Every other leaf (BatchNorm scale and bias) is trained directly in full precision.
FedAvg is the same client with no leaf binarized.

The trainable pytree ``theta`` therefore holds ``u`` on binarized leaves and the parameter itself on
the others. ``theta`` follows the client optimizer (``fedbat_jax.optimizers``: plain SGD by default, as the
reference; optional momentum and weight decay, the decay acting on the full-precision weights ``w + u``);
``a`` takes plain SGD steps at the same learning rate.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from fedbat_jax.augment import AUGMENTATIONS
from fedbat_jax.binarization import binarize, binarized_mask, default_binarize_predicate, leaf_keys, quantize, step_size  # noqa: F401
from fedbat_jax.objective import model_inputs, scores
from fedbat_jax.optimizers import client_direction, learning_rate

Params = Any
# The step key feeds the binarization draw; augmentation and dropout draw from these folds of it.
AUGMENT_STREAM = 0x41554721
DROPOUT_STREAM = 0x44524f50
# A capped client's subset for the round is drawn from this fold of its shuffle key (epochs use folds 0 .. E-1).
CAP_STREAM = 0x43415000
# Before warm-up ends alpha0 holds the reference's initial value (used if binarization never switches on).
ALPHA0_INIT = 0.01


class LocalConfig(NamedTuple):
    """Hyper-parameters of local training (static: changing one recompiles; ``TRACEABLE`` floats may be traced)."""

    lr: float
    batch_size: int
    rho: float = 6.0
    alpha_min: float = 5e-4
    alpha_max: float = 5e-2
    bits: int = 1  # levels 2^bits of the operator (1: FedBAT's binarization)
    augment: str = "none"  # a name in fedbat_jax.augment.AUGMENTATIONS
    alpha_rule: str = "learned"  # learned (the paper) | max_abs (alpha = max|u|: the theorem's)
    alpha_init_scale: float = 1.0  # alpha0 = this x mean|u| when warm-up ends (1: the paper)
    alpha_bounds: str = "fixed"  # fixed (the paper) | lr (alpha_min, alpha_max scaled by lr_t / lr_0)
    ste: str = "clipped"  # dQ/du: clipped (the paper: zero where |u| > alpha) | identity
    momentum: float = 0.0
    weight_decay: float = 0.0
    lr_schedule: str = "constant"  # a name in fedbat_jax.optimizers.LR_SCHEDULES
    lr_beta: float = 1.0  # inverse_time: lr_beta / (lr_gamma + t)
    lr_gamma: float = 1.0
    rounds: int = 1  # the run's length (cosine schedule)
    max_examples: int = 0  # a cap on the examples a client trains on in a round (0: all of its own)
    pad_ids: tuple[int, ...] = ()  # sequence targets in neither the loss nor the accuracy (the dataset's)
    unscored_ids: tuple[int, ...] = ()  # sequence targets in the loss only (fedbat_jax.objective)

    def lr_at(self, t, steps_per_round):
        """The learning rate at the client's step ``t``, counted over the whole run."""
        return learning_rate(self.lr_schedule, self.lr, self.lr_beta, self.lr_gamma, t, self.rounds * steps_per_round)

    def bounds_scale(self, lr):
        """What the clip bounds of alpha are multiplied by at learning rate ``lr`` (1 unless ``alpha_bounds=lr``)."""
        return lr / self.lr_at(0, 1) if self.alpha_bounds == "lr" else 1.0


class ClientState(NamedTuple):
    """Everything one client carries through its local steps."""

    theta: Params  # binarized leaves: latent update u; other leaves: the parameter itself
    a: Params  # step-size exponent per leaf (a scalar; only binarized leaves use it)
    alpha0: Params  # per leaf scalar: mean|u| taken when warm-up ends
    batch_stats: Any
    opt: Any  # the client optimizer's state for theta (empty for plain SGD)
    loss_sum: jax.Array  # sum of per-target training losses seen so far
    seen: jax.Array  # number of (real, unpadded) targets trained on: examples, or a sequence's counted tokens
    lr_sum: jax.Array  # sum of the learning rates of the steps taken (SCAFFOLD's control variates read it)


def init_client(params: Params, batch_stats: Any, mask: Params, cfg: LocalConfig) -> ClientState:
    """The state a sampled client starts its round from (the broadcast global model)."""
    theta = jax.tree.map(lambda w, b: jnp.zeros_like(w) if b else w, params, mask)
    opt = client_direction(cfg.momentum, cfg.weight_decay).init(theta)
    return ClientState(theta, _scalars(params, 0.0), _scalars(params, ALPHA0_INIT), batch_stats, opt, jnp.float32(0),
                       jnp.float32(0), jnp.float32(0))


def _scalars(params: Params, value: float) -> Params:
    return jax.tree.map(lambda w: jnp.asarray(value, jnp.float32), params)


def step_sizes(a: Params, alpha0: Params, cfg: LocalConfig, theta: Params, scale=1.0) -> Params:
    """Each leaf's alpha: learned, ``clip(alpha0 exp(rho a), scale alpha_min, scale alpha_max)``; or
    (``max_abs``) ``max|u|``, not trained."""
    if cfg.alpha_rule == "max_abs":
        return jax.tree.map(lambda u: jax.lax.stop_gradient(jnp.maximum(jnp.max(jnp.abs(u)), 1e-12)), theta)
    lo, hi = cfg.alpha_min * scale, cfg.alpha_max * scale
    return jax.tree.map(lambda a_, a0: step_size(a_, a0, cfg.rho, lo, hi), a, alpha0)


def effective_params(params: Params, theta: Params, alpha: Params, mask: Params, binarizing: jax.Array, key,
                     bits: int = 1, ste: str = "clipped") -> Params:
    """The weights of the forward pass: ``w + u`` (warm-up) or ``w + Q(u, alpha)``; others ``theta``.

    A select, not ``lax.cond``: on XLA:CPU a cond around the draw cost more than the draw itself.
    """
    keys = leaf_keys(key, params)

    def leaf(w, th, al, b, k):
        if not b:
            return th
        q = binarize(th, al, k) if bits == 1 and ste == "clipped" else quantize(th, al, k, bits, ste)
        return w + jnp.where(binarizing, q, th)

    return jax.tree.map(leaf, params, theta, alpha, mask, keys)


def client_update(params: Params, state: ClientState, mask: Params, cfg: LocalConfig, lr=None) -> tuple[Params, Params]:
    """The client's finished update ``m`` (latent ``u`` on binarized leaves, ``theta - w`` elsewhere)
    and its learned step size per leaf (what FedBAT's upload binarizes with); ``lr``: the learning rate of
    its last step (``alpha_bounds=lr`` only)."""
    update = jax.tree.map(lambda w, th, b: th if b else th - w, params, state.theta, mask)
    scale = cfg.bounds_scale(lr) if lr is not None else 1.0
    return update, step_sizes(state.a, state.alpha0, cfg, state.theta, scale)


class FederatedData(NamedTuple):
    """The federated training set on the device: all examples once, each client as a padded row of indices."""

    inputs: jax.Array  # uint8 images [N, H, W, C], or int32 token sequences [N, T]
    labels: jax.Array  # int32 [N], or next-token targets [N, T]
    index: jax.Array  # int32 [num_clients, max_n + batch]: the client's sample indices, zero-padded
    sizes: jax.Array  # int32 [num_clients]
    mean: jax.Array  # float32 [C]
    std: jax.Array  # float32 [C]


def epoch_orders(key: jax.Array, index_row: jax.Array, n: jax.Array, epochs: int, cap: int = 0) -> jax.Array:
    """Each epoch's reshuffled order of one client's samples, valid samples first: int32 [epochs, len(row)].

    ``cap`` > 0: the round trains on ``min(n, cap)`` of them (``used_examples``), a random subset drawn once for
    the round and reshuffled each epoch."""
    width = index_row.shape[0]
    if cap:
        r = jax.random.uniform(jax.random.fold_in(key, CAP_STREAM), (width,))
        index_row = index_row[jnp.argsort(jnp.where(jnp.arange(width) < n, r, 2.0))]
        n = used_examples(n, cap)
    valid = jnp.arange(width) < n

    def one(e):
        r = jax.random.uniform(jax.random.fold_in(key, e), (width,))
        return index_row[jnp.argsort(jnp.where(valid, r, 2.0))]

    return jax.vmap(one)(jnp.arange(epochs))


def used_examples(n, cap: int):
    """The examples a client of ``n`` trains on in a round: all of them, or at most ``cap`` (> 0)."""
    return jnp.minimum(n, cap) if cap else n


def batch_at(orders: jax.Array, n: jax.Array, t: jax.Array, batch_size: int) -> tuple[jax.Array, jax.Array]:
    """Local step ``t``'s sample indices and mask: epoch ``t // ceil(n/B)``, batch ``t % ceil(n/B)``;
    the last batch of an epoch is short (masked), as the reference keeps it."""
    per_epoch = (n + batch_size - 1) // batch_size
    epoch, j = t // per_epoch, t % per_epoch
    start = j * batch_size
    idx = jax.lax.dynamic_slice(orders[epoch], (start,), (batch_size,))
    return idx, start + jnp.arange(batch_size) < n


def make_local_step(model, mask: Params, cfg: LocalConfig, correct: Callable | None = None) -> Callable:
    """``step(state, params, data, orders, n, n_warm, t, key, lr, context) -> state``: one local step of one client.

    ``t`` is the 0-based local step; steps ``t < n_warm`` are warm-up (full precision) and at
    ``t == n_warm`` alpha0 is set to ``mean|u|`` before the first binarized forward pass. ``lr``: this
    step's learning rate (``LocalConfig.lr_at``). ``correct(grad, weights, params, context)``: the algorithm's
    correction of the trainable leaves' gradient (``fedbat_jax.algorithms.Algorithm.correct``), if any.
    """
    direction = client_direction(cfg.momentum, cfg.weight_decay)

    def loss_fn(trainable, params, batch_stats, x, y, valid, binarizing, key, scale):
        theta, a, alpha0 = trainable
        alpha = step_sizes(a, alpha0, cfg, theta, scale)
        eff = effective_params(params, theta, alpha, mask, binarizing, key, cfg.bits, cfg.ste)
        logits, new_vars = model.apply(
            {"params": eff, "batch_stats": batch_stats}, x, train=True, mask=valid, mutable=["batch_stats"],
            rngs={"dropout": jax.random.fold_in(key, DROPOUT_STREAM)},
        )
        s = scores(logits, y, valid, cfg.pad_ids, cfg.unscored_ids)
        ce_sum, counted = jnp.sum(s.loss), jnp.sum(s.counted)
        return ce_sum / jnp.maximum(counted, 1), (new_vars.get("batch_stats", batch_stats), (ce_sum, counted))

    grad_fn = jax.grad(loss_fn, has_aux=True)

    def step(state: ClientState, params, data: FederatedData, orders, n, n_warm, t, key, lr, context=()) -> ClientState:
        idx, valid = batch_at(orders, used_examples(n, cfg.max_examples), t, cfg.batch_size)
        x = data.inputs[idx]
        if cfg.augment != "none":
            x = AUGMENTATIONS[cfg.augment](jax.random.fold_in(key, AUGMENT_STREAM), x)
        x = model_inputs(x, data.mean, data.std)
        y = data.labels[idx]
        binarizing = t >= n_warm
        # Warm-up ends: alpha0 = mean|u| per binarized tensor (x alpha_init_scale), from the warmed-up update.
        alpha0 = jax.tree.map(
            lambda a0, th, b: jnp.where(t == n_warm, cfg.alpha_init_scale * jnp.mean(jnp.abs(th)), a0) if b else a0,
            state.alpha0, state.theta, mask,
        )
        trainable = (state.theta, state.a, alpha0)
        grads, (batch_stats, (ce_sum, counted)) = grad_fn(trainable, params, state.batch_stats, x, y, valid,
                                                          binarizing, key, cfg.bounds_scale(lr))
        g_theta, g_a, _ = grads
        weights = jax.tree.map(lambda w, th, b: w + th if b else th, params, state.theta, mask)
        if correct is not None:
            g_theta = correct(g_theta, weights, params, context)
        d_theta, opt = direction.update(g_theta, state.opt, weights)
        theta = jax.tree.map(lambda p, d: p - lr * d, state.theta, d_theta)
        a = jax.tree.map(lambda p, g: p - lr * g, state.a, g_a)
        return ClientState(theta, a, alpha0, batch_stats, opt, state.loss_sum + ce_sum, state.seen + counted,
                           state.lr_sum + lr)

    return step
