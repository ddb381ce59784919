"""parallel.schedule=queue: groups take (run, round) items from a claim file and commit each alone."""

from __future__ import annotations

import json

import h5py

from hpcrobust.sweep.queue import ENSEMBLE, MATRIX, ROUND, TRANSFER, Item, QueuePlan, WorkQueue
from tests.conftest import run_cli
from tests.h5compare import assert_same

ADV = ["train_attacks=[{name: rt_train, type: random_token, n_attack_tokens: 5}]", "advtrain.rounds=2",
       "advtrain.attack=rt_train", "advtrain.n_new_examples=12", "advtrain.max_examples=48",
       "advtrain.iterations_start=4", "advtrain.iterations_end=12", "advtrain.lr=1e-3", "seeds=[0]"]


def _plan() -> QueuePlan:
    # run 0: small (1 param), 3 rounds; run 1: large (10 params), 2 rounds; transfer in round 0 across both
    return QueuePlan(last_round={0: 2, 1: 1}, eligible={0: frozenset({0, 1}), 1: frozenset({1})},
                     weight={0: 1.0, 1: 10.0}, transfer={0: [frozenset({0, 1})]})


def test_queue_order_needs_and_claims(tmp_path):
    q = WorkQueue(tmp_path, _plan())
    q.start(0, set())
    assert q.take(1) == Item(ROUND, 0, 1)  # the largest run first
    assert q.take(1) == Item(ROUND, 0, 0)  # its next round needs round 0 committed: the small run's round 0
    assert q.take(0) is False  # nothing runnable for group 0 (run 1 is not eligible, run 0 is claimed)
    q.finish(Item(ROUND, 0, 0))
    assert q.take(0) == Item(ROUND, 1, 0)  # run 0's round 1; the transfer column waits for run 1's round 0
    q.finish(Item(ROUND, 0, 1))
    assert q.take(0) == Item(TRANSFER, 0, 0)  # short items that complete a round's records come first
    assert q.take(1) == Item(TRANSFER, 0, 1)
    assert q.take(1) == Item(ROUND, 1, 1)
    assert q.take(1) is False  # the matrix waits for both columns
    for it in (Item(TRANSFER, 0, 0), Item(TRANSFER, 0, 1)):
        q.finish(it)
    assert q.take(0) == Item(MATRIX, 0)
    # a new attempt drops the claims of the killed one and keeps what was done
    q.start(1, {Item(ROUND, 0, 0), Item(ROUND, 0, 1), Item(TRANSFER, 0, 0), Item(TRANSFER, 0, 1)})
    state = json.loads((tmp_path / "queue.json").read_text())
    assert state["claims"] == {} and state["attempt"] == 1
    taken = []
    while (it := q.take(1)) is not None:
        assert it is not False
        taken.append(it)
        q.finish(it)
    assert taken == [Item(MATRIX, 0), Item(ROUND, 1, 1), Item(ROUND, 1, 0), Item(ROUND, 2, 0)]


def test_an_ensemble_item_waits_for_every_size_of_its_seed(tmp_path):
    # runs 0 and 1: two sizes of one seed, both in an ensemble in rounds 0 and 1; run 1 is 10x larger
    plan = QueuePlan(last_round={0: 1, 1: 1}, eligible={0: frozenset({0}), 1: frozenset({1})},
                     weight={0: 1.0, 1: 10.0}, transfer={}, ensemble={0: [frozenset({0, 1})], 1: [frozenset({0, 1})]})
    assert plan.needs(Item(ENSEMBLE, 1, 0)) == [Item(ROUND, 1, 0), Item(ROUND, 1, 1)]
    q = WorkQueue(tmp_path, plan)
    q.start(0, set())
    assert q.take(0) == Item(ROUND, 0, 0)
    q.finish(Item(ROUND, 0, 0))
    assert q.take(0) == Item(ROUND, 1, 0)  # the small run goes on; the ensemble waits for the large one
    assert q.take(1) == Item(ROUND, 0, 1)
    q.finish(Item(ROUND, 0, 1))
    assert q.take(1) == Item(ENSEMBLE, 0, 0)  # any group may take it, before the large run's next round
    assert q.take(1) == Item(ROUND, 1, 1)
    assert q.take(0) is False


# the tiny config's two attacks (each in the transfer matrices) and an ensemble GCG over both sizes
ATTACKS = ["attacks=[{name: rt, type: random_token, n_examples: 6, n_iterations: 40, n_attack_tokens: 5},"
           " {name: gcg, type: gcg, n_examples: 4, n_iterations: 3, n_attack_tokens: 4, search_width: 24, topk: 32},"
           " {name: ens, type: gcg, ensemble: true, n_examples: 3, n_iterations: 2, n_attack_tokens: 4,"
           " search_width: 16, topk: 32}]"]


