"""Tests for the natural federations' readers: TFF's federated HDF5 files and LEAF's JSON shards.

The readers are exercised on small files written here in the real layouts (h5py / json), and on the real
Shakespeare (TFF) and FEMNIST (LEAF sample) files under ../shared/data when they are present.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from fedbat_jax.data import natural
from fedbat_jax.data.natural import (TFF_SIZES, TFF_URLS, ClientArrays, decode_snippets, iter_tff_clients,
                                     join_splits, leaf_files, read_leaf_json, read_tff_h5, tff_client_ids)
from fedbat_jax.errors import DataError

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SHAKESPEARE = SHARED_DATA / "shakespeare"
FEMNIST = SHARED_DATA / "femnist_leaf"


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert isinstance(err.value, DataError)
    assert "\n" not in msg and msg.strip()
    return msg


# --------------------------------------------------------------------------- TFF HDF5: writers


def _write_tff(path: Path, clients: dict[str, dict[str, np.ndarray]]) -> Path:
    """A file in TFF's layout: /examples/<client>/<field>, written in the given client order."""
    with h5py.File(path, "w") as f:
        examples = f.create_group("examples")
        for cid, fields in clients.items():
            group = examples.create_group(cid)
            for name, values in fields.items():
                group.create_dataset(name, data=values)
    return path


def _vlen(texts: list[str]) -> np.ndarray:
    """Variable-length UTF-8 strings, as TFF's StackOverflow stores them."""
    return np.array([t.encode() for t in texts], dtype=h5py.string_dtype("utf-8"))


def _shakespeare(path: Path) -> dict[str, list[str]]:
    """Fixed-length ASCII byte strings, as in TFF's shakespeare files; clients written out of name order."""
    texts = {"THE_TEMPEST_PROSPERO": ["Now does my project gather to a head.", "", "My charms crack not."],
             "HAMLET_HAMLET": ["To be, or not to be:\nthat is the question."],
             "PERICLES__PRINCE_OF_TYRE_GOWER": ["To sing a song that old was sung,", "From ashes ancient Gower"]}
    _write_tff(path, {cid: {"snippets": np.array([t.encode() for t in ts], dtype=f"S{max(map(len, ts))}")}
                      for cid, ts in texts.items()})
    return texts


# --------------------------------------------------------------------------- TFF HDF5: round trips


def test_tff_tables():
    assert TFF_URLS == {"shakespeare": "https://storage.googleapis.com/tff-datasets-public/shakespeare.tar.bz2",
                        "emnist": "https://storage.googleapis.com/tff-datasets-public/fed_emnist.tar.bz2",
                        "cifar100": "https://storage.googleapis.com/tff-datasets-public/fed_cifar100.tar.bz2",
                        "stackoverflow": "https://storage.googleapis.com/tff-datasets-public/stackoverflow.tar.bz2"}
    assert TFF_SIZES["shakespeare"] == {"train": (715, 16068), "test": (715, 2356)}
    assert TFF_SIZES["emnist"] == {"train": (3400, 671585), "test": (3400, 77483)}
    assert TFF_SIZES["cifar100"] == {"train": (500, 50000), "test": (100, 10000)}
    assert TFF_SIZES["stackoverflow"]["train"] == (342477, None)


def test_shakespeare_snippets_round_trip(tmp_path):
    path = tmp_path / "shakespeare_train.h5"
    texts = _shakespeare(path)
    assert tff_client_ids(path) == sorted(texts)  # HDF5 keeps a group's members sorted by name
    data = read_tff_h5(path, "snippets", expected=(3, 6))
    assert isinstance(data, ClientArrays) and data.ids == sorted(texts) and list(data.arrays) == ["snippets"]
    for cid, snippets in zip(data.ids, data.arrays["snippets"]):
        assert snippets.dtype.kind == "S" and decode_snippets(snippets) == texts[cid]
    assert decode_snippets(data.arrays["snippets"][2])[1] == ""  # empty snippets survive (the real files have some)


def test_decode_snippets_utf8_and_str():
    assert decode_snippets(_vlen(["café", "naïve"])) == ["café", "naïve"]
    assert decode_snippets([b"a", "b", np.bytes_(b"c")]) == ["a", "b", "c"]
    with pytest.raises(DataError) as e:
        decode_snippets([b"ok", b"\xff\xfe"], where="x_train.h5 client 'A'")
    msg = _one_line(e)
    assert "x_train.h5 client 'A': entry 1 is not UTF-8" in msg and natural.TFF_BASE_URL in msg


