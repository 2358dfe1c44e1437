"""Crews, results, run handles and running crews in a notebook.

Rich views for IPython's ``_repr_html_``: a crew as a page (its dependency graph, drawn as in
the report, its agents and its process), shown in the report's sandboxed frame; a run's status
as a small inline fragment (a handle's, and the live progress of a running crew). Every text is
escaped by the report's Jinja2 environment (autoescape on).

`KernelProgress` is that live progress: an event sink that keeps one line per run and redraws
it in place in the cell's output (IPython's ``display(..., display_id=True)`` and its
``update``), a few times a second at most, plus each run's end at once. `kernel_progress` makes
one only inside an IPython kernel; everywhere else it costs a ``sys.modules`` look-up.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from crewflow import events
from crewflow._records import TaskKind, TaskStatus
from crewflow.report._graph import layout
from crewflow.report._html import environment, framed, page_script
from crewflow.report._model import TaskEntry

if TYPE_CHECKING:
    from collections.abc import Callable

    from crewflow.agent import Agent
    from crewflow.crew import Crew

__all__ = ["INTERVAL", "KernelProgress", "RunLine", "crew_html", "in_kernel", "kernel_progress"]

INTERVAL = 0.25
"""Seconds between two redraws of a running crew's progress (at most four a second: every
redraw is a message to the notebook's browser); a run's end is drawn at once."""

_COLOURS = {"completed": "#3f9a68", "failed": "#d1495b", "cancelled": "#8d99ae"}


@dataclass
class RunLine:
    """One run's status as a notebook shows it.

    Attributes:
        run_id: The run's id.
        crew: The crew's name.
        status: ``pending``, ``running``, ``paused``, ``completed``, ``failed``, ``cancelled``.
        done: Tasks finished with an output.
        total: The run's tasks (the process's added ones included).
        running: The names of the tasks running now, in the order they started.
        failed: Tasks that failed.
        tokens: Prompt and completion tokens so far.
        seconds: How long the run took, once it ended.
    """

    run_id: str
    crew: str = ""
    status: str = "running"
    done: int = 0
    total: int = 0
    running: list[str] = field(default_factory=list)
    failed: int = 0
    tokens: int = 0
    seconds: float | None = None

    def apply(self, event: events.Event) -> None:
        """Take in one of the run's events."""
        match event:
            case events.RunStarted():
                self.crew, self.total, self.status = event.crew, event.tasks, "running"
            case events.TaskAdded():
                self.total += 1
            case events.TaskStarted() if event.task not in self.running:
                self.running.append(event.task)
            case events.TaskFinished():
                self._stopped(event.task)
                self.done += 1
            case events.TaskRestored():
                self.done += 1
            case events.TaskFailed():
                self._stopped(event.task)
                self.failed += 1
            case events.LLMCallFinished():
                self.tokens += event.prompt_tokens + event.completion_tokens
            case events.RunPaused() | events.RunResumed():
                self.status = "paused" if isinstance(event, events.RunPaused) else "running"
            case events.RunFinished():
                self.status, self.seconds, self.running = event.status, event.duration, []

    def _stopped(self, task: str) -> None:
        if task in self.running:
            self.running.remove(task)


def status_html(lines: list[RunLine]) -> str:
    """Runs' status lines as an HTML fragment (inline styles only: it sits in the notebook's
    page, so it brings no stylesheet that could restyle the notebook)."""
    template = environment().get_template("status.html.j2")
    return template.render(lines=lines, colours=_COLOURS)


def crew_html(crew: Crew) -> str:
    """A crew as a page (its graph, its tasks with their agents and what steers them, its
    agents, its process) in the report's sandboxed frame."""
    from markupsafe import Markup

    graph = crew.graph
    tasks = tuple(
        TaskEntry(
            name=name,
            agent=graph.agent_of(graph.task(name)).role,
            kind=TaskKind.DELIVERABLE,
            status=TaskStatus.PENDING,
            depends_on=tuple(graph.dependency_names(name)),
        )
        for name in graph.names
    )
    drawing = layout(tasks)
    agents = [_agent_row(agent) for agent in graph.members]
    steered: dict[str, str] = {}
    if graph.workflow_features():
        from crewflow._graph_text import marks

        for name in graph.names:
            found = marks(graph, name)
            if found:
                steered[name] = "; ".join(mark.label for mark in found)
    script, script_hash = page_script()
    page = (
        environment()
        .get_template("crew.html.j2")
        .render(
            crew=crew,
            process=crew.process_name,
            tasks=tasks,
            agents=agents,
            graph=drawing,
            steered=steered,
            script=Markup(script),
            csp=f"default-src 'none'; script-src {script_hash}; style-src 'unsafe-inline'",
        )
    )
    # Tall enough for the graph and both tables, up to the report's height (then it scrolls).
    height = 260 + drawing.height + 30 * (len(tasks) + len(agents))
    return framed(page, title=f"crewflow crew {crew.name}", height=min(640, round(height)))


