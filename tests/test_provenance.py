"""Provenance pieces that need no sweep: the git state (never failing a run), device counting, the schema's checks.
A real sweep's provenance is read back in tests/test_eval_rounds.py."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from hpcrobust.store import schema as S
from hpcrobust.store.schema import Record
from hpcrobust.sweep import provenance as P
from hpcrobust.sweep.provenance import Attempt, RankFacts, count_devices, git_state


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(root), "-c", "user.email=t@t", "-c", "user.name=t", *args], check=True,
                   capture_output=True)


def test_git_state_of_a_checkout_clean_dirty_and_untracked(tmp_path):
    assert git_state(tmp_path) == ("", -1)  # not a checkout: git is not even asked
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    _git(tmp_path, "add", "a.py")
    _git(tmp_path, "commit", "-q", "-m", "one")
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert git_state(tmp_path) == (head, 0)
    (tmp_path / "results.h5").write_text("untracked output")
    assert git_state(tmp_path) == (head, 0)  # results written into a checkout do not make it dirty
    (tmp_path / "a.py").write_text("x = 2\n")
    assert git_state(tmp_path) == (head, 1)


def test_git_that_is_missing_or_hangs_gives_unknown(tmp_path, monkeypatch):
    (tmp_path / ".git").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    assert git_state(tmp_path) == ("", -1)
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "git").write_text("#!/bin/sh\nsleep 30\n")
    (fake / "git").chmod(0o755)
    monkeypatch.setenv("PATH", str(fake))
    monkeypatch.setattr(P, "GIT_TIMEOUT_S", 0.5)
    t0 = time.time()
    assert git_state(tmp_path) == ("", -1)
    assert time.time() - t0 < 5
    (fake / "git").write_text("#!/bin/sh\necho 'fatal: detected dubious ownership' >&2\nexit 128\n")
    assert git_state(tmp_path) == ("", -1)


def _cpu(group: int, host: str, threads: int, cores: tuple[int, ...]) -> RankFacts:
    return RankFacts(group, host, "cpu", "Some CPU", "", threads, cores)


def test_cpu_cores_are_the_ranks_threads_at_most_the_cores_they_may_use():
    one_host = [_cpu(0, "a", 2, (0, 1)), _cpu(1, "a", 2, (0, 1))]  # oversubscribed: 4 threads on 2 cores
    assert count_devices(one_host) == 2
    assert count_devices([_cpu(0, "a", 4, (0, 1, 2, 3, 4, 5, 6, 7))]) == 4  # only the threads it runs
    assert count_devices([_cpu(0, "a", 2, (0, 1)), _cpu(0, "b", 3, (0, 1, 2, 3))]) == 5  # per host


def test_gpus_are_counted_once_each_and_rounds_get_their_groups_devices():
    facts = [RankFacts(g, host, "gpu", name, uuid, 8, (0,)) for g, host, name, uuid in
             ((0, "n1", "H100", "GPU-aaa"), (0, "n1", "H100", "GPU-bbb"), (1, "n2", "A100", "GPU-ccc"),
              (1, "n2", "A100", "GPU-ccc"))]
    assert count_devices(facts) == 3  # two ranks sharing GPU-ccc use one GPU
    att = Attempt(2, time.time() - 7200, facts, 2, {S.GIT_COMMIT: "abc"})
    r = att.round_attrs(0, 1800.0)
    assert r[S.N_DEVICES] == 2 and r[S.DEVICE_HOURS] == pytest.approx(1.0) and r[S.DEVICE_KIND] == "gpu"
    assert r[S.HOSTS] == "n1" and r[S.DEVICE_NAMES] == "H100" and r[S.WORLD_SIZE] == 4 and r[S.GROUP_SIZE] == 2
    assert att.round_attrs(1, 3600.0)[S.DEVICE_HOURS] == pytest.approx(1.0) and r[S.ATTEMPT] == 2
    rec = att.record(5, now=att.started + 3600)
    rec.check()
    assert rec.path == "attempts/0002" and rec.attrs[S.DEVICE_HOURS] == pytest.approx(3.0)
    assert rec.attrs[S.HOSTS] == "n1,n2" and rec.attrs[S.DEVICE_NAMES] == "H100,A100"
    assert att.record(2).attrs[S.RUN_ROUNDS] == 7  # counted over the attempt's commits
    assert rec.attrs[S.SLURM_JOB_ID] == os.environ.get("SLURM_JOB_ID", "")


def test_schema_refuses_undeclared_provenance():
    Record(S.round_path("r", 0), attrs={S.ROUND: 0, S.DEVICE_HOURS: 1.0}).check()
    with pytest.raises(ValueError, match="gpu_hours not declared"):
        Record(S.round_path("r", 0), attrs={S.ROUND: 0, "gpu_hours": 1.0}).check()
    with pytest.raises(ValueError, match="host not declared"):
        Record(S.attempt_path(0), attrs={"host": "x"}).check()
    assert S.PROVENANCE >= {S.ATTEMPT, S.HOSTS, S.DEVICE_HOURS, S.WORLD_SIZE} and S.ROUND not in S.PROVENANCE
