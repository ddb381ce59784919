"""One round of one run, on the ranks of its group: load, train, evaluate, checkpoint, record.

    run_round
      checkpoint.load_model            round 0: the configured model; later: the previous checkpoint
      finetune (round 0)               clean fine-tuning, optionally with the random-token defense
      adversarial (round >= 1)         attack fresh training examples, grow the pool, train on a mix
      checkpoint.save                  right after training: what the next round (or a resumed one) starts from
      clean_accuracy                   predictions on the validation split
      evaluate                         every (non-ensemble) evaluation attack of this round (attacks/evaluate.py),
                                       each kept as soon as it is done (sweep/progress.py)
    record                             the round as one Record of the results file

A new per-round number is declared in store/schema.py and computed here.
"""

from __future__ import annotations

import time

import numpy as np

from hpcrobust.attacks.base import run_attack
from hpcrobust.attacks.engine import ScoringEngine
from hpcrobust.attacks.evaluate import encode_examples, evaluate
from hpcrobust.errors import NonFiniteError
from hpcrobust.log import log
from hpcrobust.models.classifier import Classifier
from hpcrobust.models.config import model_label
from hpcrobust.models.flops import FlopCount
from hpcrobust.parallel.sharding import full_weights
from hpcrobust.store import schema as S
from hpcrobust.store.schema import Record
from hpcrobust.sweep import checkpoint, progress
from hpcrobust.sweep.context import RoundState, SweepContext
from hpcrobust.sweep.plan import RunSpec
from hpcrobust.sweep.shared import shared_candidate_arrays
from hpcrobust.tasks.placement import clean_ids
from hpcrobust.training.adversarial import add_attacked, attacked_examples, round_spec, round_training_set
from hpcrobust.training.finetune import finetune_sequences, finetune_spec
from hpcrobust.training.pool import Pool
from hpcrobust.training.trainer import example_losses, predict, train


def run_round(ctx: SweepContext, run: RunSpec, rnd: int, tables: dict) -> RoundState:
    """Train (or fine-tune) and evaluate one run for one round; `tables` are the shared RandomToken draws."""
    t0 = time.time()
    lay = ctx.layout
    scalars = progress.trained_scalars(ctx, run, rnd)
    if scalars is not None:  # an earlier attempt trained this round and saved it (sweep/progress.py)
        clf = checkpoint.load_model(ctx, run, rnd, trained=True)
        clf.backoff = ctx.backoff(run)
        log(f"{run.key} round {rnd}: resumed after training (checkpoint of this round)",
            all_ranks=lay.is_group_leader)
    else:
        clf = checkpoint.load_model(ctx, run, rnd)
        clf.backoff = ctx.backoff(run)
        scalars = train_phase(ctx, clf, run, rnd)
    pred, acc = clean_accuracy(ctx, clf)
    scalars[S.CLEAN_ACCURACY] = acc
    log(f"{run.key} round {rnd}: clean accuracy {acc:.3f} train loss {scalars[S.TRAIN_LOSS]:.3f}"
        f" ({time.time() - t0:.1f}s)", all_ranks=lay.is_group_leader)
    labels = np.array([e.label for e in ctx.task.val])
    state = RoundState(run, clf, pred == labels, scalars)
    for a in ctx.cfg.attacks:
        if a.ensemble or not ctx.plan.evaluates(a, run, rnd):
            continue  # ensembles run with every size at once (sweep/shared.py); attacks.N.rounds skips others
        table = tables.get((run.seed, a.name))
        res = progress.load_attack(ctx, run, rnd, a.name)
        kept = res is not None
        if not kept:
            res = evaluate(a, ctx.attack_env(run, rnd, clf, shared=table), lay.group, ctx.eval_set, pred,
                           progress.attack_saver(ctx, run, rnd, a.name))
            progress.save_attack(ctx, run, rnd, res)
        state.add(res)
        state.arrays.update(shared_candidate_arrays(a, table))
        log(f"{run.key} round {rnd}: {a.name} ASR {res.asr_current[-1]:.3f} (any iteration {res.asr[-1]:.3f})"
            f" after {len(res.asr) - 1} iterations ({res.wall_time:.1f}s"
            f"{', resumed: kept by an earlier attempt' if kept else ''})", all_ranks=lay.is_group_leader)
    scalars.update({S.WALL_TIME: lay.group.allreduce_max(time.time() - t0), S.N_PARAMS: clf.n_params,
                    S.PRETRAIN_FLOPS: clf.pretraining.flops, S.PRETRAIN_N: clf.pretraining.n,
                    S.PRETRAIN_TOKENS: clf.pretraining.tokens, S.N_DROPPED_TRAIN: ctx.task.n_dropped_train,
                    S.N_DROPPED_VAL: ctx.task.n_dropped_val})
    return state


