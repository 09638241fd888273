"""Client partitions (IID, Dirichlet label skew, label count), independent of the order of the data.

The samples are first put in a canonical order computed from their content (label, then a 64-bit hash of the
image bytes, then the bytes themselves on a hash tie), partitioned there with a seeded numpy Generator, and
mapped back to the caller's indices. So permuting (x, y) gives every client the same samples; only exact
duplicate images may swap among themselves, which is harmless.
"""

from __future__ import annotations

import numpy as np

from fedbat_jax.errors import ConfigError

PARTITIONS = ("iid", "dirichlet", "label_count")
MAX_DIRICHLET_DRAWS = 1000
_MASK64 = (1 << 64) - 1


def partition(
    x: np.ndarray,
    y: np.ndarray,
    num_clients: int,
    method: str,
    *,
    seed: int = 1234,
    dirichlet_beta: float = 0.3,
    labels_per_client: int = 3,
    min_size: int = 10,
) -> list[np.ndarray]:
    """Split the samples among ``num_clients``; returns each client's sorted int64 indices into (x, y).

    The parts are disjoint and together hold every sample. Every client gets at least ``min_size`` samples
    (Dirichlet redraws until it does; for iid/label_count a shortfall is a ConfigError).
    """
    y = np.asarray(y)
    x = np.asarray(x)
    n = _validate(x, y, num_clients, method, dirichlet_beta, labels_per_client, min_size)
    order = canonical_order(x, y)
    y_c = y[order]
    rng = np.random.default_rng(seed)
    if method == "iid":
        parts = np.array_split(rng.permutation(n), num_clients)
    elif method == "dirichlet":
        parts = _dirichlet(y_c, num_clients, dirichlet_beta, min_size, rng)
    else:
        parts = _label_count(y_c, num_clients, labels_per_client, rng)
    sizes = [len(p) for p in parts]
    if min(sizes) < min_size:
        k = int(np.argmin(sizes))
        raise ConfigError(
            f"{method} partition gives client {k} only {sizes[k]} samples (< min_client_size {min_size}); "
            "use fewer clients, more labels_per_client or a lower min_client_size"
        )
    return [np.sort(order[np.asarray(p, dtype=np.int64)]).astype(np.int64) for p in parts]


def _validate(
    x: np.ndarray, y: np.ndarray, num_clients: int, method: str, beta: float, labels_per_client: int, min_size: int
) -> int:
    """Check the arguments; return the number of samples."""
    if method not in PARTITIONS:
        raise ConfigError(f"unknown partition {method!r}; valid: {', '.join(PARTITIONS)}")
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ConfigError(f"partition labels must be a 1-D integer array, got shape {y.shape} dtype {y.dtype}")
    n = len(y)
    if x.ndim < 1 or len(x) != n:
        raise ConfigError(f"partition got {len(x) if x.ndim else 0} images but {n} labels; pass matching x and y")
    if num_clients < 1:
        raise ConfigError(f"num_clients must be >= 1, got {num_clients}")
    if min_size < 0:
        raise ConfigError(f"min_client_size must be >= 0, got {min_size}")
    most = n // max(min_size, 1)  # one limit: every client holds at least min_size samples (at least one)
    if num_clients > most:
        raise ConfigError(f"num_clients {num_clients} is too many for {n} samples with min_client_size {min_size}: "
                          f"use at most {most} clients, or a lower min_client_size")
    if method == "dirichlet" and not beta > 0:
        raise ConfigError(f"dirichlet_beta must be > 0, got {beta}")
    if method == "label_count":
        num_classes = len(np.unique(y))
        if not 1 <= labels_per_client <= num_classes:
            raise ConfigError(f"labels_per_client must be in [1, {num_classes}] (the classes present), "
                              f"got {labels_per_client}")
        if labels_per_client * num_clients < num_classes:
            raise ConfigError(
                f"{num_clients} clients x {labels_per_client} labels cannot cover all {num_classes} classes; "
                "raise num_clients or labels_per_client"
            )
    return n


# --------------------------------------------------------------------------- canonical order

def _splitmix64(count: int, state: int) -> np.ndarray:
    """``count`` splitmix64 outputs (fixed constants, independent of numpy's RNG), forced odd."""
    out = []
    for _ in range(count):
        state = (state + 0x9E3779B97F4A7C15) & _MASK64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        out.append((z ^ (z >> 31)) | 1)
    return np.array(out, dtype=np.uint64)


