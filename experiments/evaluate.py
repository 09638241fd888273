"""Evaluate the newest checkpoint of finished or running workdirs again: the run's own metrics (pooled accuracy and,
for a natural federation, its per-client distribution) and, for a sequence dataset, the accuracy over every target
but padding, the metric Reddi et al. (ICLR 2021) report for Shakespeare (the runs' own accuracy leaves out the
end-of-snippet targets too, as FedJAX does).

    python experiments/evaluate.py ../runs/natural/shakespeare_char_lstm/natural/*/seed0 --data-dir ../shared/data \
        --out docs/results/natural_checkpoints.json

Nothing is written into the workdirs (their lock is not taken: a running workdir is read as it stands).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import jax

import fedbat_jax as fb
from fedbat_jax import cli
from fedbat_jax.errors import ConfigError
from fedbat_jax.evaluation import dataset_evaluate, pooled, test_set


def evaluate_workdir(path: Path, data_dir: str = "", dataset=None) -> dict:
    """The newest checkpoint's round and metrics (``dataset``: the run's, already loaded)."""
    exp, server, r = fb.load_run(path, data_dir, dataset)
    config = exp.config
    row = {"workdir": str(path), "algorithm": config.algorithm, "compressor": config.compressor, "seed": config.seed,
           "round": r, **exp.evaluate(server)}
    ds = exp.dataset
    if ds.unscored_ids:
        every = ds._replace(unscored_ids=())
        table = jax.jit(dataset_evaluate(exp.model, every))(server.params, server.batch_stats, test_set(every))
        row["test_accuracy_all_targets"] = pooled(table)[1]
    return row


def main(args, overrides: list[str]) -> int:
    if overrides:
        raise ConfigError(f"unrecognized arguments: {' '.join(overrides)}")
    rows = [evaluate_workdir(Path(p), args.data_dir) for p in args.workdirs]
    for row in rows:
        extra = (f", every target but padding {row['test_accuracy_all_targets']:.4f}"
                 if "test_accuracy_all_targets" in row else "")
        clients = (f"; clients mean {row['client_accuracy_mean']:.4f}, p10 {row['client_accuracy_p10']:.4f}"
                   if "client_accuracy_mean" in row else "")
        print(f"{row['workdir']}: round {row['round']}, test accuracy {row['test_accuracy']:.4f}{extra}{clients}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"command": " ".join(["python"] + sys.argv), "rows": rows}, indent=1))
    return 0


def parser() -> cli.ArgumentParser:
    ap = cli.ArgumentParser(prog="evaluate", description=__doc__.splitlines()[0])
    ap.add_argument("workdirs", nargs="+")
    ap.add_argument("--data-dir", default="")
    ap.add_argument("--out", default="")
    return ap


if __name__ == "__main__":
    sys.exit(cli.guarded("evaluate", lambda: main(*cli.parse_args(parser(), sys.argv[1:]))))