def test_emnist_pixels_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    clients = {f"f{i:04d}_{i % 7:02d}": {"pixels": rng.random((n, 28, 28), dtype=np.float32),
                                         "label": rng.integers(0, 62, n).astype(np.int32)}
               for i, n in enumerate([3, 1, 5])}
    path = _write_tff(tmp_path / "fed_emnist_train.h5", clients)
    data = read_tff_h5(path, ("pixels", "label"), expected=(3, 9))
    assert data.ids == list(clients)
    for i, cid in enumerate(data.ids):
        assert data.arrays["pixels"][i].dtype == np.float32 and data.arrays["pixels"][i].shape[1:] == (28, 28)
        np.testing.assert_array_equal(data.arrays["pixels"][i], clients[cid]["pixels"])
        np.testing.assert_array_equal(data.arrays["label"][i], clients[cid]["label"])


def test_cifar100_images_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    clients = {str(i): {"image": rng.integers(0, 256, (n, 32, 32, 3)).astype(np.uint8),
                        "label": rng.integers(0, 100, n), "coarse_label": rng.integers(0, 20, n)}
               for i, n in enumerate([2, 4])}
    path = _write_tff(tmp_path / "fed_cifar100_test.h5", clients)
    data = read_tff_h5(path, ["image", "label", "coarse_label"])
    for i, cid in enumerate(data.ids):
        assert data.arrays["image"][i].dtype == np.uint8
        for name in ("image", "label", "coarse_label"):
            np.testing.assert_array_equal(data.arrays[name][i], clients[cid][name])


def test_stackoverflow_strings_round_trip(tmp_path):
    clients = {"00000001": {"tokens": _vlen(["how do i sort a list ?", "use sorted ( )"]),
                            "title": _vlen(["sorting in python", ""]), "tags": _vlen(["python|list", "python"])},
               "00000002": {"tokens": _vlen(["naïve unicode ?"]), "title": _vlen(["é"]), "tags": _vlen(["unicode"])}}
    path = _write_tff(tmp_path / "stackoverflow_held_out.h5", clients)
    got = dict(iter_tff_clients(path, ["tokens", "tags"]))
    assert list(got) == ["00000001", "00000002"] and all(set(v) == {"tokens", "tags"} for v in got.values())
    assert decode_snippets(got["00000001"]["tokens"]) == ["how do i sort a list ?", "use sorted ( )"]
    assert decode_snippets(got["00000002"]["tokens"]) == ["naïve unicode ?"]
    assert decode_snippets(got["00000001"]["tags"]) == ["python|list", "python"]


# --------------------------------------------------------------------------- TFF HDF5: streaming


def test_streaming_reads_one_client_per_step(tmp_path, monkeypatch):
    path = tmp_path / "shakespeare_test.h5"
    _shakespeare(path)
    reads = []
    real = natural._read_client
    monkeypatch.setattr(natural, "_read_client", lambda *a: reads.append(a[2]) or real(*a))
    it = iter_tff_clients(path, "snippets")
    assert reads == []  # nothing read before the first step
    cid, fields = next(it)
    assert cid == "HAMLET_HAMLET" and reads == ["HAMLET_HAMLET"] and list(fields) == ["snippets"]
    cid, _ = next(it)
    assert reads == ["HAMLET_HAMLET", "PERICLES__PRINCE_OF_TYRE_GOWER"]
    assert [c for c, _ in it] == ["THE_TEMPEST_PROSPERO"]
    with h5py.File(path, "r+"):  # the exhausted iterator closed its read-only handle
        pass


def test_streaming_closed_early_releases_the_file(tmp_path):
    path = tmp_path / "shakespeare_test.h5"
    _shakespeare(path)
    it = iter_tff_clients(path, "snippets")
    next(it)
    it.close()
    with h5py.File(path, "r+"):
        pass


