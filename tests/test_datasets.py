"""File tasks through the `datasets` library: an id in the local HF cache at a revision, save_to_disk folders,
Parquet and Arrow files, the column mapping, and one-line errors. Everything is built here; nothing is
downloaded."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import datasets
import h5py
import pyarrow as pa
import pyarrow.feather as feather
import pytest

from hpcrobust.config import TaskConfig, config_from_dict, science_hash, to_dict
from hpcrobust.errors import UserError
from hpcrobust.store.identity import TASK_SOURCE_DEFAULTS, science_hash_of
from hpcrobust.tasks import load_task
from tests.conftest import run_cli

COLS = {"text_column": "sentence", "label_column": "clf_label"}


def _table(prefix: str, n: int, split: str | None = None) -> datasets.Dataset:
    data = {"sentence": [f"{prefix} {i}" for i in range(n)], "clf_label": [i % 2 for i in range(n)]}
    if split:
        data["part"] = [split] * n
    return datasets.Dataset.from_dict(data)


def _dataset_dict(prefix: str = "mail") -> datasets.DatasetDict:
    return datasets.DatasetDict({"train": _table(prefix, 12), "validation": _table(f"{prefix}-val", 4)})


def _parquet_bytes(ds: datasets.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.to_parquet(buf)
    return buf.getvalue()


def hub_cache_put(cache: Path, repo_id: str, commit: str, files: dict[str, bytes], refs: tuple[str, ...]) -> None:
    """Lay files out as `hf download --repo-type dataset` leaves them in the hub cache (blobs named by their
    digest, snapshot symlinks, refs/<branch or tag> holding the commit), without any network."""
    repo = cache / f"datasets--{repo_id.replace('/', '--')}"
    for rel, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    for ref in refs:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Path:
    """A hub cache holding acme/tiny-spam at two revisions: main (12+4 'mail' records) and tag v2 ('v2' records)."""
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    v1, v2 = "a" * 40, "b" * 40
    for commit, prefix, refs in ((v1, "mail", ("main",)), (v2, "v2", ("v2",))):
        dd = _dataset_dict(prefix)
        hub_cache_put(cache, "acme/tiny-spam", commit, {
            "README.md": b"---\nlicense: mit\n---\n# tiny spam\n",
            "data/train-00000-of-00001.parquet": _parquet_bytes(dd["train"]),
            "data/validation-00000-of-00001.parquet": _parquet_bytes(dd["validation"])}, refs)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


SIZES = {"n_train": 12, "n_val": 4}  # every split of the test datasets (a task never takes fewer than it asks for)


def test_dataset_id_from_the_hub_cache_at_a_revision(hub):
    d = load_task(TaskConfig(name="spam", dataset="acme/tiny-spam", **COLS, n_train=12, n_val=4))
    assert [e.content for e in d.train] == [f"mail {i}" for i in range(12)]
    assert [e.content for e in d.val] == [f"mail-val {i}" for i in range(4)]
    assert [e.label for e in d.train] == [i % 2 for i in range(12)] and d.label_words == (" HAM", " SPAM")
    tagged = load_task(TaskConfig(name="spam", dataset="acme/tiny-spam", revision="v2", **COLS, **SIZES))
    assert tagged.train[0].content == "v2 0"
    by_commit = load_task(TaskConfig(name="spam", dataset="acme/tiny-spam", revision="b" * 40, **COLS,
                                       **SIZES))
    assert [e.content for e in by_commit.val] == [e.content for e in tagged.val]


def test_save_to_disk_folder_parquet_and_arrow(tmp_path):
    dd = _dataset_dict()
    dd.save_to_disk(tmp_path / "dict")
    d = load_task(TaskConfig(name="imdb", path=str(tmp_path / "dict"), **COLS, **SIZES))
    assert len(d.train) == 12 and len(d.val) == 4 and d.val[0].content == "mail-val 0"
    # one table with a split column, saved both ways (save_to_disk folder of a Dataset, and Parquet)
    one = datasets.concatenate_datasets([_table("a", 10, "train"), _table("b", 3, "validation")])
    one.save_to_disk(tmp_path / "one")
    one.to_parquet(tmp_path / "one.parquet")
    for path in (tmp_path / "one", tmp_path / "one.parquet", next((tmp_path / "one").glob("*.arrow"))):
        d = load_task(TaskConfig(name="spam", path=str(path), split_column="part", **COLS, n_train=10, n_val=3))
        assert [e.content for e in d.val] == ["b 0", "b 1", "b 2"] and len(d.train) == 10, path
    feather.write_feather(pa.table({"text": ["x", "y", "z", "w"], "label": [0, 1, 0, 1]}), tmp_path / "f.arrow")
    d = load_task(TaskConfig(name="spam", path=str(tmp_path / "f.arrow"), n_train=3, n_val=1))  # Arrow IPC, shuffled
    assert len(d.train) == 3 and len(d.val) == 1


@pytest.mark.parametrize("cfg,needle", [
    ({"dataset": "acme/nope"}, "task.dataset 'acme/nope' (revision main) is not in the local Hugging Face cache"),
    ({"dataset": "acme/tiny-spam", "revision": "v9"}, "(revision v9) is not in the local Hugging Face cache"),
    ({"dataset": "acme/tiny-spam"}, "missing column 'text' (columns: sentence, clf_label); set task.text_column"),
    ({"dataset": "acme/tiny-spam", "text_column": "sentence", "label_column": "y"},
     "missing column 'y' (columns: sentence, clf_label); set task.label_column"),
    ({"dataset": "acme/tiny-spam", **COLS, "val_split": "dev"}, "no split 'dev' (splits: train, validation)"),
    ({"dataset": "a/b/c"}, "is not a dataset id"),
    ({"path": "PARQUET_JUNK"}, "not a readable Parquet file"),
    ({"path": "MISSING.parquet"}, "file not found"),
])
def test_bad_sources_are_one_line_errors(hub, tmp_path, cfg, needle):
    cfg = {k: str(tmp_path / v) if k == "path" else v for k, v in cfg.items()}
    if cfg.get("path", "").endswith("PARQUET_JUNK"):
        cfg["path"] += ".parquet"
        Path(cfg["path"]).write_text("not parquet")
    with pytest.raises(UserError) as e:
        load_task(TaskConfig(name="spam", **cfg))
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)


@pytest.mark.parametrize("override,needle", [
    (["task.dataset=acme/x", "task.path=y.jsonl"], "task.dataset: give task.path or task.dataset, not both"),
    (["task.name=password_match", "task.dataset=acme/x"], "task.dataset: task 'password_match' is generated"),
    (["task.name=password_match", "task.text_column=x"], "task.text_column: task 'password_match' is generated"),
    (["task.path=y.jsonl", "task.revision=v1"], "task.revision: only with task.dataset"),
])
def test_source_keys_are_checked_with_the_config(override, needle):
    with pytest.raises(UserError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        config_from_dict({"task": {"name": "spam"}}, override)


def test_new_keys_at_their_defaults_keep_a_files_identity():
    """A results file written before these keys existed stored a config without them: same hash, so it resumes."""
    cfg = config_from_dict({})
    before = to_dict(cfg)
    before["task"] = {k: v for k, v in before["task"].items() if k not in TASK_SOURCE_DEFAULTS}
    del before["experiment"], before["tracking"]
    assert science_hash_of(before) == science_hash(cfg)
    assert {k: getattr(TaskConfig(), k) for k in TASK_SOURCE_DEFAULTS} == TASK_SOURCE_DEFAULTS
    spam = {"task": {"name": "spam", "path": "a.jsonl"}}
    assert science_hash(config_from_dict(spam, ["task.text_column=body"])) != science_hash(config_from_dict(spam))
    assert science_hash(config_from_dict(spam, ["experiment=x", "tracking.backend=mlflow"])) == science_hash(
        config_from_dict(spam))


def test_a_sweep_reads_a_dataset_from_the_hub_cache_and_refuses_a_missing_one(tiny, hub):
    env = {"HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1"}
    base = [f"task.{k}={v}" for k, v in COLS.items()] + [
        "task.name=spam", "seeds=[0]", "models=[builtin:xs]", "task.n_train=12", "task.n_val=4",
        "attacks=[{name: rt, type: random_token, n_examples: 2, n_iterations: 3, n_attack_tokens: 3}]",
        "parallel.threads_per_rank=1", "--quiet"]
    bad = run_cli(["run", str(tiny), *base, "task.dataset=acme/absent", "output=bad.h5"], cwd=tiny.parent, env=env)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr
    assert bad.stderr.startswith("hpcrobust: error: ") and "acme/absent" in bad.stderr
    assert not list(tiny.parent.glob("bad.h5*"))
    ok = run_cli(["run", str(tiny), *base, "task.dataset=acme/tiny-spam", "task.revision=v2", "output=ok.h5"],
                 cwd=tiny.parent, env=env)
    assert ok.returncode == 0, ok.stderr
    with h5py.File(tiny.parent / "ok.h5") as f:
        assert "revision: v2" in f.attrs["config"] and "dataset: acme/tiny-spam" in f.attrs["config"]
        assert f.attrs["experiment"] == "tiny"
