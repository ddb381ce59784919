"""Out-of-memory back-off for every batched step, remembered per run.

Each kind of batched step (a training sub-batch, an evaluation batch, candidate scoring, the BEAST
sampler, the prefix caches an engine holds) runs in pieces no larger than the size last known to fit
for that kind. A CUDA out-of-memory error puts back what the failed attempt counted (FLOP meters),
halves the size, frees the allocator's cache and tries again; the smaller size stays for the rest of
the run, so the error is met once, not at every step.

Only the way a fixed unit of work is cut changes, never the unit: candidates are still scored in the
engine's fixed chunks and training still sums fixed micro-batches, so a back-off changes stored numbers
only by float summation order (or not at all where a piece keeps the shapes). It happens inside one
rank's own share of the work, before that share meets a collective, so a rank that backs off never
leaves its group waiting at a different collective.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from typing import TypeVar

import torch

from hpcrobust.log import log
from hpcrobust.models.flops import FlopMeter

T = TypeVar("T")

KINDS = ("train", "eval", "score", "sampler", "prefix_cache")  # the steps that back off, by name


def is_oom(exc: BaseException) -> bool:
    """A CUDA (or other accelerator) out-of-memory error, as opposed to any other failure."""
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def free_device_memory() -> None:
    """Give freed tensors back to the device, so that another model (or another process) can use them."""
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


@dataclass
class Backoff:
    """The largest size that worked for each kind of step, for one run (every model call of the run shares it).

    `fake_oom_above` is test-only (`debug.fake_oom_above`): an attempt at more than that many rows (or cached
    prefixes) raises a CUDA out-of-memory error before it runs, so back-off is testable without a GPU.
    """

    limits: dict[str, int] = field(default_factory=dict)
    backoffs: dict[str, int] = field(default_factory=dict)  # how often each kind halved (tests, logs)
    fake_oom_above: int = 0
    fakes: int = 0  # fake errors raised
    cuts: bool = True  # False for a sharded model: its passes are collectives, so an error is raised, not retried

    def size(self, kind: str, want: int) -> int:
        """How many rows of `kind` to run at once when `want` are waiting."""
        return max(1, min(want, self.limits.get(kind, want)))

    def _fake(self, kind: str, size: int) -> None:
        if self.fake_oom_above and size > self.fake_oom_above:
            self.fakes += 1
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (fake: {size} {kind} rows > debug.fake_oom_above"
                                              f" {self.fake_oom_above})")

    def retry(self, kind: str, want: int, attempt: Callable[[int], T], meters: Iterable[FlopMeter] = (),
              undo: Callable[[], None] | None = None) -> T:
        """`attempt(size)` with the remembered size; on out-of-memory, undo, halve and try again.

        `attempt` must leave nothing behind when it fails (or `undo` must remove it); the FLOPs it counted on
        `meters` are taken back here. At size 1 the error is real and is raised.
        """
        if not self.cuts:  # one rank retrying alone would leave its group's collectives out of step
            return attempt(self.size(kind, want))
        meters = tuple(meters)
        while True:
            size = self.size(kind, want)
            starts = [m.total.snapshot() for m in meters]
            try:
                self._fake(kind, size)
                return attempt(size)
            except RuntimeError as exc:  # torch.cuda.OutOfMemoryError is a RuntimeError
                if not is_oom(exc) or size == 1:
                    raise
                reason = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
            # Out of the except block: the failed attempt's frames (and their tensors) are gone.
            for m, s in zip(meters, starts, strict=True):
                for f in fields(s):
                    setattr(m.total, f.name, getattr(s, f.name))
            if undo is not None:
                undo()
            self.limits[kind] = size // 2
            self.backoffs[kind] = self.backoffs.get(kind, 0) + 1
            free_device_memory()
            log(f"out of memory in {kind} at {size} rows, trying {size // 2} for the rest of the run ({reason})",
                all_ranks=True)

    def pieces(self, kind: str, n: int, run: Callable[[int, int], T], meters: Iterable[FlopMeter] = ()) -> list[T]:
        """`run(start, stop)` over rows [0, n) in pieces of the remembered size; only a failed piece is redone."""
        meters = tuple(meters)
        out: list[T] = []
        start = 0
        while start < n:
            def attempt(size: int, a: int = start) -> tuple[int, T]:
                return size, run(a, a + size)

            size, part = self.retry(kind, n - start, attempt, meters)
            out.append(part)
            start += size
        return out