def test_subset_of_clients_in_given_order(tmp_path):
    path = tmp_path / "shakespeare_train.h5"
    texts = _shakespeare(path)
    got = list(iter_tff_clients(path, "snippets", clients=["THE_TEMPEST_PROSPERO", "HAMLET_HAMLET"]))
    assert [c for c, _ in got] == ["THE_TEMPEST_PROSPERO", "HAMLET_HAMLET"]
    assert decode_snippets(got[0][1]["snippets"]) == texts["THE_TEMPEST_PROSPERO"]
    with pytest.raises(DataError) as e:
        iter_tff_clients(path, "snippets", clients=["HAMLET_HAMLET", "NOBODY"])  # checked at the call
    msg = _one_line(e)
    assert str(path) in msg and "no client 'NOBODY'" in msg and "3 clients" in msg


# --------------------------------------------------------------------------- TFF HDF5: errors


def _garbage(path: Path) -> None:
    path.write_bytes(b"this is not an HDF5 file" * 40)


def _truncated(path: Path) -> None:
    _write_tff(path, {"a": {"snippets": np.array([b"x" * 50] * 200)}})
    path.write_bytes(path.read_bytes()[:600])


def _no_examples(path: Path) -> None:
    with h5py.File(path, "w") as f:
        f.create_group("clients").create_dataset("snippets", data=np.array([b"a"]))


def _lacks_field(path: Path) -> None:
    _write_tff(path, {"A": {"pixels": np.zeros((2, 28, 28), np.float32), "label": np.zeros(2, np.int32)},
                      "B": {"pixels": np.zeros((1, 28, 28), np.float32)}})


def _lengths(path: Path) -> None:
    _write_tff(path, {"A": {"pixels": np.zeros((3, 28, 28), np.float32), "label": np.zeros(2, np.int32)}})


def _scalar(path: Path) -> None:
    _write_tff(path, {"A": {"pixels": np.zeros((1, 28, 28), np.float32), "label": np.int32(3)}})


def _client_not_group(path: Path) -> None:
    with h5py.File(path, "w") as f:
        f.create_group("examples").create_dataset("A", data=np.zeros(3))


@pytest.mark.parametrize("make, expect", [
    (_garbage, "is not a readable HDF5 file"),
    (_truncated, "is not a readable HDF5 file"),
    (_no_examples, "has no /examples group (top level holds clients)"),
    (_lacks_field, "client 'B' has no label field (it has: pixels)"),
    (_lengths, "client 'A' has fields of different lengths (pixels 3, label 2)"),
    (_scalar, "/examples/A/label is not an array with one entry per example"),
    (_client_not_group, "/examples/A is not a group of fields"),
])
def test_tff_bad_files(tmp_path, make, expect):
    path = tmp_path / "fed_emnist_train.h5"
    make(path)
    with pytest.raises(DataError) as e:
        read_tff_h5(path, ["pixels", "label"])
    msg = _one_line(e)
    assert expect in msg and str(path) in msg, msg
    assert "https://storage.googleapis.com/tff-datasets-public/fed_emnist.tar.bz2" in msg


@pytest.mark.parametrize("call", [tff_client_ids, lambda p: iter_tff_clients(p, "snippets"),
                                  lambda p: read_tff_h5(p, "snippets")])
def test_tff_missing_file(tmp_path, call):
    path = tmp_path / "shakespeare_test.h5"
    with pytest.raises(DataError) as e:
        call(path)
    msg = _one_line(e)
    assert f"{path} does not exist" in msg and TFF_URLS["shakespeare"] in msg and "shakespeare_test.h5" in msg
    path.mkdir()
    with pytest.raises(DataError) as e:
        call(path)
    assert f"{path} is not a file" in _one_line(e)


def test_tff_unknown_name_points_at_the_bucket(tmp_path):
    path = tmp_path / "my_clients.h5"
    _garbage(path)
    with pytest.raises(DataError) as e:
        tff_client_ids(path)
    msg = _one_line(e)
    assert str(path) in msg and "https://storage.googleapis.com/tff-datasets-public/<name>.tar.bz2" in msg


def test_tff_expected_sizes(tmp_path):
    path = tmp_path / "shakespeare_train.h5"
    _shakespeare(path)
    assert read_tff_h5(path, "snippets", expected=(3, None)).ids  # examples None: only clients are checked
    for expected in [TFF_SIZES["shakespeare"]["train"], (3, 7), (4, None)]:
        with pytest.raises(DataError) as e:
            read_tff_h5(path, "snippets", expected=expected)
        msg = _one_line(e)
        assert f"{path} holds 3 clients / 6 examples, TFF's documented {expected[0]:,} clients" in msg
        assert TFF_URLS["shakespeare"] in msg
    assert "TFF's documented 715 clients / 16,068 examples" in str(
        pytest.raises(DataError, read_tff_h5, path, "snippets", expected=(715, 16068)).value)


