"""The live progress of a run, drawn from the run's events: a header line (tasks done, elapsed
time, tokens, cost once known) over one line per task with its tokens, tool calls, provider
retries and limit waits, and under a streaming task the last line of its streamed text.

A crew larger than the terminal shows what matters in the rows it has: running tasks first
(with their streamed text while there is room), then failed ones, then those that changed last,
and one line that counts the rest. Every line is cut to the terminal's width, never wrapped.
Off a terminal (a pipe, a CI log) each change is printed as one plain line instead, with no
escape codes, and streamed text is left out.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING

from rich.cells import cell_len
from rich.live import Live
from rich.text import Text

from crewflow import events
from crewflow.cli._common import format_seconds
from crewflow.cli._progress_state import ACTIVE, RunProgress, Status, TaskProgress, printable

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from rich.console import Console, ConsoleOptions, RenderResult

    from crewflow.crew import CrewResult

_SYMBOLS: dict[Status, tuple[str, str]] = {
    "added": ("+", "dim"),
    "running": ("▶", "cyan"),
    "finished": ("✓", "green"),
    "retrying": ("↻", "yellow"),
    "waiting": ("…", "yellow"),
    "failed": ("✗", "red"),
    "skipped": ("-", "dim"),
}
_SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"


class ProgressView:
    """Turns run events into a header line and one status line per task on ``console``.

    On a terminal the lines live in place; elsewhere (a pipe, a CI log) each change is printed
    as its own plain line. The view is an `crewflow.events.EventSink`; ``clock`` (seconds,
    `time.monotonic` by default) times the run's elapsed time and the spinner.
    """

    def __init__(self, console: Console, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.console = console
        self.run = RunProgress()
        self._clock = clock
        # Sinks may be called from a sync tool's worker thread, and the live display draws
        # from its own thread.
        self._lock = threading.RLock()
        self._live: Live | None = None

    @contextmanager
    def showing(self) -> Iterator[None]:
        """Keep the live display up (on a terminal) while the run goes."""
        if not self.console.is_terminal:
            yield
            return
        # The display draws `self` ten times a second: elapsed time and spinners move, and a
        # burst of events (streamed text) costs one drawing, not one each.
        with Live(self, console=self.console, refresh_per_second=10) as live:
            self._live = live
            try:
                yield
            finally:
                live.refresh()
                self._live = None

    def settle(self, result: CrewResult) -> None:
        """Show what the run's result tells for sure: its cost (the calls' events add up the
        costs known so far) and, for a resumed run, every task restored from its record."""
        with self._lock:
            self.run.cost = result.usage.cost
            for name in result.restored:
                if name not in self.run.tasks:
                    self.run.task(name, "finished", "restored from the run's record")

    def __call__(self, event: events.Event, /) -> None:
        with self._lock:
            if self.run.apply_run(event, self._clock()):
                self._print_run(event)
                return
            if self.run.apply_usage(event) or self._between_calls(event):
                return
            update = self._describe(event)
            if update is None:
                return
            name, status, detail = update
            task = self.run.task(name, status, detail)
            self._count(task, event)
            if self._live is None:
                self.console.print(self._plain(task), soft_wrap=True)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        with self._lock:
            lines = self.lines(options.max_width, options.size.height)
        yield from lines

    def render(self) -> Text:
        """The view as it is now, at the console's size (for tests and notebooks)."""
        with self._lock:
            return Text("\n").join(self.lines(self.console.width, self.console.height))

    def lines(self, width: int, height: int) -> list[Text]:
        """The view's lines for a ``width`` x ``height`` screen: at most ``height - 1`` of
        them (the live display keeps a row for the cursor), none wider than ``width``."""
        if self.run.started is None and not self.run.tasks:
            return []  # nothing to show before the run starts (it may be refused)
        now = self._clock()
        lines = [self._header(now, width)]
        health = self._health_line()
        if health is not None:
            lines.append(health)
        frame = _SPINNER[int(now * 10) % 10]
        rows = max(2, height - 1 - len(lines))
        lines.extend(_layout(self.run, rows, frame=frame, width=width))
        for line in lines:
            line.no_wrap = True
            line.truncate(width, overflow="ellipsis")
        return lines

    # -- the lines ------------------------------------------------------------------------------

    def _header(self, now: float, width: int) -> Text:
        run = self.run
        crew = f"{printable(run.crew)} ({run.process})" if run.crew else ""
        # Where it is too wide, the numbers matter more than the crew's name.
        variants = [(True, False), (True, True), (False, False), (False, True)] if crew else []
        for named, short in variants:
            header = Text.assemble((crew, "bold"), "  ") if named else Text()
            header.append(" · ".join(self._summary(now, status=True, short=short)))
            if header.cell_len <= width:
                return header
        return Text(" · ".join(self._summary(now, status=True, short=True)))

    def _health_line(self) -> Text | None:
        """While the run is not healthy: its status and its oldest issue (and how many more)."""
        run = self.run
        if run.health == "ok" or not run.health_issues or run.duration is not None:
            return None
        more = len(run.health_issues) - 1
        line = Text.assemble(("⚠ ", "yellow"), (run.health, "bold yellow"), ": ")
        line.append(run.health_issues[0])
        if more:
            line.append(f" (+{more} more)", style="dim")
        return line

    def _summary(self, now: float, *, status: bool, short: bool = False) -> list[str]:
        run = self.run
        done = run.count("finished")
        if run.status == "completed":  # every task the run did not fail or skip
            done = run.size - run.count("failed", "skipped")
        parts = [f"{done}/{run.size} tasks done"] if run.size else ["starting"]
        for shown in ("running", "failed", "skipped"):
            count = run.count(shown, *(("retrying", "waiting") if shown == "running" else ()))
            if count:
                parts.append(f"{count} {shown}")
        if run.duration is not None:
            took = format_seconds(run.duration)
            parts.append(f"{run.status} in {took}" if status else took)
        elif run.started is not None:
            parts.append(format_seconds(max(0.0, now - run.started)))
        parts.append(_tokens(run.prompt_tokens, run.completion_tokens, short=short))
        if run.cost is not None:
            parts.append(f"${run.cost:.4f}")
        if run.paused:
            parts.append("paused")
        return parts

    def _plain(self, task: TaskProgress, detail: str | None = None) -> Text:
        symbol, style = _SYMBOLS[task.status]
        detail = task.detail if detail is None else detail
        return Text.assemble(
            (symbol, style),
            " ",
            (printable(task.name), "bold"),
            " ",
            (task.status, style),
            f"  {printable(detail)}",
        )

    def _print_run(self, event: events.Event) -> None:
        if self._live is not None:
            return
        run = self.run
        if isinstance(event, events.RunStarted):
            plural = "s" if run.total != 1 else ""
            line = (
                f"run {event.run_id} started: {run.crew} ({run.process}), {run.total} task{plural}"
            )
        elif isinstance(event, events.RunFinished):
            summary = " · ".join(self._summary(self._clock(), status=False))
            line = f"run {event.run_id} {run.status}: {summary}"
        elif isinstance(event, events.RunHealthChanged):
            issues = "; ".join(run.health_issues)
            line = f"run {event.run_id} health: {run.health}" + (f": {issues}" if issues else "")
        else:
            return
        self.console.print(Text(printable(line)), soft_wrap=True)

    # -- what each event says -------------------------------------------------------------------

    @staticmethod
    def _count(task: TaskProgress, event: events.Event) -> None:
        if isinstance(event, events.TaskStarted):
            task.agent = event.agent
            task.streamed = ""
        elif isinstance(event, events.LLMCallRetrying):
            task.retries += 1
        elif isinstance(event, events.ToolCalled):
            task.tool_calls += 1
            task.tool_failures += 1
        elif isinstance(event, events.TaskFinished | events.TaskFailed | events.TaskSkipped):
            task.streamed = ""

    def _describe(self, event: events.Event) -> tuple[str, Status, str] | None:
        if isinstance(event, events.ToolCalled):  # a failed one: the others are counted
            return event.task, "running", f"a tool call failed: {_first_line(event.error)}"
        if isinstance(event, events.TaskFinished) and event.attempt:
            task = self.run.task(event.task, "finished", "")
            task.prompt_tokens, task.completion_tokens = (
                event.prompt_tokens,
                event.completion_tokens,
            )
            task.duration = event.duration
            return event.task, "finished", " · ".join(facts(task, finished=True))
        return _describe_task(event)

    def _between_calls(self, event: events.Event) -> bool:
        """A wait for limits is counted on its task's line (and printed as a line of its own
        off a terminal); a call made again after a retry puts its task back to running."""
        if isinstance(event, events.LimiterWait):
            known = self.run.tasks.get(event.task)
            detail = "" if known is None else known.detail
            if known is not None and known.status == "retrying":  # the retry is under way
                detail = known.agent
            task = self.run.task(event.task, "running", detail)
            task.waited += event.waited
            task.waited_for = list(dict.fromkeys([*task.waited_for, *event.reasons]))
            if self._live is None:
                reasons = ", ".join(event.reasons) or "limits"
                waited = f"waited {format_seconds(event.waited)} for {reasons}"
                self.console.print(self._plain(task, waited), soft_wrap=True)
            return True
        if isinstance(event, events.LLMCallStarted):
            calling = self.run.tasks.get(event.task)
            if calling is not None and calling.status == "retrying":
                self.run.task(event.task, "running", calling.agent)
            return True
        return False


