"""Seconds per GCG step, measured side by side in one run:

1. hpcrobust against nanoGCG (PyPI `nanogcg`, in its own virtual environment because it pins
   transformers<=4.47.1): the same GPT-NeoX backbone, prompt, suffix length, search width and top-k.
   hpcrobust scores the two label logits of a classifier; nanoGCG the target string of a causal LM.
2. hpcrobust's GCG step with the prefix cache against without it, on a 200-token prompt.

    python benchmarks/gcg_step.py --nanogcg-python /path/to/nanogcg-venv/bin/python [--size m]
    python benchmarks/gcg_step.py --shape pythia-410m --device cuda --dtype bfloat16 ...   (on a GPU)

Set up nanoGCG's environment with:
    python3 -m venv /opt/nanogcg && /opt/nanogcg/bin/pip install torch==2.13.0 transformers==4.47.1 nanogcg==0.3.0
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from gpu_shapes import build_shape

from hpcrobust.attacks.base import run_attack
from hpcrobust.attacks.engine import ScoringEngine
from hpcrobust.attacks.gcg import GCG, initial_tokens
from hpcrobust.config import AttackConfig, FamilyConfig, ModelConfig
from hpcrobust.models import family
from hpcrobust.models.loading import load_classifier
from hpcrobust.parallel.comm import Comm
from hpcrobust.tasks.base import Example
from hpcrobust.tasks.generated import ANSWER_PROMPT, password_match
from hpcrobust.tasks.placement import encode


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def our_step_seconds(clf, example: Example, attack: AttackConfig, steps: int, use_cache: bool) -> float:
    enc = encode(clf.tokenizer, example, "suffix")

    def timed(n: int) -> float:
        a = dataclasses.replace(attack, n_iterations=n)
        engine = ScoringEngine(clf, chunk=a.params.search_width, use_cache=use_cache)
        _sync(clf.device)
        t0 = time.perf_counter()
        run_attack(GCG(a, 0, ("bench",), clf.tokenizer), engine, Comm(None), [(0, enc)], np.array([True]))
        _sync(clf.device)
        return time.perf_counter() - t0

    timed(2)
    short, long = timed(steps), timed(2 * steps)
    return (long - short) / steps


def rotary_fraction(cfg) -> float:
    """transformers 5 keeps it in rope_parameters, which nanoGCG's transformers 4.47 does not read."""
    rope = getattr(cfg, "rope_parameters", None) or {}
    return float(rope.get("partial_rotary_factor", getattr(cfg, "rotary_pct", 1.0)))


def long_example(tokenizer, n_tokens: int) -> Example:
    base = password_match(2, 2, seed=0).val[0]
    filler = " ".join(["The system keeps a log of every request and answers only the question below."] * 40)
    ids = tokenizer.encode(base.instructions + filler, add_special_tokens=False)
    need = n_tokens - len(tokenizer.encode(base.content, add_special_tokens=False))
    return Example(tokenizer.decode(ids[:need]), base.content, ANSWER_PROMPT, base.label)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="m", help="a built-in size (ignored with --shape)")
    ap.add_argument("--shape", default="", help="a random-weight stand-in of a real shape, e.g. pythia-410m")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--search-width", type=int, default=128)
    ap.add_argument("--topk", type=int, default=256)
    ap.add_argument("--suffix", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--nanogcg-python", default=os.environ.get("NANOGCG_PYTHON", ""))
    args = ap.parse_args()
    threads = args.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    fam = FamilyConfig()
    if args.shape:
        folder = build_shape(args.shape, Path(tempfile.gettempdir()) / "hpcrobust-gpu-shapes" / args.shape)
        name = args.shape
    else:
        family.ensure_built(fam, [args.size])
        folder, name = family.size_dir(fam, args.size), f"builtin:{args.size}"
    clf = load_classifier(ModelConfig(name_or_path=str(folder), torch_dtype=args.dtype), fam,
                          torch.device(args.device), seed=0)
    attack = AttackConfig.from_data({"name": "bench", "type": "gcg", "n_attack_tokens": args.suffix,
                                     "search_width": args.search_width, "topk": args.topk}, "bench")
    ex = password_match(2, 2, seed=0).val[0]
    n_prompt = len(encode(clf.tokenizer, ex, "suffix").before)
    print(f"backbone {name} ({clf.n_params:,} parameters, {args.dtype} on {args.device}), prompt {n_prompt} tokens,"
          f" suffix {args.suffix}, search width {args.search_width}, top-k {args.topk}, {threads} thread(s)")

    ours = our_step_seconds(clf, ex, attack, args.steps, use_cache=True)
    print(f"hpcrobust GCG step: {ours:.4f} s")
    if args.nanogcg_python:
        init = clf.tokenizer.decode(initial_tokens(attack, clf.tokenizer))
        spec = {"model": str(folder), "tokenizer_file": str(folder / "tokenizer.json"),
                "device": args.device, "dtype": args.dtype, "rotary_pct": rotary_fraction(clf.model.config),
                "prompt": ex.instructions + ex.content, "after": ex.answer_prompt, "target": " GRANTED",
                "init": init, "search_width": args.search_width, "topk": args.topk, "steps": args.steps,
                "threads": threads}
        proc = subprocess.run([args.nanogcg_python, os.path.join(os.path.dirname(__file__), "_nanogcg_step.py"),
                               json.dumps(spec)], capture_output=True, text=True, check=True)
        theirs = json.loads(proc.stdout.strip().splitlines()[-1])["seconds_per_step"]
        print(f"nanoGCG step:       {theirs:.4f} s")
        print(f"ratio 1 (hpcrobust / nanoGCG): {ours / theirs:.2f}x   (target <= 0.5)")
    else:
        print("ratio 1 skipped: pass --nanogcg-python (see the docstring)")

    long = long_example(clf.tokenizer, 200)
    n_long = len(encode(clf.tokenizer, long, "suffix").before)
    cached = our_step_seconds(clf, long, attack, args.steps, use_cache=True)
    uncached = our_step_seconds(clf, long, attack, args.steps, use_cache=False)
    print(f"{n_long}-token prompt: with prefix cache {cached:.4f} s, without {uncached:.4f} s")
    print(f"ratio 2 (without / with cache): {uncached / cached:.2f}x   (target >= 3)")


if __name__ == "__main__":
    main()
