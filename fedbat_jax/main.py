"""Command line: ``python -m fedbat_jax.main --config=experiments/configs/NAME.py --workdir=DIR``.

Any field can be overridden as ``--config.FIELD=VALUE``; ``--help`` lists them with their defaults. Each
round appends a JSON line to ``DIR/metrics.jsonl``; a run resumes from its checkpoint in ``DIR`` when its
settings are the same (``--allow_change=rounds`` extends a run); other settings are refused as soon as the
workdir's ``config.json`` exists, checkpoint or not. Exit status: 0 done, 2 bad input or an unusable workdir
(one line on stderr), 3 training diverged (one line; the last good checkpoint is kept), 4 a multi-process job
lost another process, 130 interrupted (Ctrl-C) and 143 terminated (SIGTERM; in a multi-process job after the
round in progress, in every process): rerun the same command to resume.
"""
from __future__ import annotations

import sys
from pathlib import Path

from fedbat_jax import cli
from fedbat_jax.config import RESUMABLE_FIELDS

USAGE = """usage: python -m fedbat_jax.main --workdir=DIR [--config=FILE[:ARG]] [--config.FIELD=VALUE ...]
                              [--allow_change=FIELD,...] [--progress=false]

Runs (or resumes) one federated run in DIR. FILE defines get_config(ARG), e.g. experiments/configs/mnist5k.py
(default: fedbat_jax/config.py). The settings and their defaults:
"""


def _bool(text: str) -> bool:
    if text.lower() not in ("true", "false", "1", "0"):
        raise cli.argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return text.lower() in ("true", "1")


def parser() -> cli.ArgumentParser:
    ap = cli.ArgumentParser(prog="fedbat_jax", add_help=False)
    ap.add_argument("--workdir", default="", help="folder for metrics.jsonl and checkpoints (resumed if present)")
    ap.add_argument("--progress", type=_bool, default=True, help="show a progress bar")
    ap.add_argument("--allow_change", type=cli.names, default=[],
                    help="settings a resume may change: " + ", ".join(RESUMABLE_FIELDS))
    return ap


def run(argv: list[str]) -> int:
    config, args = cli.parse(parser(), argv, cli.DEFAULT_CONFIG_FILE)
    if not args.workdir:
        raise cli.ConfigError("--workdir is required (a folder for metrics.jsonl and checkpoints)")
    from fedbat_jax.runner import run as run_loop

    records = run_loop(config, args.workdir, progress=args.progress, log=lambda s: print(s, flush=True),
                       allow_change=args.allow_change)
    last = records[-1] if records else None
    if last is not None:
        acc = last["test_accuracy"]
        print(f"round {last['round']}: test accuracy {acc:.4f}" if acc is not None else f"round {last['round']}",
              f"-> {Path(args.workdir) / 'metrics.jsonl'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv[1:])
    if {"-h", "--help", "--helpshort", "--helpfull"} & set(argv):
        from fedbat_jax.config import settings_help

        print(USAGE + settings_help())
        return 0
    from fedbat_jax.distributed import heartbeat, leave_lost_job

    heartbeat()  # under fedbat_jax.launch: it names a process that stops answering
    code = cli.guarded("fedbat_jax", lambda: run(argv))
    if code in (cli.EXIT_JOB_FAILED, cli.EXIT_SLOW_START):
        leave_lost_job(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
