"""GCG (Zou et al., 2023): greedy coordinate gradient over one-hot attack tokens.

Each iteration: the gradient of the wrong-label loss with respect to the one-hot attack tokens
gives the top-k replacement tokens per position; `search_width` candidates each swap `n_replace`
positions to one of those; candidates whose text does not re-tokenize to the same ids are
dropped; the engine scores the rest; a best-so-far buffer keeps the next starting point. An
example stops as soon as its label flips.
"""

from __future__ import annotations

import numpy as np
import torch

from hpcrobust.attacks.base import Attack, ExampleState
from hpcrobust.attacks.engine import Scores, ScoringEngine, wrong_label_loss
from hpcrobust.attacks.vocab import allowed_tokens, retokenizes
from hpcrobust.config import AttackConfig
from hpcrobust.rng import stream


def initial_tokens(cfg: AttackConfig, tokenizer) -> list[int]:
    """The configured initial string, or n copies of a one-token filler that re-tokenizes to itself."""
    if cfg.init_string:
        return list(tokenizer.encode(cfg.init_string, add_special_tokens=False))
    n = cfg.n_attack_tokens
    for text in (" x", "x", " !", "!", " a", "a"):
        ids = tokenizer.encode(text, add_special_tokens=False)
        if len(ids) == 1 and tokenizer.encode(tokenizer.decode(ids * n), add_special_tokens=False) == ids * n:
            return ids * n
    for t in allowed_tokens(tokenizer, ascii_only=True).tolist():
        if tokenizer.encode(tokenizer.decode([t] * n), add_special_tokens=False) == [t] * n:
            return [t] * n
    raise ValueError("no token of this vocabulary repeats stably; set init_string")


class GCG(Attack):
    def __init__(self, cfg: AttackConfig, seed: int, key: tuple, tokenizer) -> None:
        super().__init__(cfg, seed, key)
        self.tokenizer = tokenizer
        self.init = np.array(initial_tokens(cfg, tokenizer), dtype=np.int64)
        allowed = allowed_tokens(tokenizer, ascii_only=True)
        self.blocked = np.ones(len(tokenizer), dtype=bool)
        self.blocked[allowed] = False

    def start(self, st: ExampleState) -> None:
        st.tokens = self.init.copy()
        st.extra["buffer"] = []  # (loss, tokens), best first

    def setup(self, st: ExampleState, engine: ScoringEngine) -> np.ndarray:
        return st.tokens[None, :]

    def update_setup(self, st: ExampleState, cands: np.ndarray, sc: Scores) -> None:
        super().update_setup(st, cands, sc)
        st.extra["buffer"] = [(float(sc.losses[0]), cands[0].copy())]

    def token_gradient(self, st: ExampleState, engine: ScoringEngine) -> torch.Tensor:
        """d(wrong-label loss) / d(one-hot attack tokens), [n_tokens, vocab]."""
        clf = engine.clf
        prefix = engine.prefix(st.i, st.enc)
        w = clf.embedding.weight
        one_hot = torch.zeros(len(st.tokens), w.shape[0], dtype=w.dtype, device=w.device)
        one_hot[torch.arange(len(st.tokens)), torch.as_tensor(st.tokens, device=w.device)] = 1
        one_hot.requires_grad_(True)
        before = clf.embedding(engine.before_ids(st.enc))
        after = clf.embedding(engine.after_ids(st.i, st.enc))
        tail = torch.cat([before, one_hot @ w, after], dim=0)[None]
        loss = wrong_label_loss(clf.logits_cached(prefix, tail_embeds=tail), st.enc.label).sum()
        (grad,) = torch.autograd.grad(loss, one_hot)
        return grad

    def propose(self, st: ExampleState, step: int, engine: ScoringEngine) -> np.ndarray:
        grad = self.token_gradient(st, engine).float().cpu().numpy()
        grad[:, self.blocked[: grad.shape[1]]] = np.inf
        if grad.shape[1] > len(self.blocked):  # padded embedding rows beyond the tokenizer
            grad[:, len(self.blocked):] = np.inf
        k = self.cfg.topk
        topk = np.argsort(grad, axis=1, kind="stable")[:, :k]  # most negative gradient first
        n, c = len(st.tokens), self.cfg.search_width
        rng = stream(self.seed, *self.key, "gcg", st.example, step)
        n_rep = min(self.cfg.n_replace, n)
        pos = np.argsort(rng.random((c, n)), axis=1, kind="stable")[:, :n_rep]
        pick = rng.integers(0, k, size=(c, n_rep))
        cands = np.repeat(st.tokens[None, :], c, axis=0)
        rows = np.arange(c)[:, None]
        cands[rows, pos] = topk[pos, pick]
        cands = cands[retokenizes(self.tokenizer, cands)]
        return cands if len(cands) else st.tokens[None, :].copy()

    def update(self, st: ExampleState, step: int, cands: np.ndarray, sc: Scores) -> None:
        best = int(np.argmin(sc.losses))
        loss = float(sc.losses[best])
        buf: list = st.extra["buffer"]
        if len(buf) < self.cfg.buffer_size or loss < buf[-1][0]:
            if len(buf) >= self.cfg.buffer_size:
                buf.pop()
            buf.append((loss, cands[best].copy()))
            buf.sort(key=lambda x: x[0])
        st.best_loss, st.tokens = buf[0][0], buf[0][1].copy()
        if sc.flipped[best] and st.first_success < 0:
            st.first_success = step + 1
            st.tokens, st.best_loss = cands[best].copy(), loss
            st.done = self.cfg.early_stop
