"""Two runs side by side: `Comparison`, made from two `Report`\\ s (`Report.compare`).

Tasks are matched by name. Two runs of different crews (another crew name, or the same name
with other tasks, agents or models: another `crewflow.store.RunRecord.crew_key`) are still
compared by task name, since comparing two versions of a crew is what a user wants; the page
says so at its top (`Comparison.crew_note`).

The page follows the report's rules: one Jinja2 template with autoescape on, no network and a
Content-Security-Policy that lets nothing load or run (the page has no script: a changed
output's line diff folds with ``<details>``).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal

from crewflow.report._html import MAX_OUTPUT, environment
from crewflow.report._timeline import seconds

if TYPE_CHECKING:
    from pathlib import Path

    from crewflow._usage import Usage
    from crewflow.report._model import Report, TaskEntry
    from crewflow.store import Store

__all__ = ["MAX_DIFF_LINES", "Comparison", "DiffLine", "OutputChange", "TaskComparison"]

MAX_DIFF_LINES = 400
"""Lines of a changed output's diff the page shows; the rest is cut, with a note."""

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
"""Nothing loads and nothing runs: the comparison page has no script."""


class OutputChange(StrEnum):
    """How a task's output differs between the two runs."""

    IDENTICAL = "identical"
    """Both runs have the same output for the task."""
    CHANGED = "changed"
    """Both runs have an output for the task, and they differ."""
    ONLY_A = "only in A"
    """Only the first run has an output for the task."""
    ONLY_B = "only in B"
    """Only the second run has an output for the task."""
    NONE = "none"
    """Neither run has an output for the task."""


@dataclass(frozen=True, slots=True)
class DiffLine:
    """One line of a changed output's diff: ``+`` added in B, ``-`` removed from A, ``" "``
    the same in both, ``@`` where a hunk starts."""

    kind: Literal["+", "-", " ", "@"]
    text: str


@dataclass(frozen=True, slots=True)
class TaskComparison:
    """One task (matched by name) in both runs.

    Attributes:
        name: The task's name.
        a: The task in the first run, ``None`` if that run has no task of that name.
        b: The task in the second run, ``None`` if that run has no task of that name.
    """

    name: str
    a: TaskEntry | None
    b: TaskEntry | None

    @property
    def seconds_a(self) -> float | None:
        """Seconds the task's attempts took in the first run (their sum), ``None`` if absent."""
        return _seconds(self.a)

    @property
    def seconds_b(self) -> float | None:
        """Seconds the task's attempts took in the second run."""
        return _seconds(self.b)

    @property
    def seconds_delta(self) -> float | None:
        """B's seconds minus A's (positive: slower in B), ``None`` unless both ran it."""
        if self.seconds_a is None or self.seconds_b is None:
            return None
        return self.seconds_b - self.seconds_a

    @property
    def ratio(self) -> float | None:
        """B's seconds over A's (2.0: twice as slow in B), ``None`` unless both took time."""
        if not self.seconds_a or self.seconds_b is None:
            return None
        return self.seconds_b / self.seconds_a

    @property
    def tokens_delta(self) -> int | None:
        """B's tokens minus A's, ``None`` unless the task is in both runs."""
        if self.a is None or self.b is None:
            return None
        return self.b.usage.total_tokens - self.a.usage.total_tokens

    @property
    def cost_delta(self) -> float | None:
        """B's cost minus A's, ``None`` unless both runs know the task's cost."""
        if self.a is None or self.b is None:
            return None
        cost_a, cost_b = self.a.usage.cost, self.b.usage.cost
        return None if cost_a is None or cost_b is None else cost_b - cost_a

    @property
    def output(self) -> OutputChange:
        """Whether the task's output is identical, changed or only in one run."""
        text_a = self.a.output if self.a is not None else None
        text_b = self.b.output if self.b is not None else None
        if text_a is None and text_b is None:
            return OutputChange.NONE
        if text_b is None:
            return OutputChange.ONLY_A
        if text_a is None:
            return OutputChange.ONLY_B
        return OutputChange.IDENTICAL if text_a == text_b else OutputChange.CHANGED

    @property
    def status_changed(self) -> bool:
        """Whether the task is in one run only, or ended differently in the two."""
        return self.a is None or self.b is None or self.a.status != self.b.status

    def diff(self) -> tuple[list[DiffLine], int]:
        """A changed output's line diff (``difflib``, three lines of context) of the first
        `MAX_OUTPUT` characters of each output, at most `MAX_DIFF_LINES` lines; and how many
        lines were cut. Empty unless `output` is ``changed``."""
        if self.a is None or self.b is None or self.output is not OutputChange.CHANGED:
            return [], 0
        old = (self.a.output or "")[:MAX_OUTPUT].splitlines()
        new = (self.b.output or "")[:MAX_OUTPUT].splitlines()
        lines = [
            DiffLine(_KIND.get(line[:1], " "), line)
            for line in difflib.unified_diff(old, new, "A", "B", lineterm="")
        ][2:]  # without the "--- A" and "+++ B" header
        return lines[:MAX_DIFF_LINES], max(0, len(lines) - MAX_DIFF_LINES)

    @property
    def diff_cut_input(self) -> bool:
        """Whether an output is longer than `MAX_OUTPUT`, so the diff covers only its start."""
        texts = [t.output for t in (self.a, self.b) if t is not None and t.output is not None]
        return any(len(text) > MAX_OUTPUT for text in texts)

    def change_text(self) -> str:
        """The change of its time in words: ``+1.20 s, 2.50× slower``, ``same``, ``only in A``."""
        if self.a is None or self.b is None:
            return "only in A" if self.b is None else "only in B"
        return _duration_change(self.seconds_delta or 0.0, self.ratio)


