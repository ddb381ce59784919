"""The built-in tiny Pythia-architecture (GPT-NeoX) family, for machines without model weights.

A byte-level BPE tokenizer is trained locally, then every size gets a short causal-LM pretraining
on generated text (never the task's examples), so each size has a measured pretraining compute.
The result is cached as ordinary Hugging Face folders (safetensors) under a folder named by a hash
of the recipe, so changing the recipe rebuilds and an unchanged recipe is built once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from hpcrobust.errors import UserError
from hpcrobust.models.config import FamilyConfig
from hpcrobust.models.determinism import make_thread_invariant
from hpcrobust.rng import stream
from hpcrobust.tasks.words import COMMON_WORDS, word_list

EOS = "<|endoftext|>"
RECIPE_VERSION = 5  # bump when the build code changes what it produces
# Share of corpus lines by kind: rare-word runs, common-English sentences, repeated spans, key/value.
# Dense repetition is what lets small models grow induction (copying) heads in a few hundred steps.
CORPUS_MIX = (0.15, 0.25, 0.4, 0.2)
COPY_FRACTION = 0.25  # rows of each pretraining batch that are repeated random-token spans
COPY_PHASE = 0.7  # the first 70% of the steps use only such rows


@dataclass(frozen=True)
class SizeSpec:
    hidden: int
    layers: int
    heads: int
    step_scale: float = 1.0  # share of family.pretrain_steps: larger sizes grow induction heads sooner

    @property
    def intermediate(self) -> int:
        return 4 * self.hidden


SIZES: dict[str, SizeSpec] = {
    "xs": SizeSpec(24, 2, 2),
    "s": SizeSpec(64, 2, 4),
    "m": SizeSpec(112, 3, 4),
    "l": SizeSpec(176, 4, 4, 0.7),
    "xl": SizeSpec(256, 4, 8, 0.6),
}


def size_steps(cfg: FamilyConfig, size: str) -> int:
    return max(1, int(round(cfg.pretrain_steps * SIZES[size].step_scale)))


def cache_root(cfg: FamilyConfig) -> Path:
    if cfg.cache_dir:
        return Path(cfg.cache_dir).expanduser()
    if os.environ.get("HPCROBUST_CACHE"):
        return Path(os.environ["HPCROBUST_CACHE"]).expanduser()
    return Path.home() / ".cache" / "hpcrobust"


def recipe(cfg: FamilyConfig, size: str) -> dict:
    """Everything that decides a size's weights; its hash names the cache folder."""
    d = asdict(cfg)
    d.pop("cache_dir")
    return {"version": RECIPE_VERSION, "family": d, "size": size, "spec": asdict(SIZES[size])}


def _digest(obj: dict) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def family_dir(cfg: FamilyConfig) -> Path:
    tok_recipe = {"version": RECIPE_VERSION, "vocab": cfg.vocab_size, "lines": cfg.corpus_lines, "seed": cfg.seed}
    return cache_root(cfg) / f"family-{_digest(tok_recipe)}"


def size_dir(cfg: FamilyConfig, size: str) -> Path:
    return family_dir(cfg) / f"{size}-{_digest(recipe(cfg, size))}"


def check_size(name: str) -> None:
    if name not in SIZES:
        raise UserError(f"unknown built-in size '{name}' (sizes: {', '.join(SIZES)})")


def smallest() -> str:
    """The cheapest built-in size (BEAST's default sampler)."""
    return min(SIZES, key=lambda s: SIZES[s].hidden ** 2 * SIZES[s].layers)


def is_built(cfg: FamilyConfig, size: str) -> bool:
    return (size_dir(cfg, size) / "hpcrobust_family.json").is_file()


def size_info(cfg: FamilyConfig, size: str) -> dict:
    return json.loads((size_dir(cfg, size) / "hpcrobust_family.json").read_text())


# ------------------------------------------------------------------ corpus

def corpus_lines(n: int, seed: int) -> list[str]:
    """Plain generated text, never the task's examples.

    Four kinds of line: runs of rare words, ordinary sentences of common words, repeated spans, and
    key/value pairs whose values sometimes repeat. The repeats make copying (induction) learnable,
    which is what small models need before they can compare two strings.
    """
    words = word_list()
    rng = stream(seed, "family", "corpus")
    keys = ["Name", "Code", "Item", "Color", "Place", "Owner", "Word", "Value", "Tag", "Label", "Key", "Entry"]
    lines = []
    for _ in range(n):
        kind = int(rng.choice(4, p=CORPUS_MIX))
        ws = [words[i] for i in rng.integers(0, len(words), size=12).tolist()]
        if kind == 0:
            lines.append(" ".join(ws[: rng.integers(3, 10)]) + str(rng.choice([".", "?", "!", ","])))
        elif kind == 1:
            cw = [COMMON_WORDS[i] for i in rng.integers(0, len(COMMON_WORDS), size=int(rng.integers(5, 16)))]
            text = " ".join(cw)
            if rng.random() < 0.5:
                text = text.upper() if rng.random() < 0.2 else text[0].upper() + text[1:]
            lines.append(text + str(rng.choice([".", "?", ":", ","])))
        elif kind == 2:
            span = " ".join(ws[: rng.integers(2, 6)])
            sep = str(rng.choice([" ", "\n", ", ", " | "]))
            lines.append(sep.join([span] * int(rng.integers(3, 7))))
        else:
            k1, k2 = rng.choice(keys, size=2, replace=False).tolist()
            same = bool(rng.integers(0, 2))
            lines.append(f"{k1}: {ws[0]}\n{k2}: {ws[0] if same else ws[1]}")
    return lines


