"""How many GCG candidates survive the decode-then-encode filter, iteration by iteration, for one tokenizer.

GCG proposes `search_width` swaps per iteration and scores only those whose text re-tokenizes to the same ids
(`models/vocab.retokenizes`). How many survive depends on the tokenizer and drifts as the attack string leaves
its initial ' x x x' (every swap of that survives; later strings merge more often). The plan replays the
process with random picks from the attack's allowed tokens instead of gradient picks: a few walks from the
attack's own initial string, each step keeping a surviving candidate. With the quickstart's tokenizer this
gives 0.973 where the run measured 0.966 to 0.980. Without a tokenizer every candidate counts (an upper bound).
"""

from __future__ import annotations

import numpy as np

from hpcrobust.attacks.config import AttackConfig
from hpcrobust.attacks.gcg import initial_tokens
from hpcrobust.models.vocab import allowed_tokens, retokenizes

WALKS = 8
SIMULATED = 24  # iterations replayed; later ones take the mean of the last 8

_CACHE: dict[tuple, tuple[object, np.ndarray]] = {}  # the tokenizer is kept, so its id stays unique


def survival(a: AttackConfig, tokenizer, n_iterations: int) -> np.ndarray:
    """[n_iterations] expected share of the search_width candidates scored at iterations 1..n."""
    if tokenizer is None:
        return np.ones(n_iterations)
    p = a.params
    key = (id(tokenizer), p.search_width, p.n_replace, a.n_attack_tokens, p.init_string, p.ascii_only)
    if key not in _CACHE:
        _CACHE[key] = (tokenizer, _simulate(a, tokenizer))
    sim = _CACHE[key][1]
    out = np.empty(n_iterations)
    k = min(n_iterations, len(sim))
    out[:k] = sim[:k]
    out[k:] = sim[-8:].mean()
    return out


def _simulate(a: AttackConfig, tokenizer) -> np.ndarray:
    p = a.params
    allowed = allowed_tokens(tokenizer, ascii_only=p.ascii_only)
    init = np.array(initial_tokens(a, tokenizer), dtype=np.int64)
    n, c = len(init), p.search_width
    n_rep = min(p.n_replace, n)
    rng = np.random.default_rng(0)
    kept = np.zeros(SIMULATED)
    for _ in range(WALKS):
        cur = init.copy()
        for it in range(SIMULATED):
            pos = np.argsort(rng.random((c, n)), axis=1, kind="stable")[:, :n_rep]
            cands = np.repeat(cur[None, :], c, axis=0)
            cands[np.arange(c)[:, None], pos] = allowed[rng.integers(0, len(allowed), size=(c, n_rep))]
            ok = retokenizes(tokenizer, cands)
            kept[it] += ok.sum() if ok.any() else 1  # nothing survives: the current string is scored alone
            if ok.any():
                cur = cands[rng.choice(np.flatnonzero(ok))]
    return kept / (WALKS * c)
