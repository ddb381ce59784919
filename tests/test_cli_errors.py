"""Bad input: one clear line on stderr, exit 2, and no results file created or changed."""

from __future__ import annotations

import hashlib

import pytest

from tests.conftest import run_cli


def _one_line(proc) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


@pytest.mark.parametrize("override,needle", [
    (["finetune.lrr=1"], "unknown key 'finetune.lrr'"),
    (["finetune.epochs=abc"], "finetune.epochs: expected float"),
    (["task.name=spam", "task.path=nowhere.jsonl"], "file not found"),
    (["models.0.name_or_path=./no/such/model"], "model directory not found"),
    (["output=no/such/folder/out.h5"], "output folder does not exist"),
    (["attacks.1.topk=100000"], "larger than the vocabulary"),
    (["attacks.0.type=nosuch"], "attacks.0.type"),
    (["advtrain.rounds=1", "advtrain.attack=nosuch"], "advtrain.attack: 'nosuch' is not defined"),
])
def test_bad_input_one_line_exit_2(tiny, override, needle):
    proc = run_cli(["run", str(tiny), *override], cwd=tiny.parent)
    line = _one_line(proc)
    assert needle in line
    assert str(tiny) in line  # names the config file
    assert not list(tiny.parent.glob("*.h5"))


def test_bad_input_under_mpiexec_is_one_line(tiny):
    proc = run_cli(["run", str(tiny), "finetune.lrr=1"], ranks=2, cwd=tiny.parent)
    assert proc.returncode == 2
    assert proc.stderr.count("unknown key 'finetune.lrr'") == 1


def test_missing_config_and_bad_args(tmp_path):
    assert "config file not found" in _one_line(run_cli(["run", str(tmp_path / "x.yaml")]))
    assert "invalid choice" in _one_line(run_cli(["nosuchcommand"]))


@pytest.mark.parametrize("content", [b"not an hdf5 file", None])
def test_existing_output_is_never_clobbered(tiny, content):
    out = tiny.parent / "out.h5"
    if content is None:  # an HDF5 file from another program
        import h5py

        with h5py.File(out, "w") as f:
            f["x"] = 1
    else:
        out.write_bytes(content)
    before = hashlib.sha256(out.read_bytes()).hexdigest()
    line = _one_line(run_cli(["run", str(tiny)], cwd=tiny.parent))
    assert "refusing to overwrite" in line
    assert hashlib.sha256(out.read_bytes()).hexdigest() == before


def test_help_describes_every_option():
    proc = run_cli(["--help"])
    assert proc.returncode == 0 and "run" in proc.stdout
    proc = run_cli(["run", "--help"])
    assert proc.returncode == 0
    for key in ("finetune.lr", "models.N.name_or_path", "parallel.ranks_per_group", "--quiet", "output"):
        assert key in proc.stdout
