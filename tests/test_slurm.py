"""Against the real one-node SLURM cluster (tests/cluster/slurm_cluster.sh): submit with 2 tasks and compare
with `mpiexec -n 2`, preempt with USR2 and resume, job arrays over seeds, SLURM's own refusals, and a rendered
sbatch template. Jobs are watched with scontrol (sacct is off), always with a time limit."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from hpcrobust.launch.queue import JobInfo, job_info, wait_until_ended
from hpcrobust.store.reader import committed_rounds
from tests.conftest import TINY, reference_sweep, run_cli
from tests.h5compare import assert_same, datasets

pytestmark = pytest.mark.slurm
JOB_TIMEOUT_S = 240
ADV = ["seeds=[0]", "train_attacks=[{name: rt_train, type: random_token, n_attack_tokens: 5}]",
       "advtrain.rounds=4", "advtrain.attack=rt_train", "advtrain.n_new_examples=8", "advtrain.max_examples=32",
       "advtrain.iterations_start=4", "advtrain.iterations_end=8", "advtrain.lr=1e-3",
       "parallel.threads_per_rank=1"]


def _partition() -> str | None:
    if shutil.which("sinfo") is None:
        return None
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%R %a %t"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    rows = [ln.split() for ln in proc.stdout.splitlines() if len(ln.split()) == 3]
    usable = [r[0] for r in rows if r[1] == "up" and r[2] in ("idle", "mix", "alloc", "comp")]
    return ("debug" if "debug" in usable else usable[0]) if usable else None


@pytest.fixture(scope="module")
def partition() -> str:
    part = _partition()
    if part is None:
        pytest.skip("no SLURM cluster is up (start one with: bash tests/cluster/slurm_cluster.sh start)")
    return part


@pytest.fixture
def work(tmp_path, family_cache, partition) -> Path:
    (tmp_path / "tiny.yaml").write_text(TINY.read_text())
    return tmp_path


@pytest.fixture(scope="module")
def mpiexec_reference(tmp_path_factory, family_cache) -> Path:
    """The tiny sweep under `mpiexec -n 2`, the file a 2-task SLURM job must reproduce."""
    return reference_sweep(tmp_path_factory.mktemp("mpiexec"), [], output="mpi.h5", ranks=2)


def _submit(work: Path, partition: str, *overrides: str) -> list[str]:
    proc = run_cli(["submit", "tiny.yaml", f"launch.slurm_partition={partition}", "launch.timeout_min=10",
                    f"launch.folder={work}/logs/%j", *overrides], cwd=work, timeout=120)
    assert proc.returncode == 0, proc.stderr
    ids = re.findall(r"^submitted job (\S+) ", proc.stdout, flags=re.M)
    assert ids and f"log folder: {work}/logs/{ids[0]}" in proc.stdout, proc.stdout
    return ids


def _wait(ids: list[str], timeout: float = JOB_TIMEOUT_S) -> dict[str, JobInfo]:
    infos = wait_until_ended(ids, timeout, poll_s=0.5)
    if not all(i.ended for i in infos.values()):
        subprocess.run(["scancel", *ids], timeout=30)
        pytest.fail(f"jobs did not end within {timeout} s: {infos}")
    return infos


def _log(work: Path, job: str, task: int = 0) -> str:
    return (work / "logs" / job / f"{job}_{task}_log.err").read_text()


def test_submitted_sweep_with_two_tasks_matches_mpiexec(work, partition, mpiexec_reference):
    ids = _submit(work, partition, "launch.tasks_per_node=2", "launch.slurm_srun_args=[--mpi=pmi2]",
                  "output=slurm.h5")
    infos = _wait(ids)
    assert infos[ids[0]].state in ("COMPLETED", "GONE"), infos
    script = (work / "logs" / ids[0] / f"{ids[0]}_submission.sh").read_text()
    assert "#SBATCH --ntasks-per-node=2" in script and "--mpi=pmi2" in script
    log = _log(work, ids[0])
    assert "2 rank(s)" in log and "/submissions/" in log  # two MPI ranks, running the frozen code
    assert assert_same(mpiexec_reference, work / "slurm.h5") > 100


def test_usr2_after_a_commit_requeues_and_redoes_nothing_committed_or_kept(work, partition):
    """USR2 right after round 0 is committed: the job stops at the next commit, or (when the groups reach a save
    point first: a training step, an attack step) saves the round in progress and requeues. Either way no committed
    round is computed again, a round cut in the middle goes on from what it kept, and the file is the
    uninterrupted one."""
    ref = run_cli(["run", "tiny.yaml", *ADV, "output=ref.h5", "--quiet"], cwd=work)
    assert ref.returncode == 0, ref.stderr[-3000:]
    out = work / "pre.h5"
    (job,) = _submit(work, partition, *ADV, "launch.tasks_per_node=2", "output=pre.h5")
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not any(0 in v for k, v in _rounds(out).items()):
        assert time.monotonic() < deadline, f"round 0 never committed: {job_info(job)}"
        time.sleep(0.1)
    t_signal = time.monotonic()
    subprocess.run(["scancel", "--signal=USR2", job], check=True, timeout=30)
    seen: dict[str, float] = {}

    def note(info: JobInfo) -> None:
        if info.restarts >= 1:
            seen.setdefault(info.state, time.monotonic() - t_signal)

    infos = wait_until_ended([job], JOB_TIMEOUT_S, poll_s=0.5, on_change=note)
    info = infos[job]
    assert info.state == "COMPLETED" and info.restarts == 1, info
    assert set(_rounds(out).values()) == {frozenset(range(5))}
    assert_same(work / "ref.h5", out)
    first0, _, _ = _log(work, job, 0).partition("hpcrobust job: attempt 1")
    assert ("stopped after a committed round (SIGUSR2)" in first0
            or "saved the work in progress of 2 group(s) after SIGUSR2: requeueing" in first0), first0[-3000:]
    # under the queue schedule a task computes whichever run's round its group took: (run, round) over both tasks
    parts = [_log(work, job, task).partition("hpcrobust job: attempt 1") for task in (0, 1)]
    first, second = "".join(p[0] for p in parts), "".join(p[2] for p in parts)
    committed = {(k, int(r)) for k, r in re.findall(r"(\w+__seed0) round (\d+): committed", first)}
    assert any(r == 0 for _, r in committed), first[-3000:]
    done = [{(k, int(r)) for k, r in re.findall(r"(\w+__seed0) round (\d+): clean accuracy", part)}
            for part in (first, second)]
    assert done[0] and done[1] and done[0] | done[1] == {(k, r) for k in ("xs__seed0", "s__seed0")
                                                         for r in range(5)}, done
    assert not committed & done[1], (committed, done)  # nothing committed is computed again
    for key, rnd in done[0] & done[1]:  # a round cut in the middle went on from what it kept
        assert re.search(rf"{key} round {rnd}: (resumed after training|.*resumed at step|.*kept by an earlier"
                         " attempt)", second), second[-3000:]
    print(f"\nUSR2 -> requeued (PENDING) {seen.get('PENDING', -1):.1f} s, RUNNING again"
          f" {seen.get('RUNNING', -1):.1f} s, COMPLETED {seen.get('COMPLETED', -1):.1f} s after the signal")


# Two groups of one rank (xs and s), each fine-tuning 256 steps (12-17 s on an idle 2-core machine) and keeping a
# step every 0.6 s on its own schedule: the first scheduled save of each run shows from outside that both are
# training (the minutes before the first step vary too much with the machine's load to aim a signal by the clock
# alone). The saves come often and the training lasts long so that the ranks' start skew under srun (seconds on a
# loaded machine) cannot let xs finish before s keeps its first step; CI once saw that with 128 steps and 3 s saves.
LONG_TRAIN = ["seeds=[0]", "finetune.epochs=32", "launch.save_every_min=0.01", "parallel.threads_per_rank=1"]


def test_usr2_inside_training_saves_every_group_requeues_and_resumes_at_the_saved_step(work, partition):
    ref = run_cli(["run", "tiny.yaml", *LONG_TRAIN, "output=ref.h5", "--quiet"], cwd=work, ranks=2)
    assert ref.returncode == 0, ref.stderr[-3000:]
    out = work / "mid.h5"
    (job,) = _submit(work, partition, *LONG_TRAIN, "launch.tasks_per_node=2", "output=mid.h5")
    deadline = time.monotonic() + JOB_TIMEOUT_S
    steps = [work / "mid.h5.ckpt" / run / "round_0000.train" / "steps.pt" for run in ("xs__seed0", "s__seed0")]
    while not all(p.is_file() for p in steps):
        assert time.monotonic() < deadline, (f"the runs never kept a training step at the same time"
                                             f" ({[p.is_file() for p in steps]}): {job_info(job)}")
        time.sleep(0.05)
    t_signal = time.monotonic()
    subprocess.run(["scancel", "--signal=USR2", job], check=True, timeout=30)
    seen: dict[str, float] = {}

    def note(info: JobInfo) -> None:
        if info.restarts >= 1:
            seen.setdefault(info.state, time.monotonic() - t_signal)

    info = wait_until_ended([job], JOB_TIMEOUT_S, poll_s=0.5, on_change=note)[job]
    assert info.state == "COMPLETED" and info.restarts == 1, info
    assert assert_same(work / "ref.h5", out) > 50
    first0, _, _ = _log(work, job, 0).partition("hpcrobust job: attempt 1")
    assert "saved the work in progress of 2 group(s) after SIGUSR2: requeueing" in first0, first0[-3000:]
    assert "no round committed" not in first0 and "clean accuracy" not in first0  # requeued inside training
    logs = [_log(work, job, task).partition("hpcrobust job: attempt 1") for task in (0, 1)]
    for size in ("xs", "s"):
        # under the queue a run may go on in either group after the requeue, so both tasks' logs are read
        said = rf"(?<!\w){size}__seed0 finetune: kept step (\d+) of 256 \(a save was requested\)"
        kept = [k for first, _, _ in logs for k in re.findall(said, first)]
        assert len(kept) == 1, [first[-3000:] for first, _, _ in logs]  # one save for the request
        went_on = rf"(?<!\w){size}__seed0 finetune: training resumed at step (\d+) of 256"
        resumed = [k for _, _, second in logs for k in re.findall(went_on, second)]
        # the requeued job goes on from the step saved for USR2, or a later one the group kept on its schedule before
        # the other group had saved: never an older one, so no step before the signal is computed twice
        assert len(resumed) == 1 and 1 < int(kept[0]) <= int(resumed[0]) < 256, (size, kept, resumed)
    print(f"\nUSR2 inside training -> requeued (PENDING) {seen.get('PENDING', -1):.1f} s, RUNNING again"
          f" {seen.get('RUNNING', -1):.1f} s, COMPLETED {seen.get('COMPLETED', -1):.1f} s after the signal")


# Two groups under the queue schedule, each in a long RandomToken attack (xs and s) that keeps its state every 1.2 s.
LONG_ATTACK = ["seeds=[0]", "parallel.schedule=queue", "launch.save_every_min=0.02", "parallel.threads_per_rank=1",
               "attacks=[{name: rt, type: random_token, n_examples: 16, n_iterations: 4000, n_attack_tokens: 5}]"]


def test_usr2_inside_an_attack_under_the_queue_saves_requeues_and_resumes(work, partition):
    ref = run_cli(["run", "tiny.yaml", *LONG_ATTACK, "output=ref.h5", "--quiet"], cwd=work, ranks=2)
    assert ref.returncode == 0, ref.stderr[-3000:]
    out = work / "att.h5"
    (job,) = _submit(work, partition, *LONG_ATTACK, "launch.tasks_per_node=2", "output=att.h5")
    deadline = time.monotonic() + JOB_TIMEOUT_S
    states = [work / "att.h5.ckpt" / run / "round_0000" / "attacks" / "rt.state.h5"
              for run in ("xs__seed0", "s__seed0")]
    while not any(p.is_file() for p in states):
        assert time.monotonic() < deadline, f"no attack kept its state: {job_info(job)}"
        time.sleep(0.05)
    subprocess.run(["scancel", "--signal=USR2", job], check=True, timeout=30)
    info = wait_until_ended([job], JOB_TIMEOUT_S, poll_s=0.5)[job]
    assert info.state == "COMPLETED" and info.restarts == 1, info
    assert assert_same(work / "ref.h5", out) > 20
    logs = [_log(work, job, task).partition("hpcrobust job: attempt 1") for task in (0, 1)]
    assert "saved the work in progress of 2 group(s) after SIGUSR2: requeueing" in logs[0][0], logs[0][0][-3000:]
    said = r"\] (\S+) round 0: rt: kept its state \(a save was requested\)"
    kept = [k for first, _, _ in logs for k in re.findall(said, first)]
    assert kept, [first[-2000:] for first, _, _ in logs]  # at least one group was inside its attack
    for run in kept:  # a run that kept its state for USR2 goes on from it, not from the start
        resumed = [int(k) for _, _, second in logs
                   for k in re.findall(rf"\] {re.escape(run)} round 0: rt resumed at step (\d+) of", second)]
        assert len(resumed) == 1 and resumed[0] > 0, (run, [second[-2000:] for _, _, second in logs])


def test_plain_scancel_still_cancels(work, partition):
    out = work / "cancel.h5"
    (job,) = _submit(work, partition, *ADV, "advtrain.rounds=20", "launch.tasks_per_node=2", "output=cancel.h5")
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not _rounds(out):
        assert time.monotonic() < deadline, f"round 0 never committed: {job_info(job)}"
        time.sleep(0.1)
    subprocess.run(["scancel", job], check=True, timeout=30)
    info = _wait([job])[job]
    assert info.state == "CANCELLED" and info.restarts == 0, info  # SIGTERM of a cancel is not a preemption
    assert _rounds(out)  # and what was committed stays


def _rounds(out: Path) -> dict[str, frozenset[int]]:
    try:
        return {k: frozenset(v) for k, v in committed_rounds(out).items() if k != "__transfer__"}
    except Exception:  # noqa: BLE001 - not there yet, or being renamed into place
        return {}


def test_job_array_over_seeds_writes_one_file_per_seed(work, partition, mpiexec_reference):
    ids = _submit(work, partition, "launch.array_over=seeds", "launch.tasks_per_node=1", "output=arr.h5")
    assert [i.rsplit("_", 1)[1] for i in ids] == ["0", "1"]
    infos = _wait(ids)
    assert all(i.state in ("COMPLETED", "GONE") for i in infos.values()), infos
    full = datasets(mpiexec_reference)
    for seed in (0, 1):
        part = datasets(work / f"arr.seed{seed}.h5")
        runs = {k for k in part if k.startswith("runs/")}
        assert runs and all(f"__seed{seed}" in k for k in runs)
        for k in sorted(runs - {k for k in runs if k.endswith("@run_index")}):  # what each run stores (not where
            # it sits in the sweep's plan) is what it stores in the whole sweep
            a, b = np.asarray(part[k]), np.asarray(full[k])
            assert a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), k


def test_slurm_refusal_comes_back_as_one_line(work, partition):
    proc = run_cli(["submit", "tiny.yaml", "launch.slurm_partition=no_such_partition",
                    f"launch.folder={work}/logs/%j"], cwd=work, timeout=120)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "SLURM refused the job" in lines[0] and "invalid partition" in lines[0].lower()
    assert not proc.stdout


def test_rendered_sbatch_template_runs_two_ranks(work, partition):
    proc = run_cli(["sbatch", "tiny.yaml", "seeds=[0]", "models=[builtin:xs]", "attacks=[]", "output=tpl.h5",
                    f"launch.slurm_partition={partition}", "launch.tasks_per_node=2", "launch.timeout_min=10",
                    f"launch.folder={work}/logs/%j"], cwd=work)
    assert proc.returncode == 0, proc.stderr
    (work / "job.sbatch").write_text(proc.stdout)
    sub = subprocess.run(["sbatch", "--parsable", "job.sbatch"], cwd=work, capture_output=True, text=True,
                         timeout=60)
    assert sub.returncode == 0, sub.stderr
    job = sub.stdout.strip().split(";")[0]
    info = _wait([job])[job]
    log = (work / "logs" / f"hpcrobust-tiny-{job}.out").read_text()
    assert info.state in ("COMPLETED", "GONE"), (info, log[-2000:])
    assert "2 rank(s)" in log
    assert committed_rounds(work / "tpl.h5")["xs__seed0"] == {0}



def test_per_size_job_matches_mpiexec(work, partition, mpiexec_reference):
    """models.N.ranks/groups: xs and s each on its own 1-rank group (both seeds in turn); `submit` sizes the job
    from them (1 + 1 ranks: one node of launch.tasks_per_node=2). A group of 2 beside one of 1 would need 3 tasks,
    which this 2-core node refuses (--ntasks-per-node=3, even with --overcommit); tests/test_per_size.py runs that
    layout under mpiexec."""
    ids = _submit(work, partition, "launch.tasks_per_node=2", "models.0.ranks=1", "models.0.groups=1",
                  "models.1.ranks=1", "models.1.groups=1", "output=sizes.h5")
    infos = _wait(ids)
    assert infos[ids[0]].state in ("COMPLETED", "GONE"), infos
    script = (work / "logs" / ids[0] / f"{ids[0]}_submission.sh").read_text()
    assert "#SBATCH --nodes=1" in script and "#SBATCH --ntasks-per-node=2" in script
    assert "2 rank(s) in 2 group(s) (xs: 1 group x 1 rank, s: 1 group x 1 rank)" in _log(work, ids[0])
    assert assert_same(mpiexec_reference, work / "sizes.h5") > 100
