"""The parts of a round where ranks of different runs meet, whatever run each rank owns.

- RandomToken candidates are drawn once on world rank 0 and broadcast, so every model size scores
  exactly the same candidates (when the sizes share a vocabulary).
- Ensemble GCG attacks all sizes of a seed with one shared string (keeping its state between examples:
  sweep/progress.py).
- The transfer matrix scores every run's final strings on every other run's model.

Each phase covers, per attack, only the runs that attack evaluates in this round (attacks.N.rounds): a
RandomToken table is drawn for a seed when one of its runs needs it, an ensemble joins the sizes that
evaluate it, and a transfer matrix spans the runs that have the attack's strings.

Each group leader brings the models of the runs its group trained this round; other ranks bring
none and only take part in the collectives. A model is freed as soon as no phase of the round needs it
on its rank: right after its run's round on a rank that brings nothing, after these phases otherwise.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np

from hpcrobust.attacks.ensemble import Member, run_ensemble_gcg
from hpcrobust.attacks.random_token import RandomToken
from hpcrobust.attacks.transfer import Source, Target, transfer_counts, transfer_matrix
from hpcrobust.config import AttackConfig, SweepConfig
from hpcrobust.models.backoff import free_device_memory
from hpcrobust.models.loading import resolve
from hpcrobust.models.vocab import cached_tokenizer, vocabulary_digest
from hpcrobust.parallel.collectives import allgather_records, broadcast_candidates
from hpcrobust.parallel.comm import Comm
from hpcrobust.store import schema as S
from hpcrobust.store.schema import Record, text_array
from hpcrobust.sweep import progress
from hpcrobust.sweep.context import RoundState, SweepContext
from hpcrobust.sweep.plan import RunSpec


def models_needed_after_runs(ctx: SweepContext) -> bool:
    """Whether this rank brings its models of the round to a cross-run phase (ensemble, transfer)."""
    return (ctx.layout.is_group_leader or ctx.layout.shard) and bool(ctx.cfg.attacks)


def release_models(states: Iterable[RoundState]) -> None:
    """Drop the rounds' models on this rank (the records keep their numbers) and return the memory."""
    for st in states:
        st.clf = None
    free_device_memory()


def shared_tokenizer(cfg: SweepConfig):
    """The tokenizer every model shares, or None when the models' vocabularies differ."""
    keys = [(str(resolve(m, cfg.family).path), m.trust_remote_code) for m in cfg.models]
    if len({vocabulary_digest(p, t) for p, t in keys}) != 1:
        return None
    return cached_tokenizer(*keys[0])


def _wanted_tables(ctx: SweepContext, rnd: int, seeds: Iterable[int]) -> list[tuple[int, AttackConfig]]:
    """The (seed, RandomToken attack) pairs of round `rnd` that some run of the seed evaluates."""
    active = ctx.plan.active(rnd)
    return [(seed, a) for seed in seeds for a in ctx.cfg.attacks if a.type == RandomToken.type_name
            and ctx.plan.evaluated(a, [r for r in active if r.seed == seed], rnd)]


def random_token_tables(ctx: SweepContext, rnd: int, seeds: Iterable[int]) -> dict[tuple[int, str], np.ndarray]:
    """{(seed, attack): [example, iteration, token]}, drawn here (a pure function of the config: any rank that
    draws them gets the same tables)."""
    cfg, tables = ctx.cfg, {}
    wanted = _wanted_tables(ctx, rnd, seeds)
    tok = shared_tokenizer(cfg) if wanted else None
    if tok is not None:
        for seed, a in wanted:
            attack = RandomToken(a, seed, ("eval", rnd, a.name), tok, cfg.parallel.score_chunk)
            tables[(seed, a.name)] = attack.candidate_table(min(a.n_examples, cfg.task.n_val))
    return tables


def share_random_tokens(ctx: SweepContext, rnd: int) -> dict[tuple[int, str], np.ndarray]:
    """Every seed's tables, drawn on world rank 0 and broadcast to every rank."""
    if not _wanted_tables(ctx, rnd, ctx.cfg.seeds):
        return {}
    tables = random_token_tables(ctx, rnd, ctx.cfg.seeds) if ctx.layout.is_root else None
    return broadcast_candidates(ctx.layout.world, tables)


