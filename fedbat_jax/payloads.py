"""What a client puts on the wire: typed payloads, one kind per way of sending a tensor, and their exact size.

A compressor's ``encode`` returns the update's pytree with one payload per leaf; its ``decode`` reads them back
through ``decoder(template, {Kind: decode_leaf, ...})``, which knows exactly the kinds it is given: any other
kind, or a leaf that is not a payload at all, is a one-line ``PayloadError`` at trace time naming the leaf.

* ``Dense(values)``: float32 values (a leaf sent exactly; FedAvg's every leaf);
* ``Signs(signs, scale)``: signs packed 8 to a byte plus one float32 scale (SignSGD);
* ``Levels(levels, alpha)``: ``2^bits`` level indices packed plus one float32 alpha (FedBAT, stochastic
  binarization, QSGD).

A compressor with a new kind of message declares it in its own file as a NamedTuple decorated with
``@payload_kind`` (``fedbat_jax.compressors.topk.Sparse``: indices plus values). The exact size of any payload
is ``payload_bits``: every array leaf as it is stored, no headers, less the fields a kind marks ``shared`` (what
the server derives itself: ``fedbat_jax.compressors.rotation.Rotated``'s key); it works on
``jax.ShapeDtypeStruct`` leaves too, so sizes are known from shapes alone.
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import numpy as np

from fedbat_jax.errors import FedBatError

Params = Any


class PayloadError(FedBatError, TypeError):
    """A payload that its decoder does not know (a bug in a compressor, caught while tracing)."""


_KINDS: list[type] = []


def payload_kind(cls: type) -> type:
    """Register a NamedTuple as a kind of payload (so trees of payloads stop at it). Its ``shared`` fields (not
    counted on the wire) must be fields of it: a misspelt one would silently be counted."""
    unknown = [f for f in getattr(cls, "shared", ()) if f not in getattr(cls, "_fields", ())]
    if unknown:
        raise PayloadError(f"payload kind {cls.__name__}: shared names {', '.join(map(repr, unknown))}, not one of "
                           f"its fields ({', '.join(getattr(cls, '_fields', ())) or 'none'})")
    _KINDS.append(cls)
    return cls


def is_payload(x: Any) -> bool:
    return isinstance(x, tuple(_KINDS))


@payload_kind
class Dense(NamedTuple):
    values: jax.Array  # float32, the leaf's shape


@payload_kind
class Signs(NamedTuple):
    signs: jax.Array  # uint8 [ceil(size / 8)]: True = +1, most significant bit first
    scale: jax.Array  # float32 scalar


@payload_kind
class Levels(NamedTuple):
    levels: jax.Array  # uint8: level indices, 8 // bits per byte
    alpha: jax.Array  # float32 scalar: the levels span [-alpha, alpha]; or [buckets], one per bucket of values


def decoder(template: Params | None, decoders: dict[type, Callable[[Any, tuple], jax.Array]],
            ) -> Callable[[Any], Params]:
    """``decode(payload) -> update`` for a compressor whose payload kinds are the keys of ``decoders``
    (``decode_leaf(payload, shape) -> array``; ``Dense`` is always known). ``template``: the update's tree, or
    ``None`` for a compressor whose kinds carry their own shape (the tree is then the payload's, and ``shape`` None)."""
    decoders = {Dense: lambda p, shape: p.values, **decoders}
    if template is not None:
        flat, treedef = jax.tree_util.tree_flatten_with_path(template)
        names = [jax.tree_util.keystr(path) for path, _ in flat]
        shapes = [tuple(x.shape) for _, x in flat]

    def split(payload):
        """``(treedef, the payload's part per leaf, leaf names, leaf shapes)``."""
        if template is None:
            flat, tree = jax.tree_util.tree_flatten_with_path(payload, is_leaf=is_payload)
            return tree, [p for _, p in flat], [jax.tree_util.keystr(path) for path, _ in flat], [None] * len(flat)
        try:
            return treedef, treedef.flatten_up_to(payload), names, shapes
        except (ValueError, TypeError) as e:
            raise PayloadError("the payload is not a tree of the update's leaves "
                               f"({' '.join(str(e).split())[:200]})") from None

    def decode(payload):
        tree, parts, leaf_names, leaf_shapes = split(payload)
        leaves = []
        for name, p, shape in zip(leaf_names, parts, leaf_shapes):
            fn = decoders.get(type(p))
            if fn is None:
                what = type(p).__name__ if is_payload(p) else f"a bare {type(p).__name__}, not a payload"
                raise PayloadError(f"payload leaf {name}: this decoder reads "
                                   f"{', '.join(k.__name__ for k in decoders)}, got {what}")
            leaves.append(fn(p, shape))
        return tree.unflatten(leaves)

    return decode


def payload_bits(payload: Any) -> int:
    """Exact size in bits of a payload pytree: every array leaf as it is stored (no headers), except a payload
    kind's ``shared`` fields (e.g. a rotation's key, derived from (seed, round, client) on both sides)."""

    def sent(p):
        if is_payload(p):
            return [x for name, x in zip(p._fields, p) if name not in getattr(type(p), "shared", ())]
        return [p]

    leaves = [x for p in jax.tree.leaves(payload, is_leaf=is_payload) for x in sent(p)]
    return 8 * tree_bytes(leaves)


def tree_bytes(tree: Any) -> int:
    """Bytes of every array leaf of ``tree`` as stored (arrays or ``jax.ShapeDtypeStruct`` shapes)."""
    return int(sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))
