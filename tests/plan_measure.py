"""Measured peak memory of the run's own training and attack code, to check `hpcrobust plan` against.

On CPU the peak is read from torch's memory profiler (every tensor allocation and free, in order); on a GPU from
torch.cuda.max_memory_allocated. Used by tests/test_plan.py; `python tests/plan_measure.py cuda` prints the
comparison on a GPU machine.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from hpcrobust.attacks.base import AttackEnv, run_attack  # noqa: E402
from hpcrobust.attacks.beast import sampler_model  # noqa: E402
from hpcrobust.attacks.engine import ScoringEngine  # noqa: E402
from hpcrobust.attacks.evaluate import encode_examples  # noqa: E402
from hpcrobust.config import SweepConfig  # noqa: E402
from hpcrobust.models.classifier import Classifier  # noqa: E402
from hpcrobust.parallel.comm import world  # noqa: E402
from hpcrobust.parallel.sizes import size_ranks  # noqa: E402
from hpcrobust.planner import memory as M  # noqa: E402
from hpcrobust.planner.arch import model_arch  # noqa: E402
from hpcrobust.planner.tokens import task_tokens  # noqa: E402
from hpcrobust.tasks import load_task  # noqa: E402
from hpcrobust.tasks.placement import clean_ids  # noqa: E402
from hpcrobust.training.finetune import finetune_spec  # noqa: E402
from hpcrobust.training.trainer import train  # noqa: E402

SIZES = {"n128": (128, 2, 4), "n256": (256, 3, 8), "n384": (384, 4, 8)}  # hidden, layers, heads (GPT-NeoX)

def save_random_model(folder: Path, tokenizer_dir: Path, hidden: int, layers: int, heads: int) -> Path:
    """A randomly initialised GPT-NeoX folder with the given tokenizer: memory needs shapes, not training."""
    from transformers import AutoTokenizer, GPTNeoXConfig, GPTNeoXForCausalLM

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    cfg = GPTNeoXConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=4 * hidden, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                                       "partial_rotary_factor": 1.0},
                        tie_word_embeddings=False, bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    GPTNeoXForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder

def peak(fn, device: torch.device) -> float:
    """Peak bytes of tensors alive at once while `fn` runs (those allocated before included)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return float(torch.cuda.max_memory_allocated())
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import MemoryProfileTimeline

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        fn()
    _, sizes = MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline(torch.device("cpu"))
    return float(np.array(sizes).sum(axis=1).max())

def load(cfg: SweepConfig, index: int, device: torch.device) -> Classifier:
    from hpcrobust.models.loading import load_classifier

    clf = load_classifier(cfg.models[index], cfg.family, device, seed=0)
    return clf

def measured_training(cfg: SweepConfig, index: int, device: torch.device) -> float:
    """Two optimizer steps of fine-tuning on the longest training examples (the planned worst micro-batch)."""
    task = load_task(cfg.task)
    clf = load(cfg, index, device)
    seqs = [clean_ids(clf.tokenizer, e) for e in task.train]
    longest = np.argsort([-len(s) for s in seqs], kind="stable")[: 2 * cfg.finetune.batch_size]
    spec = finetune_spec(cfg.finetune, 1.0)
    spec.epochs = 1.0
    picked = [seqs[i] for i in longest]
    labels = [task.train[i].label for i in longest]
    return peak(lambda: train(clf, picked, labels, spec, world(), 0, ("memory",)), device)

def measured_attack(cfg: SweepConfig, index: int, attack: int, device: torch.device) -> float:
    """One evaluation attack, every example attacked, early stopping as configured."""
    task = load_task(cfg.task)
    clf = load(cfg, index, device)
    a = cfg.attacks[attack]
    n = min(a.n_examples, len(task.val))
    encs = encode_examples(a, clf.tokenizer, task.val, list(range(n)))
    env = AttackEnv(0, "eval", "memory", 0, clf, cfg.parallel.score_chunk, cfg.family)
    attack_obj = a.plugin.build(a, env)
    engine = ScoringEngine(clf, cfg.parallel.score_chunk)
    return peak(lambda: run_attack(attack_obj, engine, world(), encs, np.ones(n, dtype=bool)), device)

def planned(cfg: SweepConfig, index: int, attack: int, on_cuda: bool) -> tuple[float, float]:
    """(training peak, this attack's scoring peak) as `hpcrobust plan` has them."""
    m = cfg.models[index]
    arch = model_arch(m, cfg.family)
    tt = task_tokens(load_task(cfg.task), m, cfg.family)
    def sampler_of(a):
        return model_arch(sampler_model(a), cfg.family, causal_lm=True) if a.type == "beast" else None

    mem = M.plan_memory(cfg, arch, tt, sampler_of, on_cuda, size_ranks(m, cfg.parallel.ranks_per_group))
    a = cfg.attacks[attack]
    caches, work, extra, grad = M.attack_scoring(arch, a, tt, a.n_examples, cfg.parallel.score_chunk,
                                                 size_ranks(m, cfg.parallel.ranks_per_group), sampler_of(a),
                                                 train=False)
    return mem.train_peak, mem.weights + extra + caches + max(work, grad)

if __name__ == "__main__":  # on a GPU machine: python tests/plan_measure.py cuda CONFIG
    from hpcrobust.config import load_config

    dev = torch.device(sys.argv[1] if len(sys.argv) > 1 else "cpu")
    config = load_config(sys.argv[2])
    for i, mc in enumerate(config.models):
        for j, ac in enumerate(config.attacks):
            want_train, want_attack = planned(config, i, j, dev.type == "cuda")
            got_attack = measured_attack(config, i, j, dev)
            got_train = measured_training(config, i, dev) if j == 0 else float("nan")
            print(f"{mc.name_or_path} {ac.name}: training planned {want_train / 2**20:.1f} MiB measured"
                  f" {got_train / 2**20:.1f} MiB; scoring planned {want_attack / 2**20:.1f} MiB measured"
                  f" {got_attack / 2**20:.1f} MiB")
