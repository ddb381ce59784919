"""Resume inside an attack, with real SIGKILLs at seeded random moments inside GCG, BEAST and RandomToken
evaluation attacks and inside the training attack: each rerun goes on from the kept step (and says so), the file
it ends with equals an uninterrupted run's (every dataset and attribute, to the bit), and no example's step is
proposed twice except the steps after the last save of the killed attempt. Also a group of 2 MPI ranks killed
inside an attack and resumed on 2 and on 1 rank, and a save request (savepoint.py) honoured at the next step."""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import ROOT, mpiexec
from tests.h5compare import assert_same

DRIVER = ROOT / "tests" / "attack_resume_driver.py"
# one size, one seed; steps per attack: rt 3 (40 iterations in chunks of 16), gcg 3, beast 4
ATTACKS = ("attacks=[{name: rt, type: random_token, n_examples: 12, n_iterations: 40, n_attack_tokens: 5},"
           " {name: gcg, type: gcg, n_examples: 10, n_iterations: 3, n_attack_tokens: 4, search_width: 24,"
           " topk: 32, buffer_size: 2},"
           " {name: beast, type: beast, n_examples: 10, n_iterations: 4, n_attack_tokens: 4, beam_width: 3,"
           " branching: 3}]")
STEPS = {"rt": 3, "gcg": 3, "beast": 4, "gcg_train": 3}
EVAL = ["seeds=[0]", "models=[builtin:xs]", "launch.save_every_min=0", ATTACKS]
# one adversarial round whose training attack is GCG on 8 training examples (all attacked); one small evaluation
ADV = [*EVAL[:3], "attacks=[{name: rt, type: random_token, n_examples: 4, n_iterations: 16, n_attack_tokens: 5}]",
       "train_attacks=[{name: gcg_train, type: gcg, n_attack_tokens: 4, search_width: 16, topk: 32}]",
       "advtrain.rounds=1", "advtrain.attack=gcg_train", "advtrain.n_new_examples=8", "advtrain.max_examples=32",
       "advtrain.iterations_start=3", "advtrain.iterations_end=3", "advtrain.epochs=1"]


def _start(cwd: Path, tag: str, mode: str, args: list[str], ranks: int = 0) -> subprocess.Popen:
    cmd = [sys.executable, str(DRIVER), tag, mode, str(cwd / "paused"), "tiny.yaml", *args, "output=out.h5"]
    if ranks:
        cmd = [mpiexec(), "-n", str(ranks), *cmd]
    return subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=open(cwd / f"log-{tag}.txt", "w"),
                            start_new_session=True, env={**os.environ, "PYTHONPATH": str(ROOT)})


def _kill_when_paused(cwd: Path, tag: str, mode: str, args: list[str], ranks: int = 0) -> str:
    """Run until the driver pauses at `mode`, SIGKILL every process it started; what it paused on."""
    marker = cwd / "paused"
    marker.unlink(missing_ok=True)
    p = _start(cwd, tag, mode, args, ranks)
    deadline = time.monotonic() + 300
    while not marker.exists() or not marker.read_text():
        assert p.poll() is None, _log(cwd, tag)[-3000:]
        assert time.monotonic() < deadline, f"the sweep never reached {mode}"
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    return marker.read_text()


def _finish(cwd: Path, tag: str, args: list[str], ranks: int = 0) -> str:
    p = _start(cwd, tag, "none", args, ranks)
    assert p.wait(timeout=600) == 0, _log(cwd, tag)[-3000:]
    return _log(cwd, tag)


def _log(cwd: Path, tag: str) -> str:
    return (cwd / f"log-{tag}.txt").read_text()


def _proposals(cwd: Path, tag: str) -> Counter:
    """(purpose, round, attack, example, step) -> how often it was proposed in attempt `tag` (all ranks)."""
    out: Counter = Counter()
    for f in cwd.glob(f"proposals-{tag}-*.txt"):
        out.update(tuple(line.split()) for line in f.read_text().splitlines())
    return out


