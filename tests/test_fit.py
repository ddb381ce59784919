"""Long examples are dropped (never cut), counted in every round record, and the same for any rank count."""

from __future__ import annotations

import json

import h5py
import pytest

from hpcrobust.errors import UserError
from hpcrobust.tasks import Budget, Limit, TaskConfig, load_pool
from hpcrobust.tasks.base import Example, TaskData
from hpcrobust.tasks.fit import fit_task
from hpcrobust.tasks.placement import clean_ids
from tests.conftest import run_cli
from tests.h5compare import assert_same


class CharTok:
    """One token per character; adds one special token (as a BOS-adding tokenizer would)."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [ord(c) for c in text]

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        return 1


def _ex(content: str, label: int = 0) -> Example:
    return Example("I:", content, "A:", label)


def test_long_examples_are_dropped_not_cut_and_counted():
    short = [_ex(f"s{i}", i % 2) for i in range(6)]
    long = _ex("x" * 50)
    train = [short[0], long, short[1], long, short[2], short[3]]
    val = [long, short[4], short[5]]
    lim = Limit("m", CharTok(), context=len(clean_ids(CharTok(), short[0])) + 3 + 1)  # + reserve + special
    d = fit_task(TaskData("t", (" A", " B"), train, val), 3, 2, [lim], Budget(reserve=3))
    assert d.train == short[:3] and d.val == short[4:6]  # in order, whole (nothing truncated)
    assert (d.n_dropped_train, d.n_dropped_val) == (2, 1)  # only those passed over before n were kept
    tight = Limit("m", CharTok(), context=lim.context - 1)  # one token less: nothing fits
    with pytest.raises(UserError, match=r"task.n_val: only 0 validation examples fit \(3 dropped"):
        fit_task(TaskData("t", (" A", " B"), train, val), 3, 2, [tight], Budget(reserve=3))
    d = fit_task(TaskData("t", (" A", " B"), train, val), 3, 2, [Limit("m", CharTok(), 10**6)],
                 Budget(max_content_tokens=2))  # the optional content limit drops too
    assert all(len(e.content) <= 2 for e in d.train + d.val) and d.n_dropped_train == 2


def test_one_table_gives_validation_the_first_fitting_examples(tmp_path):
    rows = [{"text": "w " * (300 if i in (1, 7) else 3), "label": i % 2} for i in range(20)]
    p = tmp_path / "spam.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pool = load_pool(TaskConfig(name="spam", path=str(p), n_train=10, n_val=5))
    assert pool.shared and len(pool.val) == 20
    lim = Limit("m", CharTok(), 200)
    d = fit_task(pool, 10, 5, [lim], Budget())
    kept = [e for e in pool.val if len(e.content) < 100]
    assert d.val == kept[:5] and d.train == kept[5:15]
    last = next(i for i, e in enumerate(pool.val) if e is kept[14])  # scanning stops at the 15th kept
    assert d.n_dropped_train + d.n_dropped_val == sum(len(e.content) >= 100 for e in pool.val[:last])


def _spam(tmp_path, n_long: int) -> str:
    """Train/validation records in file order; every fourth record is far longer than the 512-token context."""
    rows = []
    for split, n in (("train", 24), ("validation", 10)):
        for i in range(n):
            long = i % 4 == 1 and i // 4 < n_long
            text = " ".join(f"word{j}" for j in range(700)) if long else f"cheap pills offer {i}" * (1 + i % 3)
            rows.append({"text": text, "label": i % 2, "split": split})
    p = tmp_path / "spam.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(p)


def _cli_args(path: str, n_train: int = 12, n_val: int = 6) -> list[str]:
    return [f"task={{name: spam, path: {path}, n_train: {n_train}, n_val: {n_val}}}", "models=[builtin:xs]",
            "attacks=[{name: rt, type: random_token, n_examples: 4, n_iterations: 3, n_attack_tokens: 5}]",
            "--quiet"]


def test_dropped_examples_are_stored_and_identical_for_one_and_two_ranks(tiny):
    path = _spam(tiny.parent, n_long=6)
    one = run_cli(["run", str(tiny), "output=one.h5", *_cli_args(path)], cwd=tiny.parent)
    assert one.returncode == 0, one.stderr
    two = run_cli(["run", str(tiny), "output=two.h5", *_cli_args(path)], ranks=2, cwd=tiny.parent)
    assert two.returncode == 0, two.stderr
    assert_same(tiny.parent / "one.h5", tiny.parent / "two.h5")  # same examples, so the same numbers
    # file order: long records at train 1, 5, 9, 13, 17 (12 short kept by index 16) and validation 1, 5
    with h5py.File(tiny.parent / "one.h5") as f:
        for run in ("xs__seed0", "xs__seed1"):
            r = f[f"runs/{run}/rounds/0000"]
            assert (int(r["n_dropped_train"][()]), int(r["n_dropped_val"][()])) == (4, 2)


def test_too_few_examples_left_is_one_line_and_exit_2(tiny):
    path = _spam(tiny.parent, n_long=6)
    proc = run_cli(["run", str(tiny), *_cli_args(path, n_train=20)], cwd=tiny.parent)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "task.n_train: only 18 training examples fit (6 dropped" in lines[0], lines
    assert not (tiny.parent / "out.h5").exists()


def test_room_for_the_longest_attack_and_the_context_a_config_states():
    from transformers import GPT2Config, GPTNeoXConfig, PretrainedConfig

    from hpcrobust.config import load_config
    from hpcrobust.sweep.examples import NO_LIMIT, context_length, reserve
    from tests.conftest import TINY

    assert reserve(load_config(TINY)) == 5  # rt has 5 attack tokens, gcg 4
    assert reserve(load_config(TINY, ["finetune.random_token_defense=12"])) == 12
    assert reserve(load_config(TINY, ["attacks.1.n_attack_tokens=30"])) == 30
    assert context_length(GPTNeoXConfig(max_position_embeddings=77)) == 77
    assert context_length(GPT2Config(n_positions=33)) == 33
    assert context_length(PretrainedConfig()) == NO_LIMIT
