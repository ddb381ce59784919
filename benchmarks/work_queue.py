"""Wall time of one sweep under parallel.schedule=rounds (every run's round r, then a barrier and one commit)
and parallel.schedule=queue (groups take the next runnable (run, round), largest first, and commit alone),
side by side in one run, on 2 groups of 1 rank:

    python benchmarks/work_queue.py [--sizes s l] [--seeds 1] [--rounds 10] [--no-equal-compute] [--out DIR]

The two built-in sizes are about 10x apart in parameters (s: 0.12M, l: 1.6M with the test family's
vocabulary). By default the rounds per size are the paper's equal-compute ones (advtrain.equal_compute: the
small size gets `--rounds` adversarial rounds, the large one about 1/13 of them), so under the barrier the
group with the small run waits for the large one in the first rounds and the other group idles in the rest;
the queue lets each go at its own pace. `--no-equal-compute --seeds 3 --rounds 2` is the other case: every size
the same rounds, 3 seeds dealt round-robin (one group gets two large runs per round). Prints each schedule's
wall time, their ratio, what the plan's schedules predict from the recorded run-round seconds, and checks that
both files hold the same values.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.h5compare import assert_same  # noqa: E402

CONFIG = """output: out.h5
seeds: {seeds}
task: {{name: password_match, n_train: 256, n_val: 32}}
models: [{models}]
family: {{vocab_size: 400, corpus_lines: 3000, pretrain_steps: 30}}
finetune: {{epochs: 1, lr: 2.0e-3, batch_size: 32, micro_batch_size: 16, eval_batch_size: 16}}
parallel: {{score_chunk: 16, threads_per_rank: 1}}
attacks:
  - {{name: rt, type: random_token, n_examples: 8, n_iterations: 160, n_attack_tokens: 5}}
  - {{name: gcg, type: gcg, n_examples: 8, n_iterations: 8, n_attack_tokens: 4, search_width: 32, topk: 32}}
train_attacks: [{{name: rt_train, type: random_token, n_attack_tokens: 5}}]
advtrain: {{rounds: {rounds}, attack: rt_train, n_new_examples: 12, max_examples: 48, iterations_start: 4,
           iterations_end: 12, lr: 1.0e-3, equal_compute: {equal}}}
"""


def run(cmd: list[str], cwd: Path, env: dict) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", nargs=2, default=["s", "l"])
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--no-equal-compute", dest="equal", action="store_false")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="work_queue_"))
    out.mkdir(parents=True, exist_ok=True)
    cfg = out / "bench.yaml"
    cfg.write_text(CONFIG.format(seeds=list(range(args.seeds)), rounds=args.rounds, equal=str(args.equal).lower(),
                                 models=", ".join(f"builtin:{s}" for s in args.sizes)))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    env.setdefault("HPCROBUST_CACHE", str(out / "cache"))
    py, mpiexec = sys.executable, str(Path(sys.executable).with_name("mpiexec"))
    cli = [py, "-m", "hpcrobust.cli", "run", str(cfg), "--quiet"]
    # build the family first (not timed)
    run([*cli, "output=warm.h5", "seeds=[0]", "advtrain.rounds=0", "attacks=[]"], out, env)
    times = {}
    for schedule in ("rounds", "queue"):
        times[schedule] = run([mpiexec, "-n", "2", *cli, f"output={schedule}.h5", f"parallel.schedule={schedule}"],
                              out, env)
        print(f"{schedule:>6}: {times[schedule]:7.1f} s", flush=True)
    n = assert_same(out / "rounds.h5", out / "queue.h5", root_attrs=False)
    per = "equal-compute rounds per size from" if args.equal else "every size"
    print(f"sizes {' and '.join(args.sizes)}, {args.seeds} seed(s), {per} {args.rounds} adversarial rounds, 2 groups"
          " of 1 rank")
    print(f"rounds / queue wall time: {times['rounds'] / times['queue']:.2f}x  (files equal: {n} datasets and"
          " attributes compared)")
    predicted(out / "rounds.h5")


def predicted(path: Path) -> None:
    """What the plan's schedules (planner/schedule.py) make of the run rounds' recorded seconds: the ratio a
    perfect barrier and a perfect queue would give with these per-round times (transfer and commits left out)."""
    from hpcrobust.planner.schedule import barrier_schedule, queue_schedule
    from hpcrobust.store.reader import load

    df = load(path).sort_values(["run_index", "round"])
    runs = list(dict.fromkeys(df["run"]))
    secs = {r: df[df["run"] == r]["wall_time"].tolist() for r in runs}
    last = {r: len(secs[r]) - 1 for r in runs}
    weight = {r: float(df[df["run"] == r]["n_params"].iloc[0]) for r in runs}
    deal = [[r for i, r in enumerate(runs) if i % 2 == g] for g in range(2)]  # the rounds schedule's deal
    barrier = barrier_schedule(deal, last, secs).wall_s
    queue = queue_schedule(runs, dict.fromkeys(runs, [0, 1]), 2, last, secs, weight).wall_s
    per_size = df.groupby("model_label")["wall_time"].mean()
    print("mean seconds of a run round: " + ", ".join(f"{k} {v:.1f}" for k, v in per_size.items())
          + f" ({per_size.max() / per_size.min():.1f}x apart)")
    print(f"predicted from those seconds: rounds {barrier:.1f} s, queue {queue:.1f} s, {barrier / queue:.2f}x")


if __name__ == "__main__":
    main()
