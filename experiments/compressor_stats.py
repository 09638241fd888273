"""Every compressor on the client updates it actually sees: normalised variance and squared bias over many keys, and
the shape of the update (kurtosis, ``d max^2 / ||x||^2``) - issue 40 item 2.

    python experiments/compressor_stats.py --data-dir ../shared/data --partitions iid,label_count \
        --local-epochs 1,10 --workdir ../runs/cstats --out docs/results/compressor_stats

Per (local epochs, partition): FedAvg runs ``--rounds-before`` rounds of the paper's Fashion-MNIST federation (CNN4,
100 clients, 10 a round; resumable in ``WORKDIR``), then the first ``--clients`` clients of the next round train
from that global model twice: as FedAvg (their update ``m``) and as FedBAT (its latent ``u`` and learned alpha),
with ``fb.client_updates`` (the round's own keys). The updates are dumped to ``WORKDIR/.../updates.npz``. Each
compressor then encodes and decodes every update with ``--keys`` keys; over the compressed leaves (the conv and
dense kernels) together:

* normalised variance ``E||C(x) - E C(x)||^2 / ||x||^2``;
* normalised squared bias ``(||mean_K C(x) - x||^2 - var / K) / ||x||^2`` (the Monte Carlo floor ``var / K``
  subtracted; ``floor`` is printed beside it: a bias below about twice the floor is not detected);
* of the update itself, per kernel: kurtosis ``E(x - mean)^4 / var^2`` (3 for a Gaussian) and ``d max^2 / ||x||^2``
  (stochastic binarization's variance is that minus 1), the median over kernels.

``fedbat_learned`` is FedBAT's own upload ``Q(u, alpha)`` with the client's learned alpha (only on ``u``): its bias
is measured against ``u``. The table gives the mean over clients with a 95% t-interval; ``PREFIX.csv`` has one row
per (client, compressor); the table is rendered from those rows (``table``).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import fedbat_jax as fb
from fedbat_jax import cli, machine, report
from fedbat_jax.binarization import binarized_mask, default_binarize_predicate
from fedbat_jax.compressors import stochastic_levels
from fedbat_jax.payloads import payload_bits

# name -> settings on top of the run's config (the compressor and its options)
COMPRESSORS = {
    "stoch_binary": dict(compressor="stoch_binary"),
    "stoch_binary_b512": dict(compressor="stoch_binary", bucket_size=512),
    "qsgd2": dict(compressor="qsgd", bits=2),
    "eden": dict(compressor="eden"),
    "eden_2pass": dict(compressor="eden", rotation_passes=2),
    "drive": dict(compressor="drive"),
    "scaled_sign": dict(compressor="scaled_sign"),
}
SOURCES = ("fedavg_m", "fedbat_u")  # FedAvg's update; FedBAT's latent u (with its learned alpha)
PAPER = str(Path(__file__).parent / "configs" / "paper.py")


def parser() -> cli.ArgumentParser:
    ap = cli.ArgumentParser(prog="compressor_stats", description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="")
    ap.add_argument("--partitions", type=cli.names, default=["iid", "label_count"])
    ap.add_argument("--local-epochs", type=cli.names, default=["1", "10"])
    ap.add_argument("--rounds-before", type=int, default=3, help="FedAvg rounds before the updates are taken")
    ap.add_argument("--clients", type=int, default=4, help="clients of the next round whose updates are measured")
    ap.add_argument("--keys", type=int, default=256, help="encode/decode draws per update and compressor")
    ap.add_argument("--workdir", required=True, help="the FedAvg runs and the dumped updates (resumable)")
    ap.add_argument("--out", default="docs/results/compressor_stats")
    return ap


def _flat(tree, mask) -> jnp.ndarray:
    return jnp.concatenate([x.reshape(-1) for x, b in zip(jax.tree.leaves(tree), jax.tree.leaves(mask)) if b])


def shape_stats(update, mask) -> dict:
    """Median over the compressed kernels of the update's kurtosis and ``d max^2 / ||x||^2``."""
    kurt, spike = [], []
    for x, b in zip(jax.tree.leaves(update), jax.tree.leaves(mask)):
        if b:
            v = np.asarray(x, np.float64).reshape(-1)
            c = v - v.mean()
            kurt.append(float(np.mean(c**4) / max(np.mean(c**2) ** 2, 1e-300)))
            spike.append(float(v.size * np.max(np.abs(v)) ** 2 / max(np.sum(v**2), 1e-300)))
    return dict(kurtosis=float(np.median(kurt)), d_max2_over_norm2=float(np.median(spike)))