def shared_candidate_arrays(a: AttackConfig, table: np.ndarray | None) -> dict[str, np.ndarray]:
    """What a RandomToken attack records about the candidates it was given (nothing for other attacks)."""
    if a.type != RandomToken.type_name:
        return {}
    shared = table is not None
    digest = hashlib.sha256(np.ascontiguousarray(table).tobytes()).hexdigest() if shared else ""
    return {S.attack_path(a.name, S.SHARED_CANDIDATES): np.int64(shared),
            S.attack_path(a.name, S.CANDIDATES_SHA256): text_array([digest])}


def ensemble_phase(ctx: SweepContext, rnd: int, active: list[RunSpec], held: dict[int, RoundState],
                   comm: Comm | None = None) -> None:
    """Every ensemble attack, on every seed's sizes together; results land in the leaders' RoundStates.
    Collective over `comm`: the world (round by round), or the one group that took the item (queue)."""
    cfg, layout = ctx.cfg, ctx.layout
    comm = comm if comm is not None else layout.world
    attacks = [a for a in cfg.attacks if a.ensemble]
    if not attacks:
        return
    lead = layout.is_group_leader
    correct = allgather_records(comm, {i: st.correct for i, st in held.items() if lead})
    tok = cached_tokenizer(resolve(cfg.models[0], cfg.family).path, cfg.models[0].trust_remote_code)
    for a in attacks:
        for seed in cfg.seeds:
            runs = ctx.plan.evaluated(a, [r for r in active if r.seed == seed], rnd)
            if not runs:
                continue
            members = [Member(r.index, r.key, held[r.index].clf if (lead and r.index in held) else None,
                              correct[r.index]) for r in runs]
            saver = progress.ensemble_saver(ctx, min(runs, key=lambda r: r.index), rnd, a.name, comm)
            out = run_ensemble_gcg(a, members, comm, seed, rnd, ctx.eval_set, tok, saver)
            saver.clear()
            for i, res in out.items():
                if i in held:
                    held[i].add(res)


def transfer_spans(ctx: SweepContext, rnd: int) -> list[tuple[AttackConfig, list[RunSpec]]]:
    """Per (non-ensemble) evaluation attack, the runs its round-`rnd` transfer matrix spans, in run order."""
    active = ctx.plan.active(rnd)
    spans = [(a, sorted(ctx.plan.evaluated(a, active, rnd), key=lambda r: r.index))
             for a in ctx.cfg.attacks if not a.ensemble]
    return [(a, runs) for a, runs in spans if runs]


def transfer_record(rnd: int, spans: list[tuple[AttackConfig, list[RunSpec]]],
                    counts: dict[tuple[str, str, str], tuple[int, int]]) -> Record | None:
    """Round `rnd`'s transfer matrices from {(attack, source, target): (flipped, evaluated)}."""
    arrays = {}
    for a, runs in spans:
        order = [r.key for r in runs]
        arrays[f"{a.name}/{S.TRANSFER_ASR}"] = transfer_matrix(
            {(s, t): v for (name, s, t), v in counts.items() if name == a.name}, order)
        arrays[f"{a.name}/{S.TRANSFER_RUNS}"] = text_array(order)
    return Record(path=S.transfer_path(rnd), attrs={"round": rnd}, arrays=arrays) if arrays else None


def transfer_phase(ctx: SweepContext, rnd: int, active: list[RunSpec], held: dict[int, RoundState]
                   ) -> Record | None:
    """The source x target ASR matrix of every (non-ensemble) evaluation attack; a Record on world rank 0."""
    layout = ctx.layout
    spans = transfer_spans(ctx, rnd)
    if not spans or not active:
        return None
    lead = layout.is_group_leader
    counts = {}
    for a, runs in spans:
        mine = [st for st in held.values() if lead and a.name in st.results]
        finals = allgather_records(layout.world, {st.run.key: (st.results[a.name].tokens,
                                                               st.results[a.name].correct_before) for st in mine})
        sources = [Source(r.key, *finals[r.key]) for r in runs]
        # a sharded model is run by all its group's ranks together (identical work, identical counts)
        targets = [Target(st.run.index, st.run.key, st.clf, st.correct) for st in held.values()
                   if a.name in st.results and (lead or layout.shard)]
        mine_counts = transfer_counts(a, sources, targets, ctx.eval_set)
        for (s, t), v in allgather_records(layout.world, mine_counts).items():
            counts[(a.name, s, t)] = v
    return transfer_record(rnd, spans, counts) if layout.is_root else None
