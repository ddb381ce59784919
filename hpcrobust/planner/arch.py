"""A model's architecture without its weights: from its config.json when one is reachable, else from a table.

The planner must run on a laptop for the 12B and 14B configs, where neither weights nor config files exist.
So the shapes of the public Pythia and Qwen2.5 checkpoints are kept here, and a model whose config cannot be
read is matched against them by name. Parameters are counted on the meta device (no memory is allocated),
with the same `arch_shape` the run uses for its FLOP counts, so N is exactly the N the run multiplies by.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from typing import Any

import torch

from hpcrobust.errors import UserError
from hpcrobust.models import family
from hpcrobust.models.config import FamilyConfig, ModelConfig, model_label
from hpcrobust.models.flops import ArchShape, arch_shape
from hpcrobust.models.loading import DTYPES, _quiet_transformers, model_config, resolve


@dataclass(frozen=True)
class KnownShape:
    """The config.json numbers that decide parameters, FLOPs and memory."""

    model_type: str  # "gpt_neox" or "qwen2"
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied: bool


def _pythia(hidden: int, layers: int, heads: int, vocab: int = 50304) -> KnownShape:
    return KnownShape("gpt_neox", hidden, layers, heads, heads, 4 * hidden, vocab, False)


# Public checkpoints, from their config.json on the Hugging Face hub (keys: the hub id's last part, lower case).
KNOWN_SHAPES: dict[str, KnownShape] = {
    "pythia-14m": _pythia(128, 6, 4), "pythia-31m": _pythia(256, 6, 8), "pythia-70m": _pythia(512, 6, 8),
    "pythia-160m": _pythia(768, 12, 12), "pythia-410m": _pythia(1024, 24, 16), "pythia-1b": _pythia(2048, 16, 8),
    "pythia-1.4b": _pythia(2048, 24, 16), "pythia-2.8b": _pythia(2560, 32, 32),
    "pythia-6.9b": _pythia(4096, 32, 32, 50432), "pythia-12b": _pythia(5120, 36, 40, 50688),
    "qwen2.5-0.5b": KnownShape("qwen2", 896, 24, 14, 2, 4864, 151936, True),
    "qwen2.5-1.5b": KnownShape("qwen2", 1536, 28, 12, 2, 8960, 151936, True),
    "qwen2.5-3b": KnownShape("qwen2", 2048, 36, 16, 2, 11008, 151936, True),
    "qwen2.5-7b": KnownShape("qwen2", 3584, 28, 28, 4, 18944, 152064, False),
    "qwen2.5-14b": KnownShape("qwen2", 5120, 48, 40, 8, 13824, 152064, False),
    "qwen2.5-32b": KnownShape("qwen2", 5120, 64, 40, 8, 27648, 152064, False),
    "qwen2.5-72b": KnownShape("qwen2", 8192, 80, 64, 8, 29568, 152064, False),
}


def known_shape(name: str) -> KnownShape | None:
    """The table entry for a hub id such as `EleutherAI/pythia-1b` or `Qwen/Qwen2.5-7B-Instruct`."""
    base = name.rstrip("/").split("/")[-1].lower()
    for suffix in ("", "-deduped", "-instruct", "-v0"):
        key = base[: -len(suffix)] if suffix and base.endswith(suffix) else base
        if key in KNOWN_SHAPES:
            return KNOWN_SHAPES[key]
    return None


def hf_config_from_shape(s: KnownShape) -> Any:
    from transformers import GPTNeoXConfig, Qwen2Config

    if s.model_type == "gpt_neox":
        return GPTNeoXConfig(vocab_size=s.vocab, hidden_size=s.hidden, num_hidden_layers=s.layers,
                             num_attention_heads=s.heads, intermediate_size=s.intermediate,
                             tie_word_embeddings=s.tied, use_parallel_residual=True)
    return Qwen2Config(vocab_size=s.vocab, hidden_size=s.hidden, num_hidden_layers=s.layers,
                       num_attention_heads=s.heads, num_key_value_heads=s.kv_heads,
                       intermediate_size=s.intermediate, tie_word_embeddings=s.tied)


def builtin_hf_config(fam: FamilyConfig, size: str) -> tuple[Any, str]:
    """A built-in size's config: the built one's config.json, else the recipe's (vocabulary = family.vocab_size)."""
    from transformers import AutoConfig, GPTNeoXConfig

    folder = family.size_dir(fam, size)
    if (folder / "config.json").is_file():
        return AutoConfig.from_pretrained(str(folder), local_files_only=True), "built-in family (built)"
    spec = family.SIZES[size]
    cfg = GPTNeoXConfig(vocab_size=fam.vocab_size, hidden_size=spec.hidden, num_hidden_layers=spec.layers,
                        num_attention_heads=spec.heads, intermediate_size=spec.intermediate,
                        tie_word_embeddings=False, use_parallel_residual=True)
    return cfg, "built-in family recipe (not built yet: vocabulary taken as family.vocab_size)"


@dataclass
class ModelArch:
    """One model as the planner sees it: the run's ArchShape plus what memory needs."""

    name: str  # name_or_path
    label: str
    source: str  # where the numbers came from, said in the output
    model_type: str
    shape: ArchShape  # classifier (or causal LM for a sampler): N and the actual-FLOP terms, as the run computes them
    layers: int
    hidden: int
    heads: int
    kv_hidden: int
    intermediate: int
    vocab: int
    largest_param: int  # elements of the largest single tensor (an optimizer's per-tensor scratch)
    matrix_dims: list[tuple[int, int]]  # (rows, cols) of every 2-D parameter (Adafactor's factored state)
    vector_params: int  # elements of 1-D parameters
    dtype: str  # compute dtype: activations and caches; weights, gradients and optimizer state are float32
    path: str  # resolved folder or hub id (for the tokenizer)
    checkpointing: bool = False  # models.N.gradient_checkpointing

    @property
    def n_params(self) -> int:
        return self.shape.n_params

    @property
    def dtype_bytes(self) -> int:
        return DTYPES[self.dtype].itemsize


