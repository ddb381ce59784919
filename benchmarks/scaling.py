"""Candidate-scoring throughput of one group, measured side by side in one run on the same work:

    2 ranks x 1 thread   (mpiexec -n 2; examples split across the ranks)
    1 rank  x 1 thread
    1 rank  x 2 threads

The work is the group's real scoring path (`attacks.base._score_round`): E examples, each with a batch
of C single-token-swap candidates, scored in fixed chunks with the prefix cache. Target: 2 ranks reach
at least 1.7x the throughput of 1 rank x 1 thread.

    python benchmarks/scaling.py [--size m] [--examples 8] [--candidates 128] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def worker(args: argparse.Namespace) -> None:
    """Runs on every rank: score the same candidates `repeats` times, print candidates/s on rank 0."""
    import torch

    from hpcrobust.attacks.base import ExampleState, _score_round
    from hpcrobust.attacks.engine import ScoringEngine
    from hpcrobust.config import FamilyConfig, ModelConfig
    from hpcrobust.models.loading import load_classifier
    from hpcrobust.parallel.comm import world
    from hpcrobust.tasks.generated import password_match
    from hpcrobust.tasks.placement import encode

    torch.set_num_threads(args.threads)
    comm = world()
    clf = load_classifier(ModelConfig(name_or_path=f"builtin:{args.size}"), FamilyConfig(), torch.device("cpu"), 0)
    val = password_match(2, args.examples, seed=0).val[: args.examples]
    rng = np.random.default_rng(0)
    states, cands = [], {}
    for i, ex in enumerate(val):
        enc = encode(clf.tokenizer, ex, "suffix")
        states.append(ExampleState(i, i, enc, np.zeros(0, dtype=np.int64)))
        base = rng.integers(10, clf.tokenizer.vocab_size, size=10)
        c = np.tile(base, (args.candidates, 1))
        c[np.arange(args.candidates), rng.integers(0, 10, args.candidates)] = rng.integers(
            10, clf.tokenizer.vocab_size, args.candidates)
        cands[i] = c
    engine = ScoringEngine(clf, chunk=args.chunk)
    for st in states:  # prefix caches are built once per example in an attack, not per iteration
        engine.prefix(st.i, st.enc)
    _score_round(engine, comm, states, cands)  # warm-up
    comm.barrier()
    t0 = time.perf_counter()
    for _ in range(args.repeats):
        scores = _score_round(engine, comm, states, cands)
    comm.barrier()
    dt = time.perf_counter() - t0
    if comm.rank == 0:
        n = args.repeats * args.examples * args.candidates
        digest = float(sum(s.losses.sum() for s in scores.values()))
        print(json.dumps({"candidates_per_s": n / dt, "seconds": dt, "loss_sum": digest}))


def launch(ranks: int, threads: int, args: argparse.Namespace) -> dict:
    mpiexec = Path(sys.executable).with_name("mpiexec")
    cmd = [str(mpiexec) if mpiexec.exists() else "mpiexec", "-n", str(ranks), sys.executable, __file__, "--worker",
           "--threads", str(threads), "--size", args.size, "--examples", str(args.examples),
           "--candidates", str(args.candidates), "--repeats", str(args.repeats), "--chunk", str(args.chunk)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--size", default="m")
    ap.add_argument("--examples", type=int, default=8)
    ap.add_argument("--candidates", type=int, default=128)
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    from hpcrobust.config import FamilyConfig
    from hpcrobust.models.family import ensure_built

    ensure_built(FamilyConfig(), [args.size])
    print(f"builtin:{args.size}, {args.examples} examples x {args.candidates} candidates x {args.repeats} repeats,"
          f" chunk {args.chunk}, {len(os.sched_getaffinity(0))} cores")
    runs = {(2, 1): None, (1, 1): None, (1, 2): None}
    for ranks, threads in runs:
        runs[(ranks, threads)] = launch(ranks, threads, args)
        r = runs[(ranks, threads)]
        print(f"{ranks} rank(s) x {threads} thread(s): {r['candidates_per_s']:9.1f} candidates/s"
              f"  ({r['seconds']:.2f} s)")
    base = runs[(1, 1)]["candidates_per_s"]
    print(f"2 ranks x 1 thread  / 1 rank x 1 thread: {runs[(2, 1)]['candidates_per_s'] / base:.2f}x  (target >= 1.7)")
    print(f"1 rank x 2 threads  / 1 rank x 1 thread: {runs[(1, 2)]['candidates_per_s'] / base:.2f}x")
    same = len({round(r["loss_sum"], 6) for r in runs.values()}) == 1
    print(f"same losses in all three setups: {same}")


if __name__ == "__main__":
    main()
