"""The report's two time charts, as geometry for the template: the Gantt (one bar per task
attempt) and, under it on the same time axis, the resource chart (requests in flight and tasks
waiting for a limit, per model).

An auto concurrency limit (``Limit(concurrency="auto")``) is drawn over its model's panel as a
line: the limit over time, from the changes its attempts recorded (`limit_changes`).

The resource chart is built from `CallSpan`s, one per LLM call. The records hold per-attempt
figures only for now, so `call_spans` derives one span per attempt (its wait for limits at its
start); a store that records each call can feed `resource_panels` its real spans instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from crewflow._records import CONCURRENCY_CHANGES, AttemptRecord, TaskKind, TaskStatus

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from datetime import datetime

    from crewflow.report._model import Report, TaskEntry

__all__ = [
    "LOOKS",
    "Axis",
    "Bar",
    "CallSpan",
    "Gantt",
    "LimitChange",
    "Panel",
    "call_spans",
    "gantt",
    "limit_changes",
    "resource_panels",
    "seconds",
]

WIDTH = 1100
"""The charts' width in SVG units (the page scales them to the window)."""
LABELS = 190
"""The width of the task names' column."""
PLOT = WIDTH - LABELS - 20
MAX_HEIGHT = 1400
"""The Gantt's plot grows one row per task up to this height; more tasks get thinner rows."""
ROW_MAX, ROW_MIN = 20.0, 1.5
TOP = 20.0
"""The space above the Gantt's first row, for the time axis's labels (also drawn under it)."""
LABEL_MIN_ROW = 11.0
"""Rows thinner than this carry no name (hovering a bar still tells it)."""
MAX_PANELS = 6
"""Models past this many share one panel of the resource chart ("other models")."""

LOOKS: dict[str, str] = {
    "ok": "completed",
    "failed": "failed",
    "cancelled": "cancelled",
    "fallback": "fallback agent",
    "cached": "cache hit (no request)",
    "internal": "internal step (plan, review)",
    "skipped": "skipped",
    "wait": "waiting for a limit",
    "retry": "provider retries",
}
"""Each look of a bar (a CSS class and a pattern) and what the legend calls it."""


@dataclass(frozen=True, slots=True)
class Axis:
    """Seconds from the run's start, mapped onto the plot's x."""

    start: datetime
    seconds: float

    def x(self, at: float) -> float:
        return LABELS + PLOT * (at / self.seconds)

    def offset(self, when: datetime) -> float:
        return max(0.0, (when - self.start).total_seconds())

    def ticks(self) -> list[tuple[float, str]]:
        """About eight round times: their x and label."""
        raw = self.seconds / 8
        power = 10 ** math.floor(math.log10(raw))
        step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
        count = int(self.seconds / step + 1e-9) + 1
        return [(self.x(i * step), _tick(i * step, step)) for i in range(count)]


@dataclass(frozen=True, slots=True)
class Bar:
    """One attempt (or a skipped task's mark) on the Gantt."""

    key: str
    look: str
    x: float
    y: float
    width: float
    height: float
    wait: float
    """The width of its wait for limits, drawn over its start."""
    retries: int
    tip: str


@dataclass(frozen=True, slots=True)
class Gantt:
    """The Gantt's geometry."""

    axis: Axis
    height: float
    row: float
    labels: list[tuple[float, str, str]]
    """Each labelled row's y, its name as shown (cut when long) and whole."""
    bars: list[Bar]
    looks: list[tuple[str, str]]
    """The looks that appear, with their legend text."""


def axis_of(report: Report) -> Axis:
    """The run's time axis: from its start to its last attempt's end (at least a millisecond)."""
    attempts = [a for t in report.tasks for a in t.attempts]
    start = min([report.start, *(a.start for a in attempts)])
    ends = [a.end for a in attempts] + ([report.end] if report.end is not None else [])
    seconds = max([(end - start).total_seconds() for end in ends] + [0.001])
    return Axis(start, seconds)