def _describe_task(event: events.Event) -> tuple[str, Status, str] | None:
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
        return event.task, "finished", "by the tasks that did its work"
    if isinstance(event, events.TaskRestored):
        return event.task, "finished", "restored from the run's record"
    if isinstance(event, events.TaskRetrying):
        return (
            event.task,
            "retrying",
            f"attempt {event.attempt} failed ({_first_line(event.error)}); "
            f"next in {format_seconds(event.delay)}",
        )
    if isinstance(event, events.LLMCallRetrying):
        status = f"provider error {event.status_code}" if event.status_code else "call failed"
        return event.task, "retrying", f"{status}; calling again in {format_seconds(event.delay)}"
    if isinstance(event, events.TaskFallback):
        return event.task, "retrying", f"{event.agent} gave up; {event.fallback} takes over"
    if isinstance(event, events.TaskSkipped):
        return event.task, "skipped", event.reason or f"because {', '.join(event.because)} failed"
    if isinstance(event, events.TaskFailed):
        plural = "s" if event.attempts != 1 else ""
        return (
            event.task,
            "failed",
            f"after {event.attempts} attempt{plural}: {event.error_type}: "
            f"{_first_line(event.error)}",
        )
    return None


def facts(task: TaskProgress, *, finished: bool = False, short: bool = False) -> list[str]:
    """What a task's line counts: its duration and tokens once finished (tokens as soon as
    it has some while it runs), tool calls, provider retries and time waited for limits."""
    parts = []
    if finished and task.duration is not None:
        parts.append(f"in {format_seconds(task.duration)}")
    if finished or task.tokens:
        parts.append(_tokens(task.prompt_tokens, task.completion_tokens, short=short))
    if task.tool_calls:
        failed = f" ({task.tool_failures} failed)" if task.tool_failures else ""
        parts.append(f"{task.tool_calls} tool call{'s' if task.tool_calls != 1 else ''}{failed}")
    if task.retries:
        parts.append(f"{task.retries} provider retr{'y' if task.retries == 1 else 'ies'}")
    if task.waited:
        reasons = ", ".join(task.waited_for) or "limits"
        parts.append(f"waited {format_seconds(task.waited)} for {reasons}")
    return parts


