"""The command line of every entry point: ``--config=FILE[:ARG]``, ``--config.FIELD=VALUE``, one-line errors.

    ap = cli.ArgumentParser(prog="compare", description=...)   # the script's own flags on top
    ap.add_argument("--workdir", default="runs/compare")
    sys.exit(cli.guarded("compare", lambda: main(*cli.parse(ap, sys.argv[1:], DEFAULT_CONFIG))))

A script of several configs (a study grid) calls ``parse_args`` once and ``make_config(spec, overrides,
**fields)`` per cell.

Reading a config file (``load_config``) and applying overrides (``apply_overrides``) live here, apart from the
settings table and its validation (``fedbat_jax.config``).

``python -m fedbat_jax.main`` and every script in ``experiments/`` parse their arguments here, so they read
the same syntax and fail the same way: a bad argument, config file or setting is one line on stderr and exit
status 2 (``--help``: 0); a diverged run is exit 3; Ctrl-C 130 and SIGTERM 143, each with one line. Only the
project's own errors (``FedBatError``) become one line; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from typing import Callable

import ml_collections

from fedbat_jax.config import unknown_field
from fedbat_jax.errors import ConfigError, DivergenceError, FedBatError, JobError, SlowStart, Terminated
from fedbat_jax.stopping import on_sigterm

EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_JOB_FAILED, EXIT_INTERRUPTED, EXIT_TERMINATED = 2, 3, 4, 130, 143
EXIT_SLOW_START = 75  # (EX_TEMPFAIL) a multi-process job did not start in time: the launcher tries again
DEFAULT_CONFIG_FILE = str(Path(__file__).with_name("config.py"))  # every setting at its default


def one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line (``PROG: error: ...``) and exit 2, and which takes no abbreviations."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        raise ConfigError(message)


def names(text: str) -> list[str]:
    """An argparse ``type``: ``iid,label_count`` -> ``["iid", "label_count"]`` (empty items dropped)."""
    return [s.strip() for s in text.split(",") if s.strip()]


def int_list(text: str) -> list[int]:
    """An argparse ``type``: ``0,1,2`` -> ``[0, 1, 2]``."""
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def parse_args(ap: argparse.ArgumentParser, argv: list[str], default_config: str | None = None,
               ) -> tuple[argparse.Namespace, list[str]]:
    """``ap``'s arguments plus ``--config=FILE[:ARG]`` (``default_config`` if not given), and the
    ``--config.FIELD=VALUE`` overrides in order (for ``make_config``). A stray or unknown argument is a
    one-line ``ConfigError``."""
    ap.add_argument("--config", default=default_config, metavar="FILE[:ARG]",
                    help="a Python file defining get_config([ARG]); fields are then set as --config.FIELD=VALUE")
    overrides = [a for a in argv if a.startswith("--config.")]
    return ap.parse_args([a for a in argv if not a.startswith("--config.")]), overrides


def method_fields(spec: str, bits: int = 1) -> tuple[dict, list[str]]:
    """``NAME[+ef|+ef21][@FIELD=VALUE...]`` as config fields and overrides: NAME is an algorithm, or a compressor
    (FedAvg's training with that upload: ``eden``); each ``@FIELD=VALUE`` is ``--config.FIELD=VALUE`` for this
    method alone (``fedbat@rho=0``, ``fedbat@ste=identity@upload_alpha=max``). ``bits``: qsgd's. The study scripts'
    method names (``experiments/study.py``, ``protocol.py``)."""
    from fedbat_jax.algorithms import ALGORITHMS
    from fedbat_jax.compressors import COMPRESSORS

    head, *variant = spec.split("@")
    name, _, feedback = head.partition("+")
    fields = {"algorithm": name, "error_feedback": feedback or "none"}
    if name not in ALGORITHMS and name in COMPRESSORS:
        fields.update(algorithm="fedavg", compressor=name)
    if name == "qsgd":
        fields["bits"] = bits
    for item in variant:
        if "=" not in item:
            raise ConfigError(f"method {spec!r}: each part after @ must be FIELD=VALUE, got {item!r}")
    return fields, [f"--config.{item}" for item in variant]


def make_config(spec: str, overrides: list[str] = (), **fields) -> ml_collections.ConfigDict:
    """The config of ``FILE[:ARG]``, with ``fields`` set (a script's own choices) and then the user's
    ``--config.FIELD=VALUE`` overrides, which win. Every failure is a one-line ``ConfigError``."""
    if not spec:
        raise ConfigError("give --config=FILE[:ARG]")
    config = load_config(spec)
    for name, value in fields.items():
        if name not in config:
            raise unknown_field(name)
        config[name] = value
    rest = apply_overrides(config, list(overrides))
    if rest:
        raise ConfigError(f"unrecognized arguments: {' '.join(rest)}")
    return config


def parse(ap: argparse.ArgumentParser, argv: list[str], default_config: str | None = None,
          ) -> tuple[ml_collections.ConfigDict, argparse.Namespace]:
    """For a script of one config: ``parse_args`` then ``make_config``."""
    args, overrides = parse_args(ap, argv, default_config)
    return make_config(args.config, overrides), args


# ---- configs from the command line: --config=FILE[:ARG] and --config.FIELD=VALUE ---------------------
def load_config(spec: str) -> ml_collections.ConfigDict:
    """The config of ``FILE[:ARG]``: a Python file defining ``get_config([ARG])`` (the CLI's ``--config``).

    Every failure is a one-line ``ConfigError``: no such file, a file that fails to load, ``get_config``
    missing, rejecting ``ARG`` or raising, or returning something other than a config of these settings.
    """
    path, _, arg = spec.partition(":")
    if not Path(path).is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        module_spec = importlib.util.spec_from_file_location("fedbat_experiment_config", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        get_config = module.get_config
    except Exception as e:
        raise ConfigError(f"config file {path} failed to load: {type(e).__name__}: {' '.join(str(e).split())}") from e
    try:
        config = get_config(arg) if arg else get_config()
    except ConfigError:
        raise
    except TypeError as e:
        if arg and "positional argument" in str(e):
            raise ConfigError(f"config file {path} takes no argument (got {arg!r})") from e
        raise ConfigError(f"config {spec}: get_config() raised TypeError: {' '.join(str(e).split())}") from e
    except Exception as e:
        raise ConfigError(f"config {spec}: get_config() raised {type(e).__name__}: {' '.join(str(e).split())}") from e
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"config {spec}: get_config() must return a config (fedbat_jax.config.default_config() "
                          f"with fields set), got {type(config).__name__}")
    return config


def apply_overrides(c: ml_collections.ConfigDict, args: list[str]) -> list[str]:
    """Apply every ``--config.FIELD=VALUE`` in ``args`` to ``c`` (the CLI's syntax; the value is read as the
    field's type); return the other arguments. An unknown field or a bad value is a one-line ConfigError."""
    rest = []
    for arg in args:
        if not arg.startswith("--config."):
            rest.append(arg)
            continue
        field, eq, text = arg[len("--config."):].partition("=")
        if field not in c:
            raise unknown_field(field)
        if not eq:
            raise ConfigError(f"{arg}: give a value, as --config.{field}=VALUE")
        kind = type(c[field])
        try:
            if kind is bool:
                if text.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(text)
                value = text.lower() in ("true", "1")
            else:
                value = kind(text)
        except ValueError:
            raise ConfigError(f"--config.{field}: could not convert {text!r} to {kind.__name__}") from None
        c[field] = value
    return rest


def guarded(prog: str, body: Callable[[], int | None], resumes: bool = True) -> int:
    """Run ``body``; the project's errors become one line on stderr and an exit status (2 bad input or an
    unusable workdir, 3 diverged, 4 a multi-process job lost a process, 75 one did not start in time, 130
    interrupted by Ctrl-C, 143
    terminated by SIGTERM). Other exceptions propagate with their traceback. ``resumes``: whether a rerun
    resumes (the stop's line says so) or starts over (a script that keeps no checkpoint)."""
    import signal
    import threading

    main_thread = threading.current_thread() is threading.main_thread()
    if main_thread:  # SIGINT too: a process started with it ignored (`cmd &` in a script) still stops on one
        previous_term = signal.signal(signal.SIGTERM, on_sigterm)
        previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    resume = ("rerun the same command to resume from the last checkpoint" if resumes else
              "nothing was kept; rerun the same command to start over")
    try:
        return body() or 0
    except DivergenceError as e:
        print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
        return EXIT_DIVERGED
    except JobError as e:
        print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
        return EXIT_SLOW_START if isinstance(e, SlowStart) else EXIT_JOB_FAILED
    except FedBatError as e:
        print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; {resume}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Terminated as e:
        why = f": {one_line(e)}" if str(e) else ""
        if e.interrupted:
            print(f"{prog}: interrupted (Ctrl-C){why}; {resume}", file=sys.stderr)
            return EXIT_INTERRUPTED
        print(f"{prog}: terminated (SIGTERM){why}; {resume}", file=sys.stderr)
        return EXIT_TERMINATED
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous_term)
            signal.signal(signal.SIGINT, previous_int)
