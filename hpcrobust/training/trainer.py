"""Classifier training with fixed micro-batches, shared across a group's ranks.

The effective batch is `batch_size` for every model size and rank count: each optimizer step is
cut into fixed micro-batches, the group's ranks take them round-robin, and the gradients are
summed in micro-batch order (invariant 1). On out-of-memory a micro-batch is run as smaller
sub-batches of the same padded shape whose gradients add up to it (models/backoff.py); only the float
summation order changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from hpcrobust.errors import NonFiniteError
from hpcrobust.log import log
from hpcrobust.models.classifier import Classifier
from hpcrobust.models.flops import FlopCount
from hpcrobust.parallel.collectives import my_share, share_indexed
from hpcrobust.parallel.comm import Comm
from hpcrobust.parallel.distributed import OrderedSum
from hpcrobust.parallel.sharding import is_sharded, sync
from hpcrobust.rng import stream
from hpcrobust.training.resume import StepSaver, flops_from_state, flops_state


@dataclass
class TrainSpec:
    epochs: float
    lr: float
    batch_size: int
    micro_batch_size: int
    warmup_frac: float = 0.0
    schedule: str = "constant"
    optimizer: str = "adamw"
    weight_decay: float = 0.0


@dataclass
class TrainResult:
    mean_loss: float
    steps: int
    examples: int
    flops: FlopCount


def pad_batch(seqs: list[list[int]], pad_id: int, device: torch.device, width: int = 0
              ) -> tuple[torch.Tensor, torch.Tensor]:
    t = max([width] + [len(s) for s in seqs])
    ids = torch.full((len(seqs), t), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), t), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids.to(device), mask.to(device)


MIN_SHARED_PREFIX = 8  # shorter common prefixes are not worth a separate forward


def common_prefix(seqs: list[list[int]]) -> int:
    """Length of the prefix all rows share, leaving every row at least one token of its own."""
    n = min(len(s) for s in seqs) - 1
    first = seqs[0]
    for k in range(n):
        t = first[k]
        if any(s[k] != t for s in seqs):
            return k
    return max(n, 0)


def batch_shape(seqs: list[list[int]]) -> tuple[int, int]:
    """(length of the prefix run once, or 0; padded width) of a batch. Its sub-batches keep both, so every row
    is computed with the same shapes however the batch is cut."""
    p = common_prefix(seqs)
    return (p if p >= MIN_SHARED_PREFIX and len(seqs) > 1 else 0), max(len(s) for s in seqs)


def batch_logits(clf: Classifier, seqs: list[list[int]], shape: tuple[int, int] | None = None) -> torch.Tensor:
    """Logits for a micro-batch; a prefix shared by every row (the instructions) is computed once.

    A sharded model trains on whole sequences: its passes with gradients must be one forward each.
    """
    p, width = shape or batch_shape(seqs)
    one_pass = is_sharded(clf) and torch.is_grad_enabled()
    if p and clf.shares_prefix_in_training and not one_pass:
        ids, mask = pad_batch([s[p:] for s in seqs], clf.tokenizer.pad_token_id, clf.device, width - p)
        return clf.logits_shared_prefix(seqs[0][:p], ids, mask)
    ids, mask = pad_batch(seqs, clf.tokenizer.pad_token_id, clf.device, width)
    return clf.logits(ids, mask)


def micro_batch_backward(clf: Classifier, seqs: list[list[int]], labels: list[int], denom: int, size: int
                         ) -> float:
    """Backward of one micro-batch's summed loss / `denom`, in sub-batches of `size` rows; returns the loss.
    Gradients accumulate into the parameters' .grad, sub-batch by sub-batch in row order."""
    shape = batch_shape(seqs)
    y = torch.tensor(labels, device=clf.device)
    total = None
    for i in range(0, len(seqs), size):
        logits = batch_logits(clf, seqs[i: i + size], shape)
        loss = F.cross_entropy(logits, y[i: i + size], reduction="sum") / denom
        loss.backward()
        total = loss.detach() if total is None else total + loss.detach()
    return float(total)


