"""What the progress view knows of a run, kept up from its events alone: per task its status,
tokens, provider retries, limit waits, tool calls and the tail of its streamed text, and for the
run its tasks done, elapsed time and totals. No rich here: `crewflow.cli._progress` draws it."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from crewflow import events

Status = Literal["added", "running", "finished", "retrying", "waiting", "failed", "skipped"]
ACTIVE: frozenset[Status] = frozenset({"running", "retrying", "waiting"})

_STREAM_TAIL = 1_000
"""Characters of a task's streamed text kept: enough for its last line at any terminal width,
however many megabytes the model streams."""

# C0 and C1 control characters (an escape sequence in a model's text must not drive the
# terminal) and lone surrogates (which no console can encode).
_UNPRINTABLE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


def printable(text: str) -> str:
    """``text`` with tabs as spaces and every control character or lone surrogate as ``�``."""
    return _UNPRINTABLE.sub("\ufffd", text.replace("\t", " "))


@dataclass
class TaskProgress:
    """One task as the run's events tell it.

    ``detail`` is what last happened to it, in words (the plain line's text).
    """

    name: str
    status: Status
    detail: str
    agent: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: int = 0
    waited: float = 0.0
    waited_for: list[str] = field(default_factory=list)
    tool_calls: int = 0
    tool_failures: int = 0
    streamed: str = ""
    duration: float | None = None
    changed: int = 0

    @property
    def tokens(self) -> int:
        """Prompt and completion tokens so far."""
        return self.prompt_tokens + self.completion_tokens

    def stream(self, text: str) -> None:
        """Add streamed text, keeping only its tail."""
        self.streamed = (self.streamed + text)[-_STREAM_TAIL:]

    @property
    def last_streamed_line(self) -> str:
        """The last line of the streamed text that is not blank, printable."""
        for line in reversed(self.streamed.splitlines()):
            if line.strip():
                return printable(line.strip())
        return ""


@dataclass
class RunProgress:
    """The run as its events tell it, task by task in the order they first showed."""

    crew: str = ""
    process: str = ""
    total: int = 0
    started: float | None = None
    """The view's clock when the run started (not the runtime's: elapsed time ticks)."""
    status: str = "running"
    duration: float | None = None
    cost: float | None = None
    paused: bool = False
    health: str = "ok"
    """The run's health status (``ok``, ``degraded``, ``stalled``), from `RunHealthChanged`."""
    health_issues: list[str] = field(default_factory=list)
    """What is wrong, in words, oldest first."""
    tasks: dict[str, TaskProgress] = field(default_factory=dict)
    _changes: int = 0

    def task(self, name: str, status: Status, detail: str) -> TaskProgress:
        """The task ``name``, added if new, now in ``status`` after ``detail``."""
        self._changes += 1
        found = self.tasks.get(name)
        if found is None:
            found = self.tasks[name] = TaskProgress(name, status, detail)
        found.status, found.detail, found.changed = status, detail, self._changes
        return found

    def count(self, *statuses: Status) -> int:
        """How many known tasks are in any of ``statuses``."""
        return sum(1 for task in self.tasks.values() if task.status in statuses)

    @property
    def prompt_tokens(self) -> int:
        """Prompt tokens of every task so far."""
        return sum(task.prompt_tokens for task in self.tasks.values())

    @property
    def completion_tokens(self) -> int:
        """Completion tokens of every task so far."""
        return sum(task.completion_tokens for task in self.tasks.values())

    @property
    def size(self) -> int:
        """The crew's tasks, or more when the process added some."""
        return max(self.total, len(self.tasks))

    def apply_run(self, event: events.Event, now: float) -> bool:
        """Take in a run-level event (``now`` on the view's clock); false for a task's."""
        if isinstance(event, events.RunStarted):
            self.crew, self.process, self.total = event.crew, event.process, event.tasks
            self.started, self.status, self.duration = now, "running", None
        elif isinstance(event, events.ProcessChosen):
            self.process = event.process
        elif isinstance(event, events.RunFinished):
            self.status, self.duration = event.status, event.duration
        elif isinstance(event, events.RunPaused | events.RunResumed):
            self.paused = isinstance(event, events.RunPaused)
        elif isinstance(event, events.RunHealthChanged):
            self.health = event.health.status
            self.health_issues = [printable(issue.detail) for issue in event.health.issues]
        else:
            return False
        return True

    def apply_usage(self, event: events.Event) -> bool:
        """Take in tokens, tool calls and streamed text, which change no task's status."""
        if isinstance(event, events.LLMCallFinished):
            task = self._known(event.task)
            task.prompt_tokens += event.prompt_tokens
            task.completion_tokens += event.completion_tokens
            if event.cost is not None:
                self.cost = (self.cost or 0.0) + event.cost
        elif isinstance(event, events.ToolCalled) and event.ok:
            self._known(event.task).tool_calls += 1
        elif isinstance(event, events.TokenDelta):
            self._known(event.task).stream(event.text)
        elif isinstance(event, events.TokenDeltaReset):
            self._known(event.task).streamed = ""
        else:
            return False
        return True

    def _known(self, name: str) -> TaskProgress:
        found = self.tasks.get(name)
        return found if found is not None else self.task(name, "running", "")
