"""Fine-tuning throughput per built-in size, against this machine's own fp32 matmul rate.

Prints, for each size: tokens/s, nominal FLOP/s (6·N·T per second) and actual FLOP/s (what the
counter says was multiplied), each also as a fraction of a torch fp32 matrix-multiply rate
measured in the same run. Usage:

    python benchmarks/finetune_throughput.py [--sizes s,m,l] [--examples 1024] [--threads 0]
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from hpcrobust.config import FamilyConfig, ModelConfig, TaskConfig
from hpcrobust.models import family
from hpcrobust.models.loading import load_classifier
from hpcrobust.parallel.comm import Comm
from hpcrobust.tasks import load_task
from hpcrobust.tasks.placement import clean_ids
from hpcrobust.training.trainer import TrainSpec, train


def matmul_rate(n: int = 1024, seconds: float = 2.0) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="s,m,l")
    ap.add_argument("--examples", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=0, help="0 = all cores")
    args = ap.parse_args()
    torch.set_num_threads(args.threads or len(os.sched_getaffinity(0)))
    fam = FamilyConfig()
    sizes = args.sizes.split(",")
    family.ensure_built(fam, sizes)
    task = load_task(TaskConfig(n_train=args.examples, n_val=2))
    peak = matmul_rate()
    print(f"torch fp32 matmul (1024^3): {peak / 1e9:.1f} GFLOP/s on {torch.get_num_threads()} thread(s)")
    print(f"{'size':>5} {'params':>10} {'tokens/s':>10} {'nominal GFLOP/s':>16} {'of matmul':>10}"
          f" {'actual GFLOP/s':>15} {'of matmul':>10}")
    for size in sizes:
        clf = load_classifier(ModelConfig(name_or_path=f"builtin:{size}"), fam, torch.device("cpu"), seed=0)
        seqs = [clean_ids(clf.tokenizer, e) for e in task.train]
        labels = [e.label for e in task.train]
        spec = TrainSpec(epochs=1, lr=1e-3, batch_size=32, micro_batch_size=32)
        train(clf, seqs[:64], labels[:64], spec, Comm(None), 0, ("warmup",))  # warm caches and allocator
        t0 = time.perf_counter()
        res = train(clf, seqs, labels, spec, Comm(None), 0, ("bench",))
        dt = time.perf_counter() - t0
        tokens = res.flops.forward_tokens
        nom, act = res.flops.nominal / dt, res.flops.actual / dt
        print(f"{size:>5} {clf.n_params:>10,} {tokens / dt:>10,.0f} {nom / 1e9:>16.2f} {nom / peak:>10.2f}"
              f" {act / 1e9:>15.2f} {act / peak:>10.2f}")


if __name__ == "__main__":
    main()