def test_tff_fields_argument():
    with pytest.raises(ValueError):
        read_tff_h5("unused.h5", [])


# --------------------------------------------------------------------------- LEAF JSON


def _leaf_shard(path: Path, users: dict[str, tuple[list, list]], **override) -> Path:
    data = {"users": list(users), "num_samples": [len(x) for x, _ in users.values()],
            "user_data": {u: {"x": x, "y": y} for u, (x, y) in users.items()}}
    data.update(override)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def _pixels(n: int, seed: int) -> list[list[float]]:
    return (np.random.default_rng(seed).integers(0, 256, (n, 784)) / 255).tolist()


def _femnist_folder(folder: Path) -> dict[str, tuple[list, list]]:
    """Three shards named so that name order and natural order differ (10 sorts before 2 by name)."""
    shards = {
        "all_data_10_niid_05_keep_0_train_9.json": {"f0003_01": (_pixels(2, 3), [61, 0])},
        "all_data_2_niid_05_keep_0_train_9.json": {"f0002_07": (_pixels(1, 2), [35]),
                                                   "f0000_00": (_pixels(3, 0), [1, 2, 3])},
        "all_data_1_niid_05_keep_0_train_9.json": {"f0001_42": (_pixels(4, 1), [9, 9, 10, 36])},
    }
    for name, users in shards.items():
        _leaf_shard(folder / name, users)
    (folder / "notes.txt").write_text("not a shard")
    return {u: v for users in shards.values() for u, v in users.items()}


def test_leaf_files_natural_order(tmp_path):
    _femnist_folder(tmp_path / "femnist" / "train")
    assert [p.name.split("_")[2] for p in leaf_files(tmp_path / "femnist" / "train")] == ["1", "2", "10"]


@pytest.mark.parametrize("setup", ["missing", "empty"])
def test_leaf_files_none(tmp_path, setup):
    folder = tmp_path / "femnist" / "test"
    if setup == "empty":
        folder.mkdir(parents=True)
        (folder / "readme.md").write_text("")
    with pytest.raises(DataError) as e:
        leaf_files(folder)
    msg = _one_line(e)
    assert str(folder) in msg and "./preprocess.sh -s niid --sf 0.05 -k 0 -t sample" in msg
    assert "github.com/TalwalkarLab/leaf/data/femnist" in msg


def test_leaf_multi_shard_read(tmp_path):
    folder = tmp_path / "femnist" / "train"
    users = _femnist_folder(folder)
    for files in (folder, leaf_files(folder)[::-1]):  # a folder, or shards in any order
        data = read_leaf_json(files)
        assert data.ids == ["f0001_42", "f0002_07", "f0000_00", "f0003_01"]  # first appearance, natural order
        for i, u in enumerate(data.ids):
            x, y = data.arrays["x"][i], data.arrays["y"][i]
            assert x.dtype == np.float32 and x.shape == (len(users[u][0]), 784) and y.dtype == np.int64
            np.testing.assert_allclose(x, np.float32(users[u][0]))
            assert y.tolist() == users[u][1]


def test_leaf_text_dataset(tmp_path):
    path = _leaf_shard(tmp_path / "shakespeare" / "train" / "all_data_0.json",
                       {"HAMLET_HAMLET": (["To be, or not to b", "that is the questio"], ["e", "n"]),
                        "KING_LEAR_FOOL": (["Have more than thou showe"], ["s"])})
    data = read_leaf_json([path])
    assert data.ids == ["HAMLET_HAMLET", "KING_LEAR_FOOL"]
    x, y = data.arrays["x"][0], data.arrays["y"][0]
    assert x.dtype == object and y.dtype == object and x.tolist() == ["To be, or not to b", "that is the questio"]
    assert y.tolist() == ["e", "n"]


def test_leaf_empty_user_takes_the_split_shape(tmp_path):
    path = _leaf_shard(tmp_path / "s.json", {"a": (_pixels(2, 0), [1, 2]), "b": ([], [])})
    data = read_leaf_json(path)
    assert data.arrays["x"][1].shape == (0, 784) and data.arrays["x"][1].dtype == np.float32
    assert data.arrays["y"][1].shape == (0,) and data.arrays["y"][1].dtype == np.int64


