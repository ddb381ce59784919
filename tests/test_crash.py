"""Crash safety with real SIGKILLs: the file always opens, committed rounds never change, and the rerun
completes the sweep with exactly the values of an uninterrupted run. A second concurrent sweep is refused."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from hpcrobust.store.reader import committed_rounds, open_results
from hpcrobust.store.schema import RUNS
from hpcrobust.store.writer import STEPS
from tests.conftest import ROOT, hpcrobust_cmd, reference_sweep, run_cli
from tests.h5compare import assert_same

SEED = 20240611  # fixes the kill moments
KILLS = 10
ROUNDS_TOTAL = 12  # rounds 0..11 of two sizes: a commit every second or so, after a few seconds of start-up
ROUNDS = ["seeds=[0]", "train_attacks=[{name: rt_train, type: random_token, n_attack_tokens: 5}]",
          f"advtrain.rounds={ROUNDS_TOTAL - 1}", "advtrain.attack=rt_train", "advtrain.n_new_examples=8",
          "advtrain.max_examples=32", "advtrain.iterations_start=4", "advtrain.iterations_end=8",
          "advtrain.lr=1e-3", "parallel.threads_per_rank=1", "--quiet"]  # 1 thread: no oversubscription


def _committed(out: Path) -> dict[str, set[int]]:
    if not out.exists():
        return {}
    try:
        return {k: v for k, v in committed_rounds(out).items() if k != "__transfer__"}
    except Exception:  # noqa: BLE001 - mid-rename of the first commit: the next look sees the new file
        return {}


def _round_values(out: Path, timings: bool = True) -> dict[tuple[str, int], dict]:
    """Every dataset of every committed round, wall times included (a recomputed round would differ) unless
    `timings` is off (to compare with another run)."""
    vals: dict[tuple[str, int], dict] = {}
    with open_results(out) as f:
        for run, g in f.get(RUNS, {}).items():
            for r, rg in g["rounds"].items():
                if int(rg.attrs.get("committed", 0)) != 1:
                    continue
                data = {}
                rg.visititems(lambda n, o, d=data: d.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset) else None)
                vals[(run, int(r))] = {k: v for k, v in data.items() if timings or not k.endswith("wall_time")}
    return vals


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(np.asarray(a[k]), np.asarray(b[k]),
                                                       equal_nan=np.asarray(a[k]).dtype.kind == "f") for k in a)


def _timed(cmd: list[str], cwd: Path, out: Path) -> tuple[float, list[float]]:
    """Run to the end; return the wall time and when each round was committed (polled every 20 ms)."""
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    commits: list[float] = []
    while proc.poll() is None:
        n = _n_rounds(out)
        commits += [time.monotonic() - t0] * (n - len(commits))
        time.sleep(0.02)
    assert proc.returncode == 0, proc.stderr.read().decode()[-3000:]
    return time.monotonic() - t0, commits


def _file_id(out: Path) -> tuple[int, int] | None:
    """Changes with every commit (the first renames a new file into place, the others write into it); cheap enough
    to poll every 2 ms."""
    try:
        st = out.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def _n_rounds(out: Path) -> int:
    return min((len(v) for v in _committed(out).values()), default=0)


def _in_commit(out: Path) -> bool:
    """A commit is in progress: its journal exists (or, the first commit, its temporary file)."""
    return Path(f"{out}.journal").exists() or out.with_name(f".{out.name}.commit.tmp").exists()


def _kill_at_random_moment(p: subprocess.Popen, out: Path, rng: np.random.Generator,
                           startup: float, round_s: float) -> str:
    """SIGKILL `p` in start-up, in the middle of a round, or inside a commit (chosen by `rng`).

    Moments are drawn relative to what the attempt has done, not to the clock alone, so they stay spread over
    the phases however loaded the machine is. Returns the phase, or "" if `p` ended first (not a kill)."""
    mode = rng.choice(["start-up", "round", "commit"], p=[0.2, 0.5, 0.3]) if _n_rounds(out) < ROUNDS_TOTAL \
        else "start-up"  # nothing left to commit: only start-up remains
    u = float(rng.uniform(0.0, 1.0))
    before, t0 = _file_id(out), time.monotonic()
    deadline = t0 + startup * u if mode == "start-up" else None
    while p.poll() is None:
        now = time.monotonic()
        if mode == "commit" and (_in_commit(out) or _file_id(out) != before):
            break  # inside the commit (its journal exists), or just after it if the poll missed it
        if mode == "round" and deadline is None and _file_id(out) != before:
            deadline = now + round_s * u  # somewhere in the round after this attempt's first commit
        if deadline is not None and now >= deadline:
            break
        time.sleep(0.002 if mode == "commit" else 0.01)
    if p.poll() is not None:
        return ""
    p.kill()  # SIGKILL
    p.wait()
    return str(mode)


def test_ten_sigkills_then_rerun_equals_an_uninterrupted_run(tiny):
    cwd = tiny.parent
    cmd = hpcrobust_cmd() + ["run", str(tiny), *ROUNDS]
    ref = cwd / "ref.h5"
    total, commits = _timed(cmd + ["output=ref.h5"], cwd, ref)  # uninterrupted, timed round by round
    expected = _committed(ref)
    assert all(v == set(range(ROUNDS_TOTAL)) for v in expected.values()) and len(expected) == 2
    round_s = float(np.median(np.diff(commits)))
    startup = commits[0] - round_s

    rng = np.random.default_rng(SEED)
    out = cwd / "killed.h5"
    seen: dict[tuple[str, int], dict] = {}
    growth, phases, attempts, mid_commit = [], [], 0, 0
    while len(phases) < KILLS:
        attempts += 1
        assert attempts <= 2 * KILLS, f"only {len(phases)} kills landed in {attempts} attempts"
        p = subprocess.Popen(cmd + ["output=killed.h5"], cwd=cwd, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        phase = _kill_at_random_moment(p, out, rng, startup, round_s)
        if phase:
            phases.append(phase)
            mid_commit += _in_commit(out)
        if not out.exists():
            growth.append(0)
            continue
        now = committed_rounds(out)  # the file opens after every kill ...
        now.pop("__transfer__", None)
        vals = _round_values(out)
        for key, v in seen.items():  # ... no committed round is lost, rewritten or recomputed ...
            assert key in vals and _same(v, vals[key]), f"round {key} changed after kill {len(phases)}"
        for key, v in vals.items():
            seen.setdefault(key, v)
        growth.append(sum(len(r) for r in now.values()))
    assert growth == sorted(growth)  # ... so the committed set only grows

    final = subprocess.run(cmd + ["output=killed.h5"], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr[-3000:]
    assert _committed(out) == expected  # each round of each run exactly once
    vals = _round_values(out)
    assert all(_same(v, vals[k]) for k, v in seen.items())  # nothing committed before was redone
    assert assert_same(ref, out) > 50
    assert not _in_commit(out)
    print(f"\n{len(phases)} SIGKILLs in {attempts} attempts (reference {total:.1f} s, start-up {startup:.1f} s,"
          f" {round_s:.2f} s a round): {phases}; committed (run, round)s after each attempt: {growth};"
          f" killed inside a commit: {mid_commit}")


def test_second_concurrent_sweep_is_refused_in_one_line(tiny):
    cwd = tiny.parent
    first = subprocess.Popen(hpcrobust_cmd() + ["run", str(tiny), *ROUNDS], cwd=cwd, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        lock = cwd / "out.h5.lock"
        deadline = time.monotonic() + 120
        while not (lock.exists() and lock.read_text().strip()) and first.poll() is None:
            assert time.monotonic() < deadline, "the first sweep never took its lock"
            time.sleep(0.05)
        assert first.poll() is None, "the first sweep ended before the second could start"
        second = run_cli(["run", str(tiny), *ROUNDS], cwd=cwd, timeout=120)
        lines = [ln for ln in second.stderr.splitlines() if ln.strip()]
        assert second.returncode == 2 and len(lines) == 1, second.stderr
        assert "another sweep is writing" in lines[0] and "out.h5" in lines[0]
        # submitting the same output while it is being written is refused before anything is queued
        sub = run_cli(["submit", "--dry-run", str(tiny), "launch.slurm_partition=debug", *ROUNDS[:-1]], cwd=cwd)
        sub_lines = [ln for ln in sub.stderr.splitlines() if ln.strip()]
        assert sub.returncode == 2 and len(sub_lines) == 1 and "another sweep is writing" in sub_lines[0]
        assert first.poll() is None  # the refused sweeps did not disturb the first one
    finally:
        first.kill()
        first.wait()


# ---------------------------------------------------------------- kills at controlled points inside a commit

# rounds 0..3; the kill lands in round 2's commit, which under the rounds schedule holds every run's round 2 (so
# the file before it holds rounds 0 and 1 of every run; the default queue schedule is killed at random moments in
# test_ten_sigkills_then_rerun_equals_an_uninterrupted_run, and commits of any records in test_journal.py)
STEP_ROUNDS = [*ROUNDS[:2], "advtrain.rounds=3", *ROUNDS[3:-1], "parallel.schedule=rounds"]
NO_LOCKING = {"HDF5_USE_FILE_LOCKING": "FALSE"}  # read a file while a paused writer still has it open


@pytest.fixture(scope="module")
def reference(tmp_path_factory, family_cache):
    return reference_sweep(tmp_path_factory.mktemp("crash-ref"), STEP_ROUNDS)


def _kill_inside_commit(cwd: Path, step: str, in_place: bool = False) -> None:
    marker = cwd / "paused"
    marker.unlink(missing_ok=True)
    cmd = [sys.executable, str(ROOT / "tests" / "crash_driver.py"), step, "2", str(marker),
           *(["--in-place"] if in_place else []), "tiny.yaml", *STEP_ROUNDS, "output=killed.h5"]
    p = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         env={**os.environ, **NO_LOCKING})
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert p.poll() is None, p.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "the sweep never reached the commit step"
        time.sleep(0.02)
    p.kill()  # SIGKILL, with the commit paused at `step`
    p.wait()


def _assert_intact(out: Path, ref: Path, rounds: set[int]) -> None:
    """The file opens, holds exactly `rounds` committed for every run, and their values are the reference's."""
    done = {k: v for k, v in committed_rounds(out).items() if k != "__transfer__"}
    assert done and all(v == rounds for v in done.values()), done
    vals, expected = _round_values(out, timings=False), _round_values(ref, timings=False)
    assert set(vals) == {k for k in expected if k[1] in rounds}
    assert all(_same(v, expected[k]) for k, v in vals.items())


