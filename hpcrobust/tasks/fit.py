"""Which examples a sweep uses: the first `n_train` / `n_val` of the source that fit every model's context.

The reference never truncates an example: it drops, when the dataset is built, every example that would not
fit the context of all the models it supports (with room left for the attack). Here the same decision is
made when a sweep starts, with the tokenizer and context length of every victim model of the sweep, so
every run (each size, seed and rank count) sees exactly the same examples in the same order: the
cross-size transfer matrix and the shared RandomToken candidates index examples by position.

An example fits when its whole unattacked sequence (instructions + content + slot + answer prompt, as
`tasks/placement.py` tokenizes it), plus the longest attack or defense noise of the config (`reserve`),
plus the special tokens the tokenizer would add, is at most the model's context length, and (with
`task.max_content_tokens` > 0) its content alone is at most that many tokens. Examples are scanned in the
source's order; those passed over before the wanted number were kept are counted as dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from hpcrobust.errors import UserError
from hpcrobust.tasks.base import Example, TaskData
from hpcrobust.tasks.placement import clean_ids, leading_specials


@dataclass(frozen=True)
class Limit:
    """One tokenizer and the tokens an example may take with it (the smallest context of the models using it)."""

    label: str  # the model(s), for messages
    tokenizer: object
    context: int


@dataclass(frozen=True)
class Budget:
    reserve: int = 0  # tokens kept free for the longest attack (or random-token defense) of the config
    max_content_tokens: int = 0  # 0: only the context decides

    def why(self, lim: Limit) -> str:
        text = f"the {lim.context}-token context of {lim.label}, less {self.reserve} attack tokens"
        return text + (f", or content over task.max_content_tokens={self.max_content_tokens}"
                       if self.max_content_tokens else "")


def _special(tokenizer) -> int:
    """Special tokens the tokenizer would add that `clean_ids` does not already hold (its leading BOS it does)."""
    fn = getattr(tokenizer, "num_special_tokens_to_add", None)
    return max(0, int(fn(pair=False)) - len(leading_specials(tokenizer))) if fn is not None else 0


def fits(ex: Example, limits: list[Limit], budget: Budget) -> bool:
    for lim in limits:
        tok = lim.tokenizer
        if len(clean_ids(tok, ex)) + budget.reserve + _special(tok) > lim.context:
            return False
        if budget.max_content_tokens and len(tok.encode(ex.content, add_special_tokens=False)) > \
                budget.max_content_tokens:
            return False
    return True


def _take(examples: list[Example], start: int, n: int, limits: list[Limit], budget: Budget
          ) -> tuple[list[Example], int, int]:
    """The first `n` fitting examples from `start`: (kept, dropped on the way, index after the last kept)."""
    kept, dropped, i = [], 0, start
    while len(kept) < n and i < len(examples):
        if fits(examples[i], limits, budget):
            kept.append(examples[i])
        else:
            dropped += 1
        i += 1
    return kept, dropped, i


def _too_few(split: str, key: str, want: int, kept: int, dropped: int, limits: list[Limit], budget: Budget) -> None:
    if kept < want:
        why = "; ".join(budget.why(lim) for lim in limits)
        raise UserError(f"task.{key}: only {kept} {split} examples fit ({dropped} dropped as too long for {why});"
                        f" task.{key} is {want} (lower it, shorten the attacks, or add records)")


def fit_task(pool: TaskData, n_train: int, n_val: int, limits: list[Limit], budget: Budget) -> TaskData:
    """The sweep's examples: dropped, never cut; one-line user error when fewer than asked for remain."""
    if pool.shared:  # one table: validation first, training from the examples after it
        val, dv, nxt = _take(pool.val, 0, n_val, limits, budget)
        _too_few("validation", "n_val", n_val, len(val), dv, limits, budget)
        train, dt, _ = _take(pool.val, nxt, n_train, limits, budget)
    else:
        val, dv, _ = _take(pool.val, 0, n_val, limits, budget)
        _too_few("validation", "n_val", n_val, len(val), dv, limits, budget)
        train, dt, _ = _take(pool.train, 0, n_train, limits, budget)
    _too_few("training", "n_train", n_train, len(train), dt, limits, budget)
    return replace(pool, train=train, val=val, shared=False, n_dropped_train=dt, n_dropped_val=dv)
