"""Printing a `Report` as rich tables (rich is imported only when `render` runs)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from crewflow.optimizer._stats import _pct

if TYPE_CHECKING:
    from collections.abc import Sequence

    from rich.console import Console
    from rich.table import Table

    from crewflow.optimizer._report import ChoiceStats, Learning, Report

__all__ = ["render"]


def _label(crew: str, task: str, several_crews: bool) -> str:
    return f"{crew}:{task}" if several_crews else task


def _seconds(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f} s"


def _cost(value: float | None) -> str:
    return "–" if value is None else f"${value:.4f}"


def _process_rows(report: Report, several: bool) -> list[list[str]]:
    return [
        [
            *([stats.crew] if several else []),
            stats.process or "?",
            str(stats.runs),
            "–" if stats.success_rate is None else _pct(stats.success_rate),
            _seconds(stats.p50_seconds),
            _seconds(stats.p95_seconds),
            f"{stats.tokens_per_run:,.0f}",
            _cost(stats.cost),
        ]
        for stats in report.processes
    ]


def _task_rows(report: Report, several: bool) -> list[list[str]]:
    return [
        [
            _label(stats.crew, stats.task, several),
            str(stats.runs),
            _seconds(stats.p50_seconds),
            _seconds(stats.p95_seconds),
            f"{_pct(stats.failure_rate)} ({stats.failed}/{stats.attempts})",
            str(stats.retries),
            _pct(stats.cache_hit_rate),
            _seconds(stats.limit_wait),
            f"{stats.tokens:,}",
        ]
        for stats in report.tasks
    ]


def _limit_rows(report: Report, several: bool) -> list[list[str]]:
    return [
        [
            *([limit.crew] if several else []),
            limit.key,
            _seconds(limit.seconds),
            _pct(limit.share),
            str(limit.runs),
            ", ".join(f"{t.task} {t.seconds:.1f} s" for t in limit.tasks),
        ]
        for limit in report.bottlenecks.limits
    ]


def _recommendation_lines(report: Report) -> list[tuple[str, str]]:
    """(text, style) lines: each recommendation, then its evidence."""
    lines: list[tuple[str, str]] = []
    for number, advice in enumerate(report.recommendations, start=1):
        saving = (
            "" if advice.saving_seconds is None else f" (saves ~{advice.saving_seconds:.1f} s/run)"
        )
        lines.append((f"{number}. [{advice.kind}] {advice.message}{saving}", "bold"))
        lines += [(f"     • {item}", "") for item in advice.evidence]
    return lines


def _signed(share: float | None) -> str:
    return "–" if share is None else f"{share * 100:+.0f} %"


def _short_key(crew_key: str) -> str:
    return crew_key.partition(":")[2][:8] or crew_key[:8]


def _learning_rows(learning: Learning) -> list[list[str]]:
    return [
        [
            measured.process or "?",
            str(measured.runs),
            "–" if measured.success_rate is None else _pct(measured.success_rate),
            _seconds(measured.p50_seconds),
            str(measured.chosen),
            str(measured.explored),
        ]
        for measured in learning.processes
    ]


def _choice_lines(stats: ChoiceStats) -> list[str]:
    """A choosing process's summary for one crew key: runs, regret, prediction error."""
    failed = f", {stats.failed} failed" if stats.failed else ""
    lines = [f"{stats.process}: {stats.runs} settled runs{failed}"]
    if stats.best_process is not None:
        lines.append(f"  fastest: {stats.best_process}, p50 {_seconds(stats.best_p50_seconds)}")
    if stats.regret_runs:
        lines.append(
            f"  regret: mean {_signed(stats.regret_mean)}, max {_signed(stats.regret_max)} "
            f"over {stats.regret_runs} runs, {stats.regret_explored} explored"
        )
    else:
        lines.append("  regret: no completed run to measure yet")
    if stats.predicted_runs:
        error = _pct(stats.prediction_error or 0.0)
        lines.append(f"  prediction error: mean ±{error} over {stats.predicted_runs} runs")
    else:
        lines.append("  prediction error: no completed run predicted in seconds yet")
    return lines


OUTCOMES_SHOWN = 5
"""The newest runs of a choosing process `render` lists per crew key (``--json``: all)."""