def gantt(report: Report, axis: Axis) -> Gantt:
    """One row per task, one bar per attempt; a skipped task gets a thin mark where its
    dependencies had ended."""
    tasks = report.tasks
    row = max(ROW_MIN, min(ROW_MAX, MAX_HEIGHT / max(1, len(tasks))))
    ends: dict[str, float] = {}
    bars: list[Bar] = []
    for index, task in enumerate(tasks):
        y = TOP + index * row
        first = task.attempts[0].agent if task.attempts else ""
        for attempt in task.attempts:
            bars.append(_bar(task, attempt, first, axis, y, row))
        if task.attempts:
            ends[task.name] = axis.offset(task.attempts[-1].end)
        elif task.status == TaskStatus.SKIPPED:
            at = max((ends.get(d, 0.0) for d in task.depends_on), default=0.0)
            bars.append(_skipped(task, axis, at, y, row))
    labels = (
        [(TOP + i * row + row / 2, _cut(t.name, 28), t.name) for i, t in enumerate(tasks)]
        if row >= LABEL_MIN_ROW
        else []
    )
    seen = {bar.look for bar in bars}
    seen |= {"wait"} if any(b.wait for b in bars) else set()
    seen |= {"retry"} if any(b.retries for b in bars) else set()
    looks = [(look, text) for look, text in LOOKS.items() if look in seen]
    return Gantt(axis, TOP + 4 + len(tasks) * row, row, labels, bars, looks)


def _look(task: TaskEntry, attempt: AttemptRecord, first_agent: str) -> str:
    if attempt.status == TaskStatus.FAILED:
        return "failed"
    if attempt.status == TaskStatus.CANCELLED:
        return "cancelled"
    if attempt.agent != first_agent:
        return "fallback"
    if attempt.cache_hits and not attempt.usage.requests:
        return "cached"
    return "internal" if task.kind == TaskKind.INTERNAL else "ok"


def _round(attempt: AttemptRecord) -> str:
    """The marker of a guardrail round (the task asked again with its guardrail's reason)."""
    return " (guardrail round)" if attempt.kind == "guardrail" else ""


def _bar(
    task: TaskEntry, attempt: AttemptRecord, first: str, axis: Axis, y: float, row: float
) -> Bar:
    start, end = axis.offset(attempt.start), axis.offset(attempt.end)
    x = axis.x(start)
    width = max(1.5, axis.x(end) - x)
    wait = min(width, PLOT * attempt.limit_wait / axis.seconds)
    look = _look(task, attempt, first)
    lines = [
        f"{task.name} · attempt {attempt.number}{_round(attempt)} · {LOOKS[look]}",
        f"agent {attempt.agent or '?'} · model {attempt.model or '?'}",
        f"start {_clock(attempt.start)} (+{seconds(start)})",
        f"end {_clock(attempt.end)} (+{seconds(end)})",
        f"duration {seconds(attempt.duration)} · wait {seconds(attempt.limit_wait)}",
    ]
    if attempt.llm_retries:
        lines.append(f"provider retries {attempt.llm_retries}")
    if attempt.cache_hits:
        lines.append(f"cache hits {attempt.cache_hits}")
    if attempt.error:
        lines.append(f"{attempt.error_type or 'error'}: {_cut(attempt.error, 300)}")
    return Bar(
        key=f"{task.name}#{attempt.number}",
        look=look,
        x=x,
        y=y + row * 0.12,
        width=width,
        height=row * 0.76,
        wait=wait,
        retries=attempt.llm_retries,
        tip="\n".join(lines),
    )


def _skipped(task: TaskEntry, axis: Axis, at: float, y: float, row: float) -> Bar:
    return Bar(
        key=task.name,
        look="skipped",
        x=axis.x(at),
        y=y + row * 0.12,
        width=10.0,
        height=row * 0.76,
        wait=0.0,
        retries=0,
        tip=f"{task.name} · skipped: a task it depends on failed or was skipped",
    )


