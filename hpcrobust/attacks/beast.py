"""BEAST (Sadasivan et al., 2024): beam search over attack tokens proposed by a language model.

Written from the paper's algorithm. Iteration 1 samples `beam_width` (k1) first tokens from the
sampler LM's next-token distribution after the prompt. Every later iteration samples `branching`
(k2) next tokens for each beam (k1·k2 candidates, one token longer), scores them on the victim,
and keeps the k1 best as the new beams; the suffix grows by one token per iteration. The sampler
keeps each beam's keys/values from one iteration to the next (reordered to the surviving beams),
so it only ever runs the one new token per beam. Sampling is without replacement (Gumbel top-k)
from a stream keyed by (seed, run, round, attack, example, iteration). The attack's result is the
best candidate seen at any iteration (lowest loss), not the last beam's best.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from transformers import DynamicCache

from hpcrobust.attacks.base import Attack, AttackEnv, CheckEnv, ExampleState
from hpcrobust.attacks.config import AttackConfig, TokenAttackParams
from hpcrobust.attacks.engine import Scores, ScoringEngine
from hpcrobust.attacks.registry import register_attack
from hpcrobust.errors import UserError
from hpcrobust.fields import setting
from hpcrobust.models import family
from hpcrobust.models.backoff import Backoff
from hpcrobust.models.config import FamilyConfig, ModelConfig
from hpcrobust.models.flops import FlopCount, FlopMeter, arch_shape, forward_flops
from hpcrobust.models.loading import resolve
from hpcrobust.models.vocab import allowed_tokens, vocabulary_digest
from hpcrobust.rng import stream


@dataclass
class BeastParams(TokenAttackParams):
    beam_width: int = setting(8, lo=1, hi=10**4, doc="beams kept (k1)")
    branching: int = setting(8, lo=1, hi=10**4, doc="tokens sampled per beam (k2)")
    sampler: str = setting("", doc="causal LM that proposes tokens (default: smallest built-in size)")


def sampler_model(a: AttackConfig) -> ModelConfig:
    return ModelConfig(name_or_path=a.params.sampler or f"builtin:{family.smallest()}")


class Sampler:
    """The proposing causal LM: last-position logits only, every call counted."""

    def __init__(self, path: str, device: torch.device, dtype: torch.dtype, meter: FlopMeter,
                 backoff: Backoff | None = None) -> None:
        from transformers import AutoModelForCausalLM

        self.lm = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype).to(device)
        self.lm.eval()
        for p in self.lm.parameters():
            p.requires_grad_(False)
        self.backbone = self.lm.base_model
        self.head = self.lm.get_output_embeddings()
        self.shape = arch_shape(self.lm, self.backbone, self.head)
        self.meter = meter
        import inspect

        params = inspect.signature(self.backbone.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self.device = device
        self.backoff = backoff or Backoff()  # the victim run's: its remembered sizes

    @torch.no_grad()
    def forward(self, ids: torch.Tensor, cache: DynamicCache, past: int) -> torch.Tensor:
        """Next-token logits [B, V] after feeding `ids` [B, T] on top of `past` cached tokens; `cache` grows.

        On out-of-memory the beams run in smaller groups, each on its own slice of the cache (every row is
        computed alone, so nothing changes), and the grown slices are joined back."""
        b = ids.shape[0]

        def piece(i: int, j: int) -> tuple[torch.Tensor, DynamicCache]:
            if j - i == b:  # the whole batch: on the cache itself, put back if the forward fails
                try:
                    return self._forward(ids, cache, past), cache
                except RuntimeError:
                    cache.crop(past)
                    raise
            sub = DynamicCache(ddp_cache_data=[(k[i:j], v[i:j], *rest) for k, v, *rest in cache])
            return self._forward(ids[i:j], sub, past), sub

        parts = self.backoff.pieces("sampler", b, piece, meters=(self.meter,))
        if len(parts) > 1:
            for n, layer in enumerate(cache.layers):
                layer.keys = torch.cat([c.layers[n].keys for _, c in parts])
                layer.values = torch.cat([c.layers[n].values for _, c in parts])
        return torch.cat([lg for lg, _ in parts])

    def _forward(self, ids: torch.Tensor, cache: DynamicCache, past: int) -> torch.Tensor:
        b, t = ids.shape
        hidden = self.backbone(input_ids=ids, use_cache=True, **{self._cache_kw: cache}).last_hidden_state
        logits = self.head(hidden[:, -1]).float()
        spent = forward_flops(self.shape, b, t, past + t, head_rows=b, full_len=past + t)
        self.meter.add(FlopCount(nominal=spent.nominal, actual=spent.actual))
        return logits


def gumbel_top_k(logits: np.ndarray, allowed: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k distinct tokens sampled without replacement in proportion to softmax(logits) over `allowed`."""
    lg = logits[allowed].astype(np.float64)
    keys = lg + rng.gumbel(size=lg.shape)
    return allowed[np.argsort(-keys, kind="stable")[:k]]


