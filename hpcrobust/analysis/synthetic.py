"""Synthetic results files in the exact HDF5 layout, generated the way real attacks generate them.

Tests and the speed benchmark need files whose answers are known in advance, and they must look like what
the attacks write, or the analysis can get their quirks wrong unnoticed. Per (size, seed, round, attack):

- iteration 0 is setup: GCG scores its initial string there (`setup_fraction` of an iteration's FLOPs),
  RandomToken and BEAST spend nothing; no example has been attacked yet, so its reference ASR is 0;
- every attacked example has a success flag per iteration (is its *current* candidate misclassified?);
  the stored `asr_current` (the reference's ASR) is the share of correct-before examples successful at t,
  `asr` the share successful at or before t, `first_success` the first such t. GCG's current candidate
  can stop succeeding (non-monotone `asr_current`); RandomToken and BEAST keep their success;
- the count successful at t >= 1 is round(n * p_t), with

      logit10(p_t) = a + b * log10(t) - d * log10(D / D_1)

  where D is the cumulative defense FLOPs of the round (round 0 counts as D_1 / 10). Compute at t is
  t times FLOPs per iteration, so the attack-scaling slope of a size is b (up to rounding to whole
  examples), and the attack compute that reaches a target grows with defense compute as d / b;
- with `early_stop`, an example stops at its first success (its candidate is then kept), so the
  FLOPs of later iterations shrink with the examples still running.

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
    flops_per_param: float = 1e4  # nominal attack FLOPs per iteration per model parameter (no early stop)
    setup_fraction: float | None = None  # iteration-0 FLOPs / an iteration's; None: 1/50 for GCG, else 0
    early_stop: bool = False  # examples stop at their first success (a speed option, not the reference's)
    churn: float = 0.3  # GCG: how much the set of currently successful examples changes between iterations
    rounds: list[int] | None = None  # attacks.N.rounds: the rounds it runs in (None: every round)

    def runs_in(self, rnd: int) -> bool:
        return self.rounds is None or rnd in self.rounds

    @property
    def setup(self) -> float:
        if self.setup_fraction is not None:
            return self.setup_fraction
        return 1 / 50 if self.type == "gcg" else 0.0

    @property
    def cumulative(self) -> bool:
        """RandomToken and BEAST keep a success (so does any attack that stops early); GCG may lose it."""
        return self.type != "gcg" or self.early_stop


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
    without_v2: bool = False  # leave out asr_current, early_stop, pretrain_n/tokens, n_dropped_* (older writer)


V2_ONLY = {"asr_current", "early_stop", "pretrain_n", "pretrain_tokens", "n_dropped_train", "n_dropped_val"}


def _rng(*key) -> np.random.Generator:
    return np.random.default_rng([zlib.crc32(repr(key).encode())])


def _config(spec: SynthSpec) -> dict:
    attacks = [{"name": a.name, "type": a.type, "n_examples": spec.n_examples, "n_iterations": a.n_iterations,
                **({"rounds": list(a.rounds)} if a.rounds is not None else {})} for a in spec.attacks]
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


def target_logit(spec: SynthSpec, size: SynthSize, seed: int, rnd: int, attack: SynthAttack) -> np.ndarray:
    """The known logit10 of the reference ASR at iterations 1..n_iterations (before rounding to examples)."""
    t = np.arange(1, attack.n_iterations + 1, dtype=np.float64)
    a = size.a + spec.seed_noise * _rng("a", size.label, seed).standard_normal()
    d = size.d + spec.slope_noise * _rng("d", size.label, seed).standard_normal()
    d_rel = rnd if rnd > 0 else 0.1
    return a + size.b * np.log10(t) - d * np.log10(d_rel)


def success_counts(spec: SynthSpec, size: SynthSize, seed: int, rnd: int, attack: SynthAttack, n: int) -> np.ndarray:
    """[n_iterations+1] examples whose current candidate succeeds at t (0 at t = 0: nothing attacked yet)."""
    p = 1.0 / (1.0 + 10.0 ** -target_logit(spec, size, seed, rnd, attack))
    k = np.rint(p * n).astype(np.int64)
    if attack.cumulative:
        k = np.maximum.accumulate(k)
    return np.concatenate([[0], k])


def asr_curve(spec: SynthSpec, size: SynthSize, seed: int, rnd: int, attack: SynthAttack, n: int) -> np.ndarray:
    """The stored reference ASR (`asr_current`) of n correct-before examples."""
    return success_counts(spec, size, seed, rnd, attack, n) / n


def success_matrix(spec: SynthSpec, size: SynthSize, seed: int, rnd: int, attack: SynthAttack,
                   n: int) -> np.ndarray:
    """[n, n_iterations+1] bool: the current candidate of correct-before example i succeeds at iteration t.

    Each example has a fixed vulnerability; at t the k_t most vulnerable succeed. GCG adds fresh noise per
    iteration (`churn`), so an example can succeed at t and fail at t+1, as GCG's current candidate can."""
    k = success_counts(spec, size, seed, rnd, attack, n)
    rng = _rng("success", size.label, seed, rnd, attack.name)
    base = rng.random(n)
    out = np.zeros((n, len(k)), dtype=bool)
    for t in range(1, len(k)):
        score = base if attack.cumulative else base + attack.churn * rng.random(n)
        out[np.argsort(score, kind="stable")[: k[t]], t] = True
    if attack.cumulative:
        out = np.logical_or.accumulate(out, axis=1)
    return out


