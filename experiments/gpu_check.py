"""The accelerator numbers in one run (``experiments/gpu_check.sh`` calls this): one JSON file.

* ``paper_fmnist_round_s``: the paper's Fashion-MNIST round (10 of 100 IID clients x 10 epochs x 600
  samples, CNN4), FedBAT and FedAvg, fused backend, median of 5 rounds after the compiling one;
* ``scale``: ``experiments/scale.py`` records (fused, cohorts of 10, 100 and 1,000 clients of 60 samples);
* ``clients``: ``scale.py`` records of per-client state (ef_signsgd, CNN4 width 8, cohorts of 10 from
  federations of 100 and 10,000 clients of 6 samples: round time and peak memory as the table grows);
* ``resnet10_round``: a CIFAR-shaped round of the paper's ResNet-10 (width 64) on 32x32x3 random pixels
  (speed does not depend on pixel values) with crop+flip, FedBAT, fused;
* ``compile_s`` of each, ``device``, ``jax_version``.

``--tiny`` shrinks everything so the test suite runs it on the CPU (numbers meaningless, shape checked).
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import jax

import fedbat_jax as fb
from fedbat_jax import cli
from fedbat_jax.timing import random_pixels, samples_per_round, time_rounds

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "experiments" / "configs" / "paper.py"


def timed(config, rounds: int, data=None) -> dict:
    """Median seconds of ``rounds`` rounds after the first (compiling) one, and the compile estimate."""
    exp = fb.build(config) if data is None else fb.build_from_data(config, data)
    t = time_rounds(exp, rounds)
    return {"round_s": round(t.median, 4), "all_s": [round(x, 4) for x in t.times],
            "samples_per_s": round(samples_per_round(exp) / t.median, 1), "compile_s": round(t.compile_s, 2),
            "backend": exp.backend.name, "train_loss": t.train_loss}


def main(args, overrides: list[str]) -> int:
    t_start = time.perf_counter()
    report = {"device": jax.devices()[0].device_kind, "platform": jax.default_backend(),
              "device_count": jax.device_count(), "jax_version": jax.__version__}
    rounds = 1 if args.tiny else 5
    paper = {}
    for algorithm in ("fedbat", "fedavg"):
        fields = dict(algorithm=algorithm, data_dir=args.data_dir, backend="fused")
        if args.tiny:
            fields.update(dataset="mnist5k", num_clients=10, clients_per_round=2, local_epochs=1, model_width=4)
        paper[algorithm] = timed(cli.make_config(f"{PAPER}:fashion_mnist:iid", overrides, **fields), rounds)
        print(f"paper Fashion-MNIST round, {algorithm}: {paper[algorithm]}", flush=True)
    report["paper_fmnist_round_s"] = {a: r["round_s"] for a, r in paper.items()}
    report["paper_fmnist"] = paper

    clients, samples, width = (2, 16, 4) if args.tiny else (10, 500, 64)
    c = cli.make_config(cli.DEFAULT_CONFIG_FILE, overrides, algorithm="fedbat", model="resnet10", model_width=width,
                        num_clients=clients, clients_per_round=clients, local_epochs=1, partition="iid",
                        backend="fused")
    report["resnet10_round"] = dict(timed(c, 1 if args.tiny else 3, random_pixels(clients * samples)),
                                    clients=clients, samples_per_client=samples, width=width,
                                    data="uniform random pixels (timing only)")
    print(f"ResNet-10 round: {report['resnet10_round']}", flush=True)

    tiny = ["--dataset", "mnist5k", "--rounds", "1", "--model-width", "4"] if args.tiny else ["--rounds", "3"]
    small = ["--clients", "2", "--num-clients", "8", "--lanes", "2"] if args.tiny else []
    report["scale"] = scale(args, tiny + small)
    # per-client state: an EF residual for each of N clients, the cohort's rows gathered each round
    report["clients"] = scale(args, tiny + ["--algorithm", "ef_signsgd", "--clients", "2" if args.tiny else "10",
                                            "--num-clients", "8,80" if args.tiny else "100,10000",
                                            "--samples-per-client", "6", "--batch-size", "6",
                                            "--config.min_client_size=4"]
                                 + ([] if args.tiny else ["--model-width", "8"]))
    report["total_s"] = round(time.perf_counter() - t_start, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out} in {report['total_s']} s")
    return 0


def scale(args, extra: list[str]) -> list[dict]:
    """``experiments/scale.py`` records (fused backend) for the arguments ``extra``."""
    out = Path(args.out).with_suffix(".scale.json")
    cmd = [sys.executable, str(ROOT / "experiments" / "scale.py"), "--backends", "fused", "--out", str(out),
           "--data-dir", args.data_dir] + extra
    done = subprocess.run(cmd, text=True, capture_output=True)
    print(done.stdout, done.stderr, flush=True)
    if done.returncode != 0:
        raise cli.ConfigError("scale.py failed")
    records = json.loads(out.read_text())
    out.unlink()
    return records


def parser() -> cli.ArgumentParser:
    ap = cli.ArgumentParser(prog="gpu_check", description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="", help="folder holding fashion_mnist/")
    ap.add_argument("--out", default="docs/bench_gpu.json")
    ap.add_argument("--tiny", action="store_true", help="CPU smoke sizes (for the tests)")
    return ap


if __name__ == "__main__":
    sys.exit(cli.guarded("gpu_check", lambda: main(*cli.parse_args(parser(), sys.argv[1:]))))
