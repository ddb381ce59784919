"""The per-size layout: each model size with its own group size and number of groups (models.N.ranks/.groups).

Without either key every size shares parallel.ranks_per_group and the world is cut into equal groups (under
parallel.schedule=rounds run i goes to group i mod n_groups; under queue any group takes any run). With one of
them on any size, the world is cut in model order: size s gets groups_s groups of ranks_s consecutive ranks
(after size s-1's), and its runs go to its own groups only (round-robin under rounds, whichever is free under
queue), so a small size does not hold as many ranks as a large one. The world must then be exactly the sum.
Only who computes a run changes; a run's numbers do not (invariant 1).
"""

from __future__ import annotations

from dataclasses import dataclass

from hpcrobust.errors import UserError
from hpcrobust.models.config import ModelConfig, model_label


@dataclass(frozen=True)
class SizeGroups:
    """One model size's share of the world."""

    label: str
    ranks: int  # ranks of each of its groups
    groups: int  # how many groups serve it


def is_per_size(models: list[ModelConfig]) -> bool:
    """Whether any size asks for its own ranks or groups."""
    return any(m.ranks > 0 or m.groups > 0 for m in models)


def size_ranks(m: ModelConfig, ranks_per_group: int) -> int:
    """Ranks of the groups that hold runs of size `m` (in either layout)."""
    return m.ranks or ranks_per_group


def size_groups(models: list[ModelConfig], ranks_per_group: int, n_seeds: int) -> list[SizeGroups]:
    """Each size's groups in the per-size layout, for a job of `n_seeds` seeds (groups 0 = one per seed)."""
    return [SizeGroups(model_label(m), size_ranks(m, ranks_per_group), m.groups or n_seeds) for m in models]


def needed_ranks(sizes: list[SizeGroups]) -> int:
    return sum(s.groups * s.ranks for s in sizes)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def describe(sizes: list[SizeGroups]) -> str:
    """`s: 2 groups x 1 rank, m: 1 group x 4 ranks`."""
    return ", ".join(f"{s.label}: {_plural(s.groups, 'group')} x {_plural(s.ranks, 'rank')}" for s in sizes)


def needs(sizes: list[SizeGroups]) -> str:
    """How many ranks a job of these sizes needs, and how that is made up (for error lines)."""
    return f"this config needs {needed_ranks(sizes)} ranks ({describe(sizes)})"


def check_world(sizes: list[SizeGroups], started: int) -> None:
    """A per-size layout uses exactly its ranks: fewer cannot hold it, more would sit idle."""
    if needed_ranks(sizes) != started:
        raise UserError(f"{needs(sizes)} but {started} {'was' if started == 1 else 'were'} started")


def group_ranks(sizes: list[SizeGroups]) -> list[list[int]]:
    """World ranks of every group, in model order."""
    out, start = [], 0
    for s in sizes:
        for _ in range(s.groups):
            out.append(list(range(start, start + s.ranks)))
            start += s.ranks
    return out


def groups_of_runs(sizes: list[SizeGroups], n_seeds: int) -> list[int]:
    """The group of every run (runs are model-major: size s's k-th seed is run s * n_seeds + k)."""
    out, first = [], 0
    for s in sizes:
        out += [first + k % s.groups for k in range(n_seeds)]
        first += s.groups
    return out


def equal_groups(world_size: int, ranks_per_group: int, n_runs: int) -> tuple[list[list[int]], list[int]]:
    """The layout without per-size keys: equal groups, run i to group i mod n_groups."""
    n_groups = world_size // ranks_per_group
    ranks = [list(range(g * ranks_per_group, (g + 1) * ranks_per_group)) for g in range(n_groups)]
    return ranks, [i % n_groups for i in range(n_runs)]


def job_nodes(models: list[ModelConfig], ranks_per_group: int, seeds_per_job: list[int], nodes: int,
              tasks_per_node: int) -> int:
    """Nodes of every job of a submission. In the equal layout launch.nodes; in the per-size layout the
    sum of the sizes' ranks over launch.tasks_per_node, which must be whole (launch.nodes may stay 1 or say
    the same). All jobs of an array share one size."""
    if not is_per_size(models):
        return nodes
    by_seeds = {n: size_groups(models, ranks_per_group, n) for n in sorted(set(seeds_per_job))}
    counts = sorted({needed_ranks(s) for s in by_seeds.values()})
    if len(counts) > 1:
        raise UserError(f"launch.array_shards: the jobs get {' or '.join(map(str, by_seeds))} seeds, so a size"
                        f" without models.N.groups would need {' or '.join(map(str, counts))} ranks, but the"
                        f" jobs of an array share one size; set models.N.groups, or shards that divide the seeds"
                        f" evenly")
    sizes = next(iter(by_seeds.values()))
    ranks = counts[0]
    if ranks % tasks_per_node:
        raise UserError(f"launch.tasks_per_node: {needs(sizes)}, not a whole number of nodes of {tasks_per_node}"
                        f" (launch.tasks_per_node); change models.N.ranks or models.N.groups so the sum divides by"
                        f" {tasks_per_node}, or set launch.tasks_per_node (and launch.gpus_per_node) to a divisor"
                        f" of {ranks}")
    derived = ranks // tasks_per_node
    if nodes not in (1, derived):
        raise UserError(f"launch.nodes: {nodes}, but {needs(sizes)}, which is {derived} node(s) of"
                        f" {tasks_per_node} (launch.tasks_per_node); remove launch.nodes or set it to {derived}")
    return derived
