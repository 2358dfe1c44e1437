"""Graph arithmetic on recorded task graphs: the critical path, scheduled run lengths.

Pure functions of a task graph (each task's dependencies) and seconds per task. The graph
algorithms are `crewflow._dag`'s, the ones the task graph uses; a task missing from the seconds
was not measured and counts 0 s here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from crewflow import _dag

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = ["critical_path", "estimate_duration"]

#: What a task weighs when the records hold no duration for it: not measured, so no time.
UNMEASURED_SECONDS = 0.0


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
    return _dag.critical_path(_dag.digraph(graph), durations, default=UNMEASURED_SECONDS)


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
    return _dag.list_schedule(
        _dag.digraph(graph), durations, capacity=max_concurrency, default=UNMEASURED_SECONDS
    )
