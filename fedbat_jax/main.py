"""Command line: ``python -m fedbat_jax.main --config=experiments/configs/NAME.py --workdir=DIR``.

Any field can be overridden as ``--config.FIELD=VALUE``. Each round appends a JSON line to
``DIR/metrics.jsonl``; a run resumes from ``DIR/checkpoint.npz``. Bad input is one line on stderr
and exit status 2.
"""
from __future__ import annotations

import sys
from pathlib import Path

from absl import flags
from ml_collections import config_flags

_DEFAULT_CONFIG = str(Path(__file__).with_name("config.py"))


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _fail(message: str) -> int:
    print(f"fedbat_jax: error: {message}", file=sys.stderr)
    return 2


def _parse(argv: list[str]):
    """Parse the flags; a bad config path or override raises (caught by ``main``)."""
    fv = flags.FlagValues()
    saved, sys.argv = sys.argv, list(argv)  # config_flags looks for the --config.FIELD flags in sys.argv
    try:
        config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Path to a config file with get_config().",
                                        flag_values=fv)
        flags.DEFINE_string("workdir", None, "Folder for metrics.jsonl and checkpoints (resumed if present).",
                            flag_values=fv)
        flags.DEFINE_bool("progress", True, "Show a progress bar.", flag_values=fv)
        fv(list(argv))
        config = fv.config
        config.to_dict()  # loading errors surface on first access
    finally:
        sys.argv = saved
    return config, fv.workdir, fv.progress


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    try:
        config, workdir, progress = _parse(argv)
    except (KeyError, AttributeError) as e:
        return _fail(f"unknown config field {_one_line(e)}; the fields are listed in fedbat_jax/config.py")
    except Exception as e:  # any bad flag, config path or override: one line, no traceback
        return _fail(_one_line(e))
    if not workdir:
        return _fail("--workdir is required (a folder for metrics.jsonl and checkpoints)")

    from fedbat_jax.errors import FedBatError
    from fedbat_jax.train import run

    try:
        records = run(config, workdir, progress=progress, log=lambda s: print(s, flush=True))
    except FedBatError as e:
        return _fail(str(e))
    except KeyboardInterrupt:
        return _fail("interrupted; rerun the same command to resume from the last checkpoint")
    last = records[-1] if records else None
    if last is not None:
        acc = last["test_accuracy"]
        print(f"round {last['round']}: test accuracy {acc:.4f}" if acc is not None else f"round {last['round']}",
              f"-> {Path(workdir) / 'metrics.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
