"""The paper-scale comparison at the paper's 10 local epochs, fixed before any of its runs (issue 40 item 5).

    python experiments/protocol.py --dry-run                     # the protocol, its runs and cost; runs nothing
    python experiments/protocol.py --data-dir D --workdir W --out docs/results/protocol
    python experiments/protocol.py --reduced --data-dir D --workdir W --out docs/results/protocol_reduced

``PROTOCOL`` below is the pre-registration: the federation, the methods, the seeds, the primary endpoint and the
test. Changing any of it is a new protocol with a new ``NAME``, not a rerun; the output states which was run.
``REDUCED`` is the CPU form (fewer partitions, rounds, epochs and seeds, stated in its output).

How it runs: on an accelerator (``jax.default_backend() != "cpu"``, or ``--sweep``) each (partition, partition seed,
method) is one program over the run seeds (``fb.sweep_records``: ``make_train`` vmapped; its records are written to
``W/.../sweep.json``, so a finished program is read back); on the CPU each run is ``fb.run`` in its own workdir
``W/<partition>/ps<P>/<method>/seed<S>`` (the host loop, resumable). Either way every run's endpoints go to
``OUT_runs.csv`` and the analysis to ``OUT.md``:

* unit: a (partition seed, run seed) pair; every method runs every unit, so comparisons are paired by unit;
* primary endpoint: the mean test accuracy over the last 10 rounds; secondary: the final round, the best round;
* test: per partition, every method minus FedBAT, paired t-test over the units; Holm over the partition's
  comparisons against FedBAT (alpha 0.05); 95% t-intervals printed beside.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import jax

import fedbat_jax as fb
from fedbat_jax import cli, machine, report
from fedbat_jax.errors import ConfigError

NAME = "fmnist-10epochs-v1"
PROTOCOL = dict(
    dataset="fashion_mnist",  # experiments/configs/paper.py: CNN4, 100 clients, 10 a round, batch 64, lr 0.1
    local_epochs=10,
    rounds=100,
    partitions=("iid", "dirichlet", "label_count"),  # Dirichlet beta 0.3; label count 3 labels a client
    partition_seeds=(1234, 1235, 1236),
    seeds=(0, 1, 2, 3, 4),
    methods=("fedavg", "fedbat", "stoch_binary", "stoch_binary@bucket_size=512", "eden", "drive",
             # issue 40 item 3's controls: alpha's level against its learning
             "fedbat@rho=0", "fedbat@rho=0@alpha_init_scale=2", "fedbat@rho=0@alpha_init_scale=4",
             "fedbat@alpha_rule=max_abs", "fedbat@upload_alpha=max"),
    reference="fedbat",
    primary="last10_acc",
    secondary=("final_acc", "best_acc"),
    level=0.05,
)
# The CPU form: the same methods, test and endpoints on one partition and partition seed, 1 local epoch, 20 rounds.
REDUCED = dict(PROTOCOL, local_epochs=1, rounds=20, partitions=("label_count",), partition_seeds=(1234,))
ENDPOINTS = (("last10_acc", "last-10 mean"), ("final_acc", "final"), ("best_acc", "best"))
TRAIN_EXAMPLES = 60_000  # Fashion-MNIST's training set: the work a round does, without loading it
CPU_BENCH = Path(__file__).resolve().parents[1] / "docs" / "bench_cpu_paper_fmnist.json"
GPU_BENCH = CPU_BENCH.with_name("bench_gpu.json")
PAPER = str(Path(__file__).resolve().parent / "configs" / "paper.py")


def parser() -> cli.ArgumentParser:
    ap = cli.ArgumentParser(prog="protocol", description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="print the protocol, its runs and cost; run nothing")
    ap.add_argument("--reduced", action="store_true", help="the CPU form (REDUCED)")
    ap.add_argument("--sweep", action="store_true", help="each program's seeds vmapped even on the CPU")
    ap.add_argument("--data-dir", default="")
    ap.add_argument("--workdir", default="")
    ap.add_argument("--out", default="docs/results/protocol")
    return ap


def programs(p: dict) -> list[tuple[str, int, str]]:
    """(partition, partition seed, method): one program each, over the protocol's run seeds."""
    return [(part, ps, m) for part in p["partitions"] for ps in p["partition_seeds"] for m in p["methods"]]


def config_of(p: dict, partition: str, partition_seed: int, method: str, data_dir: str = ""):
    fields, variant = cli.method_fields(method)
    fields.update(partition=partition, partition_seed=partition_seed, local_epochs=p["local_epochs"],
                  rounds=p["rounds"])
    if data_dir:
        fields["data_dir"] = data_dir
    return cli.make_config(f"{PAPER}:{p['dataset']}:{partition}", variant, **fields)