_SUMS: dict = {}  # one jitted program per compressor, reused for every update of the same shapes


def error_stats(comp, update, scales, mask, keys: int, chunk: int = 32, seed: int = 0) -> dict:
    """Over ``keys`` draws (from ``PRNGKey(seed)``): the normalised variance, the squared bias less its Monte Carlo
    floor, and the floor. Each update gets its own ``seed`` (its client), so the Monte Carlo errors of different
    updates are independent and an interval over updates covers them."""
    x = _flat(update, mask)
    if id(comp) not in _SUMS:
        def sums(update, scales, ks):
            target = _flat(update, mask)

            def err(k):
                payload, _ = comp.encode(update, scales, (), k)
                return _flat(comp.decode(payload), mask) - target

            e = jax.vmap(err)(ks)
            return e.sum(0), (e * e).sum(0)

        _SUMS[id(comp)] = (comp, jax.jit(sums))  # (the compressor kept alive: its id stays its own)
    sums = _SUMS[id(comp)][1]
    s1, s2 = jnp.zeros_like(x), jnp.zeros_like(x)
    all_keys = jax.random.split(jax.random.PRNGKey(seed), keys)
    for i in range(0, keys, chunk):
        a, b = sums(update, scales, all_keys[i:i + chunk])
        s1, s2 = s1 + a, s2 + b
    norm2 = float(jnp.sum(x * x))
    mean = s1 / keys
    var = float(jnp.sum(s2 / keys - mean * mean)) * keys / (keys - 1)
    floor = var / keys
    payload, _ = comp.encode(update, scales, (), all_keys[0])
    dense = sum(u.size for u, b in zip(jax.tree.leaves(update), jax.tree.leaves(mask)) if not b)  # float32 leaves
    return dict(nvar=var / norm2, nbias2=(float(jnp.sum(mean * mean)) - floor) / norm2, floor=floor / norm2,
                bits_per_value=(payload_bits(payload) - 32 * dense) / int(x.size))


def updates(config, workdir: Path, rounds_before: int, clients: int) -> tuple[dict[str, list], dict]:
    """FedAvg's run to ``rounds_before``, then the next round's first clients as FedAvg and as FedBAT: their
    updates (dumped to ``workdir/updates.npz``, read back if there)."""
    dump = workdir / "updates.npz"
    fedavg = config.copy_and_resolve_references()
    fedavg.update(algorithm="fedavg", rounds=rounds_before, checkpoint_every=rounds_before)
    if not dump.is_file():
        fb.run(fedavg, workdir / "fedavg", progress=True)
        exp, server, r = fb.load_run(workdir / "fedavg", config.data_dir)
        out = {"fedavg_m": fb.client_updates(exp, server, r + 1, clients)}
        fedbat = fedavg.copy_and_resolve_references()
        fedbat.algorithm = "fedbat"
        exp_b = fb.build_from_data(fedbat, exp.federation.dataset)
        out["fedbat_u"] = fb.client_updates(exp_b, server, r + 1, clients)
        arrays = {}
        for source, cs in out.items():
            for i, c in enumerate(cs):
                for (path, u), s in zip(jax.tree_util.tree_leaves_with_path(c.update), jax.tree.leaves(c.scales)):
                    name = jax.tree_util.keystr(path, simple=True, separator="/")
                    arrays[f"{source}/{i}/update/{name}"] = np.asarray(u)
                    arrays[f"{source}/{i}/scale/{name}"] = np.asarray(s)
                arrays[f"{source}/{i}/client"] = np.asarray(c.client)
        workdir.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(dump, **arrays)
    template = fb.load_run(workdir / "fedavg", config.data_dir)[1].params

    def tree(f, source, i, kind):
        return jax.tree_util.tree_map_with_path(
            lambda p, _: jnp.asarray(f[f"{source}/{i}/{kind}/{jax.tree_util.keystr(p, simple=True, separator='/')}"]),
            template)

    with np.load(dump) as f:
        loaded = {source: [(int(f[f"{source}/{i}/client"]), tree(f, source, i, "update"), tree(f, source, i, "scale"))
                           for i in range(clients)] for source in SOURCES}
    return loaded, template


