"""Which tokens an attack may use, the decode-then-encode check on candidates, and vocabulary identity."""

from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np

from hpcrobust.models.config import ModelConfig
from hpcrobust.models.loading import load_tokenizer


def _key(tokenizer) -> tuple:
    return (tokenizer.name_or_path, len(tokenizer))


_ALLOWED: dict[tuple, np.ndarray] = {}


def allowed_tokens(tokenizer, ascii_only: bool) -> np.ndarray:
    """Token ids without special tokens; with `ascii_only`, also only printable ASCII text."""
    key = (*_key(tokenizer), ascii_only)
    if key not in _ALLOWED:
        special = set(tokenizer.all_special_ids)
        ids = []
        for t in range(len(tokenizer)):
            if t in special:
                continue
            if ascii_only:
                s = tokenizer.decode([t])
                if not s or not s.isascii() or not s.isprintable():
                    continue
            ids.append(t)
        _ALLOWED[key] = np.array(ids, dtype=np.int64)
    return _ALLOWED[key]


def retokenizes(tokenizer, cands: np.ndarray) -> np.ndarray:
    """[C] bool: decoding each row and encoding the text gives back exactly that row."""
    if len(cands) == 0:
        return np.zeros(0, dtype=bool)
    texts = tokenizer.batch_decode(cands.tolist())
    enc = tokenizer(texts, add_special_tokens=False)["input_ids"]
    width = cands.shape[1]
    lens = np.fromiter((len(e) for e in enc), dtype=np.int64, count=len(enc))
    same_len = lens == width
    padded = np.full(cands.shape, -1, dtype=np.int64)
    for r in np.flatnonzero(same_len):
        padded[r] = enc[r]
    return same_len & (padded == cands).all(axis=1)


@lru_cache(maxsize=16)
def cached_tokenizer(path: str, trust_remote_code: bool = False):
    """A model folder's tokenizer, loaded once per process (checks and cross-run phases ask repeatedly)."""
    return load_tokenizer(path, ModelConfig(name_or_path=path, trust_remote_code=trust_remote_code))


@lru_cache(maxsize=32)
def vocabulary_digest(path: str, trust_remote_code: bool = False) -> str:
    """Two models share a vocabulary when these are equal; hashed once per model (large HF vocabularies
    are costly to compare), not once per round."""
    vocab = cached_tokenizer(path, trust_remote_code).get_vocab()
    return hashlib.sha256(repr(sorted(vocab.items())).encode()).hexdigest()