def _outcome_table(stats: ChoiceStats) -> Table:
    """The newest runs: the process chosen (``*``: explored), predicted against measured."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    made = Table(box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), pad_edge=False, show_edge=False)
    # Only the run id (cut first) and the process (wrapped next) give way on a narrow terminal.
    made.add_column("run", overflow="ellipsis", min_width=8)
    made.add_column("chose")
    for header in ("predicted", "took", "error", "regret"):
        made.add_column(header, justify="right", no_wrap=True)
    for outcome in stats.outcomes[:OUTCOMES_SHOWN]:
        took = outcome.actual_seconds
        made.add_row(
            Text(outcome.run_id),
            Text(outcome.chosen + ("*" if outcome.explored else "")),
            _seconds(outcome.predicted_seconds),
            _seconds(took) if took is not None else outcome.status,
            _signed(outcome.error),
            _signed(outcome.regret),
        )
    return made


_GAP = 2
"""Columns are this far apart (one space of padding, one of rule)."""


def _table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    width: int | None = None,
    optional: Sequence[str] = (),
) -> Table:
    """A borderless table; the ``optional`` columns are left out, in that order, until its
    cells fit ``width`` whole."""
    from rich import box
    from rich.cells import cell_len
    from rich.table import Table
    from rich.text import Text

    keep = list(range(len(headers)))
    widths = [
        max([cell_len(header), *(cell_len(row[i]) for row in rows)])
        for i, header in enumerate(headers)
    ]
    for name in optional:
        if width is None or sum(widths[i] + _GAP for i in keep) - _GAP <= width:
            break
        keep.remove(headers.index(name))
    made = Table(box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), pad_edge=False, show_edge=False)
    # The first column names things (a process, a task, a limit): the numbers wrap before it.
    made.add_column(headers[0], no_wrap=True, min_width=min(widths[0], 30))
    for index in keep[1:]:
        made.add_column(headers[index], justify="right")
    for row in rows:
        made.add_row(*(Text(row[index]) for index in keep))  # Text: names may hold [brackets]
    return made


def _section(console: Console, title: str) -> None:
    """A blank line, then ``title`` in bold."""
    from rich.text import Text

    console.print()
    console.print(Text(title, style="bold"))


def _render_learning(learning: Learning, console: Console) -> None:
    from rich.text import Text

    key = _short_key(learning.crew_key)
    _section(console, f"Learning of {learning.crew} (crew key {key}): {learning.runs} settled runs")
    headers = ["process", "runs", "success", "p50", "chosen", "explored"]
    console.print(_table(headers, _learning_rows(learning)))
    for stats in learning.choices:
        console.print()
        for line in _choice_lines(stats):
            console.print(Text(line))
        console.print(_outcome_table(stats))
        if any(outcome.explored for outcome in stats.outcomes[:OUTCOMES_SHOWN]):
            console.print(Text("* explored: chosen to measure it, not as the best prediction"))


def render(report: Report, console: Console) -> None:
    """Print ``report`` as rich tables: processes, tasks, bottlenecks, what a choosing process
    learned, recommendations.

    Example:
        ```python
        from rich.console import Console

        render(await analyze(store, "research"), Console())
        ```
    """
    from rich.text import Text

    scope = f"crew {report.crew}" if report.crew else "every crew"
    if not report.runs or report.since is None or report.until is None:
        console.print(Text(f"No runs recorded for {scope}: nothing to analyse yet."))
        return
    span = f"{report.since:%Y-%m-%d %H:%M} to {report.until:%Y-%m-%d %H:%M}"
    console.print(Text(f"{report.runs} runs of {scope}, {span}", style="bold"))
    several = len({stats.crew for stats in report.processes}) > 1
    crew_column = ["crew"] if several else []
    _section(console, "Processes")
    headers = [*crew_column, "process", "runs", "success", "p50", "p95", "tokens/run", "cost"]
    optional = ["p95", "cost", "tokens/run"]
    console.print(
        _table(headers, _process_rows(report, several), width=console.width, optional=optional)
    )
    _section(console, "Tasks")
    headers = ["task", "runs", "p50", "p95", "failed", "retries", "cache", "limit wait", "tokens"]
    optional = ["cache", "retries", "p95", "limit wait", "tokens"]
    rows = _task_rows(report, several)
    console.print(_table(headers, rows, width=console.width, optional=optional))
    for path in report.bottlenecks.critical_paths:
        steps = " → ".join(f"{step.task} {step.seconds:.1f} s" for step in path.tasks)
        console.print(
            Text(
                f"Critical path of {path.crew} ({path.runs} completed runs): {steps} = "
                f"{path.seconds:.1f} s; all tasks one after another: {path.work_seconds:.1f} s"
            )
        )
    if report.bottlenecks.limits:
        _section(console, "Limits waited on")
        headers = [*crew_column, "limit", "waited", "share of run time", "runs", "longest waits"]
        optional = ["longest waits", "runs", "waited"]
        rows = _limit_rows(report, several)
        console.print(_table(headers, rows, width=console.width, optional=optional))
    for learning in report.learning:
        _render_learning(learning, console)
    if not report.recommendations:
        console.print()
        console.print(Text("No recommendations: nothing measured crosses a threshold."))
        return
    _section(console, "Recommendations")
    for line, style in _recommendation_lines(report):
        console.print(Text(line, style=style))