def train_phase(ctx: SweepContext, clf: Classifier, run: RunSpec, rnd: int) -> dict[str, float]:
    """Fine-tune (round 0) or train adversarially, then save the round's checkpoint at once, with the phase's
    numbers (progress.json): a later attempt of this round starts after it."""
    try:
        if rnd == 0:
            pool, scalars = Pool(), finetune(ctx, clf, run)
        else:
            pool, prev_cum = checkpoint.load_state(ctx, run, rnd - 1)
            scalars = adversarial(ctx, clf, run, rnd, pool, prev_cum)
    except NonFiniteError as exc:  # nothing of this round is committed or saved; earlier rounds stay
        phase = "fine-tuning" if rnd == 0 else "adversarial training"
        raise NonFiniteError(f"run {run.key} round {rnd}: {phase} diverged: {exc}; lower the learning rate"
                             f" or use torch_dtype float32") from None
    weights = full_weights(clf)  # sharded: the group gathers the whole weights to its leader (collective)
    if ctx.layout.is_group_leader:
        checkpoint.save(ctx, clf, run, rnd, pool, scalars[S.DEFENSE_FLOPS_CUM], weights,
                        extra={progress.PROGRESS_FILE: progress.progress_text(scalars)})
        progress.training_done(ctx, run, rnd)
    ctx.layout.group.barrier()  # saved before any rank goes on (a later kill must find it whole)
    return scalars


def record(ctx: SweepContext, st: RoundState, rnd: int) -> Record:
    run, m = st.run, ctx.model(st.run)
    meta = {S.MODEL: m.name_or_path, S.MODEL_LABEL: model_label(m), S.SEED: run.seed, S.TASK: ctx.cfg.task.name,
            S.RUN_INDEX: run.index, S.PLANNED_ROUNDS: ctx.plan.n_rounds(run)}
    attrs = {S.ROUND: rnd}
    if ctx.attempt is not None:  # where it ran and its device-hours (sweep/provenance.py)
        attrs.update(ctx.attempt.round_attrs(ctx.layout.group_index, st.scalars[S.WALL_TIME]))
    return Record(path=S.round_path(run.key, rnd), attrs=attrs, scalars=st.scalars, arrays=st.arrays,
                  parent_attrs={S.run_path(run.key): meta})


def group_flops(ctx: SweepContext, spent: FlopCount) -> FlopCount:
    """FLOPs spent by every rank of the group (each rank counts only what it computed)."""
    total = FlopCount()
    for part in ctx.layout.group.allgather(spent):
        total.add(part)
    return total


def finetune(ctx: SweepContext, clf: Classifier, run: RunSpec) -> dict[str, float]:
    """Round 0: clean fine-tuning."""
    ft, m = ctx.cfg.finetune, ctx.model(run)
    start = clf.meter.total.snapshot()
    n_random = m.random_token_defense if m.random_token_defense >= 0 else ft.random_token_defense
    seqs = finetune_sequences(clf, ctx.task, n_random, run.seed, run.key)
    res = train(clf, seqs, [e.label for e in ctx.task.train], finetune_spec(ft, m.lr_scale), ctx.layout.group,
                run.seed, (run.key, "finetune"), progress.step_saver(ctx, run, 0))
    spent = group_flops(ctx, clf.meter.total.since(start))
    return {S.TRAIN_LOSS: res.mean_loss, S.FLOPS_NOMINAL: spent.nominal, S.FLOPS_ACTUAL: spent.actual,
            S.FINETUNE_FLOPS: spent.nominal, S.DEFENSE_FLOPS: 0, S.DEFENSE_FLOPS_CUM: 0,
            S.TRAIN_ATTACK_ITERATIONS: 0, S.TRAIN_ATTACK_SUCCESS: float("nan"), S.N_ADVERSARIAL: 0,
            S.N_CLEAN: len(seqs)}


