"""How a group of whole-model copies sums one training step's micro-batch gradients, side by side in one run:

    host pickle   the old path: each rank's float32 gradients as numpy arrays through MPI allgather, summed
                  in micro-batch order on every rank (every rank receives every micro-batch's gradient)
    OrderedSum    the path now: bucketed all_to_all + all_gather on the torch.distributed group (gloo on CPU,
                  NCCL on GPUs), summed in micro-batch order
    all_reduce    torch.distributed's all_reduce of each rank's own sum: the fastest, but its order depends on
                  the rank count, so it is not bit-identical to one rank (shown for scale only)

    mpiexec -n 2 python benchmarks/gradient_sum.py [--params 20000000] [--micro-batches 8] [--repeats 3]

Prints seconds per step for each, the ratios to OrderedSum, and the bytes each rank received.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hpcrobust.parallel.comm import world  # noqa: E402
from hpcrobust.parallel.distributed import OrderedSum, make_groups, shutdown  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", type=int, default=20_000_000)
    ap.add_argument("--micro-batches", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    w = world()
    if w.size < 2:
        sys.exit("run it under mpiexec -n 2 (or more)")
    tg = make_groups(w, [list(range(w.size))], torch.device("cpu"))
    k, n, p = w.size, args.micro_batches, args.params
    shapes = [torch.Size([p // 4]), torch.Size([p - p // 4])]  # two tensors, as a model has many
    mine = {i: torch.full((p,), float(i + 1)) for i in range(w.rank, n, k)}

    def host() -> np.ndarray:
        got: dict[int, np.ndarray] = {}
        for part in w.allgather({i: t.numpy() for i, t in mine.items()}):
            got.update(part)
        total = got[0].copy()
        for i in range(1, n):
            total += got[i]
        return total

    def ordered() -> torch.Tensor:
        s = OrderedSum(tg, n, shapes)
        for wave in range(s.n_waves):
            i = wave * k + w.rank
            s.add_wave(list(mine[i].split([t.numel() for t in shapes])) if i in mine else None)
        return torch.cat(s.total())

    def reduce() -> torch.Tensor:
        t = torch.zeros(p)
        for v in mine.values():
            t += v
        dist.all_reduce(t, group=tg.pg)
        return t

    expect = float(n * (n + 1) // 2)
    times: dict[str, float] = {}
    for name, fn in (("host pickle", host), ("OrderedSum", ordered), ("all_reduce", reduce)):
        best = float("inf")
        for _ in range(args.repeats):
            w.barrier()
            t0 = time.perf_counter()
            out = fn()
            best = min(best, time.perf_counter() - t0)
        assert float(out[0]) == expect == float(out[-1]), (name, float(out[0]))
        times[name] = max(w.allgather(best))
    if w.rank == 0:
        mb = 4 * p / 2**20
        print(f"{k} ranks, {n} micro-batches, {p:,} float32 parameters ({mb:.0f} MiB per gradient), best of"
              f" {args.repeats}, slowest rank")
        received = {"host pickle": (n - len(mine)) * mb, "OrderedSum": -(-n // k) * mb * (k - 1) / k + mb * (k - 1) / k,
                    "all_reduce": 2 * mb * (k - 1) / k}
        for name, s in times.items():
            print(f"  {name:12s} {s:7.3f} s/step   {times['OrderedSum'] / s:5.2f}x OrderedSum's speed"
                  f"   about {received[name]:6.0f} MiB received per rank")
    shutdown()


if __name__ == "__main__":
    main()