_KIND: dict[str, Literal["+", "-", " ", "@"]] = {"+": "+", "-": "-", "@": "@"}


@dataclass(frozen=True)
class Comparison:
    """Two runs side by side, tasks matched by name: a self-contained HTML page (`html`,
    `save`), or inline in a notebook (`_repr_html_`).

    Example:
        ```python
        async with SQLiteStore() as store:
            comparison = await Comparison.from_store(store, first_id, second_id)
        comparison.save("compare.html")

        result.report().compare(other.report())  # two results in hand
        ```

    Attributes:
        a: The first run's report.
        b: The second run's report.
    """

    a: Report
    b: Report

    @classmethod
    async def from_store(cls, store: Store, run_a: str, run_b: str) -> Comparison:
        """The comparison of the runs ``run_a`` and ``run_b`` recorded in ``store``.

        Raises:
            crewflow.exceptions.UnknownRunError: No run has one of those ids.
        """
        from crewflow.report._model import Report

        first = await Report.from_store(store, run_a)
        return cls(first, await Report.from_store(store, run_b))

    @property
    def same_crew(self) -> bool:
        """Whether both runs are of one crew: one name and, when both are known, one crew key
        (the same tasks, agents and models)."""
        keys = {self.a.crew_key, self.b.crew_key}
        return self.a.crew == self.b.crew and (len(keys) == 1 or "" in keys)

    @property
    def crew_note(self) -> str | None:
        """What the page says at its top when the runs are not of one crew, else ``None``."""
        if self.a.crew != self.b.crew:
            return (
                f"These runs are of different crews ({self.a.crew!r} and {self.b.crew!r}); "
                "their tasks are compared by name."
            )
        if not self.same_crew:
            return (
                f"The crew {self.a.crew!r} changed between these runs (its tasks, agents or "
                "models differ); their tasks are compared by name."
            )
        return None

    @cached_property
    def tasks(self) -> tuple[TaskComparison, ...]:
        """Every task of either run, what changed most first: tasks in one run only or that
        ended differently, then by how much their time changed (in seconds, either way), then
        their tokens; ties in the first run's order, then the second's."""
        first = {task.name: task for task in self.a.tasks}
        second = {task.name: task for task in self.b.tasks}
        names = [*first, *(name for name in second if name not in first)]
        pairs = [TaskComparison(name, first.get(name), second.get(name)) for name in names]
        return tuple(sorted(pairs, key=_how_much_changed))

    @property
    def seconds_a(self) -> float | None:
        """The first run's wall-clock seconds, ``None`` while it runs."""
        return _run_seconds(self.a)

    @property
    def seconds_b(self) -> float | None:
        """The second run's wall-clock seconds, ``None`` while it runs."""
        return _run_seconds(self.b)

    def html(self) -> str:
        """The comparison as one self-contained HTML page: no network, no script."""
        return self._page

    @cached_property
    def _page(self) -> str:
        return (
            environment()
            .get_template("compare.html.j2")
            .render(
                c=self,
                csp=CSP,
                max_output=MAX_OUTPUT,
                max_diff=MAX_DIFF_LINES,
                seconds=seconds,
                cost_change=_cost_delta,
                totals=_totals(self),
            )
        )

    def save(self, path: str | Path) -> Path:
        """Write `html` to ``path`` (UTF-8); returns the path written."""
        from pathlib import Path

        target = Path(path)
        target.write_text(self.html(), encoding="utf-8")
        return target

    def _repr_html_(self) -> str:
        """The page in a sandboxed ``<iframe srcdoc>`` for notebooks, as `Report` shows."""
        from crewflow.report._html import framed

        return framed(self.html())

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))

    def __repr__(self) -> str:
        changed = sum(t.output is not OutputChange.IDENTICAL for t in self.tasks)
        return (
            f"Comparison(a={self.a.run_id!r}, b={self.b.run_id!r}, tasks={len(self.tasks)}, "
            f"outputs_differing={changed})"
        )


