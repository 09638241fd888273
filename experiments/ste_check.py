"""FedBAT's straight-through gradient against the true gradient of the loss it trains (issue 25).

FedBAT's forward pass is stochastic, so local training minimises the expected loss ``F(u, alpha) =
E_Q[L(w + Q(u, alpha))]``, which is smooth in ``u`` and ``alpha`` (``Q`` rounds each coordinate to ``+-alpha``
with ``P(+alpha) = (clip(u / alpha) + 1) / 2``). Its custom VJP (``binarization.py``) stands in for ``grad F``.
Per binarized layer this script estimates the true gradient and compares it with the estimators' expected
gradient (the custom VJP averaged over the same keys):

- ``a = <grad_u F, g_hat>``, the true gradient's component along the estimator's unit direction, by a central
  finite difference of ``F`` along ``g_hat`` with common random numbers (the same keys at ``u + h g_hat`` and
  ``u - h g_hat``, so only the coordinates whose draw the step crosses contribute);
- ``|r|^2``, the true gradient's squared norm orthogonal to the clipped estimator's direction, from ``--directions``
  random unit directions orthogonal to it (``(d - 1) * mean <grad F, v>^2``, each square the product of two
  independent halves of the keys, so the finite difference's noise does not inflate it);
- then ``|grad F| = sqrt(a_clipped^2 + |r|^2)``, the cosine ``a / |grad F|`` and the relative norm error
  ``|g - grad F| / |grad F|`` of each estimator (``clipped``: the paper's; ``identity``);
- for ``alpha``, ``dF/dalpha`` by a finite difference in ``alpha`` against the VJP's ``dQ/dalpha`` (the same for
  both estimators): their ratio.

It does this for CNN4 and the ViT on Fashion-MNIST and ResNet-10 (width 16) on CIFAR-10, for one client's
batch of the paper's setting, at the start of binarized training (after the full-precision warm-up, ``alpha =
mean|u|``) and after ``--steps`` binarized local steps.

    python experiments/ste_check.py --data-dir ../shared/data --out docs/results/ste [--models cnn4,vit,resnet10]
                                    [--keys 512] [--directions 8] [--steps 20] [--max-layers N]

Writes OUT.json (a record per model, state and layer) and OUT.md (the tables). The estimator is tested where
the answer is exact (a linear model with a squared loss: ``E[w + Q] = w + clip(u, -alpha, alpha)`` and the
variance ``alpha^2 - clip(u)^2`` adds a term no straight-through estimator sees): ``tests/test_ste_check.py``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedbat_jax import cli, report
from fedbat_jax.binarization import binarized_mask, default_binarize_predicate
from fedbat_jax.data import load_dataset
from fedbat_jax.local import (FederatedData, LocalConfig, effective_params, epoch_orders, init_client,
                              make_local_step, step_sizes)
from fedbat_jax.models import make_model
from fedbat_jax.registry import Registry

# model -> (dataset, width)
SETTINGS = Registry("--models model", {"cnn4": ("fashion_mnist", 0), "vit": ("fashion_mnist", 0),
                                       "resnet10": ("cifar10", 16)})
BATCH = 64
CHUNK = 32  # keys evaluated side by side (memory: CHUNK x BATCH examples)


def _leaf_paths(tree) -> list[str]:
    return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)]


def _creation_order(tree, prefix: str = "") -> list[str]:
    """The leaves' paths in the order the model created them (its dicts keep it; a flattened tree sorts them):
    the order of depth, input to output."""
    out = []
    for k, v in tree.items():
        path = f"{prefix}[{k!r}]"
        out += _creation_order(v, path) if isinstance(v, dict) else [path]
    return out


def _only(tree, i: int, value):
    """A tree of zeros like ``tree`` except leaf ``i``, which is ``value``."""
    leaves, treedef = jax.tree.flatten(tree)
    return treedef.unflatten([value if j == i else jnp.zeros_like(x) for j, x in enumerate(leaves)])


def make_estimator(loss: Callable, ste_grad: Callable) -> Callable:
    """``estimate(theta, alpha, layers, keys, directions, rng, h) -> [record per layer]``.

    ``loss(theta, alpha, key) -> scalar`` is the loss at one draw of ``Q``; ``ste_grad(theta, alpha, key, ste)``
    the custom VJP's gradients ``(d theta, d alpha)`` at that draw. ``theta`` and ``alpha`` are pytrees (alpha:
    a scalar a leaf); ``layers`` the indices of the leaves to check. ``h``: the finite-difference step, as a
    fraction of the layer's alpha per coordinate.
    """
    losses = jax.jit(jax.vmap(loss, in_axes=(None, None, 0)))
    grads = jax.jit(jax.vmap(ste_grad, in_axes=(None, None, 0, None)), static_argnums=3)

    def mean_over(fn, keys, *args):
        parts = [fn(*args, keys[i:i + CHUNK]) for i in range(0, len(keys), CHUNK)]
        return jax.tree.map(lambda *xs: jnp.concatenate(xs).mean(0), *parts)

    def differences(theta, alpha, dtheta, dalpha, h, keys):
        """Per key, (F(+h) - F(-h)) / 2h along (dtheta, dalpha), common random numbers."""
        plus = jax.tree.map(lambda t, d: t + h * d, theta, dtheta)
        minus = jax.tree.map(lambda t, d: t - h * d, theta, dtheta)
        a_plus = jax.tree.map(lambda a, d: a + h * d, alpha, dalpha)
        a_minus = jax.tree.map(lambda a, d: a - h * d, alpha, dalpha)
        out = [(losses(plus, a_plus, keys[i:i + CHUNK]) - losses(minus, a_minus, keys[i:i + CHUNK])) / (2 * h)
               for i in range(0, len(keys), CHUNK)]
        return np.asarray(jnp.concatenate(out), np.float64)

    def estimate(theta, alpha, layers, keys, directions, rng, h=0.05):
        g = {ste: mean_over(lambda t, a, k: grads(t, a, k, ste), keys, theta, alpha) for ste in ("clipped", "identity")}
        half = len(keys) // 2
        records = []
        zeros_alpha = jax.tree.map(jnp.zeros_like, alpha)
        zeros_theta = jax.tree.map(jnp.zeros_like, theta)
        for i in layers:
            u, al = jax.tree.leaves(theta)[i], float(jax.tree.leaves(alpha)[i])
            d = u.size
            step = h * al * np.sqrt(d)  # a unit direction moves each coordinate by about h * alpha
            rec = {"layer": i, "values": d, "alpha": al,
                   "clipped_fraction": float(jnp.mean(jnp.abs(u) > al))}
            g_c, g_i = (np.asarray(jax.tree.leaves(g[s][0])[i], np.float64).ravel() for s in ("clipped", "identity"))
            unit_c = g_c / np.linalg.norm(g_c)
            along = {}
            for ste, vec in (("clipped", g_c), ("identity", g_i)):
                unit = vec / np.linalg.norm(vec)
                diff = differences(theta, alpha, _only(theta, i, jnp.asarray(unit.reshape(u.shape), u.dtype)),
                                   zeros_alpha, step, keys)
                along[ste] = (diff.mean(), diff.std(ddof=1) / np.sqrt(len(diff)), np.linalg.norm(vec),
                              diff[:half].mean() * diff[half:].mean())
            squares = []
            for _ in range(directions):  # random unit directions orthogonal to the clipped estimator's
                v = rng.standard_normal(d)
                v -= unit_c * (unit_c @ v)
                v /= np.linalg.norm(v)
                diff = differences(theta, alpha, _only(theta, i, jnp.asarray(v.reshape(u.shape), u.dtype)),
                                   zeros_alpha, step, keys)
                squares.append(diff[:half].mean() * diff[half:].mean())
            residual2 = max(0.0, (d - 1) * float(np.mean(squares)))
            residual2_se = (d - 1) * float(np.std(squares, ddof=1)) / np.sqrt(directions) if directions > 1 else 0.0
            a2 = max(along["clipped"][3], 0.0)
            norm2 = a2 + residual2
            norm = np.sqrt(norm2) if norm2 > 0 else float("nan")
            norm_lo = np.sqrt(max(a2 + residual2 - 2 * residual2_se, a2, 1e-30))
            norm_hi = np.sqrt(a2 + residual2 + 2 * residual2_se)
            rec.update(true_norm=norm, residual_share=residual2 / norm2 if norm2 > 0 else float("nan"))
            for ste, (a, se, gnorm, _) in along.items():
                # the interval: 2 standard errors of the projection and of the orthogonal norm's estimate
                rec[f"{ste}_cos"] = a / norm
                rec[f"{ste}_cos_lo"] = min((a - 2 * se) / norm_hi, (a - 2 * se) / norm_lo)
                rec[f"{ste}_cos_hi"] = min(1.0, max((a + 2 * se) / norm_lo, (a + 2 * se) / norm_hi))
                rec[f"{ste}_norm_ratio"] = gnorm / norm
                rec[f"{ste}_rel_error"] = float(np.sqrt(max(gnorm**2 - 2 * gnorm * a + norm2, 0.0)) / norm)
            # alpha: the true dF/dalpha by a finite difference in alpha alone, against the VJP's
            diff = differences(theta, alpha, zeros_theta, _only(alpha, i, jnp.float32(1.0)), h * al, keys)
            rec["alpha_true"], rec["alpha_true_se"] = diff.mean(), diff.std(ddof=1) / np.sqrt(len(diff))
            rec["alpha_ste"] = float(jax.tree.leaves(g["clipped"][1])[i])
            records.append(rec)
        return records

    return estimate


def _client_batch(ds, seed: int):
    """One client's data of the paper's IID Fashion-MNIST / CIFAR-10 setting: 600 / 500 samples."""
    rng = np.random.default_rng(seed)
    n = 600 if ds.x_train.shape[1] == 28 else 500
    idx = rng.choice(len(ds.y_train), n, replace=False)
    return ds.x_train[idx], ds.y_train[idx].astype(np.int32)


def check_model(name: str, data_dir: str, keys: int, directions: int, steps: int, seed: int,
                max_layers: int = 0) -> list[dict]:
    dataset, width = SETTINGS[name]
    ds = load_dataset(dataset, data_dir)
    images, labels = _client_batch(ds, seed)
    n = len(labels)
    model = make_model(name, ds.num_classes, width)
    variables = model.init(jax.random.key(seed), jnp.zeros((1,) + images.shape[1:]))
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    mask = binarized_mask(params, default_binarize_predicate)
    cfg = LocalConfig(lr=0.1, batch_size=BATCH)
    mean, std = jnp.asarray(ds.mean, jnp.float32), jnp.asarray(ds.std, jnp.float32)
    data = FederatedData(jnp.asarray(images), jnp.asarray(labels),
                         jnp.arange(n + BATCH, dtype=jnp.int32)[None] % n, jnp.array([n], jnp.int32), mean, std)
    warm = -(-n // BATCH) * 5  # the paper's phi = 0.5 of 10 epochs: 5 epochs in full precision
    orders = epoch_orders(jax.random.key(seed + 1), data.index[0], jnp.int32(n), 10)
    step = jax.jit(make_local_step(model, mask, cfg))
    x_eval = (jnp.asarray(images[:BATCH], jnp.float32) / 255.0 - mean) / std  # the batch F is measured on
    y_eval = jnp.asarray(labels[:BATCH])

    def loss(theta, alpha, key, ste="clipped"):  # train-mode BatchNorm, as in local training
        eff = effective_params(params, theta, alpha, mask, jnp.bool_(True), key, 1, ste)
        logits, _ = model.apply({"params": eff, "batch_stats": batch_stats}, x_eval, train=True,
                                mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, y_eval).mean()

    def ste_grad(theta, alpha, key, ste):
        return jax.grad(lambda t, a: loss(t, a, key, ste), argnums=(0, 1))(theta, alpha)

    estimate = make_estimator(loss, ste_grad)
    paths = _leaf_paths(params)
    binarized = {paths[i] for i, b in enumerate(jax.tree.leaves(mask)) if b}
    layers = [paths.index(p) for p in _creation_order(params) if p in binarized]  # by depth
    if max_layers and len(layers) > max_layers:
        layers = [layers[j] for j in np.linspace(0, len(layers) - 1, max_layers).round().astype(int)]
    state, records = init_client(params, batch_stats, mask, cfg), []
    for t in range(warm + steps):
        if t == warm:  # the start of binarized training: alpha = alpha0 = mean|u| (a = 0)
            alpha0 = jax.tree.map(lambda a0, th, b: jnp.mean(jnp.abs(th)) if b else a0, state.alpha0, state.theta,
                                  mask)
            checks = [("start of binarized training", state.theta, step_sizes(state.a, alpha0, cfg, state.theta))]
        state = step(state, params, data, orders, jnp.int32(n), jnp.int32(warm), jnp.int32(t),
                     jax.random.fold_in(jax.random.key(seed + 2), t), jnp.float32(cfg.lr))
    checks.append((f"after {steps} binarized steps", state.theta, step_sizes(state.a, state.alpha0, cfg, state.theta)))
    for label, theta, alpha in checks:
        out = estimate(theta, alpha, layers, jax.random.split(jax.random.key(seed + 3), keys), directions,
                       np.random.default_rng(seed))
        depth = {i: j for j, i in enumerate(i for p in _creation_order(params) if p in binarized
                                            for i in [paths.index(p)])}
        for rec in out:
            rec.update(model=name, dataset=dataset, state=label, depth=depth[rec["layer"]], path=paths[rec["layer"]])
            print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in rec.items()}), flush=True)
        records += out
    return records


def table(records: list[dict]) -> str:
    head = ("| model | state | depth | layer | values | clipped share | cos clipped [2 se] | cos identity [2 se] | "
            "rel. error clipped / identity | dF/dalpha true [2 se] / VJP |\n" + "|---" * 10 + "|\n")
    rows = []
    for r in records:
        rows.append(
            f"| {r['model']} | {r['state']} | {r['depth']} | `{r['path']}` | {r['values']:,} | "
            f"{r['clipped_fraction']:.2f} | {r['clipped_cos']:.3f} [{r['clipped_cos_lo']:.3f}, "
            f"{r['clipped_cos_hi']:.3f}] | {r['identity_cos']:.3f} [{r['identity_cos_lo']:.3f}, "
            f"{r['identity_cos_hi']:.3f}] | "
            f"{r['clipped_rel_error']:.2f} / {r['identity_rel_error']:.2f} | "
            f"{r['alpha_true']:.3g} [{r['alpha_true'] - 2 * r['alpha_true_se']:.3g}, "
            f"{r['alpha_true'] + 2 * r['alpha_true_se']:.3g}] / {r['alpha_ste']:.3g} |")
    return head + "\n".join(rows) + "\n"


def main(args, overrides: list[str]) -> int:
    if overrides:
        raise cli.ConfigError(f"ste_check.py takes no --config overrides (got {overrides[0]})")
    for name in args.models:
        SETTINGS[name]  # an unknown one is a one-line error
    if args.keys < 4 or args.directions < 1 or args.steps < 1:
        raise cli.ConfigError("--keys must be >= 4, --directions and --steps >= 1")
    records = []
    for name in args.models:  # the files are rewritten after each model, so a long check keeps what it finished
        records += check_model(name, args.data_dir, args.keys, args.directions, args.steps, args.seed,
                               args.max_layers)
        text = report.write_records(Path(args.out), records, f"{args.keys} keys, {args.directions} orthogonal "
                                    "directions a layer.", table(records))
    print(text)
    return 0


def parser() -> cli.ArgumentParser:
    ap = cli.ArgumentParser(prog="ste_check", description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="")
    ap.add_argument("--out", default="docs/results/ste")
    ap.add_argument("--models", type=cli.names, default=list(SETTINGS))
    ap.add_argument("--keys", type=int, default=512, help="draws of Q per estimate (common to +h and -h)")
    ap.add_argument("--directions", type=int, default=8, help="random directions for the orthogonal norm")
    ap.add_argument("--max-layers", type=int, default=0,
                    help="check at most this many binarized layers, evenly spaced by depth (0: all)")
    ap.add_argument("--steps", type=int, default=20, help="binarized local steps before the second check")
    ap.add_argument("--seed", type=int, default=0)
    return ap


if __name__ == "__main__":
    sys.exit(cli.guarded("ste_check", lambda: main(*cli.parse_args(parser(), sys.argv[1:])), resumes=False))
