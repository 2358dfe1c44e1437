"""The live progress of a run: one status line per task, drawn from the run's events (a failed
tool call shows on its task's line, and the count of them when the task finishes)."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from rich.console import Group
from rich.live import Live
from rich.spinner import Spinner
from rich.text import Text

from crewflow import events
from crewflow.cli._common import format_seconds

if TYPE_CHECKING:
    from collections.abc import Iterator

    from rich.console import Console, RenderableType

_Status = Literal["added", "running", "finished", "retrying", "waiting", "failed", "skipped"]
_SYMBOLS: dict[_Status, tuple[str, str]] = {
    "added": ("+", "dim"),
    "running": ("▶", "cyan"),
    "finished": ("✓", "green"),
    "retrying": ("↻", "yellow"),
    "waiting": ("…", "yellow"),
    "failed": ("✗", "red"),
    "skipped": ("-", "dim"),
}


@dataclass
class _TaskLine:
    name: str
    status: _Status
    detail: str
    spinner: Spinner


class ProgressView:
    """Turns run events into one status line per task on ``console``.

    On a terminal the lines live in place (a spinner for running tasks); elsewhere (a pipe, a
    CI log) each change is printed as its own line. The view is an `crewflow.events.EventSink`.
    """

    def __init__(self, console: Console) -> None:
        self.console = console
        self._lines: dict[str, _TaskLine] = {}
        self._tool_failures: dict[str, int] = {}
        self._lock = threading.Lock()  # sinks may be called from a sync tool's worker thread
        self._live: Live | None = None

    @contextmanager
    def showing(self) -> Iterator[None]:
        """Keep the live display up (on a terminal) while the run goes."""
        if not self.console.is_terminal:
            yield
            return
        with Live(self.render(), console=self.console, refresh_per_second=10) as live:
            self._live = live
            try:
                yield
            finally:
                live.update(self.render())
                self._live = None

    def __call__(self, event: events.Event, /) -> None:
        with self._lock:
            update = self._describe(event)
            if update is None:
                return
            name, status, detail = update
            line = self._lines.get(name)
            if line is None:
                line = self._lines[name] = _TaskLine(name, status, detail, Spinner("dots"))
            line.status, line.detail = status, detail
            if self._live is not None:
                self._live.update(self.render())
            else:
                self.console.print(self._line(line, spinner=False), soft_wrap=True)

    def render(self) -> RenderableType:
        """The current state: one line per task that has started or was added by the
        process."""
        return Group(*(self._line(line, spinner=True) for line in self._lines.values()))

    @staticmethod
    def _line(line: _TaskLine, *, spinner: bool) -> RenderableType:
        symbol, style = _SYMBOLS[line.status]
        text = Text.assemble((line.name, "bold"), " ", (line.status, style), f"  {line.detail}")
        if spinner and line.status == "running":
            line.spinner.update(text=text)
            return line.spinner
        return Text.assemble((symbol, style), " ", text)

    def _describe(self, event: events.Event) -> tuple[str, _Status, str] | None:
        if isinstance(event, events.ToolCalled):
            if event.ok:
                return None
            self._tool_failures[event.task] = self._tool_failures.get(event.task, 0) + 1
            return event.task, "running", f"a tool call failed: {_first_line(event.error)}"
        if isinstance(event, events.TaskFinished) and event.attempt:
            failed = self._tool_failures.get(event.task, 0)
            tokens = event.prompt_tokens + event.completion_tokens
            of_tools = f"; {failed} tool call{'s' if failed != 1 else ''} failed" if failed else ""
            return (
                event.task,
                "finished",
                f"in {format_seconds(event.duration)}, {tokens:,} tokens{of_tools}",
            )
        return self._describe_task(event)

    @staticmethod
    def _describe_task(event: events.Event) -> tuple[str, _Status, str] | None:
        if isinstance(event, events.TaskAdded):
            after = f", after {', '.join(event.depends_on)}" if event.depends_on else ""
            what = "asked of" if event.step == "ask" else "planned for"
            return event.task, "added", f"{what} {event.agent}{after}"
        if isinstance(event, events.TaskStarted):
            again = f", attempt {event.attempt}" if event.attempt > 1 else ""
            return event.task, "running", f"{event.agent}{again}"
        if isinstance(event, events.TaskDelegated):
            return event.task, "waiting", f"done by {event.to}"
        if isinstance(event, events.TaskFinished):
            return event.task, "finished", "by its delegate"
        if isinstance(event, events.TaskRetrying):
            return (
                event.task,
                "retrying",
                f"attempt {event.attempt} failed ({event.error}); "
                f"next in {format_seconds(event.delay)}",
            )
        if isinstance(event, events.LLMCallRetrying):
            status = f"provider error {event.status_code}" if event.status_code else "call failed"
            return (
                event.task,
                "retrying",
                f"{status}; calling again in {format_seconds(event.delay)}",
            )
        if isinstance(event, events.TaskFallback):
            return event.task, "retrying", f"{event.agent} gave up; {event.fallback} takes over"
        if isinstance(event, events.LimiterWait):
            return event.task, "waiting", f"waited {format_seconds(event.waited)} for limits"
        if isinstance(event, events.TaskSkipped):
            return event.task, "skipped", f"because {', '.join(event.because)} failed"
        if isinstance(event, events.TaskFailed):
            plural = "s" if event.attempts != 1 else ""
            return (
                event.task,
                "failed",
                f"after {event.attempts} attempt{plural}: {event.error_type}: {event.error}",
            )
        return None


_ERROR_WIDTH = 120
"""Characters of a failed tool call's error shown on its task's line."""


def _first_line(error: str | None) -> str:
    """The first line of ``error``, cut to `_ERROR_WIDTH` characters."""
    line = (error or "").strip().split("\n", 1)[0]
    return line if len(line) <= _ERROR_WIDTH else line[: _ERROR_WIDTH - 1] + "…"
