"""An error on any one rank, before or during a collective, ends every rank fast with its message printed once;
a user error writes nothing and leaves nothing behind."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import hpcrobust_cmd, mpiexec, run_cli

FAST = ["seeds=[0]", "parallel.threads_per_rank=1", "--quiet"]


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.mark.parametrize("rank", [0, 1])
@pytest.mark.parametrize("where", ["checks", "mid_round"])  # at a round's start: tests/test_sharing.py
def test_an_error_on_one_rank_ends_every_rank_with_one_message(tiny, rank, where):
    before = _files(tiny.parent)
    t0 = time.monotonic()
    proc = run_cli(["run", str(tiny), *FAST, f"debug.fail_rank={rank}", f"debug.fail_in={where}"], ranks=2,
                   cwd=tiny.parent, timeout=120)
    elapsed = time.monotonic() - t0
    where_text = "the checks" if where == "checks" else "round 0" + (" (mid-round)" if where == "mid_round" else "")
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert proc.stderr.count(f"injected failure on rank {rank} in {where_text}") == 1, proc.stderr[-3000:]
    assert elapsed < 30, elapsed
    if where == "checks":  # nothing was started: no results, no lock, no checkpoint
        assert _files(tiny.parent) == before


def test_a_user_error_seen_by_one_rank_only_is_one_line_on_every_rank(tiny, tmp_path):
    """Rank 1 runs in a folder without the task file (a node that lacks a mount): every rank stops in the
    checks, the line is printed once, and nothing is written anywhere."""
    here, there = tiny.parent, tmp_path / "elsewhere"
    there.mkdir()
    (here / "spam.jsonl").write_text("".join(f'{{"text": "mail {i}", "label": {i % 2}}}\n' for i in range(40)))
    cmd = [*hpcrobust_cmd(), "run", str(tiny), "task.name=spam", "task.path=spam.jsonl", "task.n_train=30",
           "task.n_val=10", *FAST]
    before = _files(here) | _files(there)
    t0 = time.monotonic()
    proc = subprocess.run([mpiexec(), "-n", "1", "-wdir", str(here), *cmd, ":", "-n", "1", "-wdir", str(there), *cmd],
                          capture_output=True, text=True, timeout=120, env=os.environ)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert "task.path: file not found" in lines[0] and "Traceback" not in proc.stderr
    assert time.monotonic() - t0 < 30
    assert _files(here) | _files(there) == before


def test_an_output_folder_that_takes_no_files_is_one_line_on_every_rank(tiny):
    proc = run_cli(["run", str(tiny), *FAST, "output=/sys/out.h5"], ranks=2, cwd=tiny.parent, timeout=120)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert "output folder /sys is not writable" in lines[0]