def main(args, overrides: list[str]) -> int:
    t0 = time.perf_counter()
    rows = []
    for epochs in args.local_epochs:
        for partition in args.partitions:
            config = cli.make_config(f"{PAPER}:fashion_mnist:{partition}", overrides)
            config.update(local_epochs=int(epochs), data_dir=args.data_dir or config.data_dir)
            wd = Path(args.workdir) / f"e{epochs}_{partition}_r{args.rounds_before}"
            loaded, template = updates(config, wd, args.rounds_before, args.clients)
            mask = binarized_mask(template, default_binarize_predicate)
            comps = {}
            for name, settings in COMPRESSORS.items():
                c = config.copy_and_resolve_references()
                c.update(algorithm="fedavg", **settings)
                spec = fb.COMPRESSORS[c.compressor]
                comps[name] = spec.make(mask, template, c)
            comps["fedbat_learned"] = stochastic_levels(mask, template, 1, learned_scale=True)
            kept = wd / f"rows_k{args.keys}_c{args.clients}_keyed.json"  # a finished cell is read back
            if kept.is_file():
                rows += json.loads(kept.read_text())
                continue
            cell = []
            for source, clients in loaded.items():
                names = [n for n in comps if n != "fedbat_learned" or source == "fedbat_u"]
                for client, update, scales in clients:
                    shape = shape_stats(update, mask)
                    for name in names:
                        comp = comps[name]
                        row = dict(local_epochs=int(epochs), partition=partition, source=source, client=client,
                                   compressor=name, **shape,
                                   **error_stats(comp, update, scales, mask, args.keys, seed=client))
                        cell.append(row)
                        print(json.dumps(row), flush=True)
            kept.write_text(json.dumps(cell))
            rows += cell
    out = Path(args.out)
    report.write_rows(out.with_suffix(".csv"), rows)
    command = "python " + " ".join(sys.argv)
    header = (f"Command: `{command}`  \nMachine: {machine.describe()}, wall time {time.perf_counter() - t0:.0f} s, "
              f"{args.keys} keys per update and compressor, {args.clients} clients per cell\n\n")
    out.with_suffix(".md").write_text(header + table(rows))
    print(table(rows))
    return 0


def table(rows: list[dict]) -> str:
    """Mean over clients [95% t-interval] per (local epochs, partition, source, compressor)."""
    cells = {}
    for r in rows:
        cells.setdefault((int(r["local_epochs"]), r["partition"], r["source"], r["compressor"]), []).append(r)
    lines = ["| local epochs | partition | update | compressor | bits a value | normalised variance [95%] | "
             "normalised squared bias [95%] | MC floor | kurtosis | d max^2 / norm^2 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for (e, p, s, c), rs in cells.items():
        def ci(k, fmt):
            mean, lo, hi = report.t_interval([float(r[k]) for r in rs])
            return f"{mean:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]"

        lines.append(f"| {e} | {p} | {s} | {c} | {float(rs[0]['bits_per_value']):.3f} | {ci('nvar', '.3g')} | "
                     f"{ci('nbias2', '.2e')} | {np.mean([float(r['floor']) for r in rs]):.1e} | "
                     f"{np.median([float(r['kurtosis']) for r in rs]):.1f} | "
                     f"{np.median([float(r['d_max2_over_norm2']) for r in rs]):.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(cli.guarded("compressor_stats", lambda: main(*cli.parse_args(parser(), sys.argv[1:]))))
