"""GCG (Zou et al., 2023): greedy coordinate gradient over one-hot attack tokens.

Each iteration: the gradient of the wrong-label loss with respect to the one-hot attack tokens
gives the top-k replacement tokens per position; `search_width` candidates each swap `n_replace`
positions to one of those; candidates whose text does not re-tokenize to the same ids are
dropped; the engine scores the rest, and the best of the batch is the next string, even when it
is worse than the last one (the reference's and nanoGCG's default). `buffer_size` >= 1 keeps a
best-so-far buffer instead; `early_stop` stops an example once its label flips.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from hpcrobust.attacks.base import Attack, AttackEnv, CheckEnv, ExampleState
from hpcrobust.attacks.config import AttackConfig, TokenAttackParams, TrainAttackConfig
from hpcrobust.attacks.engine import Scores, ScoringEngine, wrong_label_loss
from hpcrobust.attacks.registry import register_attack
from hpcrobust.errors import UserError
from hpcrobust.fields import setting
from hpcrobust.models.vocab import allowed_tokens, cached_tokenizer, retokenizes
from hpcrobust.parallel.sharding import input_gradient, is_sharded
from hpcrobust.rng import stream


@dataclass
class GCGParams(TokenAttackParams):
    search_width: int = setting(128, lo=1, hi=10**6, doc="candidates per iteration")
    topk: int = setting(256, lo=1, hi=10**7, doc="tokens kept per position from the gradient")
    n_replace: int = setting(1, lo=1, hi=4096, doc="tokens swapped per candidate")
    buffer_size: int = setting(0, lo=0, hi=10**6, doc="best-so-far buffer (0: move to the best candidate of each"
                               " batch, as the reference)")
    init_string: str = setting("", doc="initial attack text (default ' x' repeated)")
    ensemble: bool = setting(False, doc="one suffix for all sizes of a seed, losses summed across sizes"
                             " (evaluation attacks only)")


def initial_tokens(cfg: AttackConfig, tokenizer) -> list[int]:
    """The configured initial string, or n copies of a one-token filler that re-tokenizes to itself."""
    if cfg.params.init_string:
        return list(tokenizer.encode(cfg.params.init_string, add_special_tokens=False))
    n = cfg.n_attack_tokens
    for text in (" x", "x", " !", "!", " a", "a"):
        ids = tokenizer.encode(text, add_special_tokens=False)
        if len(ids) == 1 and tokenizer.encode(tokenizer.decode(ids * n), add_special_tokens=False) == ids * n:
            return ids * n
    for t in allowed_tokens(tokenizer, ascii_only=True).tolist():
        if tokenizer.encode(tokenizer.decode([t] * n), add_special_tokens=False) == [t] * n:
            return [t] * n
    raise ValueError("no token of this vocabulary repeats stably; set init_string")


def token_gradient(engine: ScoringEngine, key: int, enc, tokens: np.ndarray) -> torch.Tensor:
    """d(wrong-label loss) / d(one-hot attack tokens), [n_tokens, vocab], on top of the prefix cache.

    One row cannot be cut: on out-of-memory the engine drops other examples' prefix caches and retries."""
    return engine.guarded(key, lambda: _token_gradient(engine, key, enc, tokens))


def _token_gradient(engine: ScoringEngine, key: int, enc, tokens: np.ndarray) -> torch.Tensor:
    clf = engine.clf
    if is_sharded(clf):  # the same arithmetic as one 'grad' pass of the sharded model (parallel/sharding.py)
        return input_gradient(clf, list(enc.before), engine.after_ids(key, enc), torch.as_tensor(tokens),
                              lambda logits: wrong_label_loss(logits, enc.label).sum())
    prefix = engine.prefix(key, enc)
    w = clf.embedding.weight
    one_hot = torch.zeros(len(tokens), w.shape[0], dtype=w.dtype, device=w.device)
    one_hot[torch.arange(len(tokens)), torch.as_tensor(tokens, device=w.device)] = 1
    one_hot.requires_grad_(True)
    before = clf.embedding(engine.before_ids(enc))
    after = clf.embedding(engine.after_ids(key, enc))
    tail = torch.cat([before, one_hot @ w, after], dim=0)[None]
    loss = wrong_label_loss(clf.logits_cached(prefix, tail_embeds=tail), enc.label).sum()
    (grad,) = torch.autograd.grad(loss, one_hot)
    return grad


