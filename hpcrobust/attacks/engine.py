"""The one scoring engine every attack uses.

For an example, the tokens before the attack are run once and their keys/values cached; each
candidate batch then runs only `attack + after` on top of that cache and reads only the two label
logits at the last position. Candidates are scored in fixed-size chunks whatever the number of
ranks (invariant 1). On a CUDA out-of-memory error a chunk is cut into smaller pieces, and the
prefix caches held for other examples are dropped before a step that cannot be cut (one prefix, one
GCG gradient); the sizes that fit are remembered for the rest of the run (models/backoff.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from hpcrobust.models.backoff import Backoff
from hpcrobust.models.classifier import Classifier
from hpcrobust.parallel.distributed import TorchGroup, all_gather_rows
from hpcrobust.tasks.placement import Encoded


@dataclass
class Scores:
    losses: np.ndarray  # [C] cross-entropy toward the wrong label (lower = closer to a flip)
    flipped: np.ndarray  # [C] bool: the wrong label's logit is the larger one


def wrong_label_loss(logits: torch.Tensor, label: int) -> torch.Tensor:
    """Cross-entropy toward the wrong label, per row."""
    return torch.logsumexp(logits, dim=-1) - logits[..., 1 - label]


class ScoringEngine:
    def __init__(self, clf: Classifier, chunk: int, max_cached_examples: int = 64, use_cache: bool = True) -> None:
        self.clf = clf
        self.chunk = chunk
        self.use_cache = use_cache  # False only to measure what the cache saves (benchmarks)
        self._prefix: dict[int, tuple] = {}
        self._after: dict[int, torch.Tensor] = {}
        self._counted: set[int] = set()
        self.max_cached = max_cached_examples

    @property
    def backoff(self) -> Backoff:
        return self.clf.backoff

    @property
    def fit(self) -> int:
        """Largest sub-batch of a chunk known to fit in memory (remembered per run)."""
        return self.backoff.size("score", self.chunk)

    # ------------------------------------------------------------ prefix cache
    def _keep(self, n: int, key: int) -> None:
        """Evict the oldest cached prefixes (never `key`'s) until at most `n` are held."""
        for k in [k for k in self._prefix if k != key][: max(0, len(self._prefix) - n)]:
            del self._prefix[k]
            self._after.clear()

    def guarded(self, key: int, step):
        """Run `step()` (which cannot be cut into rows: one prefix, one GCG gradient); on out-of-memory drop the
        prefix caches of other examples and try again. Results do not change: a dropped prefix is recomputed
        exactly, and its FLOPs are not counted twice."""
        def attempt(n: int):
            self._keep(n, key)
            return step()

        want = min(self.max_cached, len(self._prefix) + (key not in self._prefix))
        return self.backoff.retry("prefix_cache", max(1, want), attempt, meters=(self.clf.meter,))

    def prefix(self, key: int, enc: Encoded, count: bool = False) -> tuple:
        """The cached keys/values of `enc.before`.

        Its FLOPs are counted once per example, by the rank that leads it (`count=True`); a rank that
        recomputes it to help score another rank's example, or after evicting it, does not count.
        """
        if not self.use_cache:
            return ()
        if key not in self._prefix:
            self.guarded(key, lambda: self._compute_prefix(key, enc, count))
        return self._prefix[key]

    def _compute_prefix(self, key: int, enc: Encoded, count: bool) -> None:
        if len(self._prefix) >= self.backoff.size("prefix_cache", self.max_cached):
            self._keep(self.backoff.size("prefix_cache", self.max_cached) - 1, key)
        start = self.clf.meter.total.snapshot()
        cache = self.clf.prefix_cache(enc.before)
        if not count or key in self._counted:
            self.clf.meter.total.actual -= self.clf.meter.total.since(start).actual
        else:
            self._counted.add(key)
        self._prefix[key] = cache

    def after_ids(self, key: int, enc: Encoded) -> torch.Tensor:
        if key not in self._after:
            self._after[key] = torch.tensor(list(enc.after), dtype=torch.long, device=self.clf.device)
        return self._after[key]

    def before_ids(self, enc: Encoded) -> torch.Tensor:
        """Tokens before the attack that the model must run itself: none when they are cached."""
        toks = [] if self.use_cache else list(enc.before)
        return torch.tensor(toks, dtype=torch.long, device=self.clf.device)

    def tails(self, key: int, enc: Encoded, cands: torch.Tensor) -> torch.Tensor:
        """What each candidate row feeds the model on top of the cache: [before] + attack + after."""
        b = cands.shape[0]
        parts = [self.before_ids(enc).expand(b, -1), cands, self.after_ids(key, enc).expand(b, -1)]
        return torch.cat([p for p in parts if p.shape[1]], dim=1)

    # ------------------------------------------------------------ scoring
    @torch.no_grad()
    def _score_rows(self, prefix: tuple, tails: torch.Tensor, label: int) -> tuple[torch.Tensor, torch.Tensor]:
        def piece(i: int, j: int) -> tuple[torch.Tensor, torch.Tensor]:
            logits = self.clf.logits_cached(prefix, tail_ids=tails[i:j])
            return wrong_label_loss(logits, label), logits[:, 1 - label] > logits[:, label]

        parts = self.backoff.pieces("score", tails.shape[0], piece, meters=(self.clf.meter,))
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def score_chunk(self, key: int, enc: Encoded, cands: np.ndarray) -> Scores:
        """Score one chunk (at most `self.chunk` candidates) of attack token rows for one example."""
        prefix = self.prefix(key, enc)
        c = torch.as_tensor(cands, dtype=torch.long, device=self.clf.device)
        losses, flipped = self._score_rows(prefix, self.tails(key, enc, c), enc.label)
        return Scores(losses.double().cpu().numpy(), flipped.cpu().numpy())

    def n_chunks(self, n_candidates: int) -> int:
        return (n_candidates + self.chunk - 1) // self.chunk

    def chunk_rows(self, cands: np.ndarray, j: int) -> np.ndarray:
        return cands[j * self.chunk: (j + 1) * self.chunk]

    def score_all(self, key: int, enc: Encoded, cands: np.ndarray) -> Scores:
        """Any number of candidates, in the engine's fixed chunks."""
        parts = [self.score_chunk(key, enc, self.chunk_rows(cands, j)) for j in range(self.n_chunks(len(cands)))]
        return Scores(np.concatenate([p.losses for p in parts]), np.concatenate([p.flipped for p in parts]))


def gather_scores_on_device(tg: TorchGroup, per_rank: list[list[tuple]], sizes: list[list[int]],
                            local: dict[tuple, Scores]) -> dict[tuple, Scores]:
    """Every rank's chunk scores on every rank of the group, moved as one device tensor per rank (NCCL on GPUs).

    `per_rank[r]` lists the (example, chunk) keys rank r scored, `sizes[r]` their candidate counts; every
    rank knows both, so only the numbers travel (losses and flips as float64 rows).
    """
    rows = [torch.from_numpy(np.stack([local[w].losses, local[w].flipped.astype(np.float64)], axis=1))
            for w in per_rank[tg.rank]]
    mine = torch.cat(rows) if rows else torch.zeros((0, 2), dtype=torch.float64)
    parts = all_gather_rows(tg, mine.to(tg.device), [sum(s) for s in sizes])
    out: dict[tuple, Scores] = {}
    for keys, counts, part in zip(per_rank, sizes, parts, strict=True):
        host = part.cpu().numpy()
        off = 0
        for w, n in zip(keys, counts, strict=True):
            out[w] = Scores(host[off: off + n, 0].copy(), host[off: off + n, 1] > 0.5)
            off += n
    return out