@pytest.mark.parametrize("step", ["laid out", "written", "marked", "committed"])  # in place, before and after the
def test_a_kill_inside_a_commit_keeps_the_file_whole(tiny, reference, step):  # journal's removal
    assert step in STEPS
    cwd = tiny.parent
    out = cwd / "killed.h5"
    _kill_inside_commit(cwd, step)
    assert _in_commit(out) == (step != "committed")  # the journal is left, for the next writer to roll back
    left = out.read_bytes()
    _assert_intact(out, reference, {0, 1, 2} if step == "committed" else {0, 1})  # a reader, before any recovery
    assert out.read_bytes() == left  # read through the journal, not rolled back by the reader
    again = run_cli(["run", str(tiny), *STEP_ROUNDS, "output=killed.h5"], cwd=cwd)
    assert again.returncode == 0, again.stderr
    assert assert_same(reference, out) > 50
    assert not _in_commit(out)


def test_the_kill_test_catches_a_writer_that_commits_in_place(tiny, reference):
    cwd = tiny.parent
    _kill_inside_commit(cwd, "laid out", in_place=True)
    with pytest.raises(Exception):  # noqa: B017 - any way of failing: unreadable file, lost or changed rounds
        _assert_intact(cwd / "killed.h5", reference, {0, 1})