def _agent_row(agent: Agent) -> dict[str, Any]:
    return {
        "role": agent.role,
        "goal": agent.goal,
        "model": _model(agent.llm),
        "tools": [tool.name for tool in agent.tools],
    }


def _model(llm: Any) -> str:
    if isinstance(llm, str):
        return llm
    if llm is not None:
        return str(getattr(llm, "model", type(llm).__name__))
    from crewflow.exceptions import ConfigurationError
    from crewflow.llm import default_model

    try:
        return f"{default_model()} (default)"
    except ConfigurationError:
        return "the default model"


def in_kernel() -> bool:
    """Whether this process is an IPython kernel (Jupyter, VS Code's notebooks), not a
    terminal IPython or a plain interpreter. Imports nothing: a process that has not imported
    IPython is no kernel."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def kernel_progress() -> KernelProgress | None:
    """A live progress display in this kernel's current cell, or ``None`` outside a kernel."""
    return KernelProgress() if in_kernel() else None


class KernelProgress:
    """A running crew's progress in a notebook cell, updated in place from the runs' events.

    An `crewflow.events.EventSink` for one or more runs (``kickoff_for_each`` shows all its
    runs in one display, a line each). The display appears with the first redraw; later ones
    replace it in place. Redraws are throttled to one per `INTERVAL` (a change in between is
    drawn when the interval ends); a run's end is drawn at once, and `close` draws whatever is
    left.

    Args:
        publish: Shows an HTML fragment: called with ``(html, update)``, ``update`` false the
            first time. Default: IPython's ``display(HTML(...), display_id=True)``, then that
            display's ``update``.
        clock: Seconds, for the throttle (`time.monotonic` by default).
        later: Calls a function after a delay and returns something with ``cancel()``
            (default: the running event loop's ``call_later``).
    """

    def __init__(
        self,
        *,
        publish: Callable[[str, bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        later: Callable[[float, Callable[[], None]], Any] | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._publish = publish if publish is not None else self._display
        self._clock = clock
        self._later = later if later is not None else self._loop.call_later
        self._timer: Any = None
        self._last = -INTERVAL
        self._dirty = False
        self._shown = False
        self._handle: Any = None
        self.lines: dict[str, RunLine] = {}

    def __call__(self, event: events.Event, /) -> None:
        if threading.get_ident() != self._thread:
            # A sync tool's worker thread: draw on the loop's thread, where the kernel's
            # output goes to this cell.
            self._loop.call_soon_threadsafe(self, event)
            return
        line = self.lines.get(event.run_id)
        if line is None:
            line = self.lines[event.run_id] = RunLine(event.run_id)
        line.apply(event)
        self._dirty = True
        if isinstance(event, events.RunFinished):
            self.draw()
        else:
            self._changed()

    def expect(self, run_id: str, crew: str, total: int) -> None:
        """Show the run ``run_id`` as pending now, before its first event: a run started in
        the background shows its display in the cell that started it."""
        self.lines.setdefault(run_id, RunLine(run_id, crew, status="pending", total=total))
        self.draw()

    def draw(self) -> None:
        """Redraw now."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._last, self._dirty = self._clock(), False
        self._publish(status_html(list(self.lines.values())), self._shown)
        self._shown = True

    def close(self) -> None:
        """Draw the last state if it has not been drawn, and stop the pending redraw."""
        if self._dirty:
            self.draw()
        elif self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _changed(self) -> None:
        wait = self._last + INTERVAL - self._clock()
        if wait <= 0:
            self.draw()
        elif self._timer is None:
            self._timer = self._later(wait, self._due)

    def _due(self) -> None:
        self._timer = None
        if self._dirty:
            self.draw()

    def _display(self, html: str, update: bool) -> None:
        from IPython.display import HTML, display

        shown = HTML(html)  # type: ignore[no-untyped-call]
        if update and self._handle is not None:
            self._handle.update(shown)
        else:
            self._handle = display(shown, display_id=True)  # type: ignore[no-untyped-call]
