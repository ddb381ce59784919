"""Time `hpcrobust analyze` on a generated file of paper-like shape (the issue's target: under 30 s).

Writes a synthetic results file (default 10 sizes x 5 seeds x 10 adversarial rounds, three
evaluation attacks like the quickstart's: GCG 10 iterations, RandomToken 128, BEAST 8), then runs the
whole command in a fresh process (interpreter start, imports, load, every figure, report) and prints
the wall time of each part. Usage:

    python benchmarks/analysis_speed.py [--sizes 10] [--seeds 5] [--rounds 10] [--keep DIR]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hpcrobust.analysis.synthetic import SynthAttack, SynthSize, SynthSpec, write_synthetic

LIMIT_S = 30.0


def spec(n_sizes: int, n_seeds: int, rounds: int) -> SynthSpec:
    sizes = [SynthSize(f"p{i:02d}", int(10 ** (5 + 3 * i / max(1, n_sizes - 1))), a=-2.0 - 0.1 * i,
                       b=1.0 + 0.05 * i, d=0.5 + 0.05 * i) for i in range(n_sizes)]
    attacks = [SynthAttack("gcg_suffix", "gcg", 10), SynthAttack("rt", "random_token", 128),
               SynthAttack("beast", "beast", 8)]
    return SynthSpec(sizes=sizes, seeds=list(range(n_seeds)), rounds=rounds, attacks=attacks, n_examples=50,
                     seed_noise=0.05, slope_noise=0.05)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=10, help="adversarial rounds after round 0")
    ap.add_argument("--keep", default="", help="write the file and report here instead of a temporary folder")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(args.keep or tmp)
        where.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        path = write_synthetic(where / "bench.h5", spec(args.sizes, args.seeds, args.rounds))
        t_gen = time.perf_counter() - t0
        from hpcrobust.analysis import load

        t0 = time.perf_counter()
        res = load([path])
        t_load = time.perf_counter() - t0
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "hpcrobust.analysis.cli", str(path), "--out",
                               str(where / "report")], capture_output=True, text=True)
        t_all = time.perf_counter() - t0
        if proc.returncode:
            print(proc.stderr, file=sys.stderr)
            return 1
        n_png = len(list((where / "report").glob("*.png")))
    print(f"file: {args.sizes} sizes x {args.seeds} seeds x {args.rounds + 1} rounds (0..{args.rounds}),"
          f" 3 attacks; {len(res.asr)} ASR points, {len(res.transfer)} transfer entries"
          f" ({path.stat().st_size / 1e6:.1f} MB if kept)" if args.keep else
          f"file: {args.sizes} sizes x {args.seeds} seeds x {args.rounds + 1} rounds (0..{args.rounds}),"
          f" 3 attacks; {len(res.asr)} ASR points, {len(res.transfer)} transfer entries")
    print(f"generate {t_gen:.1f} s | load() {t_load:.2f} s | `analyze` end to end {t_all:.1f} s ({n_png} PNGs)"
          f" | limit {LIMIT_S:.0f} s: {'OK' if t_all < LIMIT_S else 'TOO SLOW'}")
    return 0 if t_all < LIMIT_S else 1


if __name__ == "__main__":
    sys.exit(main())
