"""`hpcrobust status FILE [--watch [SECONDS]] [--job ID]`: the text that launch/status.py's facts become,
and the loop that redraws it (the command's options are declared in hpcrobust/cli.py)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from hpcrobust.launch.status import COMMITTED, FAILED, RUNNING, WAITING, SweepStatus, collect, device_hours

MARK = {COMMITTED: "#", RUNNING: ">", WAITING: ".", FAILED: "!"}
LEGEND = "  # committed   > running   . waiting   ! failed"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    s = int(round(seconds))
    if s < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def _asr(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{values[0]:.2f}" if len(values) == 1 else f"{values[0]:.2f}->{values[-1]:.2f}"


def run_rows(st: SweepStatus) -> list[str]:
    """One row per run: its rounds as marks, its last checkpoint, clean accuracy and ASR (first -> last round)."""
    width = max([r.planned + 1 for r in st.runs] + [6])
    rows = [["run", "rounds".ljust(width), "ckpt", "acc", *(f"ASR {a}" for a in st.attacks)]]
    for r in st.runs:
        done = sorted(r.rounds)
        acc = r.rounds[done[-1]]["accuracy"] if done else None
        ckpt = ("-" if r.checkpoint < 0 else str(r.checkpoint)) + ("+" if r.saving else "")
        rows.append([r.key, "".join(MARK[c] for c in r.cells), ckpt, "-" if acc is None else f"{acc:.3f}",
                     *(_asr([r.rounds[k]["asr"][a] for k in done if a in r.rounds[k]["asr"]]) for a in st.attacks)])
    return _table(rows)


def round_rows(st: SweepStatus) -> list[str]:
    """One row per round that has begun; each stretch of rounds that nobody has begun, in one row."""
    last = max([r.planned for r in st.runs] + [0])
    head = ["round", "runs", "wall/run", "wall sum", "device-h", *(f"ASR {a}" for a in st.attacks)]
    rows, quiet = [head], []

    def flush() -> None:
        if quiet:
            span = str(quiet[0]) if len(quiet) == 1 else f"{quiet[0]}-{quiet[-1]}"
            rows.append([span, "waiting"] + [""] * (len(head) - 2))
            quiet.clear()

    for rnd in range(last + 1):
        runs = [r for r in st.runs if rnd <= r.planned]
        done = [r for r in runs if rnd in r.rounds]
        busy = [r for r in runs if r.cells[rnd] in (RUNNING, FAILED)]
        if not done and not busy:
            quiet.append(rnd)
            continue
        flush()
        walls = [r.rounds[rnd]["wall"] for r in done if r.rounds[rnd]["wall"] is not None]
        hours = device_hours(st.runs, rnd)
        asr = [[r.rounds[rnd]["asr"][a] for r in done if a in r.rounds[rnd]["asr"]] for a in st.attacks]
        rows.append([str(rnd), f"{len(done)}/{len(runs)}" + (f" ({len(busy)} {busy[0].cells[rnd]})" if busy else ""),
                     duration(sum(walls) / len(walls)) if walls else "-", duration(sum(walls)) if walls else "-",
                     "n/a" if hours is None else f"{hours:.{2 if hours >= 0.01 else 4}f}",
                     *(f"{sum(v) / len(v):.3f}" if v else "-" for v in asr)])
    flush()
    return _table(rows)


def render(st: SweepStatus, now: float | None = None) -> str:
    now = time.time() if now is None else now
    name = f" (experiment {st.experiment})" if st.experiment else ""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(st.last_commit))
    n = st.counts()
    total = sum(n.values())
    if st.finished:
        left = "0s"
    elif st.left_s is None:
        left = "unknown (no committed round says how long it took)"
    else:
        par = f"over {st.groups} groups" if st.groups > 1 else "in 1 group"
        when = {"queued": ", once the job starts", "stopped": ", once resumed", "failed": ", once resumed"}
        left = (f"about {duration(st.left_s)} ({duration(st.work_left_s)} of run time {par}"
                f"{when.get(st.state, '')})")
    lines = [f"{st.path}{name}",
             f"sweep: {st.state}: {st.why}; last commit {stamp} ({duration(max(0.0, now - st.last_commit))} ago)",
             f"progress: {n[COMMITTED]}/{total} run-rounds committed ({100 * n[COMMITTED] / max(1, total):.0f}%),"
             f" {n[RUNNING]} running, {n[WAITING]} waiting, {n[FAILED]} failed",
             f"time left (estimate): {left}", "", *run_rows(st), LEGEND, "", *round_rows(st)]
    return "\n".join(lines) + "\n"


def watch(path: str, every: float | None, job: str = "", out: TextIO | None = None) -> int:
    """Draw once, or (every > 0) redraw every `every` seconds until the sweep has finished. Ctrl-C ends it
    quietly (exit 0): watching is never an error."""
    out = out or sys.stdout
    tty = out.isatty()
    try:
        while True:
            st = collect(path, job)
            text = render(st)
            if every is None:
                out.write(text)
                return 0
            stamp = time.strftime("%H:%M:%S")
            out.write(("\x1b[H\x1b[2J" if tty else "\n") + f"[{stamp}, every {every:g}s, Ctrl-C to stop]\n" + text)
            out.flush()
            if st.finished:
                return 0
            time.sleep(every)
    except KeyboardInterrupt:
        out.write("\n")
        return 0
