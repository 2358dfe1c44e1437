"""A task graph as text: Mermaid, Graphviz DOT and JSON (``crewflow graph``, `TaskGraph`).

Each writer draws one `Picture`: the tasks (name, agent, kind and their *marks*) and the edges
(optional context, a mapping router's values). The marks are data, in `MARKS`: one row per
workflow feature, read off the task's own fields, so a new feature is marked everywhere by
adding a row.

Every text a task carries (its name, its agent's role, a router's values) is written so that the
format reads it back as that text: quotes, backslashes, newlines, ``<``, ``#`` and unicode in a
name never break a picture or change its shape. Lone surrogates and NUL become U+FFFD, as in
records (`crewflow._text.valid_text`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

from crewflow._text import valid_text
from crewflow.task import function_name

if TYPE_CHECKING:
    from collections.abc import Callable

    from crewflow.graph import TaskGraph

__all__ = [
    "MARKS",
    "Edge",
    "Mark",
    "Node",
    "Picture",
    "dot",
    "json_value",
    "marks",
    "mermaid",
    "picture",
]


@dataclass(frozen=True, slots=True)
class Mark:
    """A workflow feature a task carries, as a picture shows it.

    Attributes:
        kind: Which feature (``condition``, ``router``, ``guarded``).
        detail: What it is: the function's qualified name, or the field a mapping router reads.
        label: How a picture says it, on a line of the task's box (``if is_urgent``).
    """

    kind: str
    detail: str
    label: str


def _short(function: object) -> str:
    """A function's name without its module or class (what fits in a box)."""
    return function_name(function).rpartition(".")[2]


def _condition(graph: TaskGraph, name: str) -> tuple[str, str] | None:
    task = graph.task(name)
    if task.condition is None:
        return None
    return function_name(task.condition), f"if {_short(task.condition)}"


def _router(graph: TaskGraph, name: str) -> tuple[str, str] | None:
    task = graph.task(name)
    router = task.router
    if router is None:
        return None
    if isinstance(router, Mapping):
        field = task.router_field or ""  # set by the task for a one-field model
        return field, f"routes on {field}"
    return function_name(router), f"routes by {_short(router)}"


def _guardrail(graph: TaskGraph, name: str) -> tuple[str, str] | None:
    task = graph.task(name)
    if task.guardrail is None:
        return None
    return function_name(task.guardrail), "guarded"


def _map(graph: TaskGraph, name: str) -> tuple[str, str] | None:
    over = graph.task(name).map_over
    if over is None:
        return None
    if isinstance(over, str):
        return over, f"for each in {over}"
    return function_name(over), f"for each in {_short(over)}()"


def _loop(graph: TaskGraph, name: str) -> tuple[str, str] | None:
    label = graph.loop_of(name)
    if label is None:
        return None
    loop = graph.loops[label][0]
    return label, f"loop {label} (up to {loop.max_rounds} rounds)"


MARKS: tuple[tuple[str, Callable[[TaskGraph, str], tuple[str, str] | None]], ...] = (
    ("condition", _condition),
    ("router", _router),
    ("map", _map),
    ("loop", _loop),
    ("guarded", _guardrail),
)
"""Each mark a task can carry, in the order pictures show them, with the function that reads it
off the task called ``name`` in ``graph`` (its fields, or the graph's, such as the loop it is
in): ``(detail, label)``, or ``None`` when the task does not carry it. A new feature adds its
row here."""


def marks(graph: TaskGraph, name: str) -> tuple[Mark, ...]:
    """The marks the task called ``name`` carries in ``graph``, in `MARKS` order."""
    found = []
    for kind, read in MARKS:
        seen = read(graph, name)
        if seen is not None:
            found.append(Mark(kind, *seen))
    return tuple(found)


@dataclass(frozen=True, slots=True)
class Node:
    """A task in a picture: its name, its agent's role, its kind and its marks."""

    name: str
    agent: str
    kind: str
    marks: tuple[Mark, ...]


@dataclass(frozen=True, slots=True)
class Edge:
    """A dependency: ``target`` needs ``source``; ``optional`` when it takes it as `optional`;
    ``label``: the values of ``source``'s mapping router that run ``target`` (``None``: none)."""

    source: str
    target: str
    optional: bool
    label: str | None


@dataclass(frozen=True, slots=True)
class Picture:
    """What every format draws: the tasks in the graph's order, and the edges, each
    dependant's in its dependencies' order."""

    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]


def picture(graph: TaskGraph) -> Picture:
    """The picture of ``graph``."""
    nodes = tuple(
        Node(
            name, graph.agent_of(graph.task(name)).role, graph.kind(name).value, marks(graph, name)
        )
        for name in graph.names
    )
    routes = {name: _route_labels(graph.routes(name)) for name in graph.names}
    edges = tuple(
        Edge(dep, name, dep in graph.optional_dependencies(name), routes[dep].get(name))
        for name in graph.names
        for dep in graph.dependency_names(name)
    )
    return Picture(nodes, edges)