@dataclass(frozen=True, slots=True)
class CallSpan:
    """One LLM call on the resource chart: seconds from the run's start.

    Attributes:
        model: The model called.
        start: When the call was made (and began to wait for its limits).
        wait_end: When its limits let it go (``start`` if it did not wait).
        end: When it ended.
        outcome: ``completed``, ``failed`` or ``cancelled``.
    """

    model: str
    start: float
    wait_end: float
    end: float
    outcome: str


def call_spans(tasks: Iterable[TaskEntry], axis: Axis) -> list[CallSpan]:
    """The run's calls: each one its attempt recorded (`AttemptRecord.calls`), but replies from
    the cache (nothing in flight); for an attempt recorded without calls (by an older crewflow),
    one span for the whole attempt, its wait for limits at its start."""
    spans: list[CallSpan] = []
    for task in tasks:
        for attempt in task.attempts:
            began = axis.offset(attempt.start)
            if attempt.calls:
                spans.extend(
                    CallSpan(
                        attempt.model or "?",
                        began + call.start,
                        began + call.start + call.wait,
                        began + call.end,
                        call.outcome,
                    )
                    for call in attempt.calls
                    if call.outcome != "cached"
                )
                continue
            if not (attempt.usage.requests or attempt.limit_wait):
                continue  # a cache hit or an attempt that failed before its call
            end = axis.offset(attempt.end)
            wait_end = min(end, began + attempt.limit_wait)
            spans.append(CallSpan(attempt.model or "?", began, wait_end, end, attempt.status.value))
    return spans


@dataclass(frozen=True, slots=True)
class LimitChange:
    """A change of an auto concurrency limit, on the panel of the model whose call caused it.

    Attributes:
        model: The model of the attempt that recorded it.
        at: Seconds from the run's start.
        old: The limit before.
        new: The limit after.
    """

    model: str
    at: float
    old: int
    new: int


def limit_changes(tasks: Iterable[TaskEntry], axis: Axis) -> list[LimitChange]:
    """The auto concurrency limits' changes the run's attempts recorded, in time order."""
    changes: list[LimitChange] = []
    for task in tasks:
        for attempt in task.attempts:
            kept = attempt.details.get(CONCURRENCY_CHANGES)
            if not isinstance(kept, list):
                continue
            began = axis.offset(attempt.start)
            for change in kept:
                if not isinstance(change, dict):
                    continue
                at, old, new = change.get("at"), change.get("old"), change.get("new")
                if isinstance(at, int | float) and isinstance(old, int) and isinstance(new, int):
                    changes.append(LimitChange(attempt.model or "?", began + at, old, new))
    changes.sort(key=lambda change: change.at)
    return changes


def spans_from_calls(tasks: Iterable[TaskEntry]) -> bool:
    """Whether the run's attempts recorded their calls (else the chart is derived)."""
    return any(attempt.calls for task in tasks for attempt in task.attempts)


@dataclass(frozen=True, slots=True)
class Panel:
    """One model's part of the resource chart: step paths in SVG units, requests in flight
    above its base line and calls waiting for a limit below it (each on its own scale)."""

    model: str
    top: float
    base: float
    peak: int
    flight: str
    """The area of requests in flight."""
    waiting: str
    """The area of calls waiting for a limit."""
    peak_waiting: int
    limit: str = ""
    """The line of an auto concurrency limit over time (empty: none changed)."""
    peak_limit: int = 0
    """The highest that limit went."""


FLIGHT, WAITING, GAP = 48.0, 22.0, 16.0
"""The heights of a panel's two parts, and the space between panels."""


