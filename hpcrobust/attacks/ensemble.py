"""Ensemble GCG: one attack string for every model size of a seed at once (after Zou et al.'s
multi-model attack).

Per example and iteration, every size proposes GCG swaps from its own gradient; the proposals are
exchanged (allgather), every size scores all of them on its own model, and the losses are summed
across sizes in run order. Every size then adopts the same best candidate (or, with a buffer, the
best so far). With `early_stop`, an example stops once the shared string flips every size that
classified it correctly; ASR is recorded per size.

The examples run one after another, so the state kept for a resume (attacks/state.py, `save_arrays`) is taken
between examples: the examples done, their strings, each size's first successes, losses and flips, and each size's
FLOPs per iteration (they go back to the rank that holds the size).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass

import numpy as np

from hpcrobust.attacks.base import AttackResult, asr_curve, current_asr
from hpcrobust.attacks.config import AttackConfig
from hpcrobust.attacks.engine import ScoringEngine
from hpcrobust.attacks.evaluate import EvalSet
from hpcrobust.attacks.gcg import Buffer, SwapSampler, initial_tokens, token_gradient
from hpcrobust.attacks.state import AttackSaver, flops_arrays, flops_from_arrays
from hpcrobust.log import log
from hpcrobust.models.classifier import Classifier
from hpcrobust.models.flops import FlopCount
from hpcrobust.parallel.collectives import allgather_records
from hpcrobust.parallel.comm import Comm
from hpcrobust.rng import stream


@dataclass
class Member:
    """One model size in the ensemble: held (and computed) by its group's leader."""

    index: int  # run index: fixes the order in which losses are summed
    key: str
    clf: Classifier | None  # None on ranks that do not hold this model
    correct: np.ndarray  # [n_examples] classified correctly without the attack


def _check(a: AttackConfig, members: list[Member], seed: int, rnd: int, n_ex: int) -> str:
    facts = {"cfg": a.to_data(), "seed": seed, "round": rnd, "n_examples": n_ex,
             "members": [[m.index, m.key, np.asarray(m.correct[:n_ex], dtype=bool).tolist()] for m in members]}
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()


