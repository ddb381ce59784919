"""The built-in tiny family: sizes, cache by recipe, measured pretraining compute."""

from __future__ import annotations

import json

from hpcrobust.config import FamilyConfig, load_config
from hpcrobust.models import family
from tests.conftest import TINY


def _n_params(size: str, vocab: int) -> int:
    from transformers import GPTNeoXConfig, GPTNeoXForSequenceClassification

    spec = family.SIZES[size]
    cfg = GPTNeoXConfig(vocab_size=vocab, hidden_size=spec.hidden, num_hidden_layers=spec.layers,
                        num_attention_heads=spec.heads, intermediate_size=spec.intermediate, num_labels=2)
    return sum(p.numel() for p in GPTNeoXForSequenceClassification(cfg).parameters())


def test_family_spans_30x_with_at_least_4_sizes():
    vocab = FamilyConfig().vocab_size
    counts = [_n_params(s, vocab) for s in family.SIZES]
    assert len(counts) >= 4 and counts == sorted(counts)
    assert counts[-1] / counts[0] >= 30


def test_cache_is_keyed_by_recipe(family_cache):
    cfg = load_config(TINY).family
    assert family.is_built(cfg, "s")
    info = json.loads((family.size_dir(cfg, "s") / "hpcrobust_family.json").read_text())
    assert info["pretrain_flops"] == 6 * info["n_params_lm"] * info["pretrain_tokens"] > 0
    assert (family.size_dir(cfg, "s") / "model.safetensors").is_file()
    changed = FamilyConfig(**{**cfg.__dict__, "pretrain_steps": cfg.pretrain_steps + 1})
    assert family.size_dir(changed, "s") != family.size_dir(cfg, "s")
    assert not family.is_built(changed, "s")
    family.ensure_built(cfg, ["s"], show_progress=False)  # built already: returns at once