class Buffer:
    """The strings the next iteration starts from, lowest loss first. Size 0 keeps only the latest offer
    (the best of the last batch), so the attack may move to a worse string; size k >= 1 keeps the k best
    seen so far."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.items: list[tuple[float, np.ndarray, bool]] = []

    def offer(self, loss: float, tokens: np.ndarray, flipped: bool = False) -> None:
        if self.size == 0:
            self.items = [(loss, tokens.copy(), flipped)]
        elif len(self.items) < self.size or loss < self.items[-1][0]:
            if len(self.items) >= self.size:
                self.items.pop()
            self.items.append((loss, tokens.copy(), flipped))
            self.items.sort(key=lambda x: x[0])

    def best(self) -> tuple[float, np.ndarray]:
        return self.items[0][0], self.items[0][1].copy()

    @property
    def best_flipped(self) -> bool:
        return self.items[0][2]

    def arrays(self, n_tokens: int) -> dict[str, np.ndarray]:
        """The entries, in order, as arrays (kept with an attack's state: attacks/state.py)."""
        return {"buffer_loss": np.array([x[0] for x in self.items], dtype=np.float64),
                "buffer_tokens": np.array([x[1] for x in self.items], dtype=np.int64).reshape(-1, n_tokens),
                "buffer_flipped": np.array([x[2] for x in self.items], dtype=bool)}

    def load(self, arrays: dict[str, np.ndarray]) -> None:
        self.items = [(float(loss), np.asarray(toks, dtype=np.int64).copy(), bool(flip)) for loss, toks, flip
                      in zip(arrays["buffer_loss"], arrays["buffer_tokens"], arrays["buffer_flipped"], strict=True)]


class SwapSampler:
    """Turns a token gradient into `search_width` single- (or n_replace-) token swaps."""

    def __init__(self, p: GCGParams, tokenizer) -> None:
        self.p = p
        self.tokenizer = tokenizer
        self.blocked = np.ones(len(tokenizer), dtype=bool)
        self.blocked[allowed_tokens(tokenizer, ascii_only=p.ascii_only)] = False

    def candidates(self, grad: torch.Tensor, tokens: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        g = grad.float().cpu().numpy()
        n = min(g.shape[1], len(self.blocked))
        g[:, :n][:, self.blocked[:n]] = np.inf
        g[:, n:] = np.inf  # embedding rows beyond the tokenizer (Pythia pads 50,277 tokens to 50,304 rows)
        k = self.p.topk
        topk = np.argsort(g, axis=1, kind="stable")[:, :k]  # most negative gradient first
        n, c = len(tokens), self.p.search_width
        n_rep = min(self.p.n_replace, n)
        pos = np.argsort(rng.random((c, n)), axis=1, kind="stable")[:, :n_rep]
        pick = rng.integers(0, k, size=(c, n_rep))
        cands = np.repeat(tokens[None, :], c, axis=0)
        cands[np.arange(c)[:, None], pos] = topk[pos, pick]
        cands = cands[retokenizes(self.tokenizer, cands)]
        return cands if len(cands) else tokens[None, :].copy()


@register_attack("gcg")
class GCG(Attack):
    Params = GCGParams

    def __init__(self, cfg: AttackConfig, seed: int, key: tuple, tokenizer) -> None:
        super().__init__(cfg, seed, key)
        self.init = np.array(initial_tokens(cfg, tokenizer), dtype=np.int64)
        self.sampler = SwapSampler(self.p, tokenizer)

    @classmethod
    def build(cls, a: AttackConfig, env: AttackEnv) -> GCG:
        return cls(a, env.seed, env.stream_key(a), env.clf.tokenizer)

    @classmethod
    def check(cls, a: AttackConfig, key: str, env: CheckEnv) -> None:
        super().check(a, key, env)
        smallest = min(env.vocab_sizes) if env.vocab_sizes else 0
        if a.params.topk > smallest:
            raise UserError(f"{key}: topk {a.params.topk} is larger than the vocabulary ({smallest} tokens)")
        if a.params.ensemble and isinstance(a, TrainAttackConfig):
            raise UserError(f"{key}: ensemble is an evaluation option (one string for every size); adversarial"
                            " training attacks each run on its own model")

    @classmethod
    def check_tokenizers(cls, a: AttackConfig, key: str, env: CheckEnv) -> None:
        for m, path in zip(env.victims, env.victim_paths, strict=True):
            n = len(initial_tokens(a, cached_tokenizer(path, m.trust_remote_code)))
            if n != a.n_attack_tokens:
                raise UserError(f"{key}: init_string gives {n} tokens with {m.name_or_path}'s tokenizer,"
                                f" n_attack_tokens is {a.n_attack_tokens}")

    def start(self, st: ExampleState) -> None:
        st.tokens = self.init.copy()
        st.extra["buffer"] = Buffer(self.p.buffer_size)

    def setup(self, st: ExampleState, engine: ScoringEngine) -> np.ndarray:
        return st.tokens[None, :]

    def state_arrays(self, st: ExampleState) -> dict[str, np.ndarray]:
        return st.extra["buffer"].arrays(len(self.init))

    def load_state(self, st: ExampleState, arrays: dict[str, np.ndarray]) -> None:
        st.extra["buffer"].load(arrays)

    def update_setup(self, st: ExampleState, cands: np.ndarray, sc: Scores) -> None:
        super().update_setup(st, cands, sc)
        st.extra["buffer"].offer(float(sc.losses[0]), cands[0], bool(sc.flipped[0]))

    def current_flips(self, st: ExampleState, its: range) -> list[bool]:
        return [st.now_flipped] * len(its)  # the next string may have lost the success

    def propose(self, st: ExampleState, step: int, engine: ScoringEngine) -> np.ndarray:
        grad = token_gradient(engine, st.i, st.enc, st.tokens)
        return self.sampler.candidates(grad, st.tokens, stream(self.seed, *self.key, "gcg", st.example, step))

    def update(self, st: ExampleState, step: int, cands: np.ndarray, sc: Scores) -> None:
        best = int(np.argmin(sc.losses))
        loss = float(sc.losses[best])
        buf: Buffer = st.extra["buffer"]
        buf.offer(loss, cands[best], bool(sc.flipped[best]))
        st.best_loss, st.tokens = buf.best()
        st.now_flipped = buf.best_flipped
        if sc.flipped[best] and st.first_success < 0:
            st.first_success = step + 1
            if self.stops_early:  # keep the string that flipped, even if a buffer holds one with lower loss
                st.tokens, st.best_loss, st.now_flipped = cands[best].copy(), loss, True
                st.done = True