def run_ensemble_gcg(a: AttackConfig, members: list[Member], world: Comm, seed: int, rnd: int, data: EvalSet,
                     tok, saver: AttackSaver | None = None) -> dict[int, AttackResult]:
    """Collective over the world: every rank calls it with the same member list; returns results per run.
    `saver` (its group: the world) keeps the state between examples and goes on from a kept one."""
    t0 = time.time()
    members = sorted(members, key=lambda m: m.index)
    mine = [m for m in members if m.clf is not None]
    n_ex, n_it = min(a.n_examples, len(data.examples)), a.n_iterations
    init = np.array(initial_tokens(a, tok), dtype=np.int64)
    sampler = SwapSampler(a.params, tok)
    engines = {m.index: ScoringEngine(m.clf, data.score_chunk) for m in mine}
    first = {m.index: np.full(n_ex, -1, dtype=np.int64) for m in members}
    finals = [init.copy() for _ in range(n_ex)]
    losses_final = {m.index: np.full(n_ex, np.inf) for m in members}
    hits = {m.index: np.zeros((n_ex, n_it + 1), dtype=bool) for m in members}  # current string flips the size
    flops = {m.index: [FlopCount() for _ in range(n_it + 1)] for m in mine}

    def charge(it: int, starts: dict[int, FlopCount]) -> None:
        for m in mine:
            flops[m.index][it].add(m.clf.meter.total.since(starts[m.index]))

    def score_all(k: int, encs: dict, cands: np.ndarray, targets: set[int]) -> dict[int, tuple]:
        local = {}
        for m in mine:
            if m.index in targets:
                sc = engines[m.index].score_all(k, encs[m.index], cands)
                local[m.index] = (sc.losses, sc.flipped)
        return allgather_records(world, local)

    check = _check(a, members, seed, rnd, n_ex) if saver is not None else ""

    def keep(k: int) -> None:
        """Collective: the state after examples 0..k-1, with every size's FLOPs from the rank that holds it."""
        everyone = allgather_records(world, {i: f for i, f in flops.items()})
        arrays = {"finals": np.stack(finals)}
        for m in members:
            i = m.index
            arrays.update({f"first_{i}": first[i], f"loss_{i}": losses_final[i], f"hits_{i}": hits[i],
                           f"flops_{i}": flops_arrays(everyone[i])})
        saver.save_arrays(check, k, world.allreduce_max(time.time() - t0), arrays)

    start_k = 0
    kept = saver.load_arrays(check) if saver is not None else None
    if kept is not None:
        start_k, wall, arr = kept
        t0 -= wall
        finals = [row.astype(np.int64) for row in arr["finals"]]
        for m in members:
            i = m.index
            first[i], losses_final[i], hits[i] = arr[f"first_{i}"], arr[f"loss_{i}"], arr[f"hits_{i}"]
            if i in flops:
                flops[i] = flops_from_arrays(arr[f"flops_{i}"])
        saver.resumed_at = start_k
        log(f"round {rnd}: ensemble {a.name} (seed {seed}) resumed at example {start_k} of {n_ex} (kept by an"
            " earlier attempt)")
    for k in range(start_k, n_ex):
        if saver is not None and k > start_k and saver.due():
            keep(k)
        order = [m.index for m in members if m.correct[k]]  # the sizes this example is attacked on
        targets = set(order)
        if not targets:
            continue
        encs = {m.index: data.encode(a, m.clf.tokenizer, k) for m in mine}
        starts = {m.index: m.clf.meter.total.snapshot() for m in mine}
        for m in mine:
            if m.index in targets:
                engines[m.index].prefix(k, encs[m.index], count=True)
        res = score_all(k, encs, init[None, :], targets)
        charge(0, starts)
        buf = Buffer(a.params.buffer_size)
        buf.offer(sum(float(res[i][0][0]) for i in order), init)
        current = init.copy()
        now = {i: bool(res[i][1][0]) for i in order}
        for i in order:
            losses_final[i][k] = float(res[i][0][0])
            if res[i][1][0]:
                first[i][k] = 0
        for it in range(1, n_it + 1):
            if a.params.early_stop and all(first[i][k] >= 0 for i in order):
                for i in order:  # the string stays: so does its success
                    hits[i][k, it:] = now[i]
                break
            starts = {m.index: m.clf.meter.total.snapshot() for m in mine}
            proposals = {}
            for m in mine:
                if m.index in targets:
                    grad = token_gradient(engines[m.index], k, encs[m.index], current)
                    rng = stream(seed, "ensemble", rnd, a.name, k, it, m.key)
                    proposals[m.index] = sampler.candidates(grad, current, rng)
            allp = allgather_records(world, proposals)
            cands = np.concatenate([allp[i] for i in order], axis=0)
            res = score_all(k, encs, cands, targets)
            combined = np.zeros(len(cands))
            for i in order:  # fixed order: the same sum on every rank and for any rank count
                combined = combined + res[i][0]
            best = int(np.argmin(combined))
            buf.offer(float(combined[best]), cands[best])
            current = buf.best()[1]
            moved = np.array_equal(current, cands[best])
            for i in order:
                if res[i][1][best] and first[i][k] < 0:
                    first[i][k] = it
                if moved:
                    now[i] = bool(res[i][1][best])
                    losses_final[i][k] = float(res[i][0][best])
                hits[i][k, it] = now[i]
            charge(it, starts)
        finals[k] = current
    all_flops = allgather_records(world, {i: f for i, f in flops.items()})
    wall = world.allreduce_max(time.time() - t0)
    out = {}
    for m in members:
        f = first[m.index]
        asr = asr_curve(f, m.correct[:n_ex], n_it)
        fl = all_flops[m.index]
        out[m.index] = AttackResult(
            name=a.name, asr=asr, correct_before=m.correct[:n_ex].astype(bool), first_success=f,
            tokens=[finals[k] for k in range(n_ex)], texts=[tok.decode(finals[k].tolist()) for k in range(n_ex)],
            example_index=np.arange(n_ex), flops_nominal=np.array([c.nominal for c in fl], dtype=np.float64),
            flops_actual=np.array([c.actual for c in fl], dtype=np.float64), wall_time=wall,
            final_loss=losses_final[m.index], asr_current=current_asr(hits[m.index], m.correct[:n_ex]),
            early_stop=bool(a.params.early_stop), attrs={"ensemble": 1, "members": ",".join(x.key for x in members)})
    return out