def _saves(cwd: Path, tag: str) -> list[str]:
    return [ln for f in sorted(cwd.glob(f"saves-{tag}-*.txt")) for ln in f.read_text().splitlines()]


def _copy_config(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "tiny.yaml").write_text((ROOT / "tests" / "data" / "tiny.yaml").read_text())
    return d


def _reference(d: Path, args: list[str]) -> tuple[Path, Counter]:
    cwd = _copy_config(d)
    _finish(cwd, "ref", args)
    return cwd / "out.h5", _proposals(cwd, "ref")


@pytest.fixture(scope="module")
def ref_eval(tmp_path_factory, family_cache) -> tuple[Path, Counter]:
    return _reference(tmp_path_factory.mktemp("attack-ref-eval"), EVAL)


@pytest.fixture(scope="module")
def ref_adv(tmp_path_factory, family_cache) -> tuple[Path, Counter]:
    return _reference(tmp_path_factory.mktemp("attack-ref-adv"), ADV)


def _check_attempts(cwd: Path, ref: Counter, killed: list[tuple[str, str, str, int]], last: str) -> None:
    """`killed`: (attempt tag, round, attack, step the next attempt must go on from). Every proposal of the
    uninterrupted run is made, and the only ones made twice are the killed attempts' at or after the kept step."""
    total: Counter = Counter()
    for tag, *_ in killed:
        total += _proposals(cwd, tag)
    total += _proposals(cwd, last)
    assert set(total) == set(ref)
    again: Counter = Counter()
    for k, (tag, rnd, name, step) in enumerate(killed):
        nxt = killed[k + 1][0] if k + 1 < len(killed) else last
        mine = {p: n for p, n in _proposals(cwd, tag).items() if p[1:3] == (rnd, name)}
        again.update({p: n for p, n in mine.items() if int(p[4]) >= step})
        later = [int(p[4]) for p in _proposals(cwd, nxt) if p[1:3] == (rnd, name)]
        due = min(int(p[4]) for p in ref if p[1:3] == (rnd, name) and int(p[4]) >= step)
        assert later and min(later) == due  # the rerun starts exactly at the kept step (its first work from there)
    assert total == ref + again, (total - ref - again, ref + again - total)


def test_kills_at_random_steps_inside_each_evaluation_attack(tmp_path, ref_eval):
    """One sweep killed inside RandomToken, then (rerun) inside GCG, then inside BEAST, at seeded random steps,
    each before a step's first proposal or after its candidates were scored; the last rerun finishes it."""
    ref_file, ref = ref_eval
    cwd = _copy_config(tmp_path)
    rng = random.Random(2024)
    killed = []
    for k, name in enumerate(("rt", "gcg", "beast")):
        # BEAST from step 2 on: its sampler cache is then fed the kept trail of beams again (uncounted)
        step, when = rng.randrange(2 if name == "beast" else 0, STEPS[name]), rng.choice(["propose", "scored"])
        _kill_when_paused(cwd, f"a{k}", f"{when}:0:{name}:{step}", EVAL)
        killed.append((f"a{k}", "0", name, step))
        if k:  # the attempt that was killed here went on inside the attack killed before
            prev = killed[k - 1]
            assert f"round 0: {prev[2]} resumed at step {prev[3]} of {STEPS[prev[2]]}" in _log(cwd, f"a{k}")
    log = _finish(cwd, "last", EVAL)
    assert f"round 0: beast resumed at step {killed[-1][3]} of 4" in log, log[-2000:]
    kept = {name: "resumed: kept by an earlier attempt" in next(ln for ln in log.splitlines() if f"{name} ASR" in ln)
            for name in ("rt", "gcg", "beast")}
    assert kept == {"rt": True, "gcg": True, "beast": False}  # kept results are not attacked again
    _check_attempts(cwd, ref, killed, "last")
    assert assert_same(ref_file, cwd / "out.h5") > 50
    assert not list((cwd / "out.h5.ckpt").rglob("*.state.h5"))  # removed once each result is kept