def _config_of(m: ModelConfig, fam: FamilyConfig, key: str = "model") -> tuple[Any, str, str]:
    """(HF config, where it came from, path); the run's own one-line error (naming `key`) when nothing is known."""
    r = resolve(m, fam)
    if r.builtin:
        cfg, src = builtin_hf_config(fam, r.builtin)
        return cfg, src, r.path
    try:
        return model_config(m, fam, key, f"{key}.trust_remote_code"), f"config.json of {m.name_or_path}", r.path
    except UserError:
        shape = known_shape(m.name_or_path)
        if shape is None:
            raise
        return hf_config_from_shape(shape), "table of known shapes (no config.json reachable here)", r.path


def _meta_model(cfg: Any, causal_lm: bool, trust_remote_code: bool) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    cfg = copy.deepcopy(cfg)
    cfg.num_labels = 2
    with torch.device("meta"):
        if causal_lm:
            return AutoModelForCausalLM.from_config(cfg, trust_remote_code=trust_remote_code)
        return AutoModelForSequenceClassification.from_config(cfg, trust_remote_code=trust_remote_code)


def parameter_shapes(cfg: Any, causal_lm: bool) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]] | None:
    """(every parameter's shape, the nn.Linear weights inside the decoder layers) of the two families the
    paper uses, written out so that planning needs no modeling code; None for any other architecture.
    tests/test_plan.py checks them against meta-device models."""
    kind = getattr(cfg, "model_type", "")
    h, v, n_layers = cfg.hidden_size, cfg.vocab_size, cfg.num_hidden_layers
    i = getattr(cfg, "intermediate_size", None) or 4 * h
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or h // heads
    kv = (getattr(cfg, "num_key_value_heads", None) or heads) * head_dim
    q = heads * head_dim
    if kind == "gpt_neox":
        bias = getattr(cfg, "attention_bias", True)
        linear = [(3 * q, h), (h, q), (i, h), (h, i)]
        layer = [(h,), (h,), (h,), (h,), *linear, (i,), (h,)] + ([(3 * q,), (h,)] if bias else [])
        ends = [(h,), (h,)]
    elif kind == "qwen2":
        linear = [(q, h), (kv, h), (kv, h), (h, q), (i, h), (i, h), (h, i)]
        layer = [*linear, (q,), (kv,), (kv,), (h,), (h,)]
        ends = [(h,)]
    else:
        return None
    head = [(v, h)] if causal_lm and not cfg.tie_word_embeddings else ([] if causal_lm else [(2, h)])
    return [(v, h), *layer * n_layers, *ends, *head], linear * n_layers


def _from_shapes(cfg: Any, shapes: list[tuple[int, ...]], linear: list[tuple[int, ...]], causal_lm: bool
                 ) -> tuple[ArchShape, list[tuple[int, ...]]]:
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    shape = ArchShape(n_params=sum(math.prod(s) for s in shapes), layer_linear_params=sum(math.prod(s) for s in linear),
                      n_layers=cfg.num_hidden_layers, hidden=heads * head_dim, kv_hidden=kv_heads * head_dim,
                      n_labels_head=cfg.vocab_size if causal_lm else 2, head_in=cfg.hidden_size)
    return shape, shapes


def _from_meta(cfg: Any, causal_lm: bool, trust_remote_code: bool) -> tuple[ArchShape, list[tuple[int, ...]]]:
    model = _meta_model(cfg, causal_lm, trust_remote_code)
    head = model.get_output_embeddings() if causal_lm else model.score
    return arch_shape(model, model.base_model, head), [tuple(p.shape) for p in model.parameters()]


_CACHE: dict[tuple, ModelArch] = {}


def model_arch(m: ModelConfig, fam: FamilyConfig, causal_lm: bool = False, key: str = "model") -> ModelArch:
    """The classifier a run trains and attacks (or, with `causal_lm`, the LM BEAST samples from); `key` names it
    in errors."""
    cache_key = (m.name_or_path, m.revision, m.torch_dtype, m.gradient_checkpointing, causal_lm,
                 json.dumps(fam.__dict__, sort_keys=True, default=str))
    if cache_key in _CACHE:
        return _CACHE[cache_key]
    _quiet_transformers()
    cfg, source, path = _config_of(m, fam, key)
    written = parameter_shapes(cfg, causal_lm)
    if written is not None:
        shape, params = _from_shapes(cfg, *written, causal_lm)
    else:
        shape, params = _from_meta(cfg, causal_lm, m.trust_remote_code)
    heads = cfg.num_attention_heads
    arch = ModelArch(
        name=m.name_or_path, label=model_label(m), source=source, model_type=getattr(cfg, "model_type", ""),
        shape=shape, layers=shape.n_layers, hidden=cfg.hidden_size, heads=heads, kv_hidden=shape.kv_hidden,
        intermediate=int(getattr(cfg, "intermediate_size", 4 * cfg.hidden_size)), vocab=int(cfg.vocab_size),
        largest_param=max(math.prod(p) for p in params),
        matrix_dims=[(p[0], math.prod(p) // p[0]) for p in params if len(p) >= 2],
        vector_params=sum(math.prod(p) for p in params if len(p) < 2), dtype=m.torch_dtype, path=str(path),
        checkpointing=m.gradient_checkpointing and not causal_lm)
    _CACHE[cache_key] = arch
    return arch
