"""Readers for the natural federations' own files: TFF's federated HDF5 files and LEAF's JSON shards.

TFF (``tff.simulation.datasets.<name>.load_data()`` downloads ``TFF_URLS[name]`` and extracts ``<prefix>_train.h5``,
``<prefix>_test.h5``) stores one group per client: ``/examples/<client_id>/<field>``, each field an array with one
entry per example. The fields of the TFF datasets these readers serve:

- Shakespeare (``shakespeare_*.h5``): ``snippets``, byte strings (a line of dialogue or a run of lines; the files hold
  ASCII as fixed-length strings); ``decode_snippets`` turns them into ``str`` (UTF-8).
- EMNIST-62 (``fed_emnist_*.h5``): ``pixels`` float32 [n,28,28] (in [0, 1]), ``label`` int [n] (0..61).
- CIFAR-100 (``fed_cifar100_*.h5``): ``image`` uint8 [n,32,32,3], ``label`` int [n] (0..99), ``coarse_label`` (0..19).
- StackOverflow (``stackoverflow_*.h5``): ``tokens`` (byte strings of space-separated words), ``title``, ``tags``
  (byte strings; ``decode_snippets`` decodes these too), and others (``score``, ``type``, ...).

The readers return the arrays as h5py gives them (no conversion) and never load more than one client at a time
while streaming (StackOverflow's train file holds 342,477 clients in about 30 GB).

LEAF (github.com/TalwalkarLab/leaf, ``data/<dataset>/preprocess.sh``) writes each split as JSON shards
``{"users": [...], "num_samples": [...], "user_data": {user: {"x": [...], "y": [...]}}}``; ``read_leaf_json`` reads
the shards of one split (FEMNIST: x [n,784] floats in [0, 1], y 0..61; Shakespeare: x 80-character strings, y one
character). Every problem is a one-line DataError naming the file, what is wrong and where to download it again.
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

import numpy as np

from fedbat_jax.data.checks import one_line
from fedbat_jax.errors import DataError

TFF_BASE_URL = "https://storage.googleapis.com/tff-datasets-public/"
TFF_URLS: dict[str, str] = {
    "shakespeare": TFF_BASE_URL + "shakespeare.tar.bz2",
    "emnist": TFF_BASE_URL + "fed_emnist.tar.bz2",
    "cifar100": TFF_BASE_URL + "fed_cifar100.tar.bz2",
    "stackoverflow": TFF_BASE_URL + "stackoverflow.tar.bz2",
}
# The file names each archive extracts to: <prefix>_<split>.h5.
TFF_PREFIXES: dict[str, str] = {
    "shakespeare": "shakespeare",
    "emnist": "fed_emnist",
    "cifar100": "fed_cifar100",
    "stackoverflow": "stackoverflow",
}
# (clients, examples) that TFF documents per split; None where it is not checked.
TFF_SIZES: dict[str, dict[str, tuple[int, int | None]]] = {
    "shakespeare": {"train": (715, 16068), "test": (715, 2356)},
    "emnist": {"train": (3400, 671585), "test": (3400, 77483)},
    "cifar100": {"train": (500, 50000), "test": (100, 10000)},
    "stackoverflow": {"train": (342477, None)},
}

LEAF_REPO = "github.com/TalwalkarLab/leaf"
LEAF_FEMNIST_COMMAND = "./preprocess.sh -s niid --sf 0.05 -k 0 -t sample"
_LEAF_DATASETS = ("femnist", "shakespeare", "sent140", "celeba", "reddit", "synthetic")
_LEAF_KEYS = ("users", "num_samples", "user_data")


class ClientArrays(NamedTuple):
    """Per-client arrays: ``arrays[field][i]`` holds the examples of client ``ids[i]``."""

    ids: list[str]
    arrays: dict[str, list[np.ndarray]]


# --------------------------------------------------------------------------- TFF HDF5


def _tff_fix(path: Path) -> str:
    """How to get ``path`` again: its TFF archive when the name is one of TFF's, else TFF's bucket."""
    for name, prefix in TFF_PREFIXES.items():
        if re.fullmatch(rf"{prefix}_(train|test|held_out)\.h5", path.name):
            return f"download {TFF_URLS[name]} again and extract {path.name} from it"
    return (f"download the dataset again from TFF ({TFF_BASE_URL}<name>.tar.bz2, what "
            "tff.simulation.datasets.<name>.load_data() fetches)")


def _open_tff(path: Path):
    """(open h5py.File, its /examples group); a DataError when the file is missing or not TFF's layout."""
    import h5py  # lazily: only the TFF readers need it

    fix = _tff_fix(path)
    if not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        raise DataError(f"{path} {what}; {fix}")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DataError(f"{path} is not a readable HDF5 file ({one_line(e)}); {fix}") from e
    with _closed_on_error(f, f"{path} is not a readable HDF5 file", fix):
        examples = f.get("examples")
        if not isinstance(examples, h5py.Group):
            top = ", ".join(list(f)[:5]) or "nothing"
            raise DataError(f"{path} has no /examples group (top level holds {top}), so it is not a TFF federated "
                            f"dataset file; {fix}")
    return f, examples


