"""Which config keys decide the stored numbers: the one home of that rule.

`science_hash_of` identifies a sweep's results file (a rerun may only add to a file with the same
hash); `sweep_key_of` groups files of one experiment in the analysis, which also ignores `seeds` and
`models` so that per-seed or per-size files merge. Both work on the plain config mapping stored in
every results file, so neither needs the config classes (nor torch).
"""

from __future__ import annotations

import hashlib
from typing import Any

import yaml

NOT_SCIENCE = ("output", "launch", "debug", "experiment", "tracking")  # names, where results go, how the job runs
NOT_SCIENCE_KEYS = {"family": ("cache_dir",)}  # where the built-in family is kept (its recipe is science)
NOT_SWEEP = NOT_SCIENCE + ("seeds", "models")  # a sweep may be split by seed or size across files
SCIENCE_PARALLEL = ("score_chunk", "device")  # of parallel.*, only these can change a number
NOT_SCIENCE_MODEL = ("ranks", "groups")  # models.N keys that only say which ranks hold a size's runs

# Before attacks declared their own parameters (schema v1 files), every attack entry carried every key
# below. Filling in the keys an entry's type does not have keeps the identity of such files, so a sweep
# started by an older version resumes, and files of both versions merge in the analysis.
LEGACY_ATTACK_DEFAULTS: dict[str, Any] = {
    "n_examples": 50, "n_iterations": 10, "n_attack_tokens": 10, "search_width": 128, "topk": 256,
    "n_replace": 1, "buffer_size": 1, "init_string": "", "beam_width": 8, "branching": 8, "sampler": "",
    "ensemble": False, "early_stop": True,
}


# Task keys added after v1 files existed (where a file task's data comes from, its column names). They decide the
# data, so they are science; at these defaults they are dropped, so a config that does not use them keeps the
# identity it had before they existed.
TASK_SOURCE_DEFAULTS: dict[str, str] = {
    "dataset": "", "revision": "", "text_column": "text", "label_column": "label", "split_column": "split",
    "train_split": "train", "val_split": "validation",
}


# Attack keys added after files existed: at these defaults (what every older sweep did) they are left out, so a
# config that does not use them keeps its identity; any other value decides what the file holds.
NEW_ATTACK_DEFAULTS: dict[str, Any] = {"rounds": "all"}


def science(config: dict, drop: tuple[str, ...] = NOT_SCIENCE) -> dict:
    """The stored config minus `drop`, with parallel.* reduced, the models' layout keys left out, attack entries
    in their full form (new attack keys at their defaults left out) and task source keys at their defaults left
    out."""
    d = {k: v for k, v in config.items() if k not in drop}
    for section, keys in NOT_SCIENCE_KEYS.items():
        if isinstance(d.get(section), dict):
            d[section] = {k: v for k, v in d[section].items() if k not in keys}
    if isinstance(d.get("task"), dict):
        d["task"] = {k: v for k, v in d["task"].items() if TASK_SOURCE_DEFAULTS.get(k, object()) != v}
    if isinstance(d.get("models"), list):
        d["models"] = [{k: v for k, v in m.items() if k not in NOT_SCIENCE_MODEL} if isinstance(m, dict) else m
                       for m in d["models"]]
    par = d.get("parallel") or {}
    d["parallel"] = {k: par.get(k) for k in SCIENCE_PARALLEL}
    for group in ("attacks", "train_attacks"):
        if isinstance(d.get(group), list):
            d[group] = [{**LEGACY_ATTACK_DEFAULTS, **{k: v for k, v in a.items()
                                                      if NEW_ATTACK_DEFAULTS.get(k, object()) != v}}
                        if isinstance(a, dict) else a for a in d[group]]
    return d


def flatten(d: Any, prefix: str = "") -> dict[str, str]:
    """{'a.b.c': 'value'}; lists of named mappings (attacks) are keyed by name, other lists are one value."""
    out: dict[str, str] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(d, list) and d and all(isinstance(v, dict) for v in d):
        for i, v in enumerate(d):
            out.update(flatten(v, f"{prefix}{v.get('name', i)}."))
    else:
        out[prefix[:-1]] = str(d)
    return out


def _digest(d: dict, n: int) -> str:
    return hashlib.sha256(yaml.safe_dump(d, sort_keys=True).encode()).hexdigest()[:n]


def science_hash_of(config: dict, inputs: dict[str, str] | None = None) -> str:
    """`inputs`: digests of what the config points to (task file, model files; see sweep/inputs.py)."""
    d = science(config)
    if inputs:
        d["inputs"] = dict(inputs)
    return _digest(d, 16)


def differences(old_config: dict, old_inputs: dict, config: dict, inputs: dict, most: int = 3) -> list[str]:
    """The first few science keys (or inputs) in which two sweeps differ, for a refusal that says why."""
    a, b = flatten(science(old_config)), flatten(science(config))
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    changed = sorted(k for k in set(old_inputs) | set(inputs) if old_inputs.get(k) != inputs.get(k))
    keys += [f"the contents of {k}" for k in changed]
    return keys[:most]


def sweep_key_of(config: dict) -> str:
    return _digest(science(config, NOT_SWEEP), 12)
