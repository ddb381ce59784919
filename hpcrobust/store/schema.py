"""The HDF5 results layout, in one place (invariant 4). Bump SCHEMA_VERSION when it changes.

    /                                   attrs: format, schema_version, hpcrobust_version,
                                               config (resolved YAML), science_hash
    /runs/<run>/                        attrs: model, model_label, seed, task, run_index
    /runs/<run>/rounds/<RRRR>/          attrs: round, committed (1 once every dataset is written)
        scalars (0-d datasets)          clean_accuracy, train_loss, flops_nominal, flops_actual,
                                        wall_time, n_params, pretrain_flops, ... (see ROUND_SCALARS)
        attacks/<name>/...              per-attack arrays (see ATTACK_ARRAYS)
    /transfer/<RRRR>/                   attrs: round, committed
        <attack>/asr                    [source run, target run] ASR of source's suffixes on target
        <attack>/runs                   run names in matrix order

Strings are stored as fixed-length UTF-8 bytes so the same layout can be written in parallel
(h5py's mpio driver cannot write variable-length data collectively).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

FORMAT = "hpcrobust-results"
SCHEMA_VERSION = 1

RUNS = "runs"
TRANSFER = "transfer"
COMMITTED = "committed"

# Per-round scalars (name -> what it means); the README's table is generated from this.
ROUND_SCALARS: dict[str, str] = {
    "clean_accuracy": "accuracy on the validation split before any attack",
    "train_loss": "mean training loss of this round (fine-tuning in round 0)",
    "flops_nominal": "training FLOPs of this round, 2NT forward + 4NT backward",
    "flops_actual": "training FLOPs of this round as really computed",
    "finetune_flops": "nominal FLOPs of clean fine-tuning (round 0 only, else 0)",
    "defense_flops": "nominal FLOPs of this round's adversarial training: attack generation + training",
    "defense_flops_cum": "defense_flops summed over rounds 1..this round",
    "train_attack_iterations": "iterations of the training attack this round (its linear schedule)",
    "train_attack_success": "fraction of this round's attacked training examples that flipped",
    "n_adversarial": "adversarial examples in this round's training set",
    "n_clean": "clean examples in this round's training set",
    "wall_time": "seconds this round took (not compared across rank counts)",
    "n_params": "parameters of the classifier (N of the FLOP convention)",
    "pretrain_flops": "6·N·D of pretraining (NaN if unknown)",
}

ATTACK_ARRAYS: dict[str, str] = {
    "asr": "[n_iterations+1] attack success rate after each iteration (index 0: before any), over examples"
           " correct before the attack",
    "correct_before": "[n_examples] bool: classified correctly without the attack",
    "first_success": "[n_examples] iteration of the first label flip (-1: never)",
    "attack_tokens": "[n_examples, n_attack_tokens] final attack token ids",
    "attack_text": "[n_examples] final attack decoded (fixed-length UTF-8)",
    "example_index": "[n_examples] index of each attacked example in the validation split",
    "flops_nominal": "[n_iterations+1] attack FLOPs per iteration (index 0: setup), nominal (as if"
                     " nothing were cached)",
    "flops_actual": "[n_iterations+1] attack FLOPs per iteration, as actually computed",
    "final_loss": "[n_examples] wrong-label loss of the final attack",
    "shared_candidates": "RandomToken: 1 when the candidates were drawn once and broadcast to every size",
    "candidates_sha256": "RandomToken: digest of the broadcast candidates (equal across sizes of a seed)",
    "wall_time": "seconds the attack took",
}


def round_name(r: int) -> str:
    return f"{r:04d}"


def run_path(run_key: str) -> str:
    return f"{RUNS}/{run_key}"


def round_path(run_key: str, r: int) -> str:
    return f"{RUNS}/{run_key}/rounds/{round_name(r)}"


def transfer_path(r: int) -> str:
    return f"{TRANSFER}/{round_name(r)}"


def text_array(strings: list[str]) -> np.ndarray:
    raw = [s.encode("utf-8") for s in strings]
    width = max([1, *(len(b) for b in raw)])
    return np.array(raw, dtype=f"S{width}")


def decode_text(arr: np.ndarray) -> list[str]:
    return [b.decode("utf-8", errors="replace") for b in np.asarray(arr).tolist()]


@dataclass
class Record:
    """One atomic unit of results: a group path, its attrs, scalars and arrays; committed as a whole."""

    path: str
    attrs: dict = field(default_factory=dict)
    scalars: dict[str, float] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    parent_attrs: dict[str, dict] = field(default_factory=dict)  # attrs of enclosing groups (run metadata)

    def meta(self) -> dict:
        """Everything but the array contents: what every rank must know to create the layout."""
        return {"path": self.path, "attrs": self.attrs, "scalars": self.scalars,
                "parent_attrs": self.parent_attrs,
                "arrays": {k: (v.shape, v.dtype.str) for k, v in self.arrays.items()}}


def attack_arrays(res) -> dict[str, np.ndarray]:
    """An AttackResult as datasets under attacks/<name>/ (see ATTACK_ARRAYS)."""
    width = max([1, *(len(t) for t in res.tokens)])
    toks = np.full((len(res.tokens), width), -1, dtype=np.int64)
    for i, t in enumerate(res.tokens):
        toks[i, : len(t)] = t
    base = f"attacks/{res.name}/"
    return {
        base + "asr": np.asarray(res.asr, dtype=np.float64),
        base + "correct_before": np.asarray(res.correct_before, dtype=bool),
        base + "first_success": np.asarray(res.first_success, dtype=np.int64),
        base + "attack_tokens": toks,
        base + "attack_text": text_array(res.texts),
        base + "example_index": np.asarray(res.example_index, dtype=np.int64),
        base + "flops_nominal": np.asarray(res.flops_nominal, dtype=np.float64),
        base + "flops_actual": np.asarray(res.flops_actual, dtype=np.float64),
        base + "final_loss": np.asarray(res.final_loss, dtype=np.float64),
        base + "wall_time": np.float64(res.wall_time),
    }
