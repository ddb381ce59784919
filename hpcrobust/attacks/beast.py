"""BEAST (Sadasivan et al., 2024): beam search over attack tokens proposed by a language model.

Written from the paper's algorithm. Iteration 1 samples `beam_width` (k1) first tokens from the
sampler LM's next-token distribution after the prompt. Every later iteration samples `branching`
(k2) next tokens for each beam (k1·k2 candidates, one token longer), scores them on the victim,
and keeps the k1 best as the new beams; the suffix grows by one token per iteration. The sampler
keeps each beam's keys/values from one iteration to the next (reordered to the surviving beams),
so it only ever runs the one new token per beam. Sampling is without replacement (Gumbel top-k)
from a stream keyed by (seed, run, round, attack, example, iteration).
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import DynamicCache

from hpcrobust.attacks.base import Attack, ExampleState
from hpcrobust.attacks.engine import Scores, ScoringEngine
from hpcrobust.attacks.vocab import allowed_tokens
from hpcrobust.config import AttackConfig
from hpcrobust.models.flops import FlopCount, FlopMeter, arch_shape, forward_flops
from hpcrobust.rng import stream


class Sampler:
    """The proposing causal LM: last-position logits only, every call counted."""

    def __init__(self, path: str, device: torch.device, dtype: torch.dtype, meter: FlopMeter) -> None:
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

    @torch.no_grad()
    def forward(self, ids: torch.Tensor, cache: DynamicCache, past: int) -> torch.Tensor:
        """Next-token logits [B, V] after feeding `ids` [B, T] on top of `past` cached tokens."""
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


class Beast(Attack):
    def __init__(self, cfg: AttackConfig, seed: int, key: tuple, tokenizer, sampler_factory) -> None:
        super().__init__(cfg, seed, key)
        self.allowed = allowed_tokens(tokenizer, ascii_only=True)
        self.sampler_factory = sampler_factory  # meter -> Sampler; loaded on first use (leads only)
        self.meter = FlopMeter()
        self._sampler: Sampler | None = None
        self._lead: dict[int, dict] = {}  # sampler caches of the examples this rank leads
        self.bos = tokenizer.eos_token_id if tokenizer.bos_token_id is None else tokenizer.bos_token_id

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

    def _advance_sampler(self, st: ExampleState) -> np.ndarray:
        """Bring this example's sampler cache up to the current beams; next-token logits per beam."""
        s = self._lead.get(st.i)
        beams: np.ndarray = st.extra["beams"]
        if s is None:
            prompt = list(st.enc.before) or [self.bos]
            cache = DynamicCache()
            ids = torch.tensor([prompt], device=self.sampler.device)
            logits = self.sampler.forward(ids, cache, 0)
            s = self._lead[st.i] = {"cache": cache, "len": len(prompt), "logits": logits, "width": 0}
        if beams.shape[1] > s["width"]:  # new beams chosen by the last update: reorder, then feed their token
            idx = torch.as_tensor(st.extra["parents"], device=self.sampler.device)
            s["cache"].batch_select_indices(idx)
            new = torch.as_tensor(beams[:, -1:], device=self.sampler.device)
            s["logits"] = self.sampler.forward(new, s["cache"], s["len"])
            s["len"] += 1
            s["width"] = beams.shape[1]
        return s["logits"].cpu().numpy()

    def propose(self, st: ExampleState, step: int, engine: ScoringEngine) -> np.ndarray:
        logits = self._advance_sampler(st)
        beams: np.ndarray = st.extra["beams"]
        k = self.cfg.beam_width if beams.shape[1] == 0 else self.cfg.branching
        rows = []
        for b in range(beams.shape[0]):
            rng = stream(self.seed, *self.key, "beast", st.example, step, b)
            toks = gumbel_top_k(logits[b], self.allowed, k, rng)
            rows.append(np.concatenate([np.repeat(beams[b][None], len(toks), axis=0), toks[:, None]], axis=1))
        return np.concatenate(rows, axis=0)

    def update(self, st: ExampleState, step: int, cands: np.ndarray, sc: Scores) -> None:
        order = np.argsort(sc.losses, kind="stable")
        keep = order[: self.cfg.beam_width]
        width = st.extra["beams"].shape[1]
        per_beam = self.cfg.beam_width if width == 0 else self.cfg.branching
        st.extra["parents"] = (keep // per_beam).astype(np.int64) if width else np.zeros(len(keep), np.int64)
        st.extra["beams"] = cands[keep]
        best = int(order[0])
        st.best_loss, st.tokens = float(sc.losses[best]), cands[best].copy()
        if sc.flipped[best] and st.first_success < 0:
            st.first_success = step + 1
            st.done = self.cfg.early_stop
        if st.done or step + 1 >= self.n_steps:
            self._lead.pop(st.i, None)