def _attack_arrays(spec: SynthSpec, size: SynthSize, seed: int, rnd: int, attack: SynthAttack) -> dict:
    n_ex = spec.n_examples
    correct = np.zeros(n_ex, dtype=bool)
    correct[: int(round(size.accuracy * n_ex))] = True
    n = int(correct.sum())
    ok = success_matrix(spec, size, seed, rnd, attack, n)
    ever = np.logical_or.accumulate(ok, axis=1)
    first = np.full(n_ex, -1, dtype=np.int64)
    first[:n] = np.where(ever[:, -1], ever.argmax(axis=1), -1)
    per_ex = attack.flops_per_param * size.n_params / max(n, 1)  # one example's FLOPs per iteration
    running = np.full(attack.n_iterations + 1, n, dtype=np.float64)
    if attack.early_stop:  # examples that succeeded before t no longer run at t
        running[1:] = n - ever[:, :-1].sum(axis=0)
    flops = per_ex * running
    flops[0] = attack.setup * per_ex * n
    with np.errstate(invalid="ignore", divide="ignore"):
        asr_cur, asr_cum = ok.sum(axis=0) / n, ever.sum(axis=0) / n
    return {"asr": asr_cum, "asr_current": asr_cur, "early_stop": np.int64(attack.early_stop),
            "correct_before": correct, "first_success": first,
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
            "pretrain_flops": 6.0 * n * spec.pretrain_tokens, "pretrain_n": float(n),
            "pretrain_tokens": spec.pretrain_tokens, "n_dropped_train": 0, "n_dropped_val": 0}


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
        if not (spec.without_v2 and k in V2_ONLY):
            g.create_dataset(k, data=v)
    for a in (a for a in spec.attacks if a.runs_in(rnd)):
        for k, v in _attack_arrays(spec, size, seed, rnd, a).items():
            if not (spec.without_v2 and k in V2_ONLY):
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
                for a in (a for a in spec.attacks if a.runs_in(rnd)):
                    mat = np.array([[transfer_asr(s, t, ss, ts, rnd) for t, ts in runs] for s, ss in runs])
                    g.create_dataset(f"{a.name}/asr", data=mat)
                    g.create_dataset(f"{a.name}/runs", data=names)
                g.attrs["committed"] = int(rnd <= spec.rounds)
    return path