def test_queue_on_two_groups_stores_what_rounds_store(tiny):
    """Two groups take items from the queue; a stop after round 0, then a rerun; the file equals one rank's
    round-by-round file, transfer matrices and the ensemble's results (added to committed rounds) included."""
    d = tiny.parent
    ref = run_cli(["run", str(tiny), "output=rounds.h5", "--quiet", *ADV, *ATTACKS], cwd=d)
    assert ref.returncode == 0, ref.stderr
    stop = run_cli(["run", str(tiny), "output=q.h5", "parallel.schedule=queue", "debug.stop_after_round=0", *ADV,
                    *ATTACKS], ranks=2, cwd=d)
    assert stop.returncode == 3, stop.stderr
    with h5py.File(d / "q.h5") as f:
        assert sorted(f["runs/xs__seed0/rounds"]) == ["0000"] and sorted(f["transfer"]) == ["0000"]
        assert sorted(f["runs/s__seed0/rounds/0000/attacks"]) == ["ens", "gcg", "rt"]
    rest = run_cli(["run", str(tiny), "output=q.h5", "parallel.schedule=queue", *ADV, *ATTACKS], ranks=2, cwd=d)
    assert rest.returncode == 0, rest.stderr
    assert "s__seed0 round 2: committed" in rest.stderr and "round 0: transfer matrix" not in rest.stderr
    assert "round 2: ensemble attacks of seed 0 committed" in rest.stderr
    assert "round 0: ensemble attacks" not in rest.stderr
    assert assert_same(d / "rounds.h5", d / "q.h5", root_attrs=False) > 40
    with h5py.File(d / "q.h5") as f:
        assert sorted(f["transfer"]) == ["0000", "0001", "0002"]


def test_status_marks_the_claimed_rounds_running(tmp_path):
    from hpcrobust.launch.status import RUNNING, WAITING, RunStatus, _cells, queue_claims
    from hpcrobust.store.results import ResultsFile

    rf = ResultsFile(tmp_path / "out.h5")
    runs = [RunStatus("xs__seed0", "xs", 2), RunStatus("s__seed0", "s", 2)]
    assert queue_claims(rf, runs) is None  # a sweep under the rounds schedule has no claim file
    rf.checkpoint_root.mkdir()
    (rf.checkpoint_root / "queue.json").write_text(json.dumps(
        {"attempt": 0, "done": ["round:0:0"], "claims": {"round:0:1": 0, "round:1:0": 1, "transfer:0:0": 0}}))
    claims = queue_claims(rf, runs)
    assert claims == {"xs__seed0": {1}, "s__seed0": {0}}
    runs[0].rounds[0] = {}
    assert _cells(runs[0], "running", claims["xs__seed0"])[1:] == [RUNNING, WAITING]
    assert _cells(runs[1], "running", claims["s__seed0"]) == [RUNNING, WAITING, WAITING]


def test_the_plan_simulates_the_queue_against_the_barrier():
    from hpcrobust.planner.schedule import barrier_schedule, queue_schedule

    # a large run (10 s a round) and two small ones (1 s), 3 rounds each, on 2 groups; dealt round-robin in run
    # order, the barrier makes every round wait for the group with the large run and a small one
    runs = ["S1", "S2", "L"]
    last = dict.fromkeys(runs, 2)
    secs = {"S1": [1.0] * 3, "S2": [1.0] * 3, "L": [10.0] * 3}
    barrier = barrier_schedule([["S1", "L"], ["S2"]], last, secs)
    assert barrier.wall_s == 33.0 and barrier.round_s == [11.0] * 3
    queue = queue_schedule(runs, dict.fromkeys(runs, [0, 1]), 2, last, secs, {"S1": 1.0, "S2": 1.0, "L": 10.0})
    assert queue.wall_s == 30.0 and queue.round_s == [10.0] * 3  # the large run never waits
    assert queue.runs_by_group == [["L"], ["S1", "S2"]]
    # a run's round waits for its previous round, even with a group free
    one = queue_schedule(["L"], {"L": [0, 1]}, 2, {"L": 2}, {"L": [10.0] * 3}, {"L": 1.0})
    assert one.wall_s == 30.0 and one.runs_by_group == [["L"], []]
    # per size: a run only goes to its own groups
    only = queue_schedule(runs, {"S1": [1], "S2": [1], "L": [0]}, 2, last, secs, {"S1": 1.0, "S2": 1.0, "L": 10.0})
    assert only.runs_by_group == [["L"], ["S1", "S2"]] and only.wall_s == 30.0
