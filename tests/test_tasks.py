"""Tasks: deterministic generators in the paper's format, file loaders, and attack placements."""

from __future__ import annotations

import json

import pytest

from hpcrobust.config import TaskConfig
from hpcrobust.errors import UserError
from hpcrobust.tasks import load_task
from hpcrobust.tasks.generated import ANSWER_PROMPT, password_match, word_length
from hpcrobust.tasks.placement import clean_ids, encode


class CharTok:
    """A stand-in tokenizer: one id per character, so token positions are easy to check."""

    def encode(self, text, add_special_tokens=False):
        return [ord(c) for c in text]


def test_password_match_format_balance_and_determinism():
    a, b = password_match(200, 100, seed=3), password_match(200, 100, seed=3)
    assert [e.text for e in a.train] == [e.text for e in b.train]
    assert password_match(200, 100, seed=4).train[0].text != a.train[0].text
    assert a.label_words == (" DENIED", " GRANTED")
    for split in (a.train, a.val):
        labels = [e.label for e in split]
        assert abs(sum(labels) - len(labels) / 2) <= 1
    for e in a.val:
        system, user = (line.split(": ")[1] for line in e.content.split("\n"))
        assert (system == user) == (e.label == 1)
        assert e.answer_prompt == ANSWER_PROMPT
    train_pw = {e.content.split("\n")[0] for e in a.train}
    assert not train_pw & {e.content.split("\n")[0] for e in a.val}  # unseen passwords in validation


def test_word_length_tie_is_first():
    d = word_length(500, 50, seed=0)
    assert d.label_words == (" FIRST", " SECOND")
    ties = 0
    for e in d.train:
        w1, w2 = (line.split(": ")[1] for line in e.content.split("\n"))
        assert e.label == (0 if len(w1) >= len(w2) else 1)
        ties += len(w1) == len(w2)
        assert e.slot.startswith("\nNote: ")
    assert ties > 0


def _write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def test_file_task_jsonl_and_csv(tmp_path):
    rows = [{"text": f"mail {i}", "label": i % 2} for i in range(20)]
    _write_jsonl(tmp_path / "spam.jsonl", rows)
    d = load_task(TaskConfig(name="spam", path=str(tmp_path / "spam.jsonl"), n_train=10, n_val=5))
    assert len(d.train) == 10 and len(d.val) == 5 and d.label_words == (" HAM", " SPAM")
    csvp = tmp_path / "imdb.csv"
    csvp.write_text("text,label,split\n" + "".join(f"review {i},{i % 2},{'train' if i < 8 else 'validation'}\n"
                                                   for i in range(10)))
    d = load_task(TaskConfig(name="imdb", path=str(csvp), n_train=8, n_val=2))
    assert len(d.train) == 8 and len(d.val) == 2
    with pytest.raises(UserError, match="has 8 training and 2 validation records; task.n_train is 100"):
        load_task(TaskConfig(name="imdb", path=str(csvp), n_train=100, n_val=2))  # never clipped silently


def test_a_very_large_csv_field_is_read_or_refused_in_one_line(tmp_path):
    big = "w " * 200_000  # 400 kB: beyond csv's default field limit
    p = tmp_path / "imdb.csv"
    p.write_text("text,label\n" + "".join(f'"{big if i == 0 else "short"}",{i % 2}\n' for i in range(5)))
    d = load_task(TaskConfig(name="imdb", path=str(p), n_train=3, n_val=2))
    assert max(len(e.content) for e in d.train + d.val) == len(big)
    p.write_text("text,label\n" + '"' + "x" * (17 << 20) + '",0\n')
    with pytest.raises(UserError, match="record after line 1: field larger than field limit"):
        load_task(TaskConfig(name="imdb", path=str(p), n_train=1, n_val=1))


@pytest.mark.parametrize("content,needle", [
    (None, "file not found"),
    ('{"text": "a"}\n', "missing column 'label'"),
    ('{"text": "a", "label": 2}\n{"text": "b", "label": 0}\n', "label 2 is not 0 or 1"),
    ('not json\n', "line 1 is not valid JSON"),
])
def test_file_task_errors(tmp_path, content, needle):
    p = tmp_path / "d.jsonl"
    if content is not None:
        p.write_text(content)
    with pytest.raises(UserError, match=needle):
        load_task(TaskConfig(name="harmless", path=str(p)))


def test_placements_put_the_attack_where_they_say():
    e = password_match(2, 2, seed=0).val[0]
    tok = CharTok()
    attack = [1, 2, 3]
    clean = clean_ids(tok, e)
    assert clean == tok.encode(e.text)
    suffix = encode(tok, e, "suffix").with_attack(attack)
    assert suffix == tok.encode(e.instructions + e.content) + attack + tok.encode(e.answer_prompt)
    prefix = encode(tok, e, "prefix").with_attack(attack)
    assert prefix == tok.encode(e.instructions) + attack + tok.encode(e.content + e.answer_prompt)
    inf = encode(tok, e, "infix", infix_fraction=0.5)
    k = round(0.5 * len(e.content))
    assert list(inf.before) == tok.encode(e.instructions + e.content[:k])
    w = word_length(2, 2, seed=0).val[0]
    over = encode(tok, w, "overwrite").with_attack(attack)
    assert over == tok.encode(w.instructions + w.content) + attack + tok.encode(w.answer_prompt)
    assert w.slot and len(over) == len(clean_ids(tok, w)) - len(w.slot) + len(attack)  # slot replaced
