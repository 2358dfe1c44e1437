"""``crewflow graph FILE.py``: print a crew's task graph as Mermaid, Graphviz DOT or JSON, with
its workflow marks (conditions, routers, optional context, guardrails), without running it."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import TYPE_CHECKING

from rich.console import Console
from rich.text import Text

from crewflow.cli._common import EXIT_OK, UsageProblem, exit_code
from crewflow.cli._load import crew_from_file

if TYPE_CHECKING:
    from pathlib import Path

    from crewflow.crew import Crew


class GraphFormat(StrEnum):
    """What ``crewflow graph --format`` writes."""

    MERMAID = "mermaid"
    DOT = "dot"
    JSON = "json"


def parse_format(given: str) -> GraphFormat:
    """``--format``'s value as a `GraphFormat`.

    Raises:
        UsageProblem: Not one of the formats.
    """
    try:
        return GraphFormat(given.lower())
    except ValueError:
        known = ", ".join(form.value for form in GraphFormat)
        raise UsageProblem(f"--format {given!r} is not a format; use one of: {known}") from None


def graph_text(crew: Crew, form: GraphFormat) -> str:
    """``crew``'s graph in ``form``; JSON has the crew's name and process first."""
    graph = crew.graph
    if form is GraphFormat.MERMAID:
        return graph.to_mermaid()
    if form is GraphFormat.DOT:
        return graph.to_dot(crew.name)
    shape = {"crew": crew.name, "process": crew.process_name, **graph.to_json()}
    return json.dumps(shape, indent=2, ensure_ascii=False)


def draw_graph(
    file: Path,
    *,
    attribute: str | None = None,
    form: str = GraphFormat.MERMAID,
    output: Path | None = None,
    stdout: Console | None = None,
    stderr: Console | None = None,
) -> int:
    """What ``crewflow graph`` does; returns the exit code (2: an unknown format, no such file,
    no crew in it, or a crew that fails to build)."""
    out = stdout or Console(highlight=False)
    err = stderr or Console(stderr=True, highlight=False)
    try:
        chosen = parse_format(form)
        with crew_from_file(file, attribute) as loaded:
            if attribute and loaded.attribute != attribute:
                raise UsageProblem(
                    f"{file.name} has no Crew named {attribute!r}; its crew is "
                    f"{loaded.attribute!r}: pass --crew {loaded.attribute}"
                )
            text = graph_text(loaded.crew, chosen)
        if output is not None:
            try:
                output.write_text(text + "\n", encoding="utf-8")
            except OSError as exc:
                raise UsageProblem(f"cannot write {output}: {exc.strerror or exc}") from None
    except (Exception, KeyboardInterrupt) as exc:
        return exit_code(err, exc)
    if output is not None:
        out.print(Text(str(output.resolve())), soft_wrap=True)
    else:
        # Straight to the file: rich would wrap the lines of a machine format.
        out.file.write(text + "\n")
        out.file.flush()
    return EXIT_OK
