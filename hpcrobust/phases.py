"""The parts of a round that every rank of the world takes part in, whatever run it owns.

- RandomToken candidates are drawn once on world rank 0 and broadcast, so every model size scores
  exactly the same candidates (when the sizes share a vocabulary).
- Ensemble GCG attacks all sizes of a seed with one shared string.
- The transfer matrix scores every run's final strings on every other run's model.

Each group leader brings the models of the runs its group trained this round; other ranks bring
none and only take part in the collectives.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from hpcrobust.attacks.base import AttackResult
from hpcrobust.attacks.ensemble import Member, run_ensemble_gcg
from hpcrobust.attacks.random_token import RandomToken
from hpcrobust.attacks.transfer import Source, Target, transfer_matrix
from hpcrobust.config import ModelConfig, SweepConfig
from hpcrobust.models.classifier import Classifier
from hpcrobust.models.loading import load_tokenizer, resolve
from hpcrobust.parallel.collectives import allgather_records, broadcast_candidates
from hpcrobust.parallel.layout import Layout
from hpcrobust.preflight import RunSpec
from hpcrobust.store.schema import Record, attack_arrays, text_array, transfer_path


@dataclass
class RoundState:
    """One run's round while it is being assembled (on the ranks of its group)."""

    run: RunSpec
    clf: Classifier
    correct: np.ndarray  # [n_val] clean prediction correct
    scalars: dict
    arrays: dict = field(default_factory=dict)
    results: dict[str, AttackResult] = field(default_factory=dict)

    def add(self, res: AttackResult) -> None:
        self.results[res.name] = res
        self.arrays.update(attack_arrays(res))


@lru_cache(maxsize=8)
def _tokenizer(path: str, trust_remote_code: bool):
    return load_tokenizer(path, ModelConfig(name_or_path=path, trust_remote_code=trust_remote_code))


@lru_cache(maxsize=32)
def _vocab_print(path: str, trust_remote_code: bool) -> str:
    """Hashing a vocabulary is costly for large HF tokenizers: once per model, not once per round."""
    vocab = _tokenizer(path, trust_remote_code).get_vocab()
    return hashlib.sha256(repr(sorted(vocab.items())).encode()).hexdigest()


def shared_tokenizer(cfg: SweepConfig):
    """The tokenizer every model shares, or None when the models' vocabularies differ."""
    keys = [(resolve(m, cfg.family).path, m.trust_remote_code) for m in cfg.models]
    prints = {_vocab_print(str(p), t) for p, t in keys}
    return _tokenizer(str(keys[0][0]), keys[0][1]) if len(prints) == 1 else None


def share_random_tokens(cfg: SweepConfig, layout: Layout, rnd: int) -> dict[tuple[int, str], np.ndarray]:
    """{(seed, attack): [example, iteration, token]} drawn on world rank 0 and broadcast to every rank."""
    rt = [a for a in cfg.attacks if a.type == "random_token"]
    if not rt:
        return {}
    tables = None
    if layout.is_root:
        tables = {}
        tok = shared_tokenizer(cfg)
        if tok is not None:
            for seed in cfg.seeds:
                for a in rt:
                    attack = RandomToken(a, seed, ("eval", rnd, a.name), tok, cfg.parallel.score_chunk)
                    tables[(seed, a.name)] = attack.candidate_table(min(a.n_examples, cfg.task.n_val))
    return broadcast_candidates(layout.world, tables)


def table_digest(table: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(table).tobytes()).hexdigest()


def ensemble_phase(cfg: SweepConfig, layout: Layout, rnd: int, active: list[RunSpec],
                   held: dict[int, RoundState], val: list) -> None:
    """Every ensemble attack, on every seed's sizes together; results land in the leaders' RoundStates."""
    attacks = [a for a in cfg.attacks if a.ensemble]
    if not attacks:
        return
    lead = layout.is_group_leader
    correct = allgather_records(layout.world, {i: st.correct for i, st in held.items() if lead})
    tok = _tokenizer(resolve(cfg.models[0], cfg.family).path, cfg.models[0].trust_remote_code)
    for a in attacks:
        for seed in cfg.seeds:
            runs = [r for r in active if r.seed == seed]
            members = [Member(r.index, r.key, held[r.index].clf if (lead and r.index in held) else None,
                              correct[r.index]) for r in runs]
            out = run_ensemble_gcg(a, members, layout.world, seed, rnd, val, cfg.parallel.score_chunk,
                                   cfg.task.max_content_tokens, tok)
            for i, res in out.items():
                if i in held:
                    held[i].add(res)


def transfer_phase(cfg: SweepConfig, layout: Layout, rnd: int, active: list[RunSpec],
                   held: dict[int, RoundState], val: list) -> Record | None:
    """The source x target ASR matrix of every (non-ensemble) evaluation attack; a Record on world rank 0."""
    attacks = [a for a in cfg.attacks if not a.ensemble]
    if not attacks or not active:
        return None
    lead = layout.is_group_leader
    order = [r.key for r in sorted(active, key=lambda r: r.index)]
    arrays = {}
    for a in attacks:
        tokens = allgather_records(layout.world, {st.run.key: st.results[a.name].tokens
                                                  for st in held.values() if lead})
        sources = [Source(k, tokens[k]) for k in order]
        targets = [Target(st.run.index, st.run.key, st.clf, st.correct) for st in held.values() if lead]
        mat = transfer_matrix(layout.world, a, sources, targets, order, val, cfg.parallel.score_chunk,
                              cfg.task.max_content_tokens)
        arrays[f"{a.name}/asr"] = mat
        arrays[f"{a.name}/runs"] = text_array(order)
    if not layout.is_root:
        return None
    return Record(path=transfer_path(rnd), attrs={"round": rnd}, arrays=arrays)
