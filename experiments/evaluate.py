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
from fedbat_jax.config import default_config
from fedbat_jax.data import load_dataset
from fedbat_jax.errors import ConfigError
from fedbat_jax.evaluation import dataset_evaluate, pooled, test_set
from fedbat_jax.workdir import CHECKPOINT_FILE, CONFIG_FILE, read_checkpoint, restore_tree


def evaluate_workdir(path: Path, data_dir: str, datasets: dict) -> dict:
    """The checkpoint's round and metrics (``datasets`` caches loaded datasets by name)."""
    try:
        values = json.loads((path / CONFIG_FILE).read_text())
        r, arrays = read_checkpoint(path / CHECKPOINT_FILE)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: no readable {CONFIG_FILE} and {CHECKPOINT_FILE} ({e})") from None
    config = default_config()
    config.update(**{k: v for k, v in values.items() if k in config})
    config.data_dir = data_dir or config.data_dir
    if config.dataset not in datasets:
        datasets[config.dataset] = load_dataset(config.dataset, config.data_dir or None)
    exp = fb.build_from_data(config, datasets[config.dataset])
    server = restore_tree(arrays, exp.server, f"{path / CHECKPOINT_FILE}")
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
    datasets: dict = {}
    rows = [evaluate_workdir(Path(p), args.data_dir, datasets) for p in args.workdirs]
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
