"""The word list behind the generated tasks; it ships with the `english-words` package, never downloaded."""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def word_list() -> tuple[str, ...]:
    from english_words import get_english_words_set

    words = get_english_words_set(["web2"], lower=True)
    return tuple(sorted(w for w in words if w.isascii() and w.isalpha() and 3 <= len(w) <= 10))


# Frequent English words, so the built-in tokenizer learns whole-word tokens for ordinary prose
# (instructions) the way a real tokenizer does. Shipped with the code; never downloaded.
COMMON_WORDS = tuple("""
the be to of and a in that have I it for not on with he as you do at this but his by from they we say her
she or an will my one all would there their what so up out if about who get which go me when make can like
time no just him know take people into year your good some could them see other than then now look only come
its over think also back after use two how our work first well way even new want because any these give day
most us is are was were been has had did does said system user password security online answer enter below
return otherwise same different word words first second longer shorter length which if then only yes no
email spam review movie positive negative reply assistant helpful harmless more less following below above
note access granted denied check match matches equal value name code item list number letter letters
""".split())
