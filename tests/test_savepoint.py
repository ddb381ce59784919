"""The USR2 save-now request (hpcrobust/savepoint.py): every group's save is noted by its leader in a file
(sweep/savemarks.py), and rank 0's safe stop requeues as soon as every group has saved, well before
launch.safe_stop_s, or at safe_stop_s when some group never gets to a save point."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from hpcrobust import savepoint
from hpcrobust.launch.safestop import SafeStop
from hpcrobust.parallel.comm import Comm
from hpcrobust.sweep import savemarks
from hpcrobust.sweep.hooks import Hooks
from hpcrobust.training.resume import StepSaver


@pytest.fixture(autouse=True)
def fresh():
    savepoint.clear()
    savepoint.plug(None, None)
    yield
    savepoint.clear()
    savepoint.plug(None, None)


def _ctx(tmp: Path, group_index: int = 0, n_groups: int = 2, root: bool = True, leader: bool = True):
    lay = SimpleNamespace(world=Comm(None), is_root=root, group_index=group_index, n_groups=n_groups,
                          is_group_leader=leader)
    return SimpleNamespace(layout=lay, results=SimpleNamespace(checkpoint_root=tmp / "out.h5.ckpt"))


def _wait_for(cond, timeout: float = 5.0) -> float:
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout
        time.sleep(0.01)
    return time.monotonic() - t0


def test_marks_count_each_group_once_and_only_after_a_request(tmp_path):
    stale = tmp_path / "out.h5.ckpt" / savemarks.FOLDER / "an-earlier-attempt"
    stale.mkdir(parents=True)
    (stale / "group_0").write_text("saved\n")
    (stale / "group_1").write_text("saved\n")
    hooks = Hooks()
    savemarks.attach(hooks)
    ctx = _ctx(tmp_path)
    hooks.fire("sweep_started", ctx)
    assert not stale.exists() and savepoint.progress() == (0, 2)  # an earlier attempt's marks do not count
    savepoint.saved()  # a save on the usual schedule, no request: not a mark
    assert savepoint.progress() == (0, 2)
    savepoint.request()
    savepoint.saved()
    savepoint.saved()  # a second save of the same group counts once
    assert savepoint.progress() == (1, 2) and savepoint.saves_since_request() == 2
    # the other group's leader (another process: here a second SaveMarks on the same folder) saves too
    marks = savemarks.SaveMarks(next((tmp_path / "out.h5.ckpt" / savemarks.FOLDER).iterdir()), 1, 2, leader=True)
    marks.notify("saved")
    assert savepoint.progress() == (2, 2)
    hooks.fire("sweep_finished", ctx)
    assert savepoint.progress() is None and not (tmp_path / "out.h5.ckpt" / savemarks.FOLDER).exists()


def test_only_group_leaders_write_and_only_saves_count(tmp_path):
    folder = tmp_path / "marks"
    member = savemarks.SaveMarks(folder, 0, 2, leader=False)
    member.notify("saved")
    assert not folder.exists()
    leader = savemarks.SaveMarks(folder, 1, 2, leader=True)
    leader.notify("request")  # the request alone is not a save
    assert leader.count() == (0, 2)
    leader.notify("saved")
    assert leader.count() == (1, 2) and (folder / "group_1").is_file()


def test_a_step_saver_saves_once_for_each_request(tmp_path):
    saver = StepSaver(tmp_path / "steps.pt", every_s=3600.0, group=Comm(None))
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    assert not saver.due()  # an hour between saves
    savepoint.request()
    assert saver.due()
    saver.save({"step": 1}, model, opt, sched)
    assert not saver.due() and savepoint.saves_since_request() == 1  # answered
    savepoint.clear()
    savepoint.request()  # a new request is answered again
    assert saver.due()


@pytest.fixture
def speaking():
    """Log lines on (an in-process run earlier in the session may have left --quiet or another rank set)."""
    from hpcrobust import log as logmod

    saved = dict(logmod._state)
    logmod.setup(0, 1, quiet=False)
    yield
    logmod._state.update(saved)


def _stop(grace_s: float, progress: list[tuple[int, int]]):
    fired: list[float] = []
    seen = iter(progress)
    last = {"v": progress[0]}

    def prog() -> tuple[int, int]:
        last["v"] = next(seen, last["v"])
        return last["v"]

    savepoint.plug(None, prog)
    return SafeStop(grace_s, on_timeout=lambda: fired.append(time.monotonic())), fired


def test_usr2_requeues_as_soon_as_every_group_saved(capfd, speaking):
    stop, fired = _stop(30.0, [(0, 2), (1, 2), (1, 2), (2, 2)])
    with stop:
        t0 = time.monotonic()
        os.kill(os.getpid(), signal.SIGUSR2)
        assert savepoint.requested()  # every saver now saves at its next step boundary
        took = _wait_for(lambda: fired)
        time.sleep(3 * SafeStop.POLL_S)
    assert len(fired) == 1 and fired[0] - t0 < 5.0 and took < 5.0  # not after safe_stop_s (30 s)
    assert not savepoint.requested()  # the stop's request ends with it
    err = capfd.readouterr().err
    assert "saved the work in progress of 2 group(s) after SIGUSR2: requeueing" in err


def test_a_group_that_never_saves_runs_into_safe_stop_s(capfd, speaking):
    stop, fired = _stop(1.0, [(1, 2)])
    with stop:
        t0 = time.monotonic()
        os.kill(os.getpid(), signal.SIGUSR2)
        _wait_for(lambda: fired)
    assert len(fired) == 1 and fired[0] - t0 >= 1.0
    err = capfd.readouterr().err
    assert "requeueing mid-round" in err and "(1 of 2 group(s) saved their work in progress)" in err


def test_without_marks_a_rank_waits_for_safe_stop_s():
    """Ranks other than 0 have no progress to poll: they keep the old timer (rank 0 requeues the job)."""
    fired: list[float] = []
    with SafeStop(0.5, on_timeout=lambda: fired.append(time.monotonic())):
        t0 = time.monotonic()
        os.kill(os.getpid(), signal.SIGUSR2)
        _wait_for(lambda: fired)
    assert fired[0] - t0 >= 0.5
