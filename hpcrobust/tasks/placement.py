"""Where the attack tokens go, in token space: every placement is `before + attack + after`.

Chunks are tokenized separately and concatenated, so clean training, evaluation and every attack
see exactly the same tokens around the attack, and `before` is the longest prefix that a cache
can share across all candidates.
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


def clean_ids(tokenizer, ex: Example) -> list[int]:
    """The unattacked sequence: the suffix placement with an empty attack."""
    return encode(tokenizer, ex, "suffix").with_attack(())


def encode(tokenizer, ex: Example, placement: str, infix_fraction: float = 0.9) -> Encoded:
    """Never cuts the content: examples too long for a model were dropped when the sweep started (tasks/fit.py)."""
    instr = _tok(tokenizer, ex.instructions)
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
