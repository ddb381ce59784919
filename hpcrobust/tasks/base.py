"""What an example is: instructions + content + overwritable slot + answer prompt, and a label."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Example:
    """One labelled example, kept in chunks so that every placement knows where an attack may go.

    The text the model reads is ``instructions + content + slot + answer_prompt``; the attack goes
    after the slot (suffix), before the content (prefix), inside the content at a token fraction
    (infix), or in place of the slot (overwrite).
    """

    instructions: str
    content: str
    answer_prompt: str
    label: int
    slot: str = ""

    @property
    def text(self) -> str:
        return self.instructions + self.content + self.slot + self.answer_prompt


@dataclass
class TaskData:
    """A task's examples. As read from the source (a *pool*) the splits may hold more than the sweep needs;
    `tasks.fit.fit_task` then keeps the first `n_train` / `n_val` that fit every model's context."""

    name: str
    label_words: tuple[str, str]
    train: list[Example] = field(default_factory=list)
    val: list[Example] = field(default_factory=list)
    shared: bool = False  # a pool of one table (in `val`): validation takes the first that fit, training the next
    n_dropped_train: int = 0  # examples passed over as too long before n_train were kept
    n_dropped_val: int = 0