def test_leaf_duplicate_user_across_shards(tmp_path):
    first = _leaf_shard(tmp_path / "femnist" / "all_data_1.json", {"f1": (_pixels(1, 0), [0])})
    second = _leaf_shard(tmp_path / "femnist" / "all_data_2.json", {"f2": (_pixels(1, 1), [1]),
                                                                    "f1": (_pixels(1, 2), [2])})
    with pytest.raises(DataError) as e:
        read_leaf_json([second, first])
    msg = _one_line(e)
    assert f"{second}: user 'f1' appears also in {first}" in msg and "preprocess.sh" in msg


def _write_raw(path: Path, text: str) -> None:
    path.write_text(text)


@pytest.mark.parametrize("content, expect", [
    ("this is not json", "is not a readable JSON file (JSONDecodeError"),
    ('{"users": ["a"], "num_samples": [1], "user_data": {"a": {"x": [[0.5', "is not a readable JSON file"),
    ("[1, 2]", "holds a JSON list, not LEAF's object"),
    ('{"users": [], "user_data": {}}', "has no num_samples (it has: users, user_data)"),
    ('{"users": ["a", "b"], "num_samples": [1], "user_data": {}}', "2 users but 1 num_samples"),
    ('{"users": ["a"], "num_samples": [2], "user_data": {"a": {"x": [[0.5]], "y": [1]}}}',
     "user 'a' has 1 x and 1 y but num_samples says 2"),
    ('{"users": ["a"], "num_samples": [1], "user_data": {"a": {"x": [[0.5]], "y": [1, 2]}}}',
     "user 'a' has 1 x and 2 y but num_samples says 1"),
    ('{"users": ["a"], "num_samples": [1], "user_data": {}}', "user 'a' has no user_data entry"),
    ('{"users": ["a"], "num_samples": [1], "user_data": {"a": {"x": [[0.5]]}}}',
     "user 'a' has user_data without x and y lists"),
    ('{"users": ["a", "a"], "num_samples": [1, 1], "user_data": {"a": {"x": [[0.5]], "y": [1]}}}',
     "user 'a' appears twice in that file"),
    ('{"users": ["a"], "num_samples": [-1], "user_data": {}}', "num_samples is not a list of counts"),
    ('{"users": [1], "num_samples": [1], "user_data": {}}', "users is not a list of user names"),
    ('{"users": ["a", "b"], "num_samples": [1, 1], "user_data": {"a": {"x": [[0.5, 0.5]], "y": [1]}, '
     '"b": {"x": [[0.5]], "y": [1]}}}', "user 'a' has x with entries of shape (2,) where other users have "
     "numeric entries of shape (784,)"),
    ('{"users": ["a"], "num_samples": [1], "user_data": {"a": {"x": ["text"], "y": [1]}}}',
     "user 'a' has x with non-numeric entries where other users have numeric entries"),
])
def test_leaf_bad_shards(tmp_path, content, expect):
    good = _leaf_shard(tmp_path / "femnist" / "all_data_0.json", {"z": (_pixels(1, 0), [3])})
    bad = tmp_path / "femnist" / "all_data_1.json"
    _write_raw(bad, content)
    with pytest.raises(DataError) as e:
        read_leaf_json([good, bad])
    msg = _one_line(e)
    assert expect in msg and str(bad) in msg, msg
    assert "github.com/TalwalkarLab/leaf/data/femnist" in msg


def test_leaf_binary_file(tmp_path):
    bad = tmp_path / "all_data_0.json"
    bad.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DataError) as e:
        read_leaf_json(bad)
    assert f"{bad} is not a readable JSON file" in _one_line(e)


# --------------------------------------------------------------------------- join_splits