def _tokens(prompt: int, completion: int, *, short: bool = False) -> str:
    if short:
        return f"{prompt + completion:,} tokens"
    return f"{prompt + completion:,} tokens ({prompt:,} in, {completion:,} out)"


# -- the layout -----------------------------------------------------------------------------------


def _layout(run: RunProgress, rows: int, *, frame: str, width: int) -> list[Text]:
    """The task lines that fit in ``rows``: every task when they all fit, else running tasks,
    failed ones and those that changed last, in the order the tasks first showed, and a line
    that counts the rest."""
    tasks = list(run.tasks.values())
    unseen = run.size - len(tasks)
    streams = {task.name for task in tasks if task.status in ACTIVE and task.last_streamed_line}
    if len(tasks) + len(streams) + (unseen > 0) <= rows:
        shown, streamed = tasks, streams
    else:
        shown, streamed = _pick(tasks, streams, rows - 1)
    longest = max((cell_len(printable(task.name)) for task in shown), default=0)
    name_width = min(longest, 32, max(8, width // 3))
    lines: list[Text] = []
    for task in sorted(shown, key=tasks.index):
        line = _task_line(task, name_width, frame, short=False)
        if line.cell_len > width:  # prompt and completion tokens apart, where they fit
            line = _task_line(task, name_width, frame, short=True)
        lines.append(line)
        if task.name in streamed:
            lines.append(Text.assemble("  ╰ ", (task.last_streamed_line, "italic"), style="dim"))
    hidden = [task for task in tasks if task not in shown]
    if hidden or unseen > 0:
        lines.append(_rest(hidden, unseen))
    return lines


def _pick(
    tasks: list[TaskProgress], streams: set[str], rows: int
) -> tuple[list[TaskProgress], set[str]]:
    """The tasks to show in ``rows`` (and those of them to show streamed text under): running
    tasks first, then failed ones, then the others that changed last."""
    active = [task for task in tasks if task.status in ACTIVE]
    failed = [task for task in tasks if task.status == "failed"]
    rest = sorted(
        (task for task in tasks if task.status not in ACTIVE and task.status != "failed"),
        key=lambda task: -task.changed,
    )
    shown: list[TaskProgress] = []
    streamed: set[str] = set()
    left = rows
    for task in [*active, *failed, *rest]:
        if left <= 0:
            break
        shown.append(task)
        left -= 1
    for task in active:  # streamed text where rows are left, taken from the oldest changes
        if task.name in streams and task in shown:
            if left <= 0 and shown[-1].status not in ACTIVE and shown[-1].status != "failed":
                shown.pop()
                left += 1
            if left > 0:
                streamed.add(task.name)
                left -= 1
    return shown, streamed


def _task_line(task: TaskProgress, name_width: int, frame: str, *, short: bool) -> Text:
    symbol, style = _SYMBOLS[task.status]
    if task.status == "running":
        symbol = frame
    name = Text(printable(task.name), style="bold")
    name.truncate(name_width, overflow="ellipsis", pad=True)
    if task.status == "finished" and task.duration is not None:
        detail = " · ".join(facts(task, finished=True, short=short))
    elif task.status in ACTIVE:
        detail = " · ".join([printable(task.detail), *facts(task, short=short)])
    else:
        detail = printable(task.detail)
    return Text.assemble((symbol, style), " ", name, " ", (task.status, style), "  ", detail)


def _rest(hidden: list[TaskProgress], unseen: int) -> Text:
    counts: dict[str, int] = {}
    for task in hidden:
        status = "not started" if task.status == "added" else task.status
        counts[status] = counts.get(status, 0) + 1
    if unseen:
        counts["not started"] = counts.get("not started", 0) + unseen
    what = ", ".join(f"{count} {status}" for status, count in counts.items())
    return Text(f"  … {len(hidden) + unseen} more: {what}", style="dim")


_ERROR_WIDTH = 120
"""Characters of an error's first line shown on its task's line."""


def _first_line(error: str | None) -> str:
    """The first line of ``error``, cut to `_ERROR_WIDTH` characters."""
    line = (error or "").strip().split("\n", 1)[0]
    return line if len(line) <= _ERROR_WIDTH else line[: _ERROR_WIDTH - 1] + "…"
