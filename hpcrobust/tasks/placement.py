"""Where the attack tokens go, in token space: every placement is `before + attack + after`.

Chunks are tokenized separately and concatenated, so clean training, evaluation and every attack
see exactly the same tokens around the attack, and `before` is the longest prefix that a cache
can share across all candidates. The sequence starts with the tokens the tokenizer itself puts first (a BOS
for Llama or Gemma), as `tokenizer(prompt)` would.
"""

from __future__ import annotations

from dataclasses import dataclass

from hpcrobust.tasks.base import Example


@dataclass(frozen=True)
class Encoded:
    before: tuple[int, ...]
    after: tuple[int, ...]
    label: int

    def with_attack(self, attack: list[int] | tuple[int, ...]) -> list[int]:
        return [*self.before, *attack, *self.after]


def _tok(tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False)) if text else []


_PROBE = "a"


def leading_specials(tokenizer) -> list[int]:
    """The tokens the tokenizer's own defaults put before a text (Llama's and Gemma's BOS; none for GPT-NeoX,
    GPT-2 or the built-in family): what `tokenizer(text)` adds in front, found by encoding a probe both ways.
    Tokens it would add after the text (an EOS) are left out: the head reads the last real token."""
    cached = getattr(tokenizer, "_hpcrobust_leading", None)
    if cached is not None:
        return list(cached)
    bare = list(tokenizer.encode(_PROBE, add_special_tokens=False))
    full = list(tokenizer.encode(_PROBE, add_special_tokens=True))
    lead = next((full[:i] for i in range(len(full) - len(bare) + 1) if full[i: i + len(bare)] == bare), None)
    if lead is None:  # the text itself tokenized differently: keep only a BOS in front, if that is what was added
        bos = getattr(tokenizer, "bos_token_id", None)
        lead = [bos] if bos is not None and full[:1] == [bos] and bare[:1] != [bos] else []
    try:
        tokenizer._hpcrobust_leading = tuple(lead)
    except AttributeError:  # a tokenizer that takes no attributes: compute it each time
        pass
    return lead


def clean_ids(tokenizer, ex: Example) -> list[int]:
    """The unattacked sequence: the suffix placement with an empty attack."""
    return encode(tokenizer, ex, "suffix").with_attack(())


def encode(tokenizer, ex: Example, placement: str, infix_fraction: float = 0.9) -> Encoded:
    """Never cuts the content: examples too long for a model were dropped when the sweep started (tasks/fit.py)."""
    instr = leading_specials(tokenizer) + _tok(tokenizer, ex.instructions)
    content = _tok(tokenizer, ex.content)
    slot = _tok(tokenizer, ex.slot)
    answer = _tok(tokenizer, ex.answer_prompt)
    if placement == "suffix":
        before, after = instr + content + slot, answer
    elif placement == "prefix":
        before, after = instr, content + slot + answer
    elif placement == "infix":
        k = int(round(infix_fraction * len(content)))
        before, after = instr + content[:k], content[k:] + slot + answer
    elif placement == "overwrite":
        before, after = instr + content, answer
    else:
        raise ValueError(f"unknown placement {placement}")
    return Encoded(tuple(before), tuple(after), ex.label)
