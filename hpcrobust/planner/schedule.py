"""A job's wall time under each parallel.schedule, from every run's planned seconds per round.

    rounds   every round ends at a barrier: round k takes as long as the busiest group's runs of round k
    queue    list scheduling as sweep/queue.py does it: a free group takes the ready round (its previous round
             done) of the eligible run with the most parameter-rounds left; a round ends when its group is done
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class Schedule:
    wall_s: float
    round_s: list[float]  # rounds: each round's busiest group; queue: each round's longest single run
    runs_by_group: list[list[str]]  # the runs each group computes (a run may move between groups under queue)
    items_by_group: list[int] = field(default_factory=list)  # queue: run rounds each group computes
    busy_by_group: list[float] = field(default_factory=list)  # queue: seconds each group computes


def barrier_schedule(by_group: list[list[str]], last: dict[str, int], secs: dict[str, list[float]]) -> Schedule:
    round_s = [max(sum(secs[r][k] for r in grp if k <= last[r]) for grp in by_group)
               for k in range(max(last.values()) + 1)]
    return Schedule(sum(round_s), round_s, by_group)


def queue_schedule(runs: list[str], eligible: dict[str, list[int]], n_groups: int, last: dict[str, int],
                   secs: dict[str, list[float]], weight: dict[str, float]) -> Schedule:
    """`runs` in run order (ties go to the earlier run), `eligible`: the groups that may take each run."""
    order = {r: i for i, r in enumerate(runs)}
    free_at = [0.0] * n_groups
    nxt = {r: 0 for r in runs}
    ready_at = {r: 0.0 for r in runs}
    taken: list[list[str]] = [[] for _ in range(n_groups)]
    items, busy = [0] * n_groups, [0.0] * n_groups
    while any(nxt[r] <= last[r] for r in runs):
        g = min(range(n_groups), key=lambda i: (free_at[i], i))
        if math.isinf(free_at[g]):
            raise ValueError("a run no group may take")
        t = free_at[g]
        cand = [r for r in runs if nxt[r] <= last[r] and g in eligible[r]]
        if not cand:
            free_at[g] = math.inf  # nothing left for this group
            continue
        ready = [r for r in cand if ready_at[r] <= t]
        if not ready:  # its runs' rounds are running elsewhere: look again when the first ends
            free_at[g] = min(ready_at[r] for r in cand)
            continue
        r = min(ready, key=lambda x: (-(last[x] - nxt[x] + 1) * weight[x], order[x]))
        end = t + secs[r][nxt[r]]
        free_at[g] = ready_at[r] = end
        items[g] += 1
        busy[g] += secs[r][nxt[r]]
        nxt[r] += 1
        if r not in taken[g]:
            taken[g].append(r)
    round_s = [max((secs[r][k] for r in runs if k <= last[r]), default=0.0) for k in range(max(last.values()) + 1)]
    return Schedule(max(ready_at.values(), default=0.0), round_s, taken, items, busy)
