"""Round 0's training data: clean examples, optionally with the random-token baseline defense.

The baseline (off by default) puts `n_random` random tokens in the attack position (the suffix)
of half the training examples, drawn from a stream keyed by (seed, run, example), so the model
learns to ignore what appears there without any adversarial search.
"""

from __future__ import annotations

from hpcrobust.models.classifier import Classifier
from hpcrobust.models.vocab import allowed_tokens
from hpcrobust.rng import stream
from hpcrobust.tasks.base import TaskData
from hpcrobust.tasks.placement import clean_ids, encode
from hpcrobust.training.config import FinetuneConfig
from hpcrobust.training.trainer import TrainSpec


def finetune_spec(ft: FinetuneConfig, lr_scale: float) -> TrainSpec:
    """Round 0's optimizer settings (a size's lr_scale applied)."""
    return TrainSpec(ft.epochs, ft.lr * lr_scale, ft.batch_size, ft.micro_batch_size, ft.warmup_frac,
                     ft.schedule, ft.optimizer, ft.weight_decay)


def finetune_sequences(clf: Classifier, task: TaskData, n_random: int, seed: int,
                       run_key: str) -> list[list[int]]:
    if n_random <= 0:
        return [clean_ids(clf.tokenizer, e) for e in task.train]
    vocab = allowed_tokens(clf.tokenizer, ascii_only=False)
    seqs = []
    for i, e in enumerate(task.train):
        rng = stream(seed, run_key, "random-token-defense", i)
        enc = encode(clf.tokenizer, e, "suffix")
        noise = vocab[rng.integers(0, len(vocab), size=n_random)].tolist() if rng.random() < 0.5 else []
        seqs.append(enc.with_attack(noise))
    return seqs
