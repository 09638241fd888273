"""TFF's Shakespeare recipe: snippets of dialogue to next-character sequences (what Reddi et al., ICLR 2021, TFF's
simulation baselines and FedJAX's models train on).

The vocabulary is TFF's 86 characters; id 0 is padding, characters are 1..86 in ``CHAR_VOCAB`` order, then
out-of-vocabulary (87), beginning (88) and end of a snippet (89): 90 ids. Each snippet becomes
``[BOS] + its characters + [EOS]``, zero-padded to a multiple of ``SEQUENCE_LENGTH + 1`` and cut into rows of 81 ids;
a row's first 80 ids are the input and its last 80 the targets (the input shifted by one).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

CHAR_VOCAB = "dhlptx@DHLPTX $(,048cgkoswCGKOSW[_#'/37;?bfjnrvzBFJNRVZ\"&*.26:\naeimquyAEIMQUY]!%)-159\r"
PAD, OOV, BOS, EOS = 0, len(CHAR_VOCAB) + 1, len(CHAR_VOCAB) + 2, len(CHAR_VOCAB) + 3
VOCAB_SIZE = len(CHAR_VOCAB) + 4
SEQUENCE_LENGTH = 80
_IDS = np.full(256, OOV, np.int32)
_IDS[np.frombuffer(CHAR_VOCAB.encode("latin-1"), np.uint8)] = np.arange(1, len(CHAR_VOCAB) + 1)


def char_ids(text: str) -> np.ndarray:
    """The ids of ``text``'s characters (anything outside the vocabulary, non-ASCII included, is ``OOV``)."""
    raw = np.frombuffer(text.encode("utf-32-le"), np.uint32)
    out = np.full(len(raw), OOV, np.int32)
    small = raw < 256
    out[small] = _IDS[raw[small]]
    return out


def snippet_rows(snippets: Sequence[str], length: int = SEQUENCE_LENGTH) -> np.ndarray:
    """int32 [rows, length + 1]: every snippet as ``[BOS] chars [EOS]``, padded and cut into rows (TFF's)."""
    rows = []
    for text in snippets:
        ids = np.concatenate([[BOS], char_ids(text), [EOS]]).astype(np.int32)
        ids = np.pad(ids, (0, -len(ids) % (length + 1)))
        rows.append(ids.reshape(-1, length + 1))
    return np.concatenate(rows) if rows else np.zeros((0, length + 1), np.int32)


def sequences(snippets: Sequence[str], length: int = SEQUENCE_LENGTH) -> tuple[np.ndarray, np.ndarray]:
    """``(inputs, targets)``, int32 [rows, length] each: the next-character pairs of ``snippet_rows``."""
    rows = snippet_rows(snippets, length)
    return rows[:, :-1], rows[:, 1:]


def decode(ids: np.ndarray) -> str:
    """The text of a row of ids (padding, beginning and end dropped; out-of-vocabulary shown as '?')."""
    out = []
    for i in np.asarray(ids).ravel():
        if 1 <= i <= len(CHAR_VOCAB):
            out.append(CHAR_VOCAB[i - 1])
        elif i == OOV:
            out.append("?")
    return "".join(out)
