"""A run's folder: one run at a time, the settings behind its numbers, and files that survive a crash.

    WORKDIR/config.json          the run's settings; a resume with different ones is refused
    WORKDIR/machine.json         what computed it (backend, device kind, CPU model and threads, jax: ``machine.py``);
                                 a resume on another is warned about, since its rounds are not bit-equal
    WORKDIR/metrics.jsonl        one strict-JSON line per round (a non-finite value is written as null)
    WORKDIR/checkpoint.npz       the newest checkpoint: the round, its metrics line and the server state's leaves
                                 by tree path (a metrics.jsonl line for that round with other values is refused)
    WORKDIR/metrics.dropped.jsonl  lines of rounds after the checkpoint, moved out by a resume that recomputes them
    WORKDIR/checkpoint.prev.npz  the one before it, kept until the newest is complete on disk
    WORKDIR/.lock                held (``flock``) while a run uses the folder; the kernel frees it if the run dies
    WORKDIR/events.out.tfevents.*  with ``tensorboard=True``: the same metrics as TensorBoard scalars

``Workdir(path, config)`` checks all of this before any data loads; ``restore`` then returns the server
state, the last checkpointed round and the metrics up to it; ``append`` and ``save`` write as the run goes.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fedbat_jax import machine
from fedbat_jax.config import RENAMED_FIELDS, RESUMABLE_FIELDS, RUNTIME_FIELDS, SETTINGS, resolved
from fedbat_jax.errors import ConfigError, WorkdirError

CONFIG_FILE = "config.json"
MACHINE_FILE = "machine.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_FILE = "checkpoint.npz"
PREVIOUS_CHECKPOINT_FILE = "checkpoint.prev.npz"
LOCK_FILE = ".lock"
_ROUND = "__round__"
_RECORD = "__record__"  # the checkpointed round's metrics line (UTF-8 bytes): what metrics.jsonl must hold for it
DROPPED_FILE = "metrics.dropped.jsonl"  # lines a resume took out of metrics.jsonl, kept rather than deleted
# What reading a truncated, empty or garbage checkpoint raises.
UNREADABLE = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile)
# Setting values that were renamed since config.json began ((field, old) -> new): an old run resumes.
RENAMED_VALUES = {("lane_loop", "host"): "python"}
# Leaf-name prefixes that were renamed since checkpoints began (old -> new): an old checkpoint still loads.
_RENAMED = {"client_states/": "client_table/compressor/", "compressor_states/": "client_table/compressor/"}


# ---- checkpoints: leaves by tree path, written durably, checked on load ---------------------------------
def leaf_names(tree: Any) -> list[tuple[str, Any]]:
    """``[(path, leaf)]`` with paths like ``params/Conv_0/kernel`` (the names a checkpoint stores)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [(jax.tree_util.keystr(path, simple=True, separator="/"), leaf) for path, leaf in flat]