def make_optimizer(params, spec: TrainSpec):
    if spec.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(params, lr=spec.lr, relative_step=False, scale_parameter=False, warmup_init=False,
                         weight_decay=spec.weight_decay)
    return torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)


def lr_factor(step: int, n_steps: int, spec: TrainSpec) -> float:
    warm = int(round(spec.warmup_frac * n_steps))
    if step < warm:
        return (step + 1) / warm
    if spec.schedule == "constant":
        return 1.0
    return max(0.0, (n_steps - step) / max(1, n_steps - warm))


def epoch_order(n: int, epochs: float, batch_size: int, seed: int, key: tuple) -> list[int]:
    """Example indices for every step, from permutations keyed by (seed, key, epoch)."""
    total = int(math.floor(n * epochs / batch_size)) * batch_size
    order: list[int] = []
    e = 0
    while len(order) < total:
        order += stream(seed, *key, "epoch", e).permutation(n).tolist()
        e += 1
    return order[:total]


def check_finite_weights(clf: Classifier) -> None:
    bad = [n for n, p in clf.model.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        raise NonFiniteError(f"{len(bad)} weight tensor(s) are not finite after training (first: {bad[0]})")


def train(clf: Classifier, seqs: list[list[int]], labels: list[int], spec: TrainSpec, group: Comm,
          seed: int, key: tuple, saver: StepSaver | None = None) -> TrainResult:
    """Train in place; returns the mean training loss and the FLOPs the group spent (all ranks).

    A non-finite step loss or weight raises NonFiniteError (the group's ranks see the same numbers, so all raise).
    `saver` keeps the last finished step and goes on from one kept by an earlier attempt (training/resume.py;
    a sharded model's: training/shardsave.py).
    """
    order = epoch_order(len(seqs), spec.epochs, spec.batch_size, seed, key)
    n_steps = len(order) // spec.batch_size
    before = clf.meter.total.snapshot()
    if n_steps == 0:
        return TrainResult(float("nan"), 0, 0, FlopCount())
    clf.set_trainable(True)
    params = [p for p in clf.model.parameters() if p.requires_grad]
    opt = make_optimizer(params, spec)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, n_steps, spec))
    mbs_size = spec.micro_batch_size
    n_mb = spec.batch_size // mbs_size
    sharded = is_sharded(clf)  # FSDP sums the gradients (reduce-scatter); ranks keep their shards
    loss_sum, first = 0.0, 0
    check = {"key": [str(k) for k in key], "n_steps": n_steps, "batch_size": spec.batch_size, "n_examples": len(seqs)}
    kept = saver.load(check, clf.model, opt, sched) if saver is not None else None
    if kept is not None:  # go on from the last kept step: the same state an uninterrupted run has there
        loss_sum, first = float(kept["loss_sum"]), int(kept["step"])
        if group.rank == 0:  # the group's FLOPs so far, counted once
            clf.meter.total.add(flops_from_state(kept["flops"]))
        saver.resumed_at = first
        log(f"{' '.join(check['key'])}: training resumed at step {first} of {n_steps} (kept by an earlier attempt)",
            all_ranks=group.rank == 0)
    for step in range(first, n_steps):
        batch = order[step * spec.batch_size: (step + 1) * spec.batch_size]

        def backward(mbs: list[int], size: int, batch: list[int] = batch) -> dict[int, float]:
            """Micro-batches `mbs` of the step, in sub-batches of `size`, into .grad (retried whole after OOM)."""
            opt.zero_grad(set_to_none=True)
            out = {}
            for mb in mbs:
                idx = batch[mb * mbs_size: (mb + 1) * mbs_size]
                out[mb] = micro_batch_backward(clf, [seqs[i] for i in idx], [labels[i] for i in idx], spec.batch_size,
                                               size)
            return out

        if group.size > 1 and not sharded:  # each micro-batch's gradient summed on the device, in order
            summer = OrderedSum(group.tensors, n_mb, [p.shape for p in params])
            losses: dict[int, float] = {}
            for wave in range(summer.n_waves):
                mb = wave * group.size + group.rank
                grads = None
                if mb < n_mb:  # a rank backs off inside its own micro-batch, before the wave's collective
                    losses |= clf.backoff.retry("train", mbs_size, lambda size, mb=mb: backward([mb], size),
                                                meters=(clf.meter,))
                    grads = [p.grad.detach() for p in params]
                summer.add_wave(grads)
            opt.zero_grad(set_to_none=True)
            for p, g in zip(params, summer.total(), strict=True):  # float32, as the master weights (precision.py)
                p.grad = g
            losses = share_indexed(group, losses)
        else:  # one rank adds every micro-batch into .grad; a sharded group's FSDP sums across its ranks
            mine = my_share(group, n_mb)
            losses = clf.backoff.retry("train", mbs_size, lambda size, mine=mine: backward(mine, size),
                                       meters=(clf.meter,))
            if sharded:
                sync(clf)  # a rank with fewer micro-batches pads with zero-weight passes
                losses = share_indexed(group, losses)
        step_loss = sum(losses[k] for k in sorted(losses))
        if not math.isfinite(step_loss):
            raise NonFiniteError(f"the training loss is {step_loss} at step {step + 1} of {n_steps}")
        loss_sum += step_loss
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if saver is not None and step + 1 < n_steps and saver.due():
            spent = FlopCount()
            for part in group.allgather(clf.meter.total.since(before)):
                spent.add(part)
            saver.save({**check, "step": step + 1, "loss_sum": loss_sum, "flops": flops_state(spent)}, clf.model, opt,
                       sched)
    check_finite_weights(clf)
    clf.set_trainable(False)
    spent = clf.meter.total.since(before)
    return TrainResult(loss_sum / n_steps, n_steps, n_steps * spec.batch_size, spent)


