"""The word list behind the generated tasks; it ships with the `english-words` package, never downloaded."""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def word_list() -> tuple[str, ...]:
    from english_words import get_english_words_set

    words = get_english_words_set(["web2"], lower=True)
    return tuple(sorted(w for w in words if w.isascii() and w.isalpha() and 3 <= len(w) <= 10))