def _seconds(task: TaskEntry | None) -> float | None:
    return None if task is None else sum(attempt.duration for attempt in task.attempts)


def _run_seconds(report: Report) -> float | None:
    return None if report.end is None else (report.end - report.start).total_seconds()


def _how_much_changed(task: TaskComparison) -> tuple[int, float, int]:
    return (
        0 if task.status_changed else 1,
        -abs(task.seconds_delta or 0.0),
        -abs(task.tokens_delta or 0),
    )


@dataclass(frozen=True, slots=True)
class _Total:
    """One line of the totals' table."""

    label: str
    a: str
    b: str
    change: str


def _totals(comparison: Comparison) -> list[_Total]:
    a, b = comparison.a, comparison.b
    run_a, run_b = comparison.seconds_a, comparison.seconds_b
    took = "–"
    if run_a is not None and run_b is not None:
        took = _duration_change(run_b - run_a, run_b / run_a if run_a else None)
    return [
        _Total("status", a.status.value, b.status.value, _same(a.status, b.status)),
        _Total("process", a.ran, b.ran, _same(a.ran, b.ran)),
        _Total("took", _maybe_seconds(run_a), _maybe_seconds(run_b), took),
        _Total("tasks", str(len(a.tasks)), str(len(b.tasks)), _signed(len(b.tasks) - len(a.tasks))),
        _Total(
            "requests",
            str(a.usage.requests),
            str(b.usage.requests),
            _signed(b.usage.requests - a.usage.requests),
        ),
        _Total(
            "tokens",
            f"{a.usage.total_tokens:,}",
            f"{b.usage.total_tokens:,}",
            _signed(b.usage.total_tokens - a.usage.total_tokens),
        ),
        _Total("cost", _cost(a.usage), _cost(b.usage), _cost_delta(a.usage, b.usage)),
    ]


def _duration_change(delta: float, ratio: float | None) -> str:
    """``+1.20 s, 2.50× slower`` for ``delta`` seconds more, ``ratio`` times as long."""
    if delta == 0:
        return "same"
    sign = "+" if delta > 0 else "−"
    if not ratio:
        return f"{sign}{seconds(abs(delta))}"
    way, times = ("slower", ratio) if delta > 0 else ("faster", 1 / ratio)
    return f"{sign}{seconds(abs(delta))}, {times:.2f}× {way}"


def _same(a: object, b: object) -> str:
    return "same" if a == b else "changed"


def _signed(value: int) -> str:
    return "same" if value == 0 else f"{value:+,}"


def _maybe_seconds(value: float | None) -> str:
    return "running" if value is None else seconds(value)


def _cost(usage: Usage) -> str:
    return "unknown" if usage.cost is None else f"${usage.cost:.4f}"


def _cost_delta(a: Usage, b: Usage) -> str:
    if a.cost is None or b.cost is None:
        return "–"
    delta = b.cost - a.cost
    return "same" if delta == 0 else f"{'+' if delta > 0 else '−'}${abs(delta):.4f}"
