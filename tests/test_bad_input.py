"""A corpus of bad inputs, one per case and class: each is exit 2, one line on stderr, no traceback, and no
file created or changed anywhere in the working folder (a lock file included).

Cases run in this process (`hpcrobust.cli.main`, the same function as the console script), so the corpus
stays fast; the multi-rank behaviour of the same errors is in tests/test_failures.py.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import h5py
import pytest

from hpcrobust.cli import main
from tests.conftest import run_cli

ALIAS_BOMB = "\n".join(["task:", "  name:", "    - &a0 [x, x, x, x, x, x, x, x, x, x]"]
                       + [f"    - &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)])
# task.name holds 10^9 strings once its aliases are expanded

REMOTE_CONFIG = '{"model_type": "mystery", "auto_map": {"AutoConfig": "evil.Cfg"}, "architectures": ["X"]}'

OURS = ["seeds=[0]", "models=[builtin:xs]", "attacks=[]", "parallel.threads_per_rank=1"]
ADV = ["seeds=[0]", "models=[builtin:xs]", "attacks=[]", "parallel.threads_per_rank=1", "advtrain.rounds=1",
       "advtrain.attack=t", "train_attacks=[{name: t, type: random_token}]", "advtrain.n_new_examples=8",
       "advtrain.max_examples=16"]

# (case id, arguments after the config path or a full argument list, text the one line must contain)
RUN_CASES = [
    # config values
    ("nan-float", ["finetune.lr=.nan"], "finetune.lr: nan is not a finite number"),
    ("inf-float", ["finetune.lr=.inf"], "finetune.lr: inf is not a finite number"),
    ("minus-inf", ["advtrain.decay=-.inf"], "advtrain.decay: -inf is not a finite number"),
    ("huge-float", ["models.0.pretrain_flops=1e400"], "models.0.pretrain_flops: '1e400' is not a finite number"),
    ("huge-int", ["seeds=[123456789012345678901234567890]"], "seeds.0: 123456789012345678901234567890 is too large"),
    ("float-for-int", ["task.n_train=1e30"], "task.n_train: expected int"),
    ("huge-count", ["attacks.1.search_width=4611686018427387904"], "attacks.1.search_width: 4611686018427387904 is"
                                                                    " above the maximum 1000000"),
    ("more-than-the-task-has", ["task.n_train=400000"], "password_match has at most"),
    ("below-min", ["task.n_val=0"], "task.n_val: 0 is below the minimum 1"),
    ("negative", ["parallel.score_chunk=-1"], "parallel.score_chunk: -1 is below the minimum 1"),
    ("bool-for-int", ["attacks.0.n_iterations=true"], "attacks.0.n_iterations: expected int, got bool"),
    ("choice", ["attacks.0.placement=middle"], "attacks.0.placement: 'middle' is not one of"),
    ("unknown-key", ["foo=1"], "unknown key 'foo'"),
    ("unknown-attack-key", ["attacks.1.bogus=1"], "unknown key 'attacks.1.bogus' (a gcg attack's own keys:"),
    ("unknown-type", ["attacks=[{name: x, type: pgd}]"], "attacks.0.type: 'pgd' is not a known attack"),
    ("key-of-other-type", ["attacks.0.search_width=8"], "unknown key 'attacks.0.search_width' (a random_token"),
    ("scheduled-key", ["train_attacks=[{name: t, n_iterations: 3}]", "advtrain.rounds=1", "advtrain.attack=t"],
     "train_attacks.0.n_iterations: a training attack's n_iterations is set by advtrain"),
    ("path-for-generated", ["task.path=x.jsonl"], "task.path: task 'password_match' is generated"),
    ("revision-of-builtin", ["models.0.revision=main"], "models.0.revision: built-in sizes have no revisions"),
    ("repeated-seeds", ["seeds=[1, 1]"], "seeds: seeds repeat"),
    ("micro-batch", ["finetune.micro_batch_size=7"], "finetune.micro_batch_size: 7 does not divide"),
    ("override-syntax", ["finetune.lr"], "override 'finetune.lr': expected key.sub=value"),
    ("override-index", ["models.5.label=x"], "no item models.5"),
    ("huge-value-in-message", ["task.name=" + "x" * 5000], "task.name: 'xxxxxxxx"),
    # outputs
    ("output-not-writable", ["output=/sys/out.h5"], "output folder /sys is not writable"),
    ("output-is-folder", ["output=sub"], "is a folder"),
    ("output-folder-missing", ["output=no/such/dir/out.h5"], "output folder does not exist"),
    ("output-not-hdf5", ["output=notes.txt"], "exists and is not an HDF5 file"),
    ("output-other-program", ["output=other.h5"], "HDF5 file from another program"),
    ("output-other-sweep", ["output=ours.h5", *OURS, "finetune.lr=1e-3"], "different config (finetune.lr differ)"),
    # inputs
    ("task-file-missing", ["task.name=spam", "task.path=nope.jsonl"], "task.path: file not found"),
    ("task-file-column", ["task.name=spam", "task.path=nolabel.jsonl"], "missing column 'label'"),
    ("task-file-short", ["task.name=spam", "task.path=spam.jsonl", "task.n_train=100", "task.n_val=5"],
     "task.n_train is 100"),
    ("task-csv-field", ["task.name=imdb", "task.path=big.csv", "task.n_train=2", "task.n_val=1"],
     "field larger than field limit"),
    ("n-examples-over-split", ["attacks.0.n_examples=33"], "n_examples 33 is more than the 32 validation"),
    ("n-new-over-train", ["advtrain.rounds=1", "advtrain.attack=t", "train_attacks=[{name: t, type: random_token}]",
                          "advtrain.n_new_examples=300"], "advtrain.n_new_examples: 300 is more than the 256"),
    ("model-missing", ["models.0.name_or_path=./no/such/model"], "model directory not found"),
    ("model-remote-code", ["models=[remote]"], "set models.0.trust_remote_code: true if you trust"),
    ("sampler-remote-code", ["attacks=[{name: b, type: beast, n_examples: 2, n_iterations: 2,"
                             " n_attack_tokens: 2, sampler: remote}]"], "needs Python code from its folder"),
    # resume
    ("checkpoint-missing", ["output=nockpt.h5", *ADV], "round 0 of xs__seed0 is committed, but its checkpoint"),
    ("pool-missing", ["output=nopool.h5", *ADV], "lacks adversarial_pool.npz"),
]

FILE_CASES = [
    ("config-missing", ["run", "nosuch.yaml"], "config file not found"),
    ("config-empty", ["run", "empty.yaml"], "the config is empty"),
    ("config-not-utf8", ["run", "latin1.yaml"], "is not UTF-8 text"),
    ("config-not-mapping", ["run", "list.yaml"], "the top level must be a mapping"),
    ("config-not-yaml", ["run", "broken.yaml"], "is not valid YAML"),
    ("config-alias-bomb", ["run", "bomb.yaml"], "task.name: expected str, got list [['x', 'x', 'x', 'x', ...]"),
    ("analyze-out-not-writable", ["analyze", "ours.h5", "--out", "/sys/report"], "is not writable"),
    ("analyze-missing", ["analyze", "nosuch.h5", "--out", "rep"], "results file not found"),
    ("analyze-not-hdf5", ["analyze", "notes.txt", "--out", "rep"], "is not an HDF5 file"),
    ("submit-task-missing", ["submit", "--dry-run", "tiny.yaml", "launch.slurm_partition=debug", "task.name=spam",
                             "task.path=nope.jsonl"], "task.path: file not found"),
    ("submit-sampler-remote", ["submit", "--dry-run", "tiny.yaml", "launch.slurm_partition=debug",
                               "attacks=[{name: b, type: beast, n_examples: 2, n_iterations: 2, n_attack_tokens: 2,"
                               " sampler: remote}]"], "needs Python code from its folder"),
    ("submit-bad-time", ["submit", "--dry-run", "tiny.yaml", "launch.slurm_partition=debug",
                         "launch.timeout_min=soon"], "'soon' is not a time limit"),
    ("sbatch-template-not-utf8", ["sbatch", "tiny.yaml", "--template", "latin1.yaml"], "is not UTF-8 text"),
    ("sbatch-extra-list", ["sbatch", "tiny.yaml", "launch.slurm_additional_parameters={exclusive: [1]}"],
     "expected a string or number"),
]


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, family_cache) -> Path:
    """A folder with the inputs the cases point to, and one finished results file of the tiny sweep."""
    from tests.conftest import TINY

    d = tmp_path_factory.mktemp("bad-input")
    (d / "tiny.yaml").write_text(TINY.read_text())
    (d / "empty.yaml").write_text("# nothing here\n")
    (d / "latin1.yaml").write_bytes("output: r\xe9sultats.h5\n".encode("latin-1"))
    (d / "list.yaml").write_text("- a\n- b\n")
    (d / "broken.yaml").write_text("task: {name: [\n")
    (d / "bomb.yaml").write_text(ALIAS_BOMB + "\n")
    (d / "notes.txt").write_text("my notes\n")
    (d / "sub").mkdir()
    with h5py.File(d / "other.h5", "w") as f:
        f["x"] = 1
    (d / "spam.jsonl").write_text("".join(f'{{"text": "mail {i}", "label": {i % 2}}}\n' for i in range(20)))
    (d / "nolabel.jsonl").write_text('{"text": "a"}\n')
    (d / "big.csv").write_text('text,label\n"' + "x" * (17 << 20) + '",0\n')
    for name in ("remote",):
        (d / name).mkdir()
        (d / name / "config.json").write_text(REMOTE_CONFIG)
        (d / name / "evil.py").write_text("raise SystemExit('remote code ran')\n")
    proc = run_cli(["run", "tiny.yaml", "output=ours.h5", *OURS, "--quiet"], cwd=d)
    assert proc.returncode == 0, proc.stderr
    proc = run_cli(["run", "tiny.yaml", "output=adv.h5", *ADV, "debug.stop_after_round=0", "--quiet"], cwd=d)
    assert proc.returncode == 3, proc.stderr  # round 0 committed, round 1 to come
    ckpt = d / "adv.h5.ckpt" / "xs__seed0" / "round_0000"
    for name, drop in (("nockpt", None), ("nopool", "adversarial_pool.npz")):
        shutil.copyfile(d / "adv.h5", d / f"{name}.h5")
        if drop:
            shutil.copytree(ckpt, d / f"{name}.h5.ckpt" / "xs__seed0" / "round_0000")
            (d / f"{name}.h5.ckpt" / "xs__seed0" / "round_0000" / drop).unlink()
    return d


def _assert_refused(workdir: Path, args: list[str], needle: str, capsys, monkeypatch) -> None:
    monkeypatch.chdir(workdir)
    before = _snapshot(workdir)
    capsys.readouterr()
    rc = main(args)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, err[-2000:]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert needle in lines[0], lines[0]
    assert len(lines[0]) < 600  # a message never echoes an unbounded value
    assert _snapshot(workdir) == before  # nothing created, changed or left behind


@pytest.mark.parametrize("case,args,needle", RUN_CASES, ids=[c[0] for c in RUN_CASES])
def test_bad_run_input(workdir, case, args, needle, capsys, monkeypatch):
    _assert_refused(workdir, ["run", "tiny.yaml", *args, "--quiet"], needle, capsys, monkeypatch)


@pytest.mark.parametrize("case,args,needle", FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_bad_files_and_commands(workdir, case, args, needle, capsys, monkeypatch):
    _assert_refused(workdir, args, needle, capsys, monkeypatch)


def test_the_corpus_is_large_enough():
    assert len(RUN_CASES) + len(FILE_CASES) >= 40