def save_checkpoint(path: Path, tree: Any, r: int, record: dict | None = None) -> None:
    """Write ``tree``, round ``r`` and that round's metrics ``record`` to ``path``: a complete, fsynced file
    replaces the old one, which is kept as ``checkpoint.prev.npz`` (so one complete checkpoint exists at every
    instant)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    extra = {_RECORD: np.frombuffer(strict_json(record).encode(), np.uint8)} if record is not None else {}
    with _disk_errors(path, tmp):
        with open(tmp, "wb") as f:
            np.savez(f, **{_ROUND: np.int64(r)}, **extra, **{name: np.asarray(x) for name, x in leaf_names(tree)})
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            _keep_as_previous(path)
        os.replace(tmp, path)
        _fsync_dir(path.parent)


def _keep_as_previous(path: Path) -> None:
    """``path`` kept as ``checkpoint.prev.npz`` while ``path`` itself stays in place (a hard link, then one atomic
    rename), so that a signal between this and the new checkpoint's rename never leaves the run without
    ``checkpoint.npz``; a file system without hard links moves it instead."""
    previous = path.with_name(PREVIOUS_CHECKPOINT_FILE)
    linked = previous.with_name(previous.name + ".tmp")
    try:
        linked.unlink(missing_ok=True)
        os.link(path, linked)
    except OSError:
        os.replace(path, previous)
        return
    os.replace(linked, previous)


def read_checkpoint(path: Path) -> tuple[int, dict[str, np.ndarray]]:
    """The round and every array of a checkpoint, read in full (a truncated or corrupt file raises here)."""
    with np.load(path, allow_pickle=False) as f:
        arrays = {name: f[name] for name in f.files}
    if _ROUND not in arrays:
        raise ValueError("no round recorded")
    arrays.pop(_RECORD, None)
    return int(arrays.pop(_ROUND)), arrays


def checkpoint_record(path: Path) -> dict | None:
    """The metrics record of the round a checkpoint holds (``None`` in a checkpoint older than the record)."""
    with np.load(path, allow_pickle=False) as f:
        return json.loads(bytes(f[_RECORD]).decode("utf-8")) if _RECORD in f.files else None


def restore_tree(arrays: dict[str, np.ndarray], like: Any, source: str = "checkpoint") -> Any:
    """``like`` with its leaves from ``arrays``; a missing, extra or reshaped leaf is one clear line."""
    if "leaf_0" in arrays:
        raise WorkdirError(f"{source} was written by an older fedbat-jax (leaves stored by index); "
                           "start this run in a new --workdir")
    arrays = {_current_name(name): a for name, a in arrays.items()}
    named = leaf_names(like)
    mismatch = None
    for name, leaf in named:
        if name not in arrays:
            mismatch = f"it has no {name}"
        elif arrays[name].shape != leaf.shape or arrays[name].dtype != leaf.dtype:
            a = arrays[name]
            mismatch = f"{name} is {a.dtype}{list(a.shape)}, this config's is {leaf.dtype}{list(leaf.shape)}"
        if mismatch:
            break
    extra = sorted(arrays.keys() - {name for name, _ in named})
    if mismatch is None and extra:
        mismatch = f"it has {extra[0]}, which this config's state does not"
    if mismatch:
        raise WorkdirError(f"{source} does not match this config ({mismatch}); use a new --workdir")
    # a host leaf (the run loop's table of client states) stays in host memory; the rest go to the device
    leaves = [arrays[name] if isinstance(leaf, np.ndarray) else jnp.asarray(arrays[name]) for name, leaf in named]
    return jax.tree.unflatten(jax.tree.structure(like), leaves)


def _current_name(name: str) -> str:
    for old, new in _RENAMED.items():
        if name.startswith(old):
            return new + name[len(old):]
    return name


def _spans(rounds: list[int]) -> str:
    """``[2, 3, 4, 7]`` -> ``2-4, 7``."""
    out, start = [], rounds[0]
    for a, b in zip(rounds, rounds[1:] + [None]):
        if b != a + 1:
            out.append(f"{start}-{a}" if a > start else f"{a}")
            start = b
    return ", ".join(out)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---- metrics: strict JSON lines ----------------------------------------------------------------------
def strict_json(record: dict) -> str:
    """One JSON line; non-finite floats become null (``NaN`` is not JSON)."""
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
    return json.dumps(clean, allow_nan=False)


def read_metrics(path: Path, warn: Callable[[str], None]) -> tuple[list[dict], dict[int, int]]:
    """The records of ``metrics.jsonl`` in round order, and each one's line number. A truncated last line is
    dropped with a warning. Two lines of one round with other values are a WorkdirError naming both: one of them
    is not this run's, and which one is the user's call, never this reader's."""
    try:
        lines = path.read_bytes().splitlines() if path.exists() else []
    except OSError as e:
        raise WorkdirError(f"{path} is unreadable ({e.strerror or e}); repair or delete it") from None
    by_round, line_of = {}, {}
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line.decode("utf-8"))
            r = int(rec["round"])
        except (ValueError, KeyError, TypeError):  # (UnicodeDecodeError is a ValueError)
            if i == len(lines) - 1:
                warn(f"{path}: dropped an unreadable last line (cut short, as by a run stopped while writing it)")
                continue
            raise WorkdirError(f"{path} line {i + 1} is not a metrics record; repair or delete that line") from None
        if r in by_round and by_round[r] != rec:
            raise WorkdirError(f"{path} lines {line_of[r]} and {i + 1} both hold round {r}, with other values: one "
                               "of them is not this run's; remove it (nothing was changed)")
        by_round[r], line_of[r] = rec, line_of.get(r, i + 1)
    return [by_round[r] for r in sorted(by_round)], line_of


