"""What adversarial training decides in a round, apart from running the attack (sweep/round.py does that).

Round r (r >= 1):
1. attack a fresh random sample of `n_new_examples` training examples with the training attack,
   its iterations following a linear schedule from `iterations_start` to `iterations_end`;
2. add every attacked text, successful or not, to the pool, with its true-label loss under the model that
   attacked it (the model whose losses the older entries carry since step 5 of the last round);
3. build the round's set: at most `max_examples`, at most `max_adv_fraction` of it adversarial
   (sampled from the pool by recency and loss rank), the rest clean training examples;
4. train `epochs` epochs (constant learning rate by default), with the fine-tuning batch size, so the
   effective batch is the same for every size and rank count;
5. recompute every pool entry's loss under the new model (the next round's loss ranks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hpcrobust.models.classifier import Classifier
from hpcrobust.parallel.comm import Comm
from hpcrobust.rng import stream
from hpcrobust.tasks.base import Example
from hpcrobust.tasks.placement import clean_ids
from hpcrobust.training.config import AdvTrainConfig, FinetuneConfig
from hpcrobust.training.pool import Pool
from hpcrobust.training.trainer import TrainSpec, example_losses


def equal_compute_rounds(rounds: int, n_params: list[int]) -> list[int]:
    """Rounds per size so that defense compute is roughly equal: the smallest size gets `rounds`,
    a size with k times the parameters about rounds/k (at least 1)."""
    smallest = min(n_params)
    return [max(1, int(round(rounds * smallest / n))) for n in n_params]


def attacked_examples(n_examples: int, n_train: int, seed: int, run_key: str, rnd: int) -> list[int]:
    """Step 1: which training examples this round's attack sees (a fresh sample every round)."""
    rng = stream(seed, run_key, rnd, "advtrain")
    return sorted(rng.choice(n_train, size=min(n_examples, n_train), replace=False).tolist())


def add_attacked(pool: Pool, clf: Classifier, seqs: list[list[int]], labels: list[int], rnd: int,
                 batch_size: int, group: Comm) -> None:
    """Step 2. The stored loss is the true-label loss of the stored text, never the attack's own (wrong-label)
    objective: mixing the two would rank failed attacks above successful ones in the loss rank."""
    pool.add(seqs, labels, rnd, example_losses(clf, seqs, labels, batch_size, group).tolist())


@dataclass
class RoundSet:
    seqs: list[list[int]]
    labels: list[int]
    n_adversarial: int
    n_clean: int


def round_training_set(pool: Pool, adv: AdvTrainConfig, train_set: list[Example], tokenizer,
                       seed: int, run_key: str, rnd: int) -> RoundSet:
    """Step 3: adversarial examples from the pool, topped up with clean training examples."""
    n_adv = min(len(pool), math.floor(adv.max_adv_fraction * adv.max_examples))
    n_clean = min(len(train_set), adv.max_examples - n_adv)
    adv_idx = pool.sample(n_adv, adv.decay, adv.loss_rank_weight, stream(seed, run_key, rnd, "pool-sample"))
    clean_idx = sorted(stream(seed, run_key, rnd, "clean-sample").choice(len(train_set), size=n_clean,
                                                                          replace=False).tolist())
    seqs = [pool.seqs[i] for i in adv_idx] + [clean_ids(tokenizer, train_set[i])
                                               for i in clean_idx]
    labels = [pool.labels[i] for i in adv_idx] + [train_set[i].label for i in clean_idx]
    return RoundSet(seqs, labels, n_adv, n_clean)


def round_spec(adv: AdvTrainConfig, ft: FinetuneConfig, lr_scale: float) -> TrainSpec:
    """Step 4: the fine-tuning batch sizes with the round's own learning rate, schedule and optimizer."""
    return TrainSpec(adv.epochs, adv.lr * lr_scale, ft.batch_size, ft.micro_batch_size, 0.0, adv.schedule,
                     adv.optimizer, ft.weight_decay)