def _role(graph: TaskGraph, name: str) -> str:
    return graph.agent_of(graph.task(name)).role


def _route_labels(routes: dict[Any, str] | None) -> dict[str, str]:
    """Each branch of a mapping router with the values that choose it (``a, b``)."""
    found: dict[str, list[str]] = {}
    for value, target in (routes or {}).items():
        found.setdefault(target, []).append(_value_text(value))
    return {target: ", ".join(values) for target, values in found.items()}


def _value_text(value: Any) -> str:
    """A router's value as its field holds it: a string as itself, anything else as JSON."""
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f]")
"""Control characters (Unicode's ``Cc``) but the newline."""


def _printable(text: str) -> str:
    """``text`` valid (`valid_text`), with control characters but newlines as U+FFFD (no
    format takes them in a label)."""
    text = valid_text(text).replace("\r\n", "\n")
    return _CONTROL.sub("\ufffd", text) if _CONTROL.search(text) else text


# -- Mermaid ------------------------------------------------------------------------------------

# Mermaid's entity codes: a label in quotes holds anything once these are written as codes
# (``#`` first: it starts a code). Newlines become line breaks.
_MERMAID = str.maketrans(
    {
        "#": "#35;",
        '"': "#quot;",
        "<": "#lt;",
        ">": "#gt;",
        "&": "#amp;",
        "`": "#96;",
        "|": "#124;",
        "\n": "<br/>",
        "\r": "<br/>",
    }
)


def _mermaid_text(text: str) -> str:
    return _printable(text).translate(_MERMAID)


def mermaid(shown: Picture) -> str:
    """``shown`` as a Mermaid flowchart: a box per task (name, agent, a line per mark), an
    arrow per dependency (dashed: optional; labelled: a router's values)."""
    ids = {node.name: f"t{index}" for index, node in enumerate(shown.nodes)}
    lines = ["flowchart TD"]
    for node in shown.nodes:
        label = "<br/>".join(
            _mermaid_text(line) for line in (node.name, node.agent, *(m.label for m in node.marks))
        )
        lines.append(f'    {ids[node.name]}["{label}"]')
    for edge in shown.edges:
        arrow = "-.->" if edge.optional else "-->"
        label = "" if edge.label is None else f'|"{_mermaid_text(edge.label)}"|'
        lines.append(f"    {ids[edge.source]} {arrow}{label} {ids[edge.target]}")
    return "\n".join(lines)


# -- DOT ----------------------------------------------------------------------------------------


def _dot_text(text: str) -> str:
    """``text`` as a DOT quoted string: backslashes and quotes escaped, newlines as ``\\n``."""
    escaped = _printable(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def dot(shown: Picture, *, name: str = "crew") -> str:
    """``shown`` as a Graphviz DOT digraph called ``name``: a box per task (name, agent, a line
    per mark), an edge per dependency (dashed: optional; labelled: a router's values).

    Node ids are the task names, quoted; render it with ``dot -Tsvg``."""
    lines = [
        f"digraph {_dot_text(name)} {{",
        "    rankdir=TB;",
        '    node [shape=box, fontname="Helvetica"];',
        '    edge [fontname="Helvetica"];',
    ]
    for node in shown.nodes:
        text = "\n".join((node.name, node.agent, *(m.label for m in node.marks)))
        style = ', style="rounded,dashed"' if node.kind == "internal" else ""
        lines.append(f"    {_dot_text(node.name)} [label={_dot_text(text)}{style}];")
    for edge in shown.edges:
        attributes = []
        if edge.optional:
            attributes.append("style=dashed")
        if edge.label is not None:
            attributes.append(f"label={_dot_text(edge.label)}")
        suffix = f" [{', '.join(attributes)}]" if attributes else ""
        lines.append(f"    {_dot_text(edge.source)} -> {_dot_text(edge.target)}{suffix};")
    lines.append("}")
    return "\n".join(lines)


# -- JSON ---------------------------------------------------------------------------------------


def json_value(shown: Picture) -> dict[str, Any]:
    """``shown`` as JSON values, keys in a fixed order (the shape is in ``docs/cli.md``)."""
    return {
        "nodes": [
            {
                "name": valid_text(node.name),
                "agent": valid_text(node.agent),
                "kind": node.kind,
                "marks": [
                    {"kind": m.kind, "detail": valid_text(m.detail), "label": valid_text(m.label)}
                    for m in node.marks
                ],
            }
            for node in shown.nodes
        ],
        "edges": [
            {
                "source": valid_text(edge.source),
                "target": valid_text(edge.target),
                "optional": edge.optional,
                "label": None if edge.label is None else valid_text(edge.label),
            }
            for edge in shown.edges
        ],
    }