@contextlib.contextmanager
def _closed_on_error(f, what: str, fix: str):
    """Close ``f`` if the block fails; h5py's own errors (a truncated or corrupt file) become one DataError line."""
    try:
        yield
    except DataError:
        f.close()
        raise
    except (OSError, RuntimeError, KeyError, ValueError) as e:
        f.close()
        raise DataError(f"{what} (truncated or corrupt: {one_line(e)}); {fix}") from e


def _as_fields(fields: str | Sequence[str]) -> tuple[str, ...]:
    """``fields`` as a tuple (one name may be given as a string); a ValueError when it names none."""
    out = (fields,) if isinstance(fields, str) else tuple(fields)
    if not out or not all(isinstance(x, str) for x in out):
        raise ValueError(f"fields must name at least one field, got {fields!r}")
    return out


def _read_client(path: Path, examples, cid: str, fields: tuple[str, ...], fix: str) -> dict[str, np.ndarray]:
    """One client's fields, checked: each present, an array with one entry per example, all of one length."""
    import h5py

    try:
        group = examples[cid]
        if not isinstance(group, h5py.Group):
            raise DataError(f"{path}: /examples/{cid} is not a group of fields; {fix}")
        missing = [name for name in fields if name not in group]
        if missing:
            have = ", ".join(sorted(group)) or "none"
            raise DataError(f"{path}: client {cid!r} has no {' / '.join(missing)} field (it has: {have}); ask for "
                            f"the fields it has, or if it should have these, {fix}")
        out = {}
        for name in fields:
            ds = group[name]
            if not isinstance(ds, h5py.Dataset) or ds.ndim == 0:
                raise DataError(f"{path}: /examples/{cid}/{name} is not an array with one entry per example; {fix}")
            out[name] = ds[()]
    except DataError:
        raise
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as e:
        raise DataError(f"{path}: cannot read client {cid!r} (truncated or corrupt: {one_line(e)}); {fix}") from e
    lengths = {name: len(a) for name, a in out.items()}
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"{name} {n}" for name, n in lengths.items())
        raise DataError(f"{path}: client {cid!r} has fields of different lengths ({listed}), expected one entry per "
                        f"example in each; {fix}")
    return out


def tff_client_ids(path: str | Path) -> list[str]:
    """The client ids of a TFF federated HDF5 file, in stored order (HDF5 keeps them sorted by name)."""
    f, examples = _open_tff(Path(path))
    with f:
        try:
            return list(examples)
        except (OSError, RuntimeError, KeyError, ValueError) as e:
            raise DataError(f"{path}: cannot list the clients (truncated or corrupt: {one_line(e)}); "
                            f"{_tff_fix(Path(path))}") from e