def resource_panels(
    spans: Sequence[CallSpan], axis: Axis, limits: Sequence[LimitChange] = ()
) -> list[Panel]:
    """One panel per model (the busiest first; past `MAX_PANELS`, the rest share one), with
    the line of its auto concurrency limit when ``limits`` has changes of it."""
    by_model: dict[str, list[CallSpan]] = {}
    for span in spans:
        by_model.setdefault(span.model, []).append(span)
    ordered = sorted(by_model, key=lambda m: (-len(by_model[m]), m))
    if len(ordered) > MAX_PANELS:
        rest = [s for m in ordered[MAX_PANELS - 1 :] for s in by_model.pop(m)]
        ordered = [*ordered[: MAX_PANELS - 1], "other models"]
        by_model["other models"] = rest
    panels = []
    for index, model in enumerate(ordered):
        group = by_model[model]
        flight = _steps([(s.wait_end, s.end) for s in group])
        waiting = _steps([(s.start, s.wait_end) for s in group if s.wait_end > s.start])
        changes = [change for change in limits if change.model == model]
        peak_limit = max([max(c.old, c.new) for c in changes] + [0])
        peak = max([c for _, c in flight] + [1, peak_limit])
        peak_waiting = max([c for _, c in waiting] + [0])
        base = index * (FLIGHT + WAITING + GAP) + FLIGHT + 4
        panels.append(
            Panel(
                model=model,
                top=base - FLIGHT,
                base=base,
                peak=max([c for _, c in flight] + [0]),
                flight=_path(flight, axis, base, -FLIGHT / peak),
                waiting=_path(waiting, axis, base, WAITING / max(1, peak_waiting)),
                peak_waiting=peak_waiting,
                limit=_limit_line(changes, group, axis, base, -FLIGHT / peak),
                peak_limit=peak_limit,
            )
        )
    return panels


def _limit_line(
    changes: list[LimitChange], spans: list[CallSpan], axis: Axis, base: float, scale: float
) -> str:
    """A step line of the limit: from the panel's first call (at the first change's ``old``)
    through each change to its last call's end."""
    if not changes or not spans:
        return ""
    start = min(min(span.start for span in spans), changes[0].at)
    end = max(max(span.end for span in spans), changes[-1].at)
    parts = [f"M{axis.x(start):.1f} {base + changes[0].old * scale:.1f}"]
    for change in changes:
        parts.append(f"H{axis.x(change.at):.1f}V{base + change.new * scale:.1f}")
    parts.append(f"H{axis.x(end):.1f}")
    return "".join(parts)


def _steps(intervals: list[tuple[float, float]]) -> list[tuple[float, int]]:
    """How many intervals are open from each time on (a sweep over their ends)."""
    changes: dict[float, int] = {}
    for start, end in intervals:
        changes[start] = changes.get(start, 0) + 1
        changes[end] = changes.get(end, 0) - 1
    count, steps = 0, []
    for at in sorted(changes):
        count += changes[at]
        steps.append((at, count))
    return steps


def _path(steps: list[tuple[float, int]], axis: Axis, base: float, scale: float) -> str:
    """A closed step area from ``base``: each count ``scale`` units high (down when positive)."""
    if not steps:
        return ""
    parts = [f"M{axis.x(steps[0][0]):.1f} {base:.1f}"]
    for at, count in steps:
        parts.append(f"H{axis.x(at):.1f}V{base + count * scale:.1f}")
    parts.append(f"V{base:.1f}Z")
    return "".join(parts)


def seconds(value: float) -> str:
    if value < 1:
        return f"{value * 1000:.0f} ms" if value else "0 s"
    return f"{value:.2f} s" if value < 60 else f"{value / 60:.1f} min"


def _tick(value: float, step: float) -> str:
    """A tick's label in seconds (milliseconds under a second's step of 0.01 s), with as many
    decimals as its step needs."""
    if step >= 0.01:
        return f"{value:.{max(0, -math.floor(math.log10(step) + 1e-9))}f} s"
    digits = max(0, -math.floor(math.log10(step * 1000) + 1e-9))
    return f"{value * 1000:.{digits}f} ms"


def _clock(when: datetime) -> str:
    return when.strftime("%H:%M:%S.") + f"{when.microsecond // 1000:03d}"


def _cut(text: str, size: int) -> str:
    return text if len(text) <= size else text[: size - 1] + "…"
