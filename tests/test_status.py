"""`hpcrobust status`: a real small sweep read mid-sweep (stopped with debug.stop_after_round), while it runs,
and finished; the lock's holder alive, killed, on another host; SLURM's word from stand-in commands; a file
replaced under the reader; device-hours when the file has them; bad inputs in one line."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import h5py
import pytest

from hpcrobust.launch.status import COMMITTED, FAILED, RUNNING, WAITING, collect, device_hours
from hpcrobust.launch.status_view import render
from hpcrobust.store.reader import committed_rounds, load, load_attacks
from hpcrobust.store.results import TRANSFER_KEY, ResultsFile
from tests.conftest import TINY, hpcrobust_cmd, run_cli

SWEEP = ["seeds=[0]", "task.n_train=96", "train_attacks=[{name: rt_train, type: random_token, n_attack_tokens: 5}]",
         "advtrain.rounds=2", "advtrain.attack=rt_train", "advtrain.n_new_examples=8", "advtrain.max_examples=24",
         "advtrain.iterations_start=4", "advtrain.iterations_end=12", "advtrain.lr=1e-3", "experiment=statusdemo"]
RUNS = ["xs__seed0", "s__seed0"]


def _copy(src: Path, dst: Path) -> Path:
    """A results file with its checkpoint folder."""
    shutil.copyfile(src, dst)
    shutil.copytree(Path(f"{src}.ckpt"), Path(f"{dst}.ckpt"))
    return dst


def _claim_round_1(path: Path) -> None:
    """The work queue's claim file of a live sweep whose 2 groups each took a run's round 1."""
    q = Path(f"{path}.ckpt") / "queue.json"
    state = json.loads(q.read_text())
    q.write_text(json.dumps({**state, "claims": {"round:0:1": 0, "round:1:1": 1}}))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, family_cache) -> dict:
    """One sweep of 2 runs x rounds 0..2: stopped after round 0 (a snapshot is kept), then resumed to the end
    while `collect` reads the file over and over."""
    d = tmp_path_factory.mktemp("status")
    (d / "tiny.yaml").write_text(TINY.read_text())
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("SLURM_JOB_ID", raising=False)  # the sweep is not a SLURM job's, even when the tests run in one
        stopped = run_cli(["run", "tiny.yaml", *SWEEP, "output=res.h5", "debug.stop_after_round=0"], cwd=d)
        assert stopped.returncode == 3, stopped.stderr
        mid = _copy(d / "res.h5", d / "mid.h5")
        proc = subprocess.Popen(hpcrobust_cmd() + ["run", "tiny.yaml", *SWEEP, "output=res.h5", "--quiet"],
                                cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        seen = []
        while proc.poll() is None:
            st = collect(d / "res.h5")  # never raises while the sweep commits
            seen.append((st.state, st.counts()[COMMITTED], st.holder))
            time.sleep(0.1)
        assert proc.wait() == 0, proc.stderr.read()
    return {"dir": d, "mid": mid, "done": d / "res.h5", "stopped_log": stopped.stderr, "seen": seen}


def test_a_stopped_sweep_shows_round_0_committed_and_the_rest_waiting(sweep):
    st = collect(sweep["mid"])
    assert st.state == "stopped" and st.holder is None and st.job is None
    assert [r.key for r in st.runs] == RUNS  # the sweep's order: model-major
    assert set(RUNS) == set(committed_rounds(sweep["mid"])) - {TRANSFER_KEY}
    assert all(r.cells == [COMMITTED, WAITING, WAITING] and r.planned == 2 for r in st.runs)
    assert all(r.checkpoint == 0 and not r.saving for r in st.runs)
    assert st.experiment == "statusdemo" and st.attacks == ["rt", "gcg"]
    # the numbers are the file's
    rounds, attacks = load(sweep["mid"]), load_attacks(sweep["mid"])
    for r in st.runs:
        row = rounds[(rounds.run == r.key) & (rounds["round"] == 0)].iloc[0]
        assert r.rounds[0]["wall"] == pytest.approx(row.wall_time) and row.wall_time > 0
        assert r.rounds[0]["accuracy"] == pytest.approx(row.clean_accuracy)
        for name in ("rt", "gcg"):
            a = attacks[(attacks.run == r.key) & (attacks["round"] == 0) & (attacks.attack == name)].iloc[0]
            assert r.rounds[0]["asr"][name] == pytest.approx(a.asr)
    # time left: each remaining adversarial round costs its size's round-0 time (the only one known yet)
    assert st.work_left_s == pytest.approx(sum(2 * r.rounds[0]["wall"] for r in st.runs))
    assert st.groups == 1 and st.left_s == pytest.approx(st.work_left_s)
    stored = rounds[rounds["round"] == 0].device_hours  # provenance: wall time x the group's devices
    assert device_hours(st.runs, 0) == pytest.approx(stored.sum()) and stored.sum() > 0

    proc = run_cli(["status", str(sweep["mid"])])
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "sweep: stopped: no sweep holds the lock" in out and "(experiment statusdemo)" in out
    assert "progress: 2/6 run-rounds committed (33%), 0 running, 4 waiting, 0 failed" in out
    xs = st.runs[0]
    assert re.search(rf"^xs__seed0 +#\.\. +0 +{xs.rounds[0]['accuracy']:.3f} +{xs.rounds[0]['asr']['rt']:.2f}"
                     rf" +{xs.rounds[0]['asr']['gcg']:.2f}$", out, re.M), out
    hours = device_hours(st.runs, 0)
    assert re.search(rf"^0 +2/2 .* {hours:.{2 if hours >= 0.01 else 4}f} ", out, re.M), out
    assert re.search(r"^1-2 +waiting$", out, re.M), out
    assert "time left (estimate): about" in out


def test_the_progress_bar_stays_in_the_sweep_log(sweep):
    """tqdm's one summary line on stderr (the job's log): 2 of 6 run-rounds after round 0."""
    assert re.search(r"sweep: +33%\|.*\| 2/6 \[", sweep["stopped_log"]), sweep["stopped_log"][-2000:]


def test_reading_while_the_sweep_runs(sweep):
    """While the resumed sweep wrote, every read saw a whole commit (under the queue schedule one run's round
    each), and a live writer."""
    seen = sweep["seen"]
    assert seen, "the sweep ended before status could read it"
    counts = [c for _, c, _ in seen]
    assert counts == sorted(counts) and set(counts) <= {2, 3, 4, 5, 6}
    live = [h for s, _, h in seen if s == "running"]
    assert live and all(h.alive and h.pid > 0 and h.details == {"ranks": "1", "groups": "1"} for h in live)
    states = "".join(s[0] for s, _, _ in seen)  # stopped until the resumed sweep takes the lock, then running
    assert re.fullmatch(r"s*r+f*", states), states


def test_a_finished_sweep(sweep):
    st = collect(sweep["done"])
    assert st.finished and st.state == "finished" and st.left_s == 0 and st.work_left_s == 0
    assert all(r.cells == [COMMITTED] * 3 and r.checkpoint == 2 for r in st.runs)
    rounds = load(sweep["done"])
    assert sum(len(r.rounds) for r in st.runs) == len(rounds) == 6
    proc = run_cli(["status", str(sweep["done"]), "--watch", "0.1"])  # returns at once: nothing left to wait for
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("progress: 6/6 run-rounds committed (100%)") == 1
    assert "time left (estimate): 0s" in proc.stdout and re.search(r"^s__seed0 +### +2 ", proc.stdout, re.M)
    assert re.search(r"^2 +2/2 ", proc.stdout, re.M)


def test_device_hours_are_read_when_the_file_has_them(sweep, tmp_path):
    path = _copy(sweep["done"], tmp_path / "dh.h5")
    """Rounds 0 and 1 are given other device-hours; round 2 stores none (as a file written before provenance)."""
    with h5py.File(path, "r+") as f:
        for run in RUNS:
            for rnd in ("0000", "0001"):
                f[f"runs/{run}/rounds/{rnd}"].attrs["device_hours"] = 0.25 if run == RUNS[0] else 0.5
            del f[f"runs/{run}/rounds/0002"].attrs["device_hours"]
    st = collect(path)
    assert device_hours(st.runs, 0) == pytest.approx(0.75) and device_hours(st.runs, 2) is None
    text = render(st)
    assert re.search(r"^0 +2/2 .* 0\.75 ", text, re.M) and re.search(r"^2 +2/2 .* n/a ", text, re.M), text


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_lock_holders_alive_killed_and_elsewhere(sweep, tmp_path, monkeypatch):
    path = _copy(sweep["mid"], tmp_path / "lk.h5")
    _claim_round_1(path)
    rf = ResultsFile(path)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    rf.acquire({"ranks": 4, "groups": 2})  # a live sweep (this process) with 2 groups
    try:
        st = collect(path)
        assert st.state == "running" and st.holder.pid == os.getpid() and st.groups == 2
        assert all(r.cells == [COMMITTED, RUNNING, WAITING] for r in st.runs)
        # the rounds running now (round 1 of each run) have spent the seconds since the attempt started
        assert st.work_left_s / 2 - 10 < st.left_s <= st.work_left_s / 2
        w0 = sum(r.rounds[0]["wall"] for r in st.runs)
        long_ago = time.time() - 10 * w0
        os.utime(path, (long_ago, long_ago))
        os.utime(rf.lock_path, (long_ago, long_ago))
        st = collect(path)  # round 1 should be done by now: only round 2 is left, over 2 groups
        assert st.work_left_s == pytest.approx(2 * w0) and st.left_s == pytest.approx(w0 / 2)
        rf.lock_path.write_text("elsewhere:12345 groups=1\n")  # another host: the flock (still ours) decides
        st = collect(path)
        assert st.state == "running" and st.holder.host == "elsewhere" and st.holder.alive
    finally:
        rf.release()
    assert collect(path).state == "stopped"
    for line in (f"{os.uname().nodename}:{_dead_pid()} ranks=1 groups=1", "elsewhere:12345"):
        rf.lock_path.write_text(line + "\n")  # left behind by a killed sweep: nobody holds the flock
        st = collect(path)
        assert st.state == "failed" and "gone" in st.why and not st.holder.alive
        assert all(r.cells == [COMMITTED, FAILED, WAITING] for r in st.runs)
    out = run_cli(["status", str(path)]).stdout
    assert "sweep: failed: the lock's holder (pid 12345 on elsewhere) is gone" in out and "#!." in out
    assert "0 running, 2 waiting, 2 failed" in out


def _fake_slurm(tmp_path: Path, scontrol: str, sacct: str = "") -> str:
    """A PATH whose scontrol and sacct print what a real one would."""
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in (("scontrol", scontrol), ("sacct", sacct)):
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    return f"{bin_dir}:{os.environ['PATH']}"


@pytest.mark.parametrize("scontrol,sacct,state,cell", [
    ('echo "JobId=4242 JobName=x JobState=RUNNING Reason=None Restarts=0"', "", "running", RUNNING),
    ('echo "JobId=4242 JobState=PENDING Reason=Priority Restarts=1"', "", "queued", WAITING),
    ('echo "JobId=4242 JobState=FAILED Reason=NonZeroExitCode Restarts=0"', "", "failed", FAILED),
    ('echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1', 'echo "CANCELLED by 0"', "failed", FAILED),
    ('echo "slurm_load_jobs error: Unable to contact slurm controller" >&2; exit 1', "exit 1", "stopped", WAITING),
])
def test_slurm_decides_when_it_knows_the_job(sweep, tmp_path, monkeypatch, scontrol, sacct, state, cell):
    path = _copy(sweep["mid"], tmp_path / "sl.h5")
    _claim_round_1(path)
    monkeypatch.setenv("PATH", _fake_slurm(tmp_path, scontrol, sacct))
    st = collect(path, job_id="4242")
    assert st.state == state and all(r.cells == [COMMITTED, cell, WAITING] for r in st.runs)
    if state != "stopped":
        assert st.job.job_id == "4242" and "SLURM job 4242 is" in st.why
    else:  # SLURM does not answer: status goes on without it
        assert st.job is None
    # the job named in the lock is asked about too
    ResultsFile(path).lock_path.write_text("elsewhere:12345 slurm_job=4242\n")
    assert collect(path).state == (state if state != "stopped" else "failed")


def test_status_reads_a_file_replaced_under_it(sweep, tmp_path):
    """A writer replaces the file atomically as fast as it can, alternating two commits; every read is one
    whole commit of the two, and none fails."""
    live = tmp_path / "live.h5"
    shutil.copyfile(sweep["mid"], live)
    stop = threading.Event()
    replaced = [0]

    def writer() -> None:
        while not stop.is_set():
            src = (sweep["mid"], sweep["done"])[replaced[0] % 2]
            tmp = tmp_path / ".live.h5.commit.tmp"
            shutil.copyfile(src, tmp)
            os.replace(tmp, live)
            replaced[0] += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        counts = [collect(live).counts()[COMMITTED] for _ in range(60)]
    finally:
        stop.set()
        t.join()
    assert replaced[0] > 10 and set(counts) <= {2, 6}


def _one_line(proc) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def test_bad_files_and_arguments_are_one_line(sweep, tmp_path):
    (tmp_path / "junk.h5").write_bytes(b"not an hdf5 file")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = 1
    cases = [(["status", str(tmp_path / "nope.h5")], "results file not found"),
             (["status", str(tmp_path)], "is a folder"),
             (["status", str(tmp_path / "junk.h5")], "is not an HDF5 file"),
             (["status", str(tmp_path / "other.h5")], "not an hpcrobust results file"),
             (["status", str(sweep["mid"]), "--watch", "abc"], "not a number of seconds"),
             (["status", str(sweep["mid"]), "--watch", "0"], "--watch takes 0.1 to 86400 seconds"),
             (["status"], "required: FILE")]
    for args, needle in cases:
        assert needle in _one_line(run_cli(args)), args


def test_watch_stops_quietly_on_ctrl_c(sweep, tmp_path):
    out = tmp_path / "watch.out"
    with open(out, "w") as fh:
        # as in a terminal: SIGINT at its default even when the tests run in the background (where it is ignored)
        proc = subprocess.Popen(hpcrobust_cmd() + ["status", str(sweep["mid"]), "--watch", "0.2"], stdout=fh,
                                stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.time() + 60
        while out.read_text().count("progress:") < 2 and time.time() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    assert "Traceback" not in proc.stderr.read()
    assert out.read_text().count("progress: 2/6 run-rounds committed") >= 2  # redrawn: the sweep is not finished


def test_the_readme_shows_the_output_as_it_is():
    from hpcrobust.launch.status_view import LEGEND
    from tests.conftest import ROOT

    section = (ROOT / "README.md").read_text().split("## Watching a sweep: `hpcrobust status`", 1)[1]
    section = section.split("\n## ", 1)[0]
    assert LEGEND in section and "time left (estimate): about" in section
    assert re.search(r"^progress: \d+/\d+ run-rounds committed \(\d+%\), \d+ running, \d+ waiting, \d+ failed$",
                     section, re.M)
    assert re.search(r"^run +rounds +ckpt +acc +ASR ", section, re.M)
    assert re.search(r"^round +runs +wall/run +wall sum +device-h +ASR ", section, re.M)


def test_status_loads_neither_torch_nor_mpi4py():
    """A login node reads a sweep's status in a moment: no torch, no MPI."""
    import sys

    code = ("import sys; from hpcrobust.cli import build_parser; from hpcrobust.launch import status_view;"
            " build_parser(); print(sorted({'torch', 'mpi4py', 'transformers'} & set(sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr
