"""A run's round checkpoint: everything a later round (or a resumed sweep) starts from.

    <output>.ckpt/<run>/round_RRRR/     the classifier (HF folder, safetensors), the adversarial pool,
                                        and the cumulative defense compute so far

A round starts from the checkpoint of its previous round whether the sweep was interrupted or not,
so a resumed sweep stores exactly what an uninterrupted one would.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace

import torch

from hpcrobust.models.classifier import Classifier
from hpcrobust.models.config import model_label
from hpcrobust.models.loading import load_classifier, save_classifier
from hpcrobust.parallel.sharding import shard_classifier
from hpcrobust.store.results import ResultsFile
from hpcrobust.store.writer import fsync_path
from hpcrobust.sweep.context import SweepContext
from hpcrobust.sweep.plan import RunSpec
from hpcrobust.training.pool import Pool

POOL_FILE = "adversarial_pool.npz"
STATE_FILE = "hpcrobust_state.json"
REQUIRED = ("config.json", POOL_FILE, STATE_FILE)


def missing_files(results: ResultsFile, run_key: str, rnd: int) -> list[str]:
    """What a later round would need from round `rnd`'s checkpoint and cannot find."""
    folder = results.checkpoint_dir(run_key, rnd)
    missing = [name for name in REQUIRED if not (folder / name).is_file()]
    if not any(folder.glob("*.safetensors")):  # one file, or shards of a large model
        missing.append("the weights (*.safetensors)")
    return missing


def load_model(ctx: SweepContext, run: RunSpec, rnd: int, trained: bool = False) -> Classifier:
    """Round 0: the configured model with a fresh head; later rounds: the previous round's checkpoint;
    `trained`: round `rnd`'s own checkpoint (its training was done by an earlier attempt: sweep/progress.py).

    With parallel.shard each rank reads the weights into host memory and keeps only its FSDP shard on
    the device."""
    m = ctx.model(run)
    tg = ctx.layout.group.tensors if ctx.layout.shard else None
    device = torch.device("cpu") if tg is not None else ctx.layout.device
    source = rnd if trained else rnd - 1
    if source >= 0:
        prev = ctx.results.checkpoint_dir(run.key, source)
        if not (prev / "config.json").is_file():
            raise RuntimeError(f"checkpoint of round {source} for {run.key} is missing: {prev}")
        m = replace(m, name_or_path=str(prev), label=model_label(m))
    clf = load_classifier(m, ctx.cfg.family, device, run.seed)
    return shard_classifier(clf, tg, ctx.layout.group) if tg is not None else clf


def load_state(ctx: SweepContext, run: RunSpec, rnd: int) -> tuple[Pool, int]:
    """The adversarial pool and cumulative defense FLOPs after round `rnd`."""
    prev = ctx.results.checkpoint_dir(run.key, rnd)
    pool = Pool.load(prev / POOL_FILE)
    return pool, json.loads((prev / STATE_FILE).read_text())["defense_flops_cum"]


def save(ctx: SweepContext, clf: Classifier, run: RunSpec, rnd: int, pool: Pool, defense_cum: int,
         weights: dict[str, torch.Tensor] | None = None, extra: dict[str, str] | None = None) -> None:
    """Written to a temporary folder, flushed to disk and renamed, so a checkpoint is either whole or absent,
    and on disk before the commit that marks its round done (a node crash cannot separate the two).
    `weights`: a sharded model's gathered state dict (sharding.full_weights); `extra`: more text files."""
    final = ctx.results.checkpoint_dir(run.key, rnd)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_classifier(clf, tmp, weights)
    pool.save(tmp / POOL_FILE)
    (tmp / STATE_FILE).write_text(json.dumps({"defense_flops_cum": int(defense_cum)}))
    for name, text in (extra or {}).items():
        (tmp / name).write_text(text)
    for p in tmp.iterdir():
        fsync_path(p)
    fsync_path(tmp)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    fsync_path(final.parent)
