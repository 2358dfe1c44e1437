"""Graph arithmetic on recorded task graphs: the critical path, scheduled run lengths.

Pure functions of a task graph (each task's dependencies) and seconds per task.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = ["critical_path", "estimate_duration"]


def _dependencies(graph: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """Each task's distinct, known dependencies."""
    return {name: [d for d in dict.fromkeys(deps) if d in graph] for name, deps in graph.items()}


def _topological(deps: Mapping[str, Sequence[str]]) -> list[str]:
    """Tasks after their dependencies, declaration order breaking ties (a cycle's are left out)."""
    waiting = {name: len(ds) for name, ds in deps.items()}
    dependants: dict[str, list[str]] = defaultdict(list)
    for name, ds in deps.items():
        for dep in ds:
            dependants[dep].append(name)
    position = {name: index for index, name in enumerate(deps)}
    ready = [(position[name], name) for name, count in waiting.items() if count == 0]
    order: list[str] = []
    while ready:
        _, name = heapq.heappop(ready)
        order.append(name)
        for dependant in dependants[name]:
            waiting[dependant] -= 1
            if waiting[dependant] == 0:
                heapq.heappush(ready, (position[dependant], dependant))
    return order


def critical_path(
    graph: Mapping[str, Sequence[str]], durations: Mapping[str, float]
) -> tuple[float, list[str]]:
    """The longest chain of dependent tasks, weighted by ``durations`` (missing tasks: 0 s).

    Args:
        graph: Each task's dependencies, as in `RunRecord.graph`.
        durations: Seconds per task name.

    Returns:
        The chain's length in seconds and its task names, first to last (``(0.0, [])`` for an
        empty graph).
    """
    deps = _dependencies(graph)
    best: dict[str, tuple[float, str | None]] = {}
    for name in _topological(deps):
        start, parent = 0.0, None
        for dep in deps[name]:
            if parent is None or best[dep][0] > start:
                start, parent = best[dep][0], dep
        best[name] = (start + durations.get(name, 0.0), parent)
    if not best:
        return 0.0, []
    end: str | None = max(best, key=lambda name: best[name][0])
    length = best[end][0] if end is not None else 0.0
    path: list[str] = []
    while end is not None:
        path.append(end)
        end = best[end][1]
    return length, path[::-1]


def estimate_duration(
    graph: Mapping[str, Sequence[str]],
    durations: Mapping[str, float],
    *,
    max_concurrency: int | None = None,
) -> float:
    """How long a run takes when each task starts as soon as its dependencies are done and one
    of ``max_concurrency`` slots is free, the longest remaining path first (list scheduling, as
    the parallel process does).

    ``max_concurrency=1`` gives the sum of the durations (a sequential run); ``None`` (no bound)
    gives the critical path.

    Args:
        graph: Each task's dependencies, as in `RunRecord.graph`.
        durations: Seconds per task name (missing tasks: 0 s).
        max_concurrency: Tasks at once (``None``: unbounded).
    """
    deps = _dependencies(graph)
    order = _topological(deps)
    dependants: dict[str, list[str]] = defaultdict(list)
    for name in order:
        for dep in deps[name]:
            dependants[dep].append(name)
    remaining: dict[str, float] = {}
    for name in reversed(order):
        after = max((remaining[d] for d in dependants[name]), default=0.0)
        remaining[name] = durations.get(name, 0.0) + after
    position = {name: index for index, name in enumerate(graph)}
    waiting = {name: len(deps[name]) for name in order}
    ready = [(-remaining[n], position[n], n) for n in order if waiting[n] == 0]
    heapq.heapify(ready)
    running: list[tuple[float, int, str]] = []
    now = 0.0
    while ready or running:
        while ready and (max_concurrency is None or len(running) < max_concurrency):
            _, index, name = heapq.heappop(ready)
            heapq.heappush(running, (now + durations.get(name, 0.0), index, name))
        now = running[0][0]
        while running and running[0][0] <= now:  # everything ending now frees its slot first
            _, _, name = heapq.heappop(running)
            for dependant in dependants[name]:
                waiting[dependant] -= 1
                if waiting[dependant] == 0:
                    heapq.heappush(ready, (-remaining[dependant], position[dependant], dependant))
    return now
