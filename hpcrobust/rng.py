"""Random streams keyed by what they are for, never by rank.

Every random number in a sweep comes from `stream(seed, "purpose", run, round, example, ...)`, so
whichever rank computes a number, it is the same number (invariant 1).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch


def _key_words(parts: tuple) -> list[int]:
    words = []
    for p in parts:
        if isinstance(p, (bool, np.bool_)):
            p = int(p)
        if isinstance(p, (int, np.integer)):
            words.append(int(p) & 0xFFFFFFFF)
            words.append((int(p) >> 32) & 0xFFFFFFFF)
        else:
            h = hashlib.sha256(str(p).encode()).digest()
            words.append(int.from_bytes(h[:4], "little"))
            words.append(int.from_bytes(h[4:8], "little"))
    return words


def stream(seed: int, *key: object) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), *_key_words(key)])))


def torch_generator(seed: int, *key: object) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(int(stream(seed, *key).integers(0, 2**63 - 1)))
    return g
