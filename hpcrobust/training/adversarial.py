"""One round of adversarial training: attack fresh training examples, grow the pool, train on a mix.

Round r (r >= 1):
1. attack a fresh random sample of `n_new_examples` training examples with the training attack,
   its iterations following a linear schedule from `iterations_start` to `iterations_end`;
2. add every attacked text, successful or not, to the pool;
3. build the round's set: at most `max_examples`, at most `max_adv_fraction` of it adversarial
   (sampled from the pool by recency and loss rank), the rest clean training examples;
4. train `epochs` epochs (constant learning rate by default), with the fine-tuning batch size, so the
   effective batch is the same for every size and rank count;
5. recompute every pool entry's loss under the new model (the next round's loss ranks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from hpcrobust.attacks.base import run_attack
from hpcrobust.attacks.engine import ScoringEngine
from hpcrobust.attacks.registry import make_attack
from hpcrobust.config import AttackConfig, SweepConfig
from hpcrobust.models.classifier import Classifier
from hpcrobust.models.flops import FlopCount
from hpcrobust.parallel.comm import Comm
from hpcrobust.rng import stream
from hpcrobust.tasks.base import TaskData
from hpcrobust.tasks.placement import clean_ids, encode
from hpcrobust.training.pool import Pool
from hpcrobust.training.trainer import TrainSpec, example_losses, train


def scheduled_iterations(cfg: SweepConfig, rnd: int) -> int:
    """Training-attack iterations in round `rnd` (1-based): linear from start to end over advtrain.rounds."""
    adv = cfg.advtrain
    if adv.rounds <= 1:
        return adv.iterations_start
    frac = (rnd - 1) / (adv.rounds - 1)
    return int(round(adv.iterations_start + frac * (adv.iterations_end - adv.iterations_start)))


def equal_compute_rounds(rounds: int, n_params: list[int]) -> list[int]:
    """Rounds per size so that defense compute is roughly equal: the smallest size gets `rounds`,
    a size with k times the parameters about rounds/k (at least 1)."""
    smallest = min(n_params)
    return [max(1, int(round(rounds * smallest / n))) for n in n_params]


def train_attack_config(cfg: SweepConfig, rnd: int) -> AttackConfig:
    base = next(a for a in cfg.train_attacks if a.name == cfg.advtrain.attack)
    n_it = scheduled_iterations(cfg, rnd)
    extra = {"n_attack_tokens": n_it} if base.type == "beast" else {}
    return replace(base, n_iterations=n_it, n_examples=cfg.advtrain.n_new_examples, **extra)


@dataclass
class RoundOutcome:
    train_loss: float
    attack_flops: FlopCount  # generating this round's adversarial examples (whole group)
    train_flops: FlopCount  # training plus the pool's loss refresh (this rank; the caller sums the group)
    n_adversarial: int
    n_clean: int
    attack_success: float


def adversarial_round(clf: Classifier, cfg: SweepConfig, task: TaskData, pool: Pool, run_key: str, seed: int,
                      rnd: int, lr_scale: float, group: Comm) -> RoundOutcome:
    adv, ft = cfg.advtrain, cfg.finetune
    a = train_attack_config(cfg, rnd)
    rng = stream(seed, run_key, rnd, "advtrain")
    train_set = task.train
    picked = sorted(rng.choice(len(train_set), size=min(a.n_examples, len(train_set)), replace=False).tolist())
    encs = [(i, encode(clf.tokenizer, train_set[i], a.placement, a.infix_fraction, cfg.task.max_content_tokens))
            for i in picked]
    attack = make_attack(a, seed, run_key, rnd, clf, cfg.parallel.score_chunk, cfg.family, purpose="train")
    # Every sampled example is attacked, including ones the model already gets wrong.
    res = run_attack(attack, ScoringEngine(clf, cfg.parallel.score_chunk), group, encs,
                     np.ones(len(encs), dtype=bool))
    attack_flops = FlopCount(int(res.flops_nominal.sum()), int(res.flops_actual.sum()))
    pool.add([enc.with_attack(t.tolist()) for (_, enc), t in zip(encs, res.tokens, strict=True)],
             [enc.label for _, enc in encs], rnd, res.final_loss.tolist())

    start = clf.meter.total.snapshot()
    n_adv = min(len(pool), math.floor(adv.max_adv_fraction * adv.max_examples))
    n_clean = min(len(train_set), adv.max_examples - n_adv)
    adv_idx = pool.sample(n_adv, adv.decay, adv.loss_rank_weight, stream(seed, run_key, rnd, "pool-sample"))
    clean_idx = sorted(stream(seed, run_key, rnd, "clean-sample").choice(len(train_set), size=n_clean,
                                                                          replace=False).tolist())
    seqs = [pool.seqs[i] for i in adv_idx] + [clean_ids(clf.tokenizer, train_set[i], cfg.task.max_content_tokens)
                                               for i in clean_idx]
    labels = [pool.labels[i] for i in adv_idx] + [train_set[i].label for i in clean_idx]
    spec = TrainSpec(adv.epochs, adv.lr * lr_scale, ft.batch_size, ft.micro_batch_size, 0.0, adv.schedule,
                     adv.optimizer, ft.weight_decay)
    tr = train(clf, seqs, labels, spec, group, seed, (run_key, "advtrain", rnd))
    pool.losses = example_losses(clf, pool.seqs, pool.labels, ft.eval_batch_size, group).tolist()
    success = float((res.first_success >= 0).mean()) if len(res.first_success) else float("nan")
    return RoundOutcome(tr.mean_loss, attack_flops, clf.meter.total.since(start), n_adv, n_clean, success)
