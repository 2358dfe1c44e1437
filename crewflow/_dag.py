"""Graph algorithms on task DAGs, on networkx: the one copy the task graph and the optimizer share.

A graph here is a ``networkx.DiGraph`` built by `digraph`: its nodes are task names in
declaration order, an edge runs from a dependency to its dependant, and each task's in-edges
come in the order of its dependencies. Declaration order breaks every tie, so that the same
graph always gives the same order and the same path.

Weights are seconds per task (on nodes, not edges). A task without one weighs ``default``, which
every caller passes explicitly because the callers mean different things by a missing weight:
the task graph counts every task the same (1.0) before anything is measured, while the optimizer
counts a task that was never measured as taking no time (0.0).

networkx is imported on first use: importing the optimizer must not load it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    import networkx as nx

__all__ = [
    "circles",
    "critical_path",
    "digraph",
    "find_cycle",
    "list_schedule",
    "reaches",
    "remaining_paths",
    "topological_order",
]


def digraph(dependencies: Mapping[str, Iterable[str]]) -> nx.DiGraph:
    """The graph of ``dependencies`` (each task's name with the names it depends on).

    Tasks keep the mapping's order. A dependency that is not itself a key is left out: a
    recorded graph is data, and an edge to a task it does not hold cannot be weighed.

    Example:
        >>> list(digraph({"a": [], "b": ["a", "gone"]}).edges)
        [('a', 'b')]
    """
    import networkx as nx

    graph = nx.DiGraph()
    graph.add_nodes_from(dependencies)
    graph.add_edges_from(
        (dep, name) for name, deps in dependencies.items() for dep in deps if dep in dependencies
    )
    return graph


def topological_order(graph: nx.DiGraph) -> list[str]:
    """Task names with each after its dependencies, declaration order breaking ties.

    Raises:
        ValueError: The graph has a cycle; the message names the tasks on it.
    """
    import networkx as nx

    position = {name: index for index, name in enumerate(graph)}
    try:
        return list(nx.lexicographical_topological_sort(graph, key=position.__getitem__))
    except nx.NetworkXUnfeasible:
        raise ValueError(f"the tasks form a cycle: {' -> '.join(find_cycle(graph))}") from None


def find_cycle(graph: nx.DiGraph) -> list[str]:
    """The tasks on one cycle of ``graph``, the first repeated at the end (empty: no cycle).

    Example:
        >>> find_cycle(digraph({"a": ["b"], "b": ["a"]}))
        ['a', 'b', 'a']
    """
    import networkx as nx

    # The test first: it takes a fraction of the time of nx.find_cycle's search.
    if nx.is_directed_acyclic_graph(graph):
        return []
    edges = nx.find_cycle(graph)
    return [edge[0] for edge in edges] + [edges[0][0]]


def circles(graph: nx.DiGraph) -> list[set[str]]:
    """The groups of two or more tasks that depend on each other in a circle (strongly connected
    components, not every cycle: a model's plan may hold exponentially many).

    Example:
        >>> [sorted(group) for group in circles(digraph({"a": ["b"], "b": ["a"], "c": ["a"]}))]
        [['a', 'b']]
    """
    import networkx as nx

    return [set(group) for group in nx.strongly_connected_components(graph) if len(group) > 1]


def reaches(graph: nx.DiGraph, start: str, goal: str) -> bool:
    """Whether ``goal`` depends on ``start``, directly or through other tasks (or is it)."""
    import networkx as nx

    return bool(nx.has_path(graph, start, goal))


def critical_path(
    graph: nx.DiGraph, weights: Mapping[str, float], *, default: float
) -> tuple[float, list[str]]:
    """The heaviest chain of dependent tasks, each task weighing its own duration.

    Ties go to the chain met first: a task continues the first of its dependencies (in their
    declared order) that ends last, even when that one takes no time, so zero-duration tasks
    stay on the chain; and the chain ends at the first task, in topological order, that ends
    last.

    Args:
        graph: A graph made by `digraph`.
        weights: Seconds per task name (not negative).
        default: The weight of a task that ``weights`` does not hold.

    Raises:
        ValueError: The graph has a cycle.

    Returns:
        The chain's total weight and its task names, first to last (``(0.0, [])`` for an empty
        graph).

    Example:
        >>> diamond = digraph({"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]})
        >>> critical_path(diamond, {"c": 5.0}, default=1.0)
        (7.0, ['a', 'c', 'd'])
        >>> critical_path(diamond, {"c": 5.0}, default=0.0)
        (5.0, ['a', 'c'])
    """
    # A dynamic programme over the order rather than nx.dag_longest_path, which weighs edges:
    # moving the weights onto edges takes a copy of the graph and an extra end node, and that
    # node ties with a zero-duration last task, so networkx would end the chain elsewhere.
    finish: dict[str, float] = {}
    parent: dict[str, str | None] = {}
    for name in topological_order(graph):
        # max() keeps the first of equal candidates: the ties described above.
        before = max(graph.pred[name], key=finish.__getitem__, default=None)
        finish[name] = (0.0 if before is None else finish[before]) + weights.get(name, default)
        parent[name] = before
    if not finish:
        return 0.0, []
    end = max(finish, key=finish.__getitem__)
    path = [end]
    while (before := parent[path[-1]]) is not None:
        path.append(before)
    return finish[end], path[::-1]


def remaining_paths(
    dependants: Mapping[str, Iterable[str]],
    order: Sequence[str],
    weights: Mapping[str, float],
    *,
    default: float,
) -> dict[str, float]:
    """For each task, the heaviest chain from its start to the end of the graph, its own weight
    included: how long the work that waits on it takes at the least.

    networkx has no algorithm for this one; it is a pass over a topological order, which the
    caller gives (the task graph computes its own, faster than networkx for its hot path).

    Args:
        dependants: Each task's dependants (a networkx graph's ``succ`` serves).
        order: Every task, each after its dependencies; any such order gives the same lengths.
        weights: Seconds per task name (not negative).
        default: The weight of a task that ``weights`` does not hold.

    Example:
        >>> graph = digraph({"a": [], "b": ["a"], "c": []})
        >>> paths = remaining_paths(graph.succ, topological_order(graph), {"b": 3}, default=1.0)
        >>> paths["a"], paths["b"], paths["c"]
        (4.0, 3.0, 1.0)
    """
    remaining: dict[str, float] = {}
    for name in reversed(order):
        after = max((remaining[dependant] for dependant in dependants[name]), default=0.0)
        remaining[name] = weights.get(name, default) + after
    return remaining


def list_schedule(
    graph: nx.DiGraph,
    weights: Mapping[str, float],
    *,
    capacity: int | None,
    default: float,
) -> float:
    """How long the graph takes when each task starts as soon as its dependencies are done and
    one of ``capacity`` slots is free, the longest remaining path first (list scheduling, as
    the parallel process does): the makespan of that schedule.

    ``capacity=1`` gives the sum of the weights (one task at a time); ``None`` (no bound)
    gives the critical path.

    Args:
        graph: A graph made by `digraph`.
        weights: Seconds per task name (not negative).
        capacity: Tasks at once (``None``: unbounded).
        default: The weight of a task that ``weights`` does not hold.

    Example:
        >>> fan = digraph({"a": [], "b": [], "c": [], "join": ["a", "b", "c"]})
        >>> list_schedule(fan, {}, capacity=2, default=1.0)
        3.0
    """
    import heapq

    order = topological_order(graph)
    remaining = remaining_paths(graph.succ, order, weights, default=default)
    position = {name: index for index, name in enumerate(graph)}
    waiting = dict(graph.in_degree)
    ready = [(-remaining[n], position[n], n) for n in graph if waiting[n] == 0]
    heapq.heapify(ready)
    running: list[tuple[float, int, str]] = []
    now = 0.0
    while ready or running:
        while ready and (capacity is None or len(running) < capacity):
            _, index, name = heapq.heappop(ready)
            heapq.heappush(running, (now + weights.get(name, default), index, name))
        now = running[0][0]
        while running and running[0][0] <= now:  # everything ending now frees its slot first
            _, _, name = heapq.heappop(running)
            for dependant in graph.succ[name]:
                waiting[dependant] -= 1
                if waiting[dependant] == 0:
                    heapq.heappush(ready, (-remaining[dependant], position[dependant], dependant))
    return now
