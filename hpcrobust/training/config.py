"""Settings of clean fine-tuning (round 0) and of adversarial training (rounds 1..R)."""

from __future__ import annotations

from dataclasses import dataclass

from hpcrobust.errors import UserError
from hpcrobust.fields import setting

OPTIMIZERS = ("adamw", "adafactor")
SCHEDULES = ("linear", "constant")


@dataclass
class FinetuneConfig:
    epochs: float = setting(2.0, lo=0.0, doc="passes over the train split")
    lr: float = setting(3e-3, lo=0.0, doc="peak learning rate")
    batch_size: int = setting(32, lo=1, hi=10**6, doc="examples per optimizer step (same for every size and rank"
                                                      " count)")
    micro_batch_size: int = setting(32, lo=1, hi=10**6, doc="examples per forward/backward; divides batch_size")
    warmup_frac: float = setting(0.1, lo=0.0, hi=1.0, doc="fraction of steps with linear warmup")
    schedule: str = setting("linear", choices=SCHEDULES, doc="learning-rate schedule after warmup")
    optimizer: str = setting("adamw", choices=OPTIMIZERS, doc="optimizer")
    weight_decay: float = setting(0.0, lo=0.0, doc="AdamW weight decay")
    eval_batch_size: int = setting(64, lo=1, hi=10**6, doc="examples per forward when measuring accuracy")
    random_token_defense: int = setting(0, lo=0, hi=4096, doc="baseline defense (off at 0): this many random tokens"
                                                              " in the attack position of half the fine-tuning"
                                                              " examples")

    def validate(self) -> None:
        if self.batch_size % self.micro_batch_size:
            raise UserError(f"finetune.micro_batch_size: {self.micro_batch_size} does not divide batch_size"
                            f" {self.batch_size}")


@dataclass
class AdvTrainConfig:
    rounds: int = setting(0, lo=0, hi=10**5, doc="adversarial-training rounds after round 0")
    attack: str = setting("", doc="name of the training attack in train_attacks")
    n_new_examples: int = setting(200, lo=1, hi=10**7, doc="training examples attacked per round (the training attack's"
                                  " n_examples)")
    max_examples: int = setting(1000, lo=1, hi=10**7, doc="training-set size per round")
    max_adv_fraction: float = setting(0.8, lo=0.0, hi=1.0, doc="at most this fraction of a round's set is"
                                      " adversarial")
    decay: float = setting(0.005, lo=0.0, doc="pool sampling weight exp(decay * (r - r_max))")
    loss_rank_weight: float = setting(0.5, lo=0.0, hi=1.0, doc="share of the loss rank in r (rest: recency rank)")
    iterations_start: int = setting(8, lo=1, hi=10**7, doc="training-attack iterations in round 1 (the training"
                                                           " attack's n_iterations)")
    iterations_end: int = setting(64, lo=1, hi=10**7, doc="training-attack iterations in the last round")
    schedule_per_size: bool = setting(True, doc="each size ramps from iterations_start to iterations_end over its"
                                      " own rounds (models.N.rounds), as the reference; false: one ramp over"
                                      " advtrain.rounds, which a size with fewer rounds leaves partway")
    epochs: float = setting(1.0, lo=0.0, doc="epochs per round")
    lr: float = setting(1e-3, lo=0.0, doc="learning rate per round")
    schedule: str = setting("constant", choices=SCHEDULES, doc="learning-rate schedule per round")
    optimizer: str = setting("adamw", choices=OPTIMIZERS, doc="optimizer per round")
    equal_compute: bool = setting(False, doc="pick rounds per size so defense compute is roughly equal")

    def scheduled_iterations(self, rnd: int, size_rounds: int | None = None) -> int:
        """Training-attack iterations in round `rnd` (1-based) of a size that trains for `size_rounds` rounds.

        Linear from start to end and truncated as the reference does (start + int((rnd-1)·rate)), over the
        size's own rounds (or over advtrain.rounds with schedule_per_size false, or when `size_rounds` is not
        given), so the first round gets iterations_start and the size's last round iterations_end.
        """
        n = self.rounds if size_rounds is None or not self.schedule_per_size else size_rounds
        if n <= 1:
            return self.iterations_start
        rate = (self.iterations_end - self.iterations_start) / (n - 1)
        return self.iterations_start + int((rnd - 1) * rate)
