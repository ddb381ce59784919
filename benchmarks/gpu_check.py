"""GPU figures for benchmarks/gpu_check.sh, each printed as a ratio measured in the same run.

    python benchmarks/gpu_check.py scoring [--shape pythia-410m]   candidate-scoring FLOP/s / bf16 matmul FLOP/s
    python benchmarks/gpu_check.py quickstart FILE [--cpu-file F]  the quickstart's numbers on CUDA in bf16
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from gpu_shapes import build_shape

from hpcrobust.attacks.engine import ScoringEngine
from hpcrobust.config import FamilyConfig, ModelConfig
from hpcrobust.models.loading import load_classifier
from hpcrobust.tasks.generated import password_match
from hpcrobust.tasks.placement import encode


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_rate(device: torch.device, dtype: torch.dtype, n: int = 8192, reps: int = 10) -> float:
    """FLOP/s of one large square product: the ceiling the scoring rate is compared with."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def scoring(args: argparse.Namespace) -> None:
    folder = build_shape(args.shape, Path(args.cache) / args.shape)
    m = ModelConfig(name_or_path=str(folder), torch_dtype="bfloat16")
    device = torch.device(args.device)
    clf = load_classifier(m, FamilyConfig(), device, seed=0)
    ex = password_match(2, 2, seed=0).val[0]
    enc = encode(clf.tokenizer, ex, "suffix")
    engine = ScoringEngine(clf, chunk=args.chunk)
    rng = np.random.default_rng(0)
    cands = rng.integers(100, 5000, size=(args.chunk * args.chunks, args.suffix))
    engine.score_all(0, enc, cands[: args.chunk])  # warm-up, and the prefix cache
    sync(device)
    start = clf.meter.total.snapshot()
    t0 = time.perf_counter()
    engine.score_all(0, enc, cands)
    sync(device)
    dt = time.perf_counter() - t0
    spent = clf.meter.total.since(start)
    peak = matmul_rate(device, torch.bfloat16, n=8192 if device.type == "cuda" else 1024)
    print(f"scoring: {args.shape} ({clf.n_params:,} parameters), bf16, {len(cands)} candidates of {args.suffix}"
          f" tokens on a {len(enc.before)}-token cached prefix, chunk {args.chunk}: {dt:.3f} s")
    print(f"  bf16 matmul {peak / 1e12:.1f} TFLOP/s; actual {spent.actual / dt / 1e12:.2f} TFLOP/s,"
          f" nominal {spent.nominal / dt / 1e12:.2f} TFLOP/s")
    print(f"ratio (scoring actual FLOP/s / bf16 matmul FLOP/s): {spent.actual / dt / peak:.3f}")
    print(f"ratio (scoring nominal FLOP/s / bf16 matmul FLOP/s): {spent.nominal / dt / peak:.3f}")


def quickstart(args: argparse.Namespace) -> None:
    from hpcrobust.store.reader import load, load_attacks

    def summary(path: str) -> tuple[dict, dict]:
        df, att = load(path), load_attacks(path).query("attack == 'gcg_suffix'")
        acc = df[df["round"] == 0].groupby("model_label").clean_accuracy.mean().to_dict()
        asr = {k: (g[g["round"] == 0].asr.mean(), g[g["round"] == g["round"].max()].asr.mean())
               for k, g in att.groupby("model_label")}
        return acc, asr

    acc, asr = summary(args.file)
    ref = summary(args.cpu_file) if args.cpu_file else None
    for size in sorted(acc):
        first, last = asr[size]
        line = (f"quickstart bf16 on CUDA, {size}: clean accuracy {acc[size]:.3f}, GCG-suffix ASR"
                f" {first:.2f} -> {last:.2f} (ratio last/first {last / max(first, 1e-9):.2f})")
        if ref:
            line += f"; clean accuracy ratio to fp32 on CPU {acc[size] / ref[0][size]:.3f}"
        print(line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("scoring")
    s.add_argument("--shape", default="pythia-410m")
    s.add_argument("--chunk", type=int, default=512)
    s.add_argument("--chunks", type=int, default=8)
    s.add_argument("--suffix", type=int, default=20)
    s.add_argument("--device", default="cuda", help="cpu only to try the script out")
    s.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "hpcrobust-gpu-shapes"))
    q = sub.add_parser("quickstart")
    q.add_argument("file")
    q.add_argument("--cpu-file", default="")
    args = ap.parse_args()
    if args.cmd == "scoring" and args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device visible")
    {"scoring": scoring, "quickstart": quickstart}[args.cmd](args)


if __name__ == "__main__":
    main()