def _mix(v: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, element-wise on uint64 (wraps mod 2**64)."""
    v = v ^ (v >> np.uint64(30))
    v = v * np.uint64(0xBF58476D1CE4E5B9)
    v = v ^ (v >> np.uint64(27))
    v = v * np.uint64(0x94D049BB133111EB)
    return v ^ (v >> np.uint64(31))


def content_hash(x: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """A 64-bit hash of each sample's bytes (uint64 [N]); equal images give equal hashes."""
    n = len(x)
    raw = np.ascontiguousarray(x).reshape(n, -1).view(np.uint8).reshape(n, -1)
    pad = (-raw.shape[1]) % 8
    words = (raw.shape[1] + pad) // 8
    keys = _splitmix64(words, 0x5EED)
    out = np.empty(n, dtype=np.uint64)
    for s in range(0, n, chunk):
        block = raw[s : s + chunk]
        if pad:
            block = np.pad(block, ((0, 0), (0, pad)))
        w = np.ascontiguousarray(block).view("<u8").astype(np.uint64)
        out[s : s + chunk] = _mix(_mix(w * keys).sum(axis=1, dtype=np.uint64))
    return out


def canonical_order(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Permutation sorting the samples by (label, content hash, image bytes); depends only on content."""
    y = np.asarray(y)
    h = content_hash(x)
    order = np.lexsort((h, y))
    ys, hs = y[order], h[order]
    same = (ys[1:] == ys[:-1]) & (hs[1:] == hs[:-1])
    if same.any():  # hash ties (in practice exact duplicates): order them by their bytes
        raw = np.ascontiguousarray(x).reshape(len(y), -1).view(np.uint8).reshape(len(y), -1)
        starts = np.flatnonzero(np.diff(np.concatenate(([False], same, [False])).astype(np.int8)) == 1)
        ends = np.flatnonzero(np.diff(np.concatenate(([False], same, [False])).astype(np.int8)) == -1)
        for a, b in zip(starts, ends + 1):
            grp = order[a:b]
            order[a:b] = grp[np.lexsort(raw[grp].T[::-1])]
    return order


# --------------------------------------------------------------------------- methods (canonical positions)

def _dirichlet(y: np.ndarray, num_clients: int, beta: float, min_size: int, rng: np.random.Generator,
               ) -> list[np.ndarray]:
    """Per class, split shuffled indices by Dirichlet(beta) proportions; clients at >= n/N get no more.

    The whole partition is redrawn until every client holds >= min_size samples.
    """
    n = len(y)
    classes = np.unique(y)
    for _ in range(MAX_DIRICHLET_DRAWS):
        batches: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        sizes = np.zeros(num_clients, dtype=np.int64)
        ok = True
        for c in classes:
            idx = np.flatnonzero(y == c)
            rng.shuffle(idx)
            p = rng.dirichlet(np.full(num_clients, beta))
            p = p * (sizes < n / num_clients)
            if not p.sum() > 0:  # every open client drew ~0 (underflow at tiny beta): redraw
                ok = False
                break
            cuts = (np.cumsum(p / p.sum()) * len(idx)).astype(np.int64)[:-1]
            for k, piece in enumerate(np.split(idx, cuts)):
                batches[k].append(piece)
                sizes[k] += len(piece)
        if ok and sizes.min() >= min_size:
            return [np.concatenate(b) if b else np.zeros(0, np.int64) for b in batches]
    raise ConfigError(
        f"dirichlet_beta {beta} with {num_clients} clients never gave every client >= min_client_size {min_size} "
        f"samples in {MAX_DIRICHLET_DRAWS} draws; raise dirichlet_beta, lower num_clients or lower min_client_size"
    )


def _label_count(y: np.ndarray, num_clients: int, c: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Each client in turn takes the c least-used classes (ties: lower class index); classes split evenly."""
    classes = np.unique(y)
    used = np.zeros(len(classes), dtype=np.int64)
    holders: list[list[int]] = [[] for _ in classes]
    for k in range(num_clients):
        for j in np.argsort(used, kind="stable")[:c]:
            holders[j].append(k)
            used[j] += 1
    batches: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for j, cls in enumerate(classes):
        idx = np.flatnonzero(y == cls)
        rng.shuffle(idx)
        for k, piece in zip(holders[j], np.array_split(idx, len(holders[j]))):
            batches[k].append(piece)
    return [np.concatenate(b) for b in batches]


# --------------------------------------------------------------------------- summaries

def size_summary(parts: list[np.ndarray]) -> str:
    """One line: client count and min / median / max / total samples per client."""
    sizes = np.array([len(p) for p in parts], dtype=np.int64)
    noun = "client" if len(sizes) == 1 else "clients"
    if len(sizes) == 0:
        return "0 clients"
    return (
        f"{len(sizes)} {noun}, samples per client min {sizes.min()} / median {np.median(sizes):g} / "
        f"max {sizes.max()} (total {sizes.sum()})"
    )


def label_histograms(parts: list[np.ndarray], y: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-client label counts, int64 [num_clients, num_classes]."""
    y = np.asarray(y)
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ConfigError(f"labels must lie in [0, {num_classes}), got range [{y.min()}, {y.max()}]")
    hist = np.zeros((len(parts), num_classes), dtype=np.int64)
    for k, p in enumerate(parts):
        hist[k] = np.bincount(y[p], minlength=num_classes)
    return hist


def format_histograms(hist: np.ndarray) -> str:
    """A compact table: a header of class ids, then one line per client with its counts and total."""
    hist = np.asarray(hist)
    width = max(len(str(int(hist.max()))) if hist.size else 1, len(str(hist.shape[1] - 1)), 1)
    cw = max(len("client"), len(str(len(hist) - 1)))
    head = f"{'client':>{cw}} | " + " ".join(f"{j:>{width}}" for j in range(hist.shape[1])) + " | total"
    rows = [f"{k:>{cw}} | " + " ".join(f"{v:>{width}}" for v in row) + f" | {row.sum()}" for k, row in enumerate(hist)]
    return "\n".join([head, *rows])
