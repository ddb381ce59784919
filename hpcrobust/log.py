"""Log lines prefixed with the rank, so interleaved output from many ranks stays readable."""

from __future__ import annotations

import sys
import time

_state = {"rank": 0, "size": 1, "quiet": False, "t0": time.time()}


def setup(rank: int, size: int, quiet: bool = False) -> None:
    _state.update(rank=rank, size=size, quiet=quiet)


def quiet() -> bool:
    """`--quiet`: no log lines and no progress bars."""
    return bool(_state["quiet"])


def log(msg: str, all_ranks: bool = False) -> None:
    """Rank 0 speaks by default; `all_ranks` lets any rank speak (errors, per-rank facts)."""
    if _state["quiet"] or (_state["rank"] != 0 and not all_ranks):
        return
    elapsed = time.time() - _state["t0"]
    print(f"[rank {_state['rank']}/{_state['size']} {elapsed:7.1f}s] {msg}", file=sys.stderr, flush=True)


def error_line(msg: str) -> None:
    prefix = f"[rank {_state['rank']}] " if _state["size"] > 1 else ""
    print(f"hpcrobust: error: {prefix}{msg}", file=sys.stderr, flush=True)