def cost(p: dict) -> dict:
    """Runs, programs and the examples trained, from the federation's size alone (no data is read)."""
    c = config_of(p, p["partitions"][0], p["partition_seeds"][0], p["reference"])
    runs = len(programs(p)) * len(p["seeds"])
    per_round = TRAIN_EXAMPLES / c.num_clients * c.clients_per_round * p["local_epochs"]
    return dict(programs=len(programs(p)), runs=runs, rounds=runs * p["rounds"],
                examples=runs * p["rounds"] * per_round, examples_per_run=p["rounds"] * per_round)


def _rate(path: Path) -> float | None:
    """FedBAT's measured samples a second in a bench file (``None`` if there is none)."""
    try:
        results = json.loads(path.read_text())["results"]
        return next(float(r["samples_per_second"]) for r in results if r.get("algorithm") == "fedbat")
    except (OSError, ValueError, KeyError, StopIteration):
        return None


def dry_run(p: dict, name: str) -> str:
    n = cost(p)
    lines = [f"Protocol {name}, fixed before its runs:"]
    lines += [f"  {k}: {v}" for k, v in p.items()]
    lines += ["", f"{n['programs']} programs (partition x partition seed x method), each over {len(p['seeds'])} "
              f"seeds: {n['runs']} runs, {n['rounds']:,} rounds, {n['examples']:.3g} training examples "
              f"({n['examples_per_run']:.3g} a run)."]
    for label, path in (("CPU", CPU_BENCH), ("accelerator", GPU_BENCH)):
        rate = _rate(path)
        if rate:
            lines.append(f"At the {label} rate measured in {path.name} (FedBAT, {rate:,.0f} samples/s): "
                         f"{n['examples'] / rate / 3600:,.1f} hours.")
        else:
            lines.append(f"{label}: no measured rate ({path.name} is absent); run experiments/gpu_check.sh there.")
    return "\n".join(lines)


def run_program(p: dict, partition: str, ps: int, method: str, args) -> dict[int, list[dict]]:
    """The program's records per seed: vmapped (``fb.sweep_records``, kept in ``sweep.json``) or one ``fb.run``
    each in its workdir."""
    c = config_of(p, partition, ps, method, args.data_dir)
    folder = Path(args.workdir) / partition / f"ps{ps}" / method
    if args.sweep or jax.default_backend() != "cpu":
        kept = folder / "sweep.json"
        if kept.is_file():
            return {int(k): v for k, v in json.loads(kept.read_text()).items()}
        records = fb.sweep_records(c, list(p["seeds"]))
        folder.mkdir(parents=True, exist_ok=True)
        kept.write_text(json.dumps(records))
        return records
    return {s: fb.run(_seeded(c, s), folder / f"seed{s}", progress=True) for s in p["seeds"]}


def _seeded(c, seed: int):
    c = c.copy_and_resolve_references()
    c.seed = seed
    return c


def analysis(p: dict, rows: list[dict]) -> str:
    """Per partition: each cell's endpoints over its units, then every method against the reference, paired by
    unit with Holm over the partition's comparisons."""
    text = report.seed_table(rows, endpoints=ENDPOINTS)
    for value, label in ENDPOINTS:
        family = report.holm_table(rows, p["reference"], value)
        kind = "primary" if value == p["primary"] else "secondary"
        text += (f"\n{label} ({kind}): every method minus {p['reference']}, paired by unit (partition seed, run "
                 f"seed), p from the paired t-test, Holm over the partition's comparisons:\n\n" + family)
    return text


def main(args, overrides: list[str]) -> int:
    if overrides:
        raise ConfigError(f"protocol.py takes no --config overrides (the protocol is fixed): {' '.join(overrides)}")
    p, name = (REDUCED, NAME + "-reduced") if args.reduced else (PROTOCOL, NAME)
    print(dry_run(p, name), flush=True)
    if args.dry_run:
        return 0
    if not args.workdir:
        raise ConfigError("give --workdir (the runs resume from it)")
    t0, rows = time.time(), []
    for partition, ps, method in programs(p):
        for seed, records in run_program(p, partition, ps, method, args).items():
            s = report.summarize(records)
            rows.append(dict(dataset=p["dataset"], partition=partition, partition_seed=ps, algorithm=method,
                             seed=f"{ps}/{seed}", final_acc=s["final"], last10_acc=s["last10"], best_acc=s["best"],
                             uplink_MB=s["uplink_mb"]))
    out = Path(args.out)
    report.write_rows(out.with_name(out.name + "_runs.csv"), rows)
    header = (f"Command: `python {' '.join(sys.argv)}`  \nMachine: {machine.describe()}, wall time "
              f"{time.time() - t0:.0f} s (finished runs are read back)\n\n```\n{dry_run(p, name)}\n```\n\n")
    out.with_suffix(".md").write_text(header + analysis(p, rows))
    print(analysis(p, rows))
    return 0


if __name__ == "__main__":
    sys.exit(cli.guarded("protocol", lambda: main(*cli.parse_args(parser(), sys.argv[1:]))))