def test_join_splits():
    def split(sizes: dict[str, int]) -> ClientArrays:
        return ClientArrays(list(sizes), {"x": [np.zeros((n, 2)) + i for i, n in enumerate(sizes.values())],
                                          "y": [np.arange(n) for n in sizes.values()]})

    train = split({"a": 5, "b": 3, "c": 4, "t": 2})
    test = split({"q": 7, "c": 1, "a": 2, "r": 1})
    kept_train, kept_test, summary = join_splits(train, test)
    assert kept_train.ids == kept_test.ids == ["a", "c"]  # train's order
    assert [len(y) for y in kept_test.arrays["y"]] == [2, 1] and kept_test.arrays["x"][0][0, 0] == 2
    assert kept_train.arrays["x"][1][0, 0] == 2 and [len(y) for y in kept_train.arrays["y"]] == [5, 4]
    assert summary == {"kept": 2, "train_only": 2, "test_only": 2, "kept_train_examples": 9,
                       "kept_test_examples": 3, "dropped_train_examples": 5, "dropped_test_examples": 8}


# --------------------------------------------------------------------------- real files (../shared/data)


@pytest.mark.skipif(not (SHAKESPEARE / "shakespeare_train.h5").is_file(),
                    reason=f"real TFF Shakespeare files not found in {SHAKESPEARE} (the repo's ../shared/data)")
def test_real_shakespeare():
    train = read_tff_h5(SHAKESPEARE / "shakespeare_train.h5", "snippets", expected=TFF_SIZES["shakespeare"]["train"])
    test = read_tff_h5(SHAKESPEARE / "shakespeare_test.h5", "snippets", expected=TFF_SIZES["shakespeare"]["test"])
    assert len(train.ids) == len(test.ids) == 715 and train.ids == test.ids == sorted(train.ids)
    assert sum(map(len, train.arrays["snippets"])) == 16068 and sum(map(len, test.arrays["snippets"])) == 2356
    assert train.ids[0] == "ALL_S_WELL_THAT_ENDS_WELL_ADAM"  # LEAF's parser gave As You Like It's Adam this play
    assert len(train.arrays["snippets"][0]) == 9 and len(test.arrays["snippets"][0]) == 2
    first = decode_snippets(train.arrays["snippets"][0])
    assert first[0] == "Yonder comes my master, your brother."
    assert all(len(a) >= 1 for a in train.arrays["snippets"] + test.arrays["snippets"])  # no client is empty
    empty = sum(s == b"" for a in train.arrays["snippets"] for s in a)
    assert empty == 150  # one empty snippet in each of 150 train clients; TFF's counts include them
    assert all(isinstance(s, str) for a in test.arrays["snippets"] for s in decode_snippets(a))
    streamed = list(iter_tff_clients(SHAKESPEARE / "shakespeare_test.h5", "snippets",
                                     clients=["THE_TRAGEDY_OF_KING_LEAR_YOUNG_SIWARD"]))
    assert [c for c, _ in streamed] == [train.ids[-1]]


@pytest.fixture(scope="module")
def femnist() -> tuple[ClientArrays, ClientArrays]:
    """The FEMNIST sample's train and test splits, read once for this module (a few seconds)."""
    if not (FEMNIST / "train").is_dir():
        pytest.skip(f"real LEAF FEMNIST shards not found in {FEMNIST} (the repo's ../shared/data)")
    return read_leaf_json(leaf_files(FEMNIST / "train")), read_leaf_json(leaf_files(FEMNIST / "test"))


def test_real_femnist_counts(femnist):
    train, test = femnist
    assert len(leaf_files(FEMNIST / "train")) == 20 and len(leaf_files(FEMNIST / "test")) == 36
    assert len(train.ids) == 110 and sum(map(len, train.arrays["y"])) == 14697
    assert len(test.ids) == 198 and sum(map(len, test.arrays["y"])) == 4182
    assert train.ids[0] == "f1695_12" and len(train.arrays["y"][0]) == 150  # first user of all_data_0
    kept_train, kept_test, summary = join_splits(train, test)
    assert kept_train.ids == train.ids and len(kept_test.ids) == 110
    assert summary == {"kept": 110, "train_only": 0, "test_only": 88, "kept_train_examples": 14697,
                       "kept_test_examples": 1695, "dropped_train_examples": 0, "dropped_test_examples": 2487}


def test_real_femnist_values(femnist):
    for split in femnist:
        x, y = np.concatenate(split.arrays["x"]), np.concatenate(split.arrays["y"])
        assert x.dtype == np.float32 and x.shape[1] == 784 and y.dtype == np.int64 and len(x) == len(y)
        assert x.min() == 0.0 and x.max() == 1.0
        assert np.allclose(x * 255, np.round(x * 255), atol=1e-3)  # k/255 pixel values
        assert y.min() == 0 and y.max() == 61
