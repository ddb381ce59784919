"""Synthetic results files in the exact HDF5 layout, with ASR curves whose fits are known.

Tests and the speed benchmark need files whose answers are known in advance. The Laplace-smoothed
ASR of every (size, seed, round, attack) follows

    logit10(asr_s) = a + b * log10(C / C_1) - d * log10(D / D_1)

with C the cumulative attack FLOPs after an iteration and D the cumulative defense FLOPs of the
round (round 0 counts as D_1 / 10). So the attack-scaling slope of a size is b, and the attack
compute that reaches a target ASR grows with defense compute with a log-log slope of d / b.
The stored `asr` is chosen so that (asr*n + 1) / (n + 2) is exactly asr_s (clipped to [0, 1]).
Every number depends only on (size label, seed, round, attack), never on which file holds the run,
so per-seed files hold exactly what one combined file holds.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from hpcrobust import __version__
from hpcrobust.config import config_from_dict, science_hash, to_yaml
from hpcrobust.store.schema import FORMAT, SCHEMA_VERSION, round_path, run_path, text_array, transfer_path


@dataclass
class SynthSize:
    label: str
    n_params: int
    a: float = -1.5  # logit10 of the smoothed ASR after the first iteration, round 1
    b: float = 1.0  # attack-scaling slope
    d: float = 0.5  # defense effect: offense/defense slope is d / b
    accuracy: float = 0.9  # fraction of attacked examples classified correctly before the attack


@dataclass
class SynthAttack:
    name: str
    type: str = "gcg"
    n_iterations: int = 10
    flops_per_param: float = 1e4  # nominal attack FLOPs per iteration per model parameter


def default_sizes(n: int = 3) -> list[SynthSize]:
    """n sizes 10x apart; larger ones are harder to attack (lower intercept)."""
    return [SynthSize(f"m{i}", int(10 ** (5 + i)), a=-2.0 - 0.3 * i, b=1.0 + 0.1 * i, d=0.4 + 0.2 * i)
            for i in range(n)]


@dataclass
class SynthSpec:
    sizes: list[SynthSize] = field(default_factory=default_sizes)
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    rounds: int = 2  # adversarial-training rounds after round 0
    attacks: list[SynthAttack] = field(default_factory=lambda: [SynthAttack("gcg"),
                                                                SynthAttack("rt", "random_token", 32)])
    train_attack: str = "gcg_train"
    train_attack_type: str = "gcg"
    task: str = "password_match"
    experiment: str = ""  # the config's experiment name ('' as in files written before names existed)
    n_examples: int = 200
    pretrain_tokens: float = 1e8  # D of 6·N·D
    defense_flops_per_param: float = 1e6  # nominal defense FLOPs per round per parameter
    seed_noise: float = 0.0  # std of a per-seed offset of the intercept a
    slope_noise: float = 0.0  # std of a per-seed offset of d (offense/defense slopes vary by seed)
    uncommitted_round: bool = True  # also write one uncommitted round (readers must ignore it)
    transfer: bool = True


def _rng(*key) -> np.random.Generator:
    return np.random.default_rng([zlib.crc32(repr(key).encode())])


def _config(spec: SynthSpec) -> dict:
    attacks = [{"name": a.name, "type": a.type, "n_examples": spec.n_examples, "n_iterations": a.n_iterations}
               for a in spec.attacks]
    data = {"output": "synthetic.h5", "seeds": list(spec.seeds), "task": {"name": spec.task},
            "models": [{"name_or_path": f"synthetic/{s.label}", "label": s.label} for s in spec.sizes],
            "attacks": attacks}
    if spec.experiment:
        data["experiment"] = spec.experiment
    if spec.rounds:
        data["train_attacks"] = [{"name": spec.train_attack, "type": spec.train_attack_type}]
        data["advtrain"] = {"rounds": spec.rounds, "attack": spec.train_attack}
    return data


def defense_cum(spec: SynthSpec, size: SynthSize, rnd: int) -> float:
    return spec.defense_flops_per_param * size.n_params * rnd


def smoothed_logit(spec: SynthSpec, size: SynthSize, seed: int, rnd: int, attack: SynthAttack) -> np.ndarray:
    """The known logit10 of the smoothed ASR at every iteration 0..n_iterations."""
    c = np.arange(1, attack.n_iterations + 2, dtype=np.float64)  # C / C_1 (setup costs one iteration)
    a = size.a + spec.seed_noise * _rng("a", size.label, seed).standard_normal()
    d = size.d + spec.slope_noise * _rng("d", size.label, seed).standard_normal()
    d_rel = rnd if rnd > 0 else 0.1
    return a + size.b * np.log10(c) - d * np.log10(d_rel)


def asr_curve(spec: SynthSpec, size: SynthSize, seed: int, rnd: int, attack: SynthAttack, n: int) -> np.ndarray:
    p = 1.0 / (1.0 + 10.0 ** -smoothed_logit(spec, size, seed, rnd, attack))
    return np.clip((p * (n + 2) - 1) / n, 0.0, 1.0)


def _attack_arrays(spec: SynthSpec, size: SynthSize, seed: int, rnd: int, attack: SynthAttack) -> dict:
    n_ex = spec.n_examples
    correct = np.zeros(n_ex, dtype=bool)
    correct[: int(round(size.accuracy * n_ex))] = True
    n = int(correct.sum())
    asr = asr_curve(spec, size, seed, rnd, attack, n)
    first = np.full(n_ex, -1, dtype=np.int64)
    k = np.floor(asr * n + 1e-9).astype(int)
    for i in range(len(asr) - 1, -1, -1):  # the first k[i] correct examples have flipped by iteration i
        first[: k[i]] = i
    flops = np.full(attack.n_iterations + 1, attack.flops_per_param * size.n_params)
    return {"asr": asr, "correct_before": correct, "first_success": first,
            "attack_tokens": np.zeros((n_ex, 4), dtype=np.int64), "attack_text": text_array(["xx"] * n_ex),
            "example_index": np.arange(n_ex, dtype=np.int64), "flops_nominal": flops, "flops_actual": flops * 0.5,
            "final_loss": np.ones(n_ex), "wall_time": np.float64(0.1)}


def _scalars(spec: SynthSpec, size: SynthSize, rnd: int) -> dict:
    n = size.n_params
    dflops = spec.defense_flops_per_param * n if rnd else 0.0
    return {"clean_accuracy": size.accuracy, "train_loss": 0.3, "flops_nominal": dflops or 1e3 * n,
            "flops_actual": (dflops or 1e3 * n) / 2, "finetune_flops": 0.0 if rnd else 1e3 * n,
            "defense_flops": dflops, "defense_flops_cum": defense_cum(spec, size, rnd),
            "train_attack_iterations": 8 * rnd, "train_attack_success": 0.5 if rnd else float("nan"),
            "n_adversarial": 16 * rnd, "n_clean": 64, "wall_time": 1.0, "n_params": n,
            "pretrain_flops": 6.0 * n * spec.pretrain_tokens}


def transfer_asr(src: SynthSize, tgt: SynthSize, src_seed: int, tgt_seed: int, rnd: int) -> float:
    """Known transfer ASR: strings from larger sources transfer better; same run: 0.8."""
    if src.label == tgt.label and src_seed == tgt_seed:
        return 0.8
    return float(np.clip(0.2 + 0.05 * np.log10(src.n_params / tgt.n_params) - 0.02 * rnd
                         + 0.01 * (src_seed + tgt_seed), 0.0, 1.0))


def _write_round(f: h5py.File, spec: SynthSpec, size: SynthSize, seed: int, key: str, rnd: int,
                 committed: bool) -> None:
    g = f.create_group(round_path(key, rnd))
    g.attrs["round"] = rnd
    for k, v in _scalars(spec, size, rnd).items():
        g.create_dataset(k, data=v)
    for a in spec.attacks:
        for k, v in _attack_arrays(spec, size, seed, rnd, a).items():
            g.create_dataset(f"attacks/{a.name}/{k}", data=v)
    g.attrs["committed"] = int(committed)


def write_synthetic(path: str | Path, spec: SynthSpec | None = None) -> Path:
    """Write a results file for `spec` (all its sizes and seeds) and return its path."""
    spec = spec or SynthSpec()
    path = Path(path)
    cfg = config_from_dict(_config(spec))
    with h5py.File(path, "w") as f:
        f.attrs.update({"format": FORMAT, "schema_version": SCHEMA_VERSION, "hpcrobust_version": __version__,
                        "config": to_yaml(cfg), "science_hash": science_hash(cfg), "experiment": cfg.experiment})
        runs = [(s, seed) for s in spec.sizes for seed in spec.seeds]  # model-major, as plan_runs orders them
        for idx, (size, seed) in enumerate(runs):
            key = f"{size.label}__seed{seed}"
            g = f.create_group(run_path(key))
            g.attrs.update({"model": f"synthetic/{size.label}", "model_label": size.label, "seed": seed,
                            "task": spec.task, "run_index": idx, "rounds": spec.rounds})
            for rnd in range(spec.rounds + 1):
                _write_round(f, spec, size, seed, key, rnd, True)
            if spec.uncommitted_round:
                _write_round(f, spec, size, seed, key, spec.rounds + 1, False)
        if spec.transfer:
            names = text_array([f"{s.label}__seed{seed}" for s, seed in runs])
            for rnd in range(spec.rounds + 1 + int(spec.uncommitted_round)):
                g = f.create_group(transfer_path(rnd))
                g.attrs["round"] = rnd
                for a in spec.attacks:
                    mat = np.array([[transfer_asr(s, t, ss, ts, rnd) for t, ts in runs] for s, ss in runs])
                    g.create_dataset(f"{a.name}/asr", data=mat)
                    g.create_dataset(f"{a.name}/runs", data=names)
                g.attrs["committed"] = int(rnd <= spec.rounds)
    return path