def train_tokenizer(lines: list[str], vocab_size: int, out: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(lines, trainer=trainer)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    fast = PreTrainedTokenizerFast(tokenizer_file=str(out / "tokenizer.json"), eos_token=EOS, bos_token=EOS,
                                   pad_token=EOS, unk_token=EOS)
    return fast


# ------------------------------------------------------------------ build

@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _pretrain_batches(ids: np.ndarray, steps: int, batch: int, seq_len: int, seed: int, size: str,
                      vocab: int, eos: int):
    """Windows of the corpus, plus (COPY_FRACTION of rows) spans of random tokens repeated to the end.

    The repeated random spans cannot be predicted from word statistics, only by copying, which is
    what makes induction heads form within a few hundred steps.
    """
    rng = stream(seed, "family", "pretrain-order", size)
    n_windows = (len(ids) - 1) // seq_len
    for step in range(steps):
        # Phase 1 (first COPY_PHASE of the steps): only repeated random spans, to grow induction heads.
        frac = 1.0 if step < COPY_PHASE * steps else COPY_FRACTION
        n_copy = int(round(frac * batch))
        starts = rng.integers(0, n_windows, size=batch - n_copy) * seq_len
        rows = [ids[s: s + seq_len] for s in starts.tolist()]
        for _ in range(n_copy):
            span = rng.integers(0, vocab, size=int(rng.integers(4, 17)))
            span = np.where(span == eos, (span + 1) % vocab, span)
            reps = -(-seq_len // len(span)) + 1
            off = int(rng.integers(0, len(span)))
            rows.append(np.tile(span, reps)[off: off + seq_len])
        yield torch.from_numpy(np.stack(rows).astype(np.int64))


def _build_size(cfg: FamilyConfig, size: str, tokenizer, ids: np.ndarray, bar) -> None:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    spec = SIZES[size]
    eos = tokenizer.convert_tokens_to_ids(EOS)
    mcfg = GPTNeoXConfig(
        vocab_size=len(tokenizer), hidden_size=spec.hidden, num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads, intermediate_size=spec.intermediate,
        max_position_embeddings=512, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                      "partial_rotary_factor": 1.0},
        attention_dropout=0.0, hidden_dropout=0.0, classifier_dropout=0.0,
        bos_token_id=eos, eos_token_id=eos, pad_token_id=eos, tie_word_embeddings=False,
        use_parallel_residual=True,
    )
    torch.manual_seed(int(stream(cfg.seed, "family", "init", size).integers(0, 2**31 - 1)))
    model = make_thread_invariant(GPTNeoXForCausalLM(mcfg))
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.pretrain_lr, betas=(0.9, 0.98), weight_decay=0.0)
    steps = size_steps(cfg, size)
    warm = max(1, steps // 10)

    def lr_at(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        frac = (step - warm) / max(1, steps - warm)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    model.train()
    tokens = 0
    loss_val = float("nan")
    t0 = time.time()
    for batch in _pretrain_batches(ids, steps, cfg.pretrain_batch, cfg.pretrain_seq_len,
                                   cfg.seed, size, len(tokenizer), eos):
        out = model(input_ids=batch, labels=batch)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        tokens += batch.numel()
        loss_val = float(out.loss.detach())
        bar.update(1)
        bar.set_postfix(size=size, loss=f"{loss_val:.2f}")
    model.eval()
    final = size_dir(cfg, size)
    tmp = final.with_name(final.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    info = {
        "size": size, "n_params_lm": n_params, "pretrain_tokens": tokens,
        # 6·N·D, the same convention as every other FLOP count here (2NT forward + 4NT backward).
        "pretrain_flops": 6.0 * n_params * tokens, "final_loss": loss_val,
        "build_seconds": time.time() - t0, "recipe": recipe(cfg, size),
    }
    (tmp / "hpcrobust_family.json").write_text(json.dumps(info, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


def ensure_built(cfg: FamilyConfig, sizes: list[str], show_progress: bool = True) -> None:
    """Build whatever is missing; safe to call from several processes (a file lock serialises builds)."""
    missing = [s for s in sizes if not is_built(cfg, s)]
    if not missing:
        return
    from tqdm import tqdm

    fam = family_dir(cfg)
    with _locked(fam.parent / f".{fam.name}.lock"):
        missing = [s for s in sizes if not is_built(cfg, s)]
        if not missing:
            return
        threads = torch.get_num_threads()
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
        try:
            lines = corpus_lines(cfg.corpus_lines, cfg.seed)
            tok_dir = fam / "tokenizer"
            if (tok_dir / "tokenizer.json").is_file():
                from transformers import PreTrainedTokenizerFast

                tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(tok_dir / "tokenizer.json"),
                                                    eos_token=EOS, bos_token=EOS, pad_token=EOS, unk_token=EOS)
            else:
                tokenizer = train_tokenizer(lines, cfg.vocab_size, tok_dir)
            eos = tokenizer.convert_tokens_to_ids(EOS)
            enc = tokenizer(lines, add_special_tokens=False)["input_ids"]
            ids = np.fromiter((t for line in enc for t in (*line, eos)), dtype=np.int32)
            bar = tqdm(total=sum(size_steps(cfg, s) for s in missing), desc="building tiny family",
                       disable=not show_progress, unit="step", dynamic_ncols=True)
            for size in missing:
                _build_size(cfg, size, tokenizer, ids, bar)
            bar.close()
        finally:
            torch.set_num_threads(threads)
