"""Random-weight stand-ins of real model shapes for GPU benchmarks (no weights can be downloaded).

A folder with a GPT-NeoX model of Pythia-410m's shape (24 layers, width 1024, 16 heads, MLP 4096,
vocabulary 50,304) and the built-in family's tokenizer, loadable through the ordinary HF path.
Compute per token depends only on the shape, so timings and FLOP rates are those of the real model.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from hpcrobust.config import FamilyConfig
from hpcrobust.models import family

SHAPES = {
    "pythia-410m": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                        vocab_size=50304, max_position_embeddings=2048, rotary_pct=0.25),
    "pythia-160m": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                        vocab_size=50304, max_position_embeddings=2048, rotary_pct=0.25),
}


def build_shape(shape: str, out: Path, dtype: torch.dtype = torch.bfloat16) -> Path:
    """Write the stand-in once (seeded random weights); later calls reuse the folder."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    if (out / "config.json").is_file():
        return out
    fam = FamilyConfig()
    family.ensure_built(fam, [family.smallest()], show_progress=False)
    tok_dir = family.size_dir(fam, family.smallest())
    torch.manual_seed(0)
    cfg = GPTNeoXConfig(**SHAPES[shape], use_parallel_residual=True, tie_word_embeddings=False)
    model = GPTNeoXForCausalLM(cfg).to(dtype)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    for f in tok_dir.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(f, tmp / f.name)
    tmp.rename(out)
    return out
