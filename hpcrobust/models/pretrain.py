"""Pretraining compute 6·N·D, with N and D defined per family as the reference defines them.

The reference (`wandb_utils/constants.py` of the paper's code) takes N as the generative model's
parameter count with each distinct matrix counted once: Pythia's input embedding counts but its
separate output embedding does not (160m: 123,689,472); Qwen2.5's tied embedding counts once
(0.5B-3B) and its untied pair counts twice (7B, 14B). D is 299,892,736,000 tokens for every Pythia
size; Qwen2.5 has 18T for 0.5B and 10.5T for 1.5B-14B (Qwen2's token ratio scaled to the 18T
maximum). Qwen2 uses the Qwen2 report's 12T / 7T. The reference's N list swaps Qwen2.5 3B and 7B;
we count each size's own parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

PYTHIA_TOKENS = 299_892_736_000
QWEN25_TOKENS = (18e12, 10.5e12)  # 0.5B, every larger size
QWEN2_TOKENS = (12e12, 7e12)
SMALL_QWEN = 1e9  # only the 0.5B sizes have fewer parameters


@dataclass(frozen=True)
class Pretraining:
    """What 6·N·D was computed from; N and D are NaN when only the product is known (a config value)."""

    flops: float
    n: float = math.nan
    tokens: float = math.nan
    source: str = ""

    @classmethod
    def of(cls, n: float, tokens: float, source: str) -> Pretraining:
        return cls(6.0 * n * tokens, float(n), float(tokens), source)

    def to_json(self) -> dict:
        return {"pretrain_flops": self.flops, "pretrain_n": self.n, "pretrain_tokens": self.tokens,
                "pretrain_source": self.source}

    @classmethod
    def from_json(cls, d: dict) -> Pretraining:
        return cls(float(d.get("pretrain_flops", math.nan)), float(d.get("pretrain_n", math.nan)),
                   float(d.get("pretrain_tokens", math.nan)), str(d.get("pretrain_source", "")))


UNKNOWN = Pretraining(math.nan, source="unknown")


def public_family(name: str, hf_config, n_backbone: int, n_embedding: int) -> Pretraining:
    """6·N·D of a public model by the reference's rules, from its config and its backbone's parameter count
    (embeddings in, no head); UNKNOWN for families the reference does not define."""
    mtype = getattr(hf_config, "model_type", "")
    name = name.lower()
    tied = bool(getattr(hf_config, "tie_word_embeddings", True))
    if mtype == "gpt_neox" and "pythia" in name:
        return Pretraining.of(n_backbone, PYTHIA_TOKENS, "pythia: N without the output embedding, D = 299.9B")
    if mtype == "qwen2" and "qwen2" in name:
        n = n_backbone + (0 if tied else n_embedding)
        version = "qwen2.5" if "qwen2.5" in name else "qwen2"
        small, large = QWEN25_TOKENS if version == "qwen2.5" else QWEN2_TOKENS
        tokens = small if n < SMALL_QWEN else large
        return Pretraining.of(n, tokens, f"{version}: N counts a tied embedding once, D = {tokens / 1e12:g}T")
    return UNKNOWN
