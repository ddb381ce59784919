"""What decides the stored numbers besides the config: the task file's bytes and the models' files.

Their digests are part of a results file's identity (`science_hash`), so a resumed sweep cannot mix
results of another task file or of retrained weights into a file. Where things live (the family
cache folder, the output path) is not part of it, so moving them keeps a file resumable.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from hpcrobust.config import SweepConfig
from hpcrobust.models.config import ModelConfig
from hpcrobust.models.loading import resolve

_CHUNK = 8 << 20


@lru_cache(maxsize=64)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def file_digest(path: Path) -> str:
    st = path.stat()
    return _file_sha256(str(path.resolve()), st.st_size, st.st_mtime_ns)


def folder_digest(folder: Path) -> str:
    """Every visible file of a model folder (weights, config, tokenizer), by name and content."""
    h = hashlib.sha256()
    for p in sorted(folder.iterdir()):
        if p.is_file() and not p.name.startswith("."):
            h.update(f"{p.name}\0{file_digest(p)}\0".encode())
    return h.hexdigest()


def tree_digest(folder: Path) -> str:
    """Every visible file under a data folder (aclImdb/, Enron ham/ spam/, save_to_disk), by path and content."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if p.is_file() and not any(part.startswith(".") for part in rel.parts):
            h.update(f"{rel.as_posix()}\0{file_digest(p)}\0".encode())
    return h.hexdigest()


def model_digest(m: ModelConfig, cfg: SweepConfig) -> str:
    """A local folder (or built-in size): its files; a hub id: the cached snapshot's commit."""
    r = resolve(m, cfg.family)
    folder = Path(r.path)
    if folder.is_dir():
        return folder_digest(folder)
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(r.path, "config.json", revision=m.revision or None)
    if isinstance(found, str):  # .../snapshots/<commit>/config.json
        return f"hub:{r.path}@{Path(found).parent.name}"
    return f"hub:{r.path}@{m.revision or 'default'}"


def input_digests(cfg: SweepConfig) -> dict[str, str]:
    """{what: digest} for the task file and every model (run once, on one rank: weights can be large)."""
    out = {}
    if cfg.task.path:
        path = Path(cfg.task.path).expanduser()
        out["task.path"] = tree_digest(path) if path.is_dir() else file_digest(path)
    for i, m in enumerate(cfg.models):
        out[f"models.{i}"] = model_digest(m, cfg)
    return out
