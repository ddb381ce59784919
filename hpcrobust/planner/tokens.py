"""Token counts of a task's examples, chunk by chunk, so every placement's lengths follow without a model.

FLOPs are 2·N·T per token, so the plan is only as good as T. With the model's tokenizer at hand (a built
family, a local folder, a hub id in the HF cache) the counts are exact: each chunk (instructions, content, never
cut, slot, answer prompt) is tokenized on its own, as `tasks/placement.py` does.
Without one (a paper config on a laptop) they are estimated as characters / 4, and the plan says so.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass

import numpy as np

from hpcrobust.models import family
from hpcrobust.models.config import FamilyConfig, ModelConfig
from hpcrobust.models.loading import load_tokenizer, resolve
from hpcrobust.tasks.base import Example, TaskData
from hpcrobust.tasks.placement import leading_specials

CHARS_PER_TOKEN = 4


class CharEstimate:
    """Stands in for a tokenizer: one token per 4 characters (ids only serve to find shared prefixes)."""

    name_or_path = f"estimate: characters/{CHARS_PER_TOKEN}"

    def __call__(self, texts: list[str], add_special_tokens: bool = False) -> dict:
        return {"input_ids": [self.encode(t) for t in texts]}

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        k = CHARS_PER_TOKEN
        return [zlib.crc32(text[i:i + k].encode()) for i in range(0, len(text), k)]


@dataclass
class SplitTokens:
    """Per example: tokens of each chunk; `lcp` is the prefix every clean sequence of the split shares."""

    instr: np.ndarray
    content: np.ndarray
    slot: np.ndarray
    answer: np.ndarray
    lcp: int

    def __len__(self) -> int:
        return len(self.instr)

    def clean(self) -> np.ndarray:
        """Length of `clean_ids` (the unattacked sequence)."""
        return self.instr + self.content + self.slot + self.answer

    def around(self, placement: str, infix_fraction: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
        """(before, after) lengths of `encode(..., placement)`: the attack goes between them."""
        if placement == "suffix":
            return self.instr + self.content + self.slot, self.answer
        if placement == "prefix":
            return self.instr.copy(), self.content + self.slot + self.answer
        if placement == "infix":
            k = np.array([int(round(infix_fraction * int(c))) for c in self.content], dtype=np.int64)
            return self.instr + k, self.content - k + self.slot + self.answer
        if placement == "overwrite":
            return self.instr + self.content, self.answer.copy()
        raise ValueError(f"unknown placement {placement}")


@dataclass
class TaskTokens:
    train: SplitTokens
    val: SplitTokens
    source: str  # which tokenizer, or the estimate
    exact: bool
    tokenizer: object | None = None  # the model's tokenizer (None: estimated counts)


def _lengths(tokenizer, texts: list[str]) -> tuple[np.ndarray, list[list[int]]]:
    uniq = sorted(set(texts))
    enc = tokenizer([t for t in uniq if t], add_special_tokens=False)["input_ids"] if any(uniq) else []
    ids = dict(zip([t for t in uniq if t], enc, strict=True))
    out = [list(ids.get(t, [])) for t in texts]
    return np.array([len(x) for x in out], dtype=np.int64), out


def _common_prefix(rows: list[list[int]]) -> int:
    if not rows:
        return 0
    first = rows[0]
    n = min(len(r) for r in rows)
    k = n
    for r in rows[1:]:
        j = 0
        while j < k and r[j] == first[j]:
            j += 1
        k = j
        if k == 0:
            break
    return k


def estimated_split(examples: list[Example]) -> SplitTokens:
    """characters/4 per chunk; the shared prefix is the shared text of the chunks, in whole estimated tokens."""
    k = CHARS_PER_TOKEN

    def count(texts: list[str]) -> np.ndarray:
        return -(-np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts)) // k)

    chunks = [[e.instructions for e in examples], [e.content for e in examples], [e.slot for e in examples],
              [e.answer_prompt for e in examples]]
    lengths = [count(chunks[0]), count(chunks[1]), count(chunks[2]), count(chunks[3])]
    lcp = 0
    for texts, n in zip(chunks, lengths, strict=True):
        common = os.path.commonprefix(texts) if texts else ""
        if len(set(texts)) == 1:
            lcp += int(n[0])
            continue
        lcp += len(common) // k
        break
    return SplitTokens(*lengths, lcp)


def split_tokens(tokenizer, examples: list[Example]) -> SplitTokens:
    if isinstance(tokenizer, CharEstimate):
        return estimated_split(examples)
    lead = leading_specials(tokenizer)  # a BOS, counted with the instructions as encode() does
    li, ii = _lengths(tokenizer, [e.instructions for e in examples])
    lc, ic = _lengths(tokenizer, [e.content for e in examples])
    ls, is_ = _lengths(tokenizer, [e.slot for e in examples])
    la, ia = _lengths(tokenizer, [e.answer_prompt for e in examples])
    rows = [lead + a + b + c + d for a, b, c, d in zip(ii, ic, is_, ia, strict=True)]
    return SplitTokens(li + len(lead), lc, ls, la, _common_prefix(rows))


def tokenizer_for(m: ModelConfig, fam: FamilyConfig) -> tuple[object | None, str]:
    """The model's tokenizer if it is on this machine (None otherwise), and a phrase saying which it is."""
    r = resolve(m, fam)
    if r.builtin:
        path = family.size_dir(fam, r.builtin)
        tok_json = family.family_dir(fam) / "tokenizer" / "tokenizer.json"
        if (path / "tokenizer.json").is_file():
            return load_tokenizer(str(path), m), "the built-in family's tokenizer"
        if tok_json.is_file():
            from transformers import PreTrainedTokenizerFast

            eos = family.EOS
            return (PreTrainedTokenizerFast(tokenizer_file=str(tok_json), eos_token=eos, bos_token=eos, pad_token=eos,
                                            unk_token=eos), "the built-in family's tokenizer")
        return None, "the built-in family is not built yet"
    try:
        return load_tokenizer(r.path, m), f"the tokenizer of {m.name_or_path}"
    except (OSError, ValueError, TypeError):
        return None, f"no tokenizer of {m.name_or_path} on this machine"


_CACHE: dict[tuple, tuple[TaskData, object, TaskTokens]] = {}  # the task and tokenizer are kept: ids stay unique


def task_tokens(task: TaskData, m: ModelConfig, fam: FamilyConfig) -> TaskTokens:
    """Token counts of the task's train and validation examples for model `m` (cached per tokenizer)."""
    tok, why = tokenizer_for(m, fam)
    vocab = tok.get_vocab() if tok is not None else {}
    key = (id(task), len(vocab), hash(frozenset(vocab.items())) if vocab else 0)
    if key in _CACHE:
        return _CACHE[key][2]
    real = tok
    if tok is None:
        tok, source, exact = CharEstimate(), f"estimated as characters/{CHARS_PER_TOKEN} ({why})", False
    else:
        source, exact = f"counted with {why}", True
    tt = TaskTokens(split_tokens(tok, task.train), split_tokens(tok, task.val),
                    source, exact, real)
    _CACHE[key] = (task, tok, tt)
    return tt
