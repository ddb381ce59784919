"""The parts of a round where ranks of different runs meet, whatever run each rank owns.

- RandomToken candidates are drawn once on world rank 0 and broadcast, so every model size scores
  exactly the same candidates (when the sizes share a vocabulary).
- Ensemble GCG attacks all sizes of a seed with one shared string.
- The transfer matrix scores every run's final strings on every other run's model.

Each group leader brings the models of the runs its group trained this round; other ranks bring
none and only take part in the collectives.
"""

from __future__ import annotations

import hashlib

import numpy as np

from hpcrobust.attacks.ensemble import Member, run_ensemble_gcg
from hpcrobust.attacks.random_token import RandomToken
from hpcrobust.attacks.transfer import Source, Target, transfer_matrix
from hpcrobust.config import AttackConfig, SweepConfig
from hpcrobust.models.loading import resolve
from hpcrobust.models.vocab import cached_tokenizer, vocabulary_digest
from hpcrobust.parallel.collectives import allgather_records, broadcast_candidates
from hpcrobust.store import schema as S
from hpcrobust.store.schema import Record, text_array
from hpcrobust.sweep.context import RoundState, SweepContext
from hpcrobust.sweep.plan import RunSpec


def shared_tokenizer(cfg: SweepConfig):
    """The tokenizer every model shares, or None when the models' vocabularies differ."""
    keys = [(str(resolve(m, cfg.family).path), m.trust_remote_code) for m in cfg.models]
    if len({vocabulary_digest(p, t) for p, t in keys}) != 1:
        return None
    return cached_tokenizer(*keys[0])


def share_random_tokens(ctx: SweepContext, rnd: int) -> dict[tuple[int, str], np.ndarray]:
    """{(seed, attack): [example, iteration, token]} drawn on world rank 0 and broadcast to every rank."""
    cfg = ctx.cfg
    rt = [a for a in cfg.attacks if a.type == RandomToken.type_name]
    if not rt:
        return {}
    tables = None
    if ctx.layout.is_root:
        tables = {}
        tok = shared_tokenizer(cfg)
        if tok is not None:
            for seed in cfg.seeds:
                for a in rt:
                    attack = RandomToken(a, seed, ("eval", rnd, a.name), tok, cfg.parallel.score_chunk)
                    tables[(seed, a.name)] = attack.candidate_table(min(a.n_examples, cfg.task.n_val))
    return broadcast_candidates(ctx.layout.world, tables)


def shared_candidate_arrays(a: AttackConfig, table: np.ndarray | None) -> dict[str, np.ndarray]:
    """What a RandomToken attack records about the candidates it was given (nothing for other attacks)."""
    if a.type != RandomToken.type_name:
        return {}
    shared = table is not None
    digest = hashlib.sha256(np.ascontiguousarray(table).tobytes()).hexdigest() if shared else ""
    return {S.attack_path(a.name, S.SHARED_CANDIDATES): np.int64(shared),
            S.attack_path(a.name, S.CANDIDATES_SHA256): text_array([digest])}


def ensemble_phase(ctx: SweepContext, rnd: int, active: list[RunSpec], held: dict[int, RoundState]) -> None:
    """Every ensemble attack, on every seed's sizes together; results land in the leaders' RoundStates."""
    cfg, layout = ctx.cfg, ctx.layout
    attacks = [a for a in cfg.attacks if a.ensemble]
    if not attacks:
        return
    lead = layout.is_group_leader
    correct = allgather_records(layout.world, {i: st.correct for i, st in held.items() if lead})
    tok = cached_tokenizer(resolve(cfg.models[0], cfg.family).path, cfg.models[0].trust_remote_code)
    for a in attacks:
        for seed in cfg.seeds:
            runs = [r for r in active if r.seed == seed]
            members = [Member(r.index, r.key, held[r.index].clf if (lead and r.index in held) else None,
                              correct[r.index]) for r in runs]
            out = run_ensemble_gcg(a, members, layout.world, seed, rnd, ctx.eval_set, tok)
            for i, res in out.items():
                if i in held:
                    held[i].add(res)


def transfer_phase(ctx: SweepContext, rnd: int, active: list[RunSpec], held: dict[int, RoundState]
                   ) -> Record | None:
    """The source x target ASR matrix of every (non-ensemble) evaluation attack; a Record on world rank 0."""
    cfg, layout = ctx.cfg, ctx.layout
    attacks = [a for a in cfg.attacks if not a.ensemble]
    if not attacks or not active:
        return None
    lead = layout.is_group_leader
    order = [r.key for r in sorted(active, key=lambda r: r.index)]
    arrays = {}
    for a in attacks:
        finals = allgather_records(layout.world, {st.run.key: (st.results[a.name].tokens,
                                                               st.results[a.name].correct_before)
                                                  for st in held.values() if lead})
        sources = [Source(k, *finals[k]) for k in order]
        # a sharded model is run by all its group's ranks together (identical work, identical counts)
        targets = [Target(st.run.index, st.run.key, st.clf, st.correct) for st in held.values()
                   if lead or cfg.parallel.shard]
        mat = transfer_matrix(layout.world, a, sources, targets, order, ctx.eval_set)
        arrays[f"{a.name}/{S.TRANSFER_ASR}"] = mat
        arrays[f"{a.name}/{S.TRANSFER_RUNS}"] = text_array(order)
    if not layout.is_root:
        return None
    return Record(path=S.transfer_path(rnd), attrs={"round": rnd}, arrays=arrays)