def adversarial(ctx: SweepContext, clf: Classifier, run: RunSpec, rnd: int, pool: Pool,
                prev_cum: int) -> dict[str, float]:
    """Round >= 1: attack fresh training examples, add them to the pool, train on pool + clean examples,
    then refresh every pool entry's loss under the new model (training/adversarial.py has the rules)."""
    cfg, group = ctx.cfg, ctx.layout.group
    adv, m, train_set = cfg.advtrain, ctx.model(run), ctx.task.train
    n_it = adv.scheduled_iterations(rnd, ctx.plan.n_rounds(run))
    base = cfg.train_attack()
    a = base.plugin.for_training(base, n_it, adv.n_new_examples)
    picked = attacked_examples(a.n_examples, len(train_set), run.seed, run.key, rnd)
    encs = encode_examples(a, clf.tokenizer, train_set, picked)
    res = progress.load_attack(ctx, run, rnd, a.name, training=True)  # kept by an earlier attempt?
    if res is None:
        attack = a.plugin.build(a, ctx.attack_env(run, rnd, clf, purpose="train"))
        # Every sampled example is attacked, including ones the model already gets wrong.
        res = run_attack(attack, ScoringEngine(clf, cfg.parallel.score_chunk), group, encs,
                         np.ones(len(encs), dtype=bool), progress.attack_saver(ctx, run, rnd, a.name, training=True))
        progress.save_attack(ctx, run, rnd, res, training=True)
    else:
        log(f"{run.key} round {rnd}: training attack {a.name} resumed (done by an earlier attempt)",
            all_ranks=group.rank == 0)
    attack_flops = int(res.flops_nominal.sum())

    start = clf.meter.total.snapshot()
    add_attacked(pool, clf, [enc.with_attack(t.tolist()) for (_, enc), t in zip(encs, res.tokens, strict=True)],
                 [enc.label for _, enc in encs], rnd, cfg.finetune.eval_batch_size, group)
    rs = round_training_set(pool, adv, train_set, clf.tokenizer, run.seed, run.key, rnd)
    scale = m.adv_lr_scale if m.adv_lr_scale >= 0 else m.lr_scale
    tr = train(clf, rs.seqs, rs.labels, round_spec(adv, cfg.finetune, scale), group, run.seed,
               (run.key, "advtrain", rnd), progress.step_saver(ctx, run, rnd))
    pool.losses = example_losses(clf, pool.seqs, pool.labels, cfg.finetune.eval_batch_size, group).tolist()
    spent = group_flops(ctx, clf.meter.total.since(start))
    success = float((res.first_success >= 0).mean()) if len(res.first_success) else float("nan")
    defense = attack_flops + spent.nominal
    return {S.TRAIN_LOSS: tr.mean_loss, S.FLOPS_NOMINAL: spent.nominal, S.FLOPS_ACTUAL: spent.actual,
            S.FINETUNE_FLOPS: 0, S.DEFENSE_FLOPS: defense, S.DEFENSE_FLOPS_CUM: prev_cum + defense,
            S.TRAIN_ATTACK_ITERATIONS: n_it, S.TRAIN_ATTACK_SUCCESS: success, S.N_ADVERSARIAL: rs.n_adversarial,
            S.N_CLEAN: rs.n_clean}


def clean_accuracy(ctx: SweepContext, clf: Classifier) -> tuple[np.ndarray, float]:
    val = [clean_ids(clf.tokenizer, e) for e in ctx.task.val]
    pred, _ = predict(clf, val, ctx.cfg.finetune.eval_batch_size, ctx.layout.group)
    labels = np.array([e.label for e in ctx.task.val])
    return pred, float((pred == labels).mean())
