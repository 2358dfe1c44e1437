"""The report's HTML: one Jinja2 template with autoescape on, so every text of a run (task
names, outputs, prompts, errors) reaches the page as text, never as markup.

The page needs nothing from the network: its styles, its SVG pictures and one small script (the
tooltips, which set ``textContent`` only) are inline, and its Content-Security-Policy allows
that one script by its hash and nothing else to load, so markup that escaping missed still could
not run.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING

from crewflow._usage import Usage
from crewflow.report._graph import layout
from crewflow.report._timeline import (
    axis_of,
    call_spans,
    gantt,
    limit_changes,
    resource_panels,
    seconds,
    spans_from_calls,
)

if TYPE_CHECKING:
    import jinja2

    from crewflow.report._model import Report, TaskEntry

__all__ = ["MAX_OUTPUT", "framed", "render_page"]

MAX_OUTPUT = 20_000
"""Characters of an output (or a prompt's message) the page shows; the rest is cut, with a
note of where to read it whole."""


@dataclass(frozen=True, slots=True)
class Shown:
    """A text as the page shows it: at most `MAX_OUTPUT` characters."""

    text: str
    cut: int
    """Characters left out."""


def shown(text: str | None) -> Shown:
    """``text`` cut to `MAX_OUTPUT` characters."""
    if text is None:
        return Shown("", 0)
    if len(text) <= MAX_OUTPUT:
        return Shown(text, 0)
    return Shown(text[:MAX_OUTPUT], len(text) - MAX_OUTPUT)


@cache
def environment() -> jinja2.Environment:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("crewflow.report", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["shown"] = shown
    env.filters["num"] = lambda value: f"{value:.1f}"
    return env


@cache
def page_script() -> tuple[str, str]:
    """The page's script and its CSP source (``'sha256-...'``)."""
    text = resources.files("crewflow.report").joinpath("templates/tooltip.js").read_text("utf-8")
    digest = base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()
    return text, f"'sha256-{digest}'"


def render_page(report: Report) -> str:
    """The whole page."""
    from markupsafe import Markup

    axis = axis_of(report)
    script, script_hash = page_script()
    return (
        environment()
        .get_template("report.html.j2")
        .render(
            report=report,
            gantt=gantt(report, axis),
            panels=resource_panels(
                call_spans(report.tasks, axis), axis, limit_changes(report.tasks, axis)
            ),
            exact_calls=spans_from_calls(report.tasks),
            graph=layout(report.tasks),
            models=_per_model(report.tasks),
            script=Markup(script),
            csp=f"default-src 'none'; script-src {script_hash}; style-src 'unsafe-inline'; "
            "img-src data:",
            max_output=MAX_OUTPUT,
            took=seconds(axis.seconds),
        )
    )


def _per_model(tasks: tuple[TaskEntry, ...]) -> list[tuple[str, Usage, int]]:
    """Each model's usage over every attempt, with its attempts' count, the most tokens first."""
    found: dict[str, tuple[Usage, list[int]]] = {}
    for task in tasks:
        for attempt in task.attempts:
            usage, count = found.setdefault(attempt.model or "?", (Usage(), [0]))
            usage.add(attempt.usage)
            count[0] += 1
    rows = [(model, usage, count[0]) for model, (usage, count) in found.items()]
    return sorted(rows, key=lambda row: (-row[1].total_tokens, row[0]))


def framed(page: str, *, title: str = "crewflow run report", height: int = 640) -> str:
    """``page`` in a sandboxed iframe (scripts may run; nothing of the host page is reachable),
    ``height`` pixels tall, for notebooks."""
    template = environment().get_template("framed.html.j2")
    return template.render(page=page, title=title, height=height)
