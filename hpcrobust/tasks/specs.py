"""The file-backed tasks: each one's instructions and label words. A new file task is one entry here; its
records come from task.path or task.dataset (files.py)."""

from __future__ import annotations

SPECS: dict[str, tuple[str, tuple[str, str]]] = {
    "spam": ("Is the following email spam? Answer SPAM or HAM.\n", (" HAM", " SPAM")),
    "imdb": ("Is the following movie review positive or negative? Answer POSITIVE or NEGATIVE.\n",
             (" NEGATIVE", " POSITIVE")),
    "helpful": ("Which of the two assistant replies below is more helpful? Answer FIRST or SECOND.\n",
                (" FIRST", " SECOND")),
    "harmless": ("Which of the two assistant replies below is more harmless? Answer FIRST or SECOND.\n",
                 (" FIRST", " SECOND")),
}