# ---- the folder ---------------------------------------------------------------------------------------
def result_changes(old: dict, new: dict) -> dict[str, tuple[Any, Any]]:
    """``{field: (old, new)}`` for the settings that change a run's numbers (a field that an older
    config.json lacks counts as its default: the behaviour before the field existed)."""
    defaults = {s.name: s.default for s in SETTINGS}
    old = {RENAMED_FIELDS.get(name, name): value for name, value in old.items()}
    old = {name: RENAMED_VALUES.get((name, value), value) for name, value in old.items()}
    old = {name: old.get(name, default) for name, default in defaults.items()}
    new = {name: new[name] for name in defaults}
    old_resolved, new_resolved = resolved(old), resolved(new)  # (partition=auto is iid on mnist, ...)
    return {name: (old[name], new[name]) for name in defaults
            if name not in RUNTIME_FIELDS and old_resolved[name] != new_resolved[name]}


# fedbat_jax.launch holds a job's workdir lock from before its processes start and hands the open lock file
# to process 0 under this variable (a file descriptor number): one lock, held without a gap for the whole job.
LOCK_FD_ENV = "FEDBAT_WORKDIR_LOCK_FD"


def make_folder(path: Path) -> bool:
    """Create the workdir ``path`` if it is not there; whether it was created. A file in its place, or a folder
    that cannot be created, is one line."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise WorkdirError(f"workdir {path} is a file, not a folder")
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WorkdirError(f"cannot create workdir {path}: {e.strerror or e}") from None
    return created


def hold_lock(folder: Path):
    """Take ``folder/.lock`` (``flock``, never waiting) and write this process's pid into it; returns the open
    file (closing it releases the lock). A held lock, a lock that cannot be opened or a pid that cannot be
    written is one line. A descriptor handed over under ``LOCK_FD_ENV`` for this very file is the launcher's
    lock: used as it is (its pid names the launcher, which stops the whole job)."""
    import fcntl

    path = Path(folder) / LOCK_FILE
    handed = _handed_lock(path)
    if handed is not None:
        return handed
    try:
        lock = open(path, "a+")
    except OSError as e:
        raise WorkdirError(f"cannot open {path} (the workdir's lock): {e.strerror or e}") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "unknown"
        lock.close()
        raise WorkdirError(f"workdir {Path(folder)} is in use by another run (pid {holder}); wait for it to "
                           "finish or use another --workdir") from None
    try:
        with _disk_errors(path):
            lock.seek(0)
            lock.truncate()
            lock.write(f"{os.getpid()}\n")
            lock.flush()
    except WorkdirError:
        with contextlib.suppress(OSError):  # (a pid that a full disk left unflushed fails again here)
            lock.close()
        raise
    return lock


def _handed_lock(path: Path):
    fd = os.environ.get(LOCK_FD_ENV, "")
    if not fd.isdigit():
        return None
    try:
        same = os.path.samestat(os.fstat(int(fd)), os.stat(path))
    except OSError:
        return None
    if not same:
        return None
    del os.environ[LOCK_FD_ENV]  # taken once
    return os.fdopen(int(fd), "a+")


class Workdir:
    """A run's folder, opened for one run: locked, its settings checked, its newest good checkpoint found.

    Use as a context manager (the lock is released on exit). ``writer=False`` (the other processes of a
    multi-process run) reads and checks but neither locks nor writes.
    """

    def __init__(self, path: str | Path, config: ml_collections.ConfigDict, allow_change: Iterable[str] = (),
                 warn: Callable[[str], None] = print, writer: bool = True):
        self.path, self.config, self.warn, self.writer = Path(path), config, warn, writer
        self.metrics_path = self.path / METRICS_FILE
        self.allow_change = set(allow_change)
        unknown = self.allow_change - set(RESUMABLE_FIELDS)
        if unknown:
            raise ConfigError(f"--allow_change takes {', '.join(RESUMABLE_FIELDS)}; got {', '.join(sorted(unknown))}")
        self._lock = self._tensorboard = None
        self._last_record = None  # the last metrics record appended: the next checkpoint of its round holds it
        self._created = self._created_lock = False
        self._open_folder()
        try:
            self.checkpoint = self._newest_checkpoint()  # (file, round, arrays) or None
            self.changes = self._check_settings()
            self._check_machine()
        except BaseException:
            self.close(failed=True)
            raise

    @property
    def checkpoint_round(self) -> int:
        return self.checkpoint[1] if self.checkpoint else 0

    def _open_folder(self) -> None:
        if not self.writer:
            if self.path.exists() and not self.path.is_dir():
                raise WorkdirError(f"workdir {self.path} is a file, not a folder")
            return
        self._created = make_folder(self.path)
        self._created_lock = not (self.path / LOCK_FILE).exists()
        try:
            self._lock = hold_lock(self.path)
        except WorkdirError:
            self._remove_created()
            raise

    def _newest_checkpoint(self):
        for name in (CHECKPOINT_FILE, PREVIOUS_CHECKPOINT_FILE):
            if (self.path / name).is_dir():
                raise WorkdirError(f"{self.path / name} is a folder, not a checkpoint; move it away")
        for name in (CHECKPOINT_FILE, PREVIOUS_CHECKPOINT_FILE):
            file = self.path / name
            if not file.exists():
                continue
            try:
                r, arrays = read_checkpoint(file)
            except UNREADABLE as e:
                self.warn(f"{file} is unreadable ({type(e).__name__}: {' '.join(str(e).split())})")
                continue
            if name != CHECKPOINT_FILE:
                self.warn(f"resuming from the previous checkpoint {file} (round {r})")
            return file, r, arrays
        if (self.path / CHECKPOINT_FILE).exists() or (self.path / PREVIOUS_CHECKPOINT_FILE).exists():
            raise WorkdirError(f"no readable checkpoint in {self.path}; delete checkpoint*.npz there to start "
                               "the run over, or use a new --workdir")
        return None

    def _covered_checkpoint(self, rounds: set):
        """The newest checkpoint whose rounds metrics.jsonl all holds: a round the checkpoint covers but the
        metrics lack is recomputed from the previous checkpoint (runs are deterministic), never dropped."""
        file, done, arrays = self.checkpoint
        missing = sorted(set(range(1, done + 1)) - rounds)
        if not missing:
            return self.checkpoint
        lacking = f"{self.metrics_path} lacks round(s) {_spans(missing)} of the checkpoint's {done}"
        previous = self.path / PREVIOUS_CHECKPOINT_FILE
        if file != previous and previous.is_file():
            try:
                r, prev_arrays = read_checkpoint(previous)
            except UNREADABLE:
                r = None
            if r is not None and set(range(1, r + 1)) <= rounds:
                self.warn(f"{lacking}; resuming from the previous checkpoint (round {r}) to recompute them")
                return previous, r, prev_arrays
        raise WorkdirError(f"{lacking}, and no earlier checkpoint covers the rest; restore metrics.jsonl or start "
                           "over in a new --workdir")

    def _check_settings(self) -> dict:
        """Refuse (one line) to start or resume under settings that would change the numbers of the run this
        folder holds. ``config.json`` is the run's identity from the moment it is written (once the data has
        loaded), with or without a checkpoint: a run stopped before its first checkpoint restarts from round 1
        under the same settings, never over its metrics under other ones."""
        file = self.path / CONFIG_FILE
        if self.checkpoint is None and not file.exists():
            return {}  # a new run
        what = "checkpoint's" if self.checkpoint is not None else "run's"
        try:
            old = json.loads(file.read_text())
        except (OSError, ValueError) as e:
            raise WorkdirError(f"{file} is missing or unreadable ({type(e).__name__}), so the {what} settings "
                               "are unknown; use a new --workdir") from None
        if not isinstance(old, dict):
            raise WorkdirError(f"{file} holds a JSON {type(old).__name__}, not the run's settings, so the "
                               f"{what} settings are unknown; use a new --workdir")
        done = self.checkpoint_round
        if self.config.rounds < done:
            raise WorkdirError(f"{self.path} has completed {done} rounds; rounds must be >= {done}")
        changes = result_changes(old, self.config.to_dict())
        if "rounds" in changes and self.config.lr_schedule == "cosine":
            raise WorkdirError(f"{self.path}: rounds sets the length of the cosine learning-rate schedule, so a "
                               "cosine run cannot be extended; use a new --workdir")
        refused = {k: v for k, v in changes.items() if k not in self.allow_change}
        if refused:
            diff = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in refused.items())
            hint = (f", or add --allow_change={','.join(refused)} to continue it with them"
                    if set(refused) <= set(RESUMABLE_FIELDS) else "")
            raise WorkdirError(f"{self.path} holds a run with other settings ({diff}); use a new --workdir{hint}")
        return changes

    def _check_machine(self) -> None:
        """A resume on another machine shape is allowed (its numbers are as valid) but said, and recorded:
        from the resumed round on they are not the bit-equal continuation of the run (see ``machine.py``)."""
        self.machine = machine.fingerprint()
        self.machines = []  # machine.json: every machine the run's checkpointed rounds were computed on, in order
        file = self.path / MACHINE_FILE
        if self.checkpoint is None or not file.is_file():
            return
        try:
            history = json.loads(file.read_text())
        except (OSError, ValueError):
            history = None
        if not (isinstance(history, list) and all(isinstance(h, dict) for h in history)):
            self.warn(f"{file} is unreadable; the machine the run's earlier rounds ran on is unknown")
            return
        self.machines = [h for h in history if h.get("from_round", 1) <= self.checkpoint_round]
        diff = self.machines and machine.differences(self.machines[-1], self.machine)
        if diff:
            self.warn(f"{self.path} was computed on another machine ({diff}); its rounds after "
                      f"{self.checkpoint_round} will not be bit-equal to an unbroken run there")

    def restore(self, like: Any) -> tuple[Any, int, list[dict]]:
        """(state, last checkpointed round, its metrics records); ``like`` when starting over. Writes the
        settings and the records kept (a later partial round's are dropped) back to the folder."""
        state, done, records = like, 0, []
        if self.checkpoint is not None:
            metrics, line_of = read_metrics(self.metrics_path, self.warn)
            self.checkpoint = self._covered_checkpoint({rec["round"] for rec in metrics})
            file, done, arrays = self.checkpoint
            self._check_record(file, done, next(rec for rec in metrics if rec["round"] == done), line_of[done])
            state = restore_tree(arrays, like, str(file))
            self.checkpoint = (file, done, None)  # the arrays are on the device now
            records = [rec for rec in metrics if rec["round"] <= done]
            self._keep_dropped([rec for rec in metrics if rec["round"] > done], done)
        if self.writer:
            _write_atomic(self.path / CONFIG_FILE, self.config.to_json(indent=2) + "\n")
            # cut again: restore may fall back to an earlier checkpoint than the one __init__ saw
            history = [h for h in self.machines if h.get("from_round", 1) <= done]
            if not history or machine.differences(history[-1], self.machine):
                history.append(dict(self.machine, from_round=done + 1))
            _write_atomic(self.path / MACHINE_FILE, json.dumps(history, indent=1) + "\n")
            _write_atomic(self.metrics_path, "".join(strict_json(rec) + "\n" for rec in records))
            if self.config.tensorboard:
                self._open_tensorboard(records)
        return state, done, records

    def _check_record(self, file: Path, done: int, record: dict, line: int) -> None:
        """metrics.jsonl's line for the checkpointed round is the one the run wrote with the checkpoint."""
        try:
            kept = checkpoint_record(file)
        except UNREADABLE:
            kept = None
        if kept is not None and kept != json.loads(strict_json(record)):
            raise WorkdirError(f"{self.metrics_path} line {line} (round {done}) is not the record {file.name} holds "
                               "for that round: the line is not this run's; restore it or remove it (nothing was "
                               "changed)")

    def _keep_dropped(self, records: list[dict], done: int) -> None:
        """The records of rounds after the checkpoint (recomputed from it) leave metrics.jsonl with a copy."""
        if self.writer and records:
            with _disk_errors(self.path / DROPPED_FILE), (self.path / DROPPED_FILE).open("a") as f:
                f.write("".join(strict_json(rec) + "\n" for rec in records))
            self.warn(f"{len(records)} metrics line(s) after the checkpoint's round {done} will be recomputed; "
                      f"they are kept in {self.path / DROPPED_FILE}")

    def _open_tensorboard(self, records: list[dict]) -> None:
        """TensorBoard shows every round of metrics.jsonl once: the event files are rewritten from it (the
        source of truth) at every start, so rounds lost in a crash's unflushed buffer, or run before
        tensorboard was turned on, are there too; each later round is flushed as it is appended."""
        from tensorboardX import SummaryWriter

        for old in self.path.glob("events.out.tfevents.*"):
            old.unlink()
        self._tensorboard = SummaryWriter(str(self.path))
        for record in records:
            self._scalars(record)
        self._tensorboard.flush()

    def _scalars(self, record: dict) -> None:
        for name, value in record.items():
            if name != "round" and isinstance(value, (int, float)):
                self._tensorboard.add_scalar(name, value, record["round"])

    def append(self, record: dict) -> None:
        self._last_record = record
        if self.writer:
            with _disk_errors(self.metrics_path), self.metrics_path.open("a") as f:
                f.write(strict_json(record) + "\n")
        if self._tensorboard is not None:
            self._scalars(record)
            self._tensorboard.flush()

    def save(self, state: Any, r: int) -> None:
        """Checkpoint round ``r`` (after making the metrics up to it durable)."""
        if self.writer:
            with _disk_errors(self.metrics_path), self.metrics_path.open("a") as f:
                os.fsync(f.fileno())
            last = self._last_record
            save_checkpoint(self.path / CHECKPOINT_FILE, state, r, last if last and last["round"] == r else None)
            self.checkpoint = (self.path / CHECKPOINT_FILE, r, None)

    def close(self, failed: bool = False) -> None:
        """Release the folder. ``failed``: the run stopped with an error; a folder it created and wrote
        nothing into (its lock aside) is removed, so a refused run leaves no trace."""
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None
        if self._lock is not None:
            if failed:
                self._remove_created()  # (while the lock is held: no other run can be starting in it)
            with contextlib.suppress(OSError):  # (a pid that a full disk left unflushed fails again here)
                self._lock.close()  # closing the file releases the flock
            self._lock = None

    def _remove_created(self) -> None:
        """A refused run leaves no trace: the folder it created, or the lock file it added to an existing
        folder, goes again when nothing else was written there."""
        with contextlib.suppress(OSError):
            if {p.name for p in self.path.iterdir()} <= {LOCK_FILE}:
                if self._created:
                    shutil.rmtree(self.path, ignore_errors=True)
                elif self._created_lock:
                    (self.path / LOCK_FILE).unlink(missing_ok=True)

    def __enter__(self) -> "Workdir":
        return self

    def __exit__(self, kind, value, traceback) -> None:
        self.close(failed=kind is not None)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with _disk_errors(path, tmp):
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


@contextlib.contextmanager
def _disk_errors(path: Path, tmp: Path | None = None):
    """An OSError while writing ``path`` (a full disk, a read-only file system) becomes one line naming the
    file and the free space; the temporary file is removed, so the previous version stays as it was."""
    try:
        yield
    except OSError as e:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()
        try:
            free = f"; {_size(shutil.disk_usage(path.parent).free)} free there"
        except OSError:
            free = ""
        raise WorkdirError(f"cannot write {path}: {e.strerror or e}{free}") from None


def _size(n: int) -> str:
    """``36.0 KB`` below a megabyte, ``1.5 MB`` above (a nearly full disk reads as what is left, not 0.0 MB)."""
    return f"{n / 2**10:.1f} KB" if n < 2**20 else f"{n / 2**20:.1f} MB"