def iter_tff_clients(
    path: str | Path, fields: str | Sequence[str], clients: Sequence[str] | None = None
) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
    """Stream ``(client_id, {field: array})`` one client at a time, in stored order or in the order of ``clients``.

    The file is opened and checked (and every id of ``clients`` looked up) at the call; the iterator reads one
    client per step and closes the file when exhausted or closed.
    """
    path = Path(path)
    fields = _as_fields(fields)
    fix = _tff_fix(path)
    f, examples = _open_tff(path)
    with _closed_on_error(f, f"{path}: cannot list the clients", fix):
        if clients is None:
            order = list(examples)
        else:
            order = [str(c) for c in clients]
            absent = [c for c in order if c not in examples]
            if absent:
                shown = ", ".join(map(repr, absent[:5])) + (f" and {len(absent) - 5} more" if len(absent) > 5 else "")
                raise DataError(f"{path} has no client {shown} ({len(examples)} clients in the file; "
                                "tff_client_ids lists them)")
    return _stream(f, examples, path, order, fields, fix)


def _stream(f, examples, path: Path, order: list[str], fields: tuple[str, ...], fix: str):
    with f:
        for cid in order:
            yield cid, _read_client(path, examples, cid, fields, fix)


def read_tff_h5(
    path: str | Path, fields: str | Sequence[str], *, expected: tuple[int, int | None] | None = None
) -> ClientArrays:
    """Every client's ``fields`` (one array per client per field, in id order).

    ``expected=(clients, examples)`` (e.g. ``TFF_SIZES["shakespeare"]["train"]``; examples None: not checked) must
    match the file, else a DataError says what it holds against TFF's documented counts.
    """
    path = Path(path)
    fields = _as_fields(fields)
    ids: list[str] = []
    arrays: dict[str, list[np.ndarray]] = {name: [] for name in fields}
    for cid, client in iter_tff_clients(path, fields):
        ids.append(cid)
        for name in fields:
            arrays[name].append(client[name])
    if expected is not None:
        want_clients, want_examples = expected
        examples = sum(len(a) for a in arrays[fields[0]])
        if len(ids) != want_clients or (want_examples is not None and examples != want_examples):
            documented = f"{want_clients:,} clients" + ("" if want_examples is None else f" / {want_examples:,} "
                                                        "examples")
            raise DataError(f"{path} holds {len(ids):,} clients / {examples:,} examples, TFF's documented "
                            f"{documented}; the file is incomplete or another version: {_tff_fix(path)}")
    return ClientArrays(ids, arrays)


def decode_snippets(snippets: Sequence[bytes | str] | np.ndarray, where: str = "snippets") -> list[str]:
    """Byte strings (TFF's ``snippets``, ``tokens``, ``title``, ``tags``) as ``str``, decoded as UTF-8.

    ``where`` names their origin in the error for bytes that are not UTF-8 (e.g. ``"shakespeare_train.h5 client X"``).
    """
    out = []
    for i, s in enumerate(snippets):
        if isinstance(s, str):
            out.append(s)
            continue
        try:
            out.append(bytes(s).decode("utf-8"))
        except UnicodeDecodeError as e:
            raise DataError(f"{where}: entry {i} is not UTF-8 text ({one_line(e)}); the file is damaged or not "
                            f"TFF's: download it again from {TFF_BASE_URL}") from e
    return out


# --------------------------------------------------------------------------- LEAF JSON


def _natural_key(path: Path) -> tuple:
    """Sort key putting all_data_2 before all_data_10."""
    parts = re.split(r"(\d+)", path.name)
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts), str(path)


