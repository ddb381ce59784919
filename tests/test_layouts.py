"""Public datasets in their published layouts: HH-RLHF (converted), aclImdb/, Enron ham/spam, SetFit enron_spam."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from hpcrobust.errors import UserError
from hpcrobust.tasks import TaskConfig, load_task
from hpcrobust.tasks.hh_rlhf import pair_content
from hpcrobust.tasks.specs import SPECS
from tests.conftest import run_cli


def _hh_folder(tmp_path, n_train: int = 10, n_test: int = 4):
    src = tmp_path / "helpful-base"
    src.mkdir()
    pairs = {}
    for stem, n in (("train", n_train), ("test", n_test)):
        rows = [{"chosen": f"\n\nHuman: q{stem}{i}\n\nAssistant: good{stem}{i}",
                 "rejected": f"\n\nHuman: q{stem}{i}\n\nAssistant: bad{stem}{i}"} for i in range(n)]
        pairs[stem] = rows
        text = "".join(json.dumps(r) + "\n" for r in rows)
        if stem == "train":
            (src / "train.jsonl.gz").write_bytes(gzip.compress(text.encode()))
        else:
            (src / "test.jsonl").write_text(text)
    return src, pairs


def test_hh_rlhf_converted_and_loaded_as_the_papers_two_conversation_task(tmp_path):
    src, pairs = _hh_folder(tmp_path)
    out = tmp_path / "helpful.jsonl"
    proc = run_cli(["convert", "hh-rlhf", str(src), str(out)])
    assert proc.returncode == 0, proc.stderr
    assert "10 train, 4 validation" in proc.stdout
    d = load_task(TaskConfig(name="helpful", path=str(out), n_train=10, n_val=4))
    assert d.label_words == (" FIRST", " SECOND")
    for split, examples in (("train", d.train), ("test", d.val)):
        order = np.random.default_rng(0).permutation(len(pairs[split])).tolist()  # datasets' shuffle(seed=0)
        for k, (e, i) in enumerate(zip(examples, order, strict=True)):
            chosen, rejected = pairs[split][i]["chosen"], pairs[split][i]["rejected"]
            assert e.label == k % 2  # even position: chosen first (FIRST), odd: rejected first (SECOND)
            want = pair_content(chosen, rejected) if k % 2 == 0 else pair_content(rejected, chosen)
            assert e.content == want
            assert e.instructions == SPECS["helpful"][0] and e.answer_prompt == "\n\nAnswer:"
    assert e.content.startswith("Conversation 1\n---\n\n\nHuman: q") and e.content.endswith("\n---\n")


@pytest.mark.parametrize("make,needle", [
    (lambda d: None, "no such file or folder"),
    (lambda d: d.mkdir(), "no train.jsonl or train.jsonl.gz"),
    (lambda d: (d.mkdir(), (d / "train.jsonl").write_text('{"chosen": "a"}\n')), "line 1 lacks a 'chosen' and a"),
    (lambda d: (d.mkdir(), (d / "train.jsonl").write_text("\n")), "no records"),
    (lambda d: (d.mkdir(), (d / "train.jsonl.gz").write_bytes(b"not gzip")), "cannot be read as (gzipped)"),
])
def test_hh_rlhf_bad_input_is_one_line(tmp_path, make, needle):
    src = tmp_path / "hh"
    make(src)
    proc = run_cli(["convert", "hh-rlhf", str(src), str(tmp_path / "out.jsonl")])
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and needle in lines[0], proc.stderr
    assert not (tmp_path / "out.jsonl").exists()


def _acl_imdb(root, n: int = 6, skip: str = ""):
    for split in ("train", "test"):
        for name in ("pos", "neg"):
            if f"{split}/{name}" == skip:
                continue
            (root / "aclImdb" / split / name).mkdir(parents=True)
            for i in range(n):
                word = "great" if name == "pos" else "awful"
                (root / "aclImdb" / split / name / f"{i}_{7 if name == 'pos' else 2}.txt").write_text(
                    f"{split} {word} film {i}<br />")


def test_imdb_from_the_aclimdb_folder(tmp_path):
    _acl_imdb(tmp_path)
    for path in (tmp_path, tmp_path / "aclImdb"):
        d = load_task(TaskConfig(name="imdb", path=str(path), n_train=12, n_val=6))
        assert len(d.train) == 12 and len(d.val) == 6
        assert all(e.content.startswith("train ") for e in d.train)  # validation is IMDB's test split
        assert all(e.content.startswith("test ") for e in d.val)
        assert all(("great" in e.content) == (e.label == 1) for e in d.train + d.val)
        assert {e.label for e in d.val[:4]} == {0, 1}  # shuffled, not sorted by label
        assert d.label_words == (" NEGATIVE", " POSITIVE")
    (tmp_path / "b").mkdir()
    _acl_imdb(tmp_path / "b", skip="test/neg")
    with pytest.raises(UserError, match="an aclImdb folder needs test/neg/"):
        load_task(TaskConfig(name="imdb", path=str(tmp_path / "b"), n_train=2, n_val=2))


def test_spam_from_enron_ham_spam_folders_and_setfit_files(tmp_path):
    for k in (1, 2):
        for name in ("ham", "spam"):
            (tmp_path / f"enron{k}" / name).mkdir(parents=True)
            for i in range(5):
                body = "Subject: meeting\nsee you at 3" if name == "ham" else "Subject: cheap pills\nbuy now"
                (tmp_path / f"enron{k}" / name / f"{i:04d}.{k}.txt").write_text(body)
    (tmp_path / "enron1" / "spam" / "9999.txt").write_bytes("Subject: caf\xe9 deal\nbuy now".encode("latin-1"))
    d = load_task(TaskConfig(name="spam", path=str(tmp_path), n_train=15, n_val=6))
    assert len(d.train) == 15 and len(d.val) == 6 and d.label_words == (" HAM", " SPAM")
    assert all(("buy now" in e.content) == (e.label == 1) for e in d.train + d.val)
    one = load_task(TaskConfig(name="spam", path=str(tmp_path / "enron1"), n_train=8, n_val=3))
    assert any("caf\xe9" in e.content for e in one.train + one.val)  # Latin-1 emails are read
    (tmp_path / "enron3" / "ham").mkdir(parents=True)
    with pytest.raises(UserError, match=r"needs ham/ and spam/ side by side"):
        load_task(TaskConfig(name="spam", path=str(tmp_path), n_train=2, n_val=2))
    setfit = tmp_path / "setfit"  # SetFit/enron_spam: train.jsonl and test.jsonl with text and label
    setfit.mkdir()
    for split, n in (("train", 8), ("test", 3)):
        rows = [{"message_id": i, "text": f"{split} mail {i}", "label": i % 2, "label_text": ["ham", "spam"][i % 2],
                 "subject": "s", "message": "m"} for i in range(n)]
        (setfit / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    d = load_task(TaskConfig(name="spam", path=str(setfit), n_train=8, n_val=3))
    assert [e.content for e in d.val] == [f"test mail {i}" for i in range(3)]  # the test split validates


def test_a_sweep_reads_the_aclimdb_folder_and_a_changed_review_is_another_sweep(tiny):
    _acl_imdb(tiny.parent / "data", n=8)
    args = ["task={name: imdb, path: data/aclImdb, n_train: 12, n_val: 6}", "models=[builtin:xs]", "seeds=[0]",
            "attacks=[{name: rt, type: random_token, n_examples: 4, n_iterations: 2, n_attack_tokens: 3}]", "--quiet"]
    proc = run_cli(["run", str(tiny), *args], cwd=tiny.parent)
    assert proc.returncode == 0, proc.stderr
    (tiny.parent / "data" / "aclImdb" / "test" / "pos" / "0_7.txt").write_text("edited")
    again = run_cli(["run", str(tiny), *args], cwd=tiny.parent)  # the folder's contents are part of the identity
    assert again.returncode == 2 and "task.path differ" in again.stderr, again.stderr
