"""The dependency graph as geometry for the template: layers by networkx's
``topological_generations`` (left to right), each layer ordered by its nodes' dependencies'
places so edges cross less; deterministic for one graph.

The workflow's decisions are marked as the run recorded them: a task with a condition carries
``?`` (its tooltip says whether it held), a router task ``⑂`` and the edges to the branches it
chose are drawn as chosen; a skipped task's tooltip says why. Tooltips are SVG ``<title>``
elements: the browser shows them, and screen readers read them, with no script."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

    from crewflow.report._model import TaskEntry

__all__ = ["Drawing", "Edge", "Node", "layout"]

LABELLED = 80
"""Graphs of up to this many tasks get boxes with names; larger ones get dots (hover tells)."""


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    label: str
    status: str
    internal: bool
    x: float
    y: float
    tip: str
    marks: tuple[str, ...] = ()
    """``condition``, ``router``: the decisions it carries (CSS classes)."""
    badge: str = ""
    """The marks as glyphs, in the box's corner (``?``: a condition, ``⑂``: a router)."""


@dataclass(frozen=True, slots=True)
class Edge:
    path: str
    chosen: bool = False
    """A branch its source's router chose."""
    tip: str = ""


@dataclass(frozen=True, slots=True)
class Drawing:
    width: float
    height: float
    boxes: bool
    """Named boxes (``False``: dots)."""
    node_width: float
    node_height: float
    nodes: list[Node]
    edges: list[Edge]

    @property
    def marked(self) -> bool:
        """Whether a task carries a decision's mark."""
        return any(node.marks for node in self.nodes)

    @property
    def routed(self) -> bool:
        """Whether an edge is a branch a router chose."""
        return any(edge.chosen for edge in self.edges)


def layout(tasks: tuple[TaskEntry, ...]) -> Drawing:
    """Lay the tasks out by dependency layers."""
    import networkx as nx

    graph = nx.DiGraph()
    order = {task.name: index for index, task in enumerate(tasks)}
    graph.add_nodes_from(order)
    for task in tasks:
        graph.add_edges_from((dep, task.name) for dep in task.depends_on if dep in order)
    try:
        layers = [
            sorted(layer, key=order.__getitem__) for layer in nx.topological_generations(graph)
        ]
    except nx.NetworkXUnfeasible:  # a cycle in a damaged record: one column, as declared
        layers = [list(order)]
    boxes = len(tasks) <= LABELLED
    node_w, node_h = (150.0, 26.0) if boxes else (7.0, 7.0)
    gap_x, gap_y = (60.0, 12.0) if boxes else (40.0, 4.0)
    place: dict[str, float] = {}
    for layer in layers:
        layer.sort(key=lambda n: (_mean(place, graph.predecessors(n)), order[n]))
        for index, name in enumerate(layer):
            place[name] = float(index)
    tallest = max((len(layer) for layer in layers), default=1)
    height = tallest * (node_h + gap_y) + gap_y
    by_name = {t.name: t for t in tasks}
    nodes: dict[str, Node] = {}
    for column, layer in enumerate(layers):
        x = 10 + column * (node_w + gap_x)
        offset = (height - len(layer) * (node_h + gap_y)) / 2
        for index, name in enumerate(layer):
            task = by_name[name]
            y = offset + gap_y / 2 + index * (node_h + gap_y)
            marks = _marks(task)
            nodes[name] = Node(
                name=name,
                label=name if len(name) <= 20 else name[:19] + "…",
                status=task.status.value,
                internal=task.kind.value == "internal",
                x=x,
                y=y,
                tip=_tip(task),
                marks=marks,
                badge="".join(_GLYPHS[mark] for mark in marks),
            )
    pairs = sorted(graph.edges, key=lambda edge: (order[edge[0]], order[edge[1]]))
    edges = [_edge(nodes[a], nodes[b], node_w, node_h, by_name[a]) for a, b in pairs]
    width = 20 + len(layers) * (node_w + gap_x) - gap_x
    return Drawing(width, height, boxes, node_w, node_h, [nodes[t.name] for t in tasks], edges)


_GLYPHS = {"condition": "?", "router": "⑂"}


def _marks(task: TaskEntry) -> tuple[str, ...]:
    """The decisions ``task`` carries, as recorded."""
    found = []
    if task.condition is not None:
        found.append("condition")
    if task.chose is not None:
        found.append("router")
    return tuple(found)


def _tip(task: TaskEntry) -> str:
    """What hovering ``task`` says: its name, status and kind, why it was skipped, what its
    condition and router decided, and what it depends on."""
    lines = [f"{task.name} · {task.status.value} · {task.kind.value}"]
    if task.reason:
        lines.append(f"skipped: {task.reason}")
    if task.condition is not None:
        lines.append(f"condition: {'held' if task.condition else 'false'}")
    if task.chose is not None:
        lines.append(f"router chose: {', '.join(task.chose) or 'none'}")
    lines.append(f"depends on {', '.join(task.depends_on) or 'none'}")
    return "\n".join(lines)


def _mean(place: dict[str, float], names: Iterable[str]) -> float:
    found = [place[n] for n in names if n in place]
    return sum(found) / len(found) if found else 0.0


def _edge(a: Node, b: Node, w: float, h: float, source: TaskEntry) -> Edge:
    x1, y1 = a.x + w, a.y + h / 2
    x2, y2 = b.x, b.y + h / 2
    mid = (x1 + x2) / 2
    path = f"M{x1:.1f} {y1:.1f}C{mid:.1f} {y1:.1f} {mid:.1f} {y2:.1f} {x2:.1f} {y2:.1f}"
    if source.chose is not None and b.name in source.chose:
        return Edge(path, chosen=True, tip=f"{a.name} → {b.name}: chosen by the router")
    return Edge(path, tip=f"{a.name} → {b.name}")