@register_attack("beast")
class Beast(Attack):
    Params = BeastParams
    length_is_iterations = True

    def __init__(self, cfg: AttackConfig, seed: int, key: tuple, tokenizer, sampler_factory) -> None:
        super().__init__(cfg, seed, key)
        self.allowed = allowed_tokens(tokenizer, ascii_only=self.p.ascii_only)
        self.sampler_factory = sampler_factory  # meter -> Sampler; loaded on first use (leads only)
        self.meter = FlopMeter()
        self._sampler: Sampler | None = None
        self._lead: dict[int, dict] = {}  # sampler caches of the examples this rank leads
        self.bos = tokenizer.eos_token_id if tokenizer.bos_token_id is None else tokenizer.bos_token_id

    @classmethod
    def build(cls, a: AttackConfig, env: AttackEnv) -> Beast:
        path = resolve(sampler_model(a), env.family).path
        clf = env.clf

        def factory(meter: FlopMeter) -> Sampler:
            return Sampler(path, clf.device, clf.dtype, meter, clf.backoff)

        return cls(a, env.seed, env.stream_key(a), clf.tokenizer, factory)

    @classmethod
    def extra_models(cls, a: AttackConfig, fam: FamilyConfig) -> list[ModelConfig]:
        return [sampler_model(a)]

    @classmethod
    def check(cls, a: AttackConfig, key: str, env: CheckEnv) -> None:
        super().check(a, key, env)
        sm = sampler_model(a)
        for m in env.victims:
            if m.is_builtin != sm.is_builtin:
                raise UserError(f"{key}: the sampler '{sm.name_or_path}' has a different tokenizer from the"
                                f" victim '{m.name_or_path}'; BEAST needs one shared vocabulary")

    @classmethod
    def check_tokenizers(cls, a: AttackConfig, key: str, env: CheckEnv) -> None:
        sm = sampler_model(a)
        try:
            sampler = vocabulary_digest(resolve(sm, env.family).path, False)
        except (OSError, ValueError):
            raise UserError(f"{key}: sampler '{sm.name_or_path}' has no loadable tokenizer") from None
        for m, path in zip(env.victims, env.victim_paths, strict=True):
            if vocabulary_digest(path, m.trust_remote_code) != sampler:
                raise UserError(f"{key}: the sampler '{sm.name_or_path}' has a different tokenizer from the"
                                f" victim '{m.name_or_path}'; BEAST needs one shared vocabulary")

    @property
    def sampler(self) -> Sampler:
        if self._sampler is None:
            self._sampler = self.sampler_factory(self.meter)
        return self._sampler

    @property
    def meters(self) -> tuple:
        return (self.meter,)

    def start(self, st: ExampleState) -> None:
        st.tokens = np.zeros(0, dtype=np.int64)
        st.extra["beams"] = np.zeros((1, 0), dtype=np.int64)
        st.extra["parents"] = np.zeros(1, dtype=np.int64)
        st.extra["trail_parents"], st.extra["trail_tokens"] = [], []  # every step's: to rebuild a sampler cache

    def _advance_sampler(self, st: ExampleState) -> np.ndarray:
        """Bring this example's sampler cache up to the current beams; next-token logits per beam."""
        s = self._lead.get(st.i)
        beams: np.ndarray = st.extra["beams"]
        if s is None:
            s = self._lead[st.i] = self._replay(st, beams.shape[1])
        if beams.shape[1] > s["width"]:  # new beams chosen by the last update: reorder, then feed their token
            self._feed(s, st.extra["parents"], beams[:, -1:])
        return s["logits"].cpu().numpy()

    def _feed(self, s: dict, parents: np.ndarray, tokens: np.ndarray) -> None:
        s["cache"].batch_select_indices(torch.as_tensor(parents, device=self.sampler.device))
        s["logits"] = self.sampler.forward(torch.as_tensor(tokens, device=self.sampler.device), s["cache"], s["len"])
        s["len"] += 1
        s["width"] += 1

    def _replay(self, st: ExampleState, width: int) -> dict:
        """The sampler cache of the prompt, then of the beams' tokens up to `width - 1` (one behind the beams, as
        after the last step). Normally `width` is 0; after a resume inside the attack the kept trail of every
        step's parents and new tokens is fed again exactly as it was (same batches, same bits), uncounted: its
        FLOPs are in the kept FLOPs already."""
        prompt = list(st.enc.before) or [self.bos]
        start = self.meter.total.snapshot()
        cache = DynamicCache()
        ids = torch.tensor([prompt], device=self.sampler.device)
        s = {"cache": cache, "len": len(prompt), "logits": self.sampler.forward(ids, cache, 0), "width": 0}
        for w in range(width - 1):
            self._feed(s, st.extra["trail_parents"][w], st.extra["trail_tokens"][w][:, None])
        if width:
            self.meter.total = start
        return s

    def state_arrays(self, st: ExampleState) -> dict[str, np.ndarray]:
        trail_p, trail_t = st.extra["trail_parents"], st.extra["trail_tokens"]
        return {"beams": st.extra["beams"], "parents": st.extra["parents"],
                "trail_len": np.array([len(p) for p in trail_p], dtype=np.int64),
                "trail_parents": np.concatenate([np.zeros(0, np.int64), *trail_p]),
                "trail_tokens": np.concatenate([np.zeros(0, np.int64), *trail_t])}

    def load_state(self, st: ExampleState, arrays: dict[str, np.ndarray]) -> None:
        st.extra["beams"] = np.asarray(arrays["beams"], dtype=np.int64)
        st.extra["parents"] = np.asarray(arrays["parents"], dtype=np.int64)
        cut = np.cumsum(arrays["trail_len"])[:-1]
        st.extra["trail_parents"] = np.split(np.asarray(arrays["trail_parents"], dtype=np.int64), cut)
        st.extra["trail_tokens"] = np.split(np.asarray(arrays["trail_tokens"], dtype=np.int64), cut)
        if not len(arrays["trail_len"]):
            st.extra["trail_parents"], st.extra["trail_tokens"] = [], []

    def current_flips(self, st: ExampleState, its: range) -> list[bool]:
        return [st.now_flipped] * len(its)  # the best candidate seen

    def propose(self, st: ExampleState, step: int, engine: ScoringEngine) -> np.ndarray:
        logits = self._advance_sampler(st)
        beams: np.ndarray = st.extra["beams"]
        k = self.p.beam_width if beams.shape[1] == 0 else self.p.branching
        rows = []
        for b in range(beams.shape[0]):
            rng = stream(self.seed, *self.key, "beast", st.example, step, b)
            toks = gumbel_top_k(logits[b], self.allowed, k, rng)
            rows.append(np.concatenate([np.repeat(beams[b][None], len(toks), axis=0), toks[:, None]], axis=1))
        return np.concatenate(rows, axis=0)

    def update(self, st: ExampleState, step: int, cands: np.ndarray, sc: Scores) -> None:
        order = np.argsort(sc.losses, kind="stable")
        keep = order[: self.p.beam_width]
        width = st.extra["beams"].shape[1]
        per_beam = self.p.beam_width if width == 0 else self.p.branching
        st.extra["parents"] = (keep // per_beam).astype(np.int64) if width else np.zeros(len(keep), np.int64)
        st.extra["beams"] = cands[keep]
        st.extra["trail_parents"].append(st.extra["parents"])
        st.extra["trail_tokens"].append(cands[keep][:, -1].astype(np.int64))
        best = int(order[0])
        if float(sc.losses[best]) < st.best_loss:  # best seen so far (ties keep the earlier, shorter one)
            st.best_loss, st.tokens = float(sc.losses[best]), cands[best].copy()
            st.now_flipped = bool(sc.flipped[best])
        if sc.flipped[best] and st.first_success < 0:
            st.first_success = step + 1
            st.done = self.stops_early
        if st.done or step + 1 >= self.n_steps:
            self._lead.pop(st.i, None)