def test_a_kill_inside_the_training_attack(tmp_path, ref_adv):
    ref_file, ref = ref_adv
    cwd = _copy_config(tmp_path)
    step = random.Random(7).randrange(1, STEPS["gcg_train"])
    _kill_when_paused(cwd, "a0", f"scored:1:gcg_train:{step}", ADV)
    log = _finish(cwd, "last", ADV)
    assert f"round 1: training attack gcg_train resumed at step {step} of 3" in log, log[-2000:]
    _check_attempts(cwd, ref, [("a0", "1", "gcg_train", step)], "last")
    assert assert_same(ref_file, cwd / "out.h5") > 50


def test_a_group_of_two_killed_inside_an_attack_resumes_on_two_and_on_one_rank(tmp_path, ref_eval):
    """The kept state is the group's (FLOPs of both ranks summed): 2 ranks and 1 rank go on from it to the same
    bits as an uninterrupted run."""
    ref_file, ref = ref_eval
    killed = _copy_config(tmp_path / "killed")
    _kill_when_paused(killed, "a0", "scored:0:gcg:2", [*EVAL, "parallel.ranks_per_group=2"], ranks=2)
    for ranks in (2, 1):  # the same killed folder, resumed twice
        cwd = tmp_path / f"r{ranks}"
        shutil.copytree(killed, cwd)
        args = [*EVAL, "parallel.ranks_per_group=2"] if ranks == 2 else EVAL
        log = _finish(cwd, "last", args, ranks=ranks)
        assert "round 0: gcg resumed at step 2 of 3" in log, log[-2000:]
        _check_attempts(cwd, ref, [("a0", "0", "gcg", 2)], "last")
        assert assert_same(ref_file, cwd / "out.h5") > 50


def test_a_save_request_is_honoured_at_the_next_step(tmp_path, ref_eval):
    """With saves due only every 1000 minutes, nothing is kept inside an attack until savepoint.request() (as
    USR2 makes): then the attack keeps its state after the step in progress."""
    ref_file, ref = ref_eval
    cwd = _copy_config(tmp_path)
    args = [*EVAL, "launch.save_every_min=1000"]
    what = _kill_when_paused(cwd, "a0", "request:0:gcg:1", args)
    assert re.fullmatch(r"saved \S+ round 0: gcg 2", what), what
    assert [s.split()[-2:] for s in _saves(cwd, "a0")] == [["gcg", "2"]]  # the only kept attack state
    log = _finish(cwd, "last", args)
    assert "round 0: gcg resumed at step 2 of 3" in log, log[-2000:]
    _check_attempts(cwd, ref, [("a0", "0", "gcg", 2)], "last")
    assert assert_same(ref_file, cwd / "out.h5") > 50


ENSEMBLE = ["seeds=[0]", "launch.save_every_min=0", "attacks=[{name: ens, type: gcg, ensemble: true, n_examples: 8,"
            " n_iterations: 2, n_attack_tokens: 4, search_width: 16, topk: 32}]"]


def test_a_kill_inside_an_ensemble_goes_on_from_its_last_example(tmp_path, family_cache):
    """Ensemble GCG (both sizes of a seed) keeps its state between examples: killed right after keeping example
    k's start, the rerun goes on at example k, no example's gradients are computed twice, and the file equals an
    uninterrupted run's."""
    ref_file, ref = _reference(tmp_path / "ref", ENSEMBLE)
    cwd = _copy_config(tmp_path / "killed")
    k = random.Random(5).randrange(1, 8)
    _kill_when_paused(cwd, "a0", f"saved:0:ens:{k}", ENSEMBLE)
    log = _finish(cwd, "last", ENSEMBLE)
    assert f"round 0: ensemble ens (seed 0) resumed at example {k} of 8" in log, log[-2000:]
    _check_attempts(cwd, ref, [("a0", "0", "ens", k)], "last")
    assert assert_same(ref_file, cwd / "out.h5") > 50
    assert not list((cwd / "out.h5.ckpt").rglob("*.state.h5"))