def _leaf_fix(where: Path) -> str:
    """How to regenerate LEAF data, for the dataset a path names (FEMNIST's exact sample command)."""
    lowered = [p.lower() for p in where.parts]
    name = next((d for d in _LEAF_DATASETS if any(d in p for p in lowered)), None)
    if name == "femnist" or name is None:
        return f"regenerate the shards with LEAF's {LEAF_FEMNIST_COMMAND} in {LEAF_REPO}/data/femnist" + (
            "" if name else " (data/<dataset> for the other LEAF datasets)")
    return f"regenerate the shards with LEAF's ./preprocess.sh in {LEAF_REPO}/data/{name} (its README gives the flags)"


def leaf_files(folder: str | Path) -> list[Path]:
    """The ``*.json`` shards in ``folder``, sorted naturally by name (all_data_2 before all_data_10)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder of LEAF .json shards; {_leaf_fix(folder)}")
    files = sorted((p for p in folder.glob("*.json") if p.is_file()), key=_natural_key)
    if not files:
        raise DataError(f"{folder} holds no .json files (LEAF's shards of one split); {_leaf_fix(folder)}")
    return files


def _leaf_array(values: list, field: str) -> np.ndarray:
    """x/y of one user: float32 (x) or int64 (integer y) when numeric, else an object array of the entries."""
    try:
        a = np.asarray(values)
    except (ValueError, TypeError):  # ragged or mixed entries: keep them as they are (e.g. LEAF Reddit's tokens)
        a = None
    if a is not None and a.dtype.kind in "biuf":
        if field == "y" and a.dtype.kind != "f":
            return a.astype(np.int64)
        return a.astype(np.float32)
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        out[i] = v
    return out


def _load_leaf_file(path: Path, fix: str) -> dict:
    try:
        with open(path, "rb") as fh:
            data = json.load(fh)
    except OSError as e:
        raise DataError(f"cannot read {path} ({e.strerror or one_line(e)}); {fix}") from e
    except (ValueError, RecursionError, MemoryError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise DataError(f"{path} is not a readable JSON file ({type(e).__name__}: {one_line(e)}); the shard is "
                        f"truncated or not LEAF's: {fix}") from e
    if not isinstance(data, dict):
        raise DataError(f"{path} holds a JSON {type(data).__name__}, not LEAF's object with users / num_samples / "
                        f"user_data; {fix}")
    missing = [k for k in _LEAF_KEYS if k not in data]
    if missing:
        have = ", ".join(list(data)[:5]) or "nothing"
        raise DataError(f"{path} has no {' / '.join(missing)} (it has: {have}), so it is not a LEAF shard; {fix}")
    users, counts, user_data = data["users"], data["num_samples"], data["user_data"]
    if not isinstance(users, list) or not all(isinstance(u, str) for u in users):
        raise DataError(f"{path}: users is not a list of user names; {fix}")
    if not isinstance(counts, list) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                                               for n in counts):
        raise DataError(f"{path}: num_samples is not a list of counts (whole numbers >= 0); {fix}")
    if len(users) != len(counts):
        raise DataError(f"{path}: {len(users)} users but {len(counts)} num_samples, expected one count per user; "
                        f"{fix}")
    if not isinstance(user_data, dict):
        raise DataError(f"{path}: user_data is not an object keyed by user; {fix}")
    return data


def read_leaf_json(files: str | Path | Sequence[str | Path]) -> ClientArrays:
    """The users of one split's LEAF shards, with ``x`` and ``y`` per user (see ``_leaf_array`` for the dtypes).

    ``files``: the shards (or a folder of them: ``leaf_files``); they are read sorted naturally by name and users
    kept in order of first appearance. A user in two shards, a count that disagrees with num_samples or a shard
    that is not LEAF's JSON is a DataError naming the file.
    """
    if isinstance(files, (str, Path)):
        files = leaf_files(files) if Path(files).is_dir() else [Path(files)]
    paths = sorted(map(Path, files), key=_natural_key)
    if not paths:
        raise DataError(f"no LEAF .json shards given; {_leaf_fix(Path('.'))}")
    ids: list[str] = []
    arrays: dict[str, list[np.ndarray]] = {"x": [], "y": []}
    seen: dict[str, Path] = {}
    for path in paths:
        fix = _leaf_fix(path)
        data = _load_leaf_file(path, fix)
        for user, n in zip(data["users"], data["num_samples"]):
            if user in seen:
                where = "twice in that file" if seen[user] == path else f"also in {seen[user]}"
                raise DataError(f"{path}: user {user!r} appears {where}; shards of one split must hold disjoint "
                                f"users: {fix}")
            seen[user] = path
            entry = data["user_data"].get(user)
            if not isinstance(entry, dict) or not all(isinstance(entry.get(k), list) for k in ("x", "y")):
                what = "no user_data entry" if entry is None else "user_data without x and y lists"
                raise DataError(f"{path}: user {user!r} has {what}; {fix}")
            if len(entry["x"]) != n or len(entry["y"]) != n:
                raise DataError(f"{path}: user {user!r} has {len(entry['x'])} x and {len(entry['y'])} y but "
                                f"num_samples says {n}; {fix}")
            ids.append(user)
            for field in ("x", "y"):
                arrays[field].append(_leaf_array(entry[field], field))
    for field in ("x", "y"):
        _check_leaf_shapes(ids, arrays[field], field, [seen[u] for u in ids])
    return ClientArrays(ids, arrays)


def _check_leaf_shapes(ids: list[str], arrays: list[np.ndarray], field: str, paths: list[Path]) -> None:
    """Numeric users of a split must share one shape per example (784 for FEMNIST); empty users take it on."""
    ref = next((a for a in arrays if a.dtype != object and len(a)), None)
    if ref is None:
        return
    shape = ref.shape[1:]
    for i, a in enumerate(arrays):
        if not len(a):
            arrays[i] = np.zeros((0, *shape), ref.dtype)
        elif a.dtype == object or a.shape[1:] != shape:
            got = "non-numeric entries" if a.dtype == object else f"entries of shape {a.shape[1:]}"
            raise DataError(f"{paths[i]}: user {ids[i]!r} has {field} with {got} where other users have numeric "
                            f"entries of shape {shape}; {_leaf_fix(paths[i])}")


# --------------------------------------------------------------------------- splits


def _num_examples(split: ClientArrays, i: int) -> int:
    return len(next(iter(split.arrays.values()))[i]) if split.arrays else 0


def join_splits(train: ClientArrays, test: ClientArrays) -> tuple[ClientArrays, ClientArrays, dict]:
    """The clients present in both splits, in train's order, and a summary of what was kept and dropped.

    Summary keys: ``kept``, ``train_only``, ``test_only`` (clients) and ``kept_train_examples``,
    ``kept_test_examples``, ``dropped_train_examples``, ``dropped_test_examples``.
    """
    test_index = {cid: i for i, cid in enumerate(test.ids)}
    train_set = set(train.ids)
    keep_train = [i for i, cid in enumerate(train.ids) if cid in test_index]
    keep_test = [test_index[train.ids[i]] for i in keep_train]

    def pick(split: ClientArrays, rows: list[int]) -> ClientArrays:
        return ClientArrays([split.ids[i] for i in rows], {k: [v[i] for i in rows] for k, v in split.arrays.items()})

    def total(split: ClientArrays, rows) -> int:
        return sum(_num_examples(split, i) for i in rows)

    kept_train, kept_test = pick(train, keep_train), pick(test, keep_test)
    train_total, test_total = total(train, range(len(train.ids))), total(test, range(len(test.ids)))
    summary = {
        "kept": len(keep_train),
        "train_only": len(train.ids) - len(keep_train),
        "test_only": sum(1 for cid in test.ids if cid not in train_set),
        "kept_train_examples": total(train, keep_train),
        "kept_test_examples": total(test, keep_test),
    }
    summary["dropped_train_examples"] = train_total - summary["kept_train_examples"]
    summary["dropped_test_examples"] = test_total - summary["kept_test_examples"]
    return kept_train, kept_test, summary