@torch.no_grad()
def all_logits(clf: Classifier, seqs: list[list[int]], batch_size: int, group: Comm) -> np.ndarray:
    """Logits [n, 2] in fixed batches; the group's ranks take batches round-robin and share them."""
    n_batches = math.ceil(len(seqs) / batch_size)
    out: dict[int, np.ndarray] = {}
    for b in my_share(group, n_batches):
        part = seqs[b * batch_size: (b + 1) * batch_size]
        shape = batch_shape(part)

        def run(i: int, j: int, part: list[list[int]] = part, shape: tuple[int, int] = shape) -> np.ndarray:
            return batch_logits(clf, part[i:j], shape).cpu().numpy()

        out[b] = np.concatenate(clf.backoff.pieces("eval", len(part), run, meters=(clf.meter,)))
    sync(clf)
    allb = share_indexed(group, out)
    return np.concatenate([allb[b] for b in range(n_batches)]) if n_batches else np.zeros((0, 2))


def predict(clf: Classifier, seqs: list[list[int]], batch_size: int, group: Comm) -> tuple[np.ndarray, np.ndarray]:
    """Predicted labels and the logit margin (label 1 minus label 0)."""
    logits = all_logits(clf, seqs, batch_size, group)
    return logits.argmax(axis=1), logits[:, 1] - logits[:, 0]


def example_losses(clf: Classifier, seqs: list[list[int]], labels: list[int], batch_size: int,
                   group: Comm) -> np.ndarray:
    """Cross-entropy of each sequence toward its true label."""
    logits = torch.from_numpy(all_logits(clf, seqs, batch_size, group)).double()
    y = torch.tensor(labels, dtype=torch.long)
    return F.cross_entropy(logits, y, reduction="none").numpy() if len(labels) else np.zeros(0)
