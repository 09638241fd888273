"""Command line: ``python -m fedbat_jax.main --config=experiments/configs/NAME.py --workdir=DIR``.

Any field can be overridden as ``--config.FIELD=VALUE``; ``--help`` lists them with their defaults. Each
round appends a JSON line to ``DIR/metrics.jsonl``; a run resumes from its checkpoint in ``DIR`` when its
settings are the same (``--allow_change=rounds`` extends a run). Exit status: 0 done, 2 bad input or an
unusable workdir (one line on stderr), 3 training diverged (one line; the last good checkpoint is kept).
"""
from __future__ import annotations

import re
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


USAGE = """usage: python -m fedbat_jax.main --workdir=DIR [--config=FILE[:ARG]] [--config.FIELD=VALUE ...]
                              [--allow_change=FIELD,...] [--progress=false]

Runs (or resumes) one federated run in DIR. FILE defines get_config(ARG), e.g. experiments/configs/mnist5k.py
(default: fedbat_jax/config.py). The settings and their defaults:
"""


def _unknown_field(e: BaseException) -> str:
    """ml_collections' message for a misspelt field, as one readable line."""
    from fedbat_jax.config import unknown_field

    while e.args and isinstance(e.args[0], BaseException):  # AttributeError(KeyError(message))
        e = e.args[0]
    text = str(e.args[0]) if e.args else str(e)
    name = re.search(r'Key "([^"]+)"|\'([^\']+)\'', text)
    field = next(g for g in name.groups() if g) if name else _one_line(e)
    return f"{unknown_field(field)} (python -m fedbat_jax.main --help lists the fields)"


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
        flags.DEFINE_list("allow_change", [], "Settings a resume may change (rounds, execution, lanes, "
                          "lane_loop, num_devices).", flag_values=fv)
        fv(list(argv))
        config = fv.config
        config.to_dict()  # loading errors surface on first access
    finally:
        sys.argv = saved
    return config, fv.workdir, fv.progress, fv.allow_change


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    if {"-h", "--help", "--helpshort", "--helpfull"} & set(argv[1:]):
        from fedbat_jax.config import settings_help

        print(USAGE + settings_help())
        return 0
    try:
        config, workdir, progress, allow_change = _parse(argv)
    except (KeyError, AttributeError) as e:
        return _fail(_unknown_field(e))
    except Exception as e:  # any bad flag, config path or override: one line, no traceback
        return _fail(_one_line(e))
    if not workdir:
        return _fail("--workdir is required (a folder for metrics.jsonl and checkpoints)")

    from fedbat_jax.errors import DivergenceError, FedBatError
    from fedbat_jax.train import run

    try:
        records = run(config, workdir, progress=progress, log=lambda s: print(s, flush=True),
                      allow_change=allow_change)
    except DivergenceError as e:
        _fail(str(e))
        return 3
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
