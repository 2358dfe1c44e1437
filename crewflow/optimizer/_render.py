"""Printing a `Report` as rich tables (rich is imported only when `render` runs)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from crewflow.optimizer._stats import _label, _pct

if TYPE_CHECKING:
    from collections.abc import Sequence

    from rich.console import Console

    from crewflow.optimizer._report import Report

__all__ = ["render"]


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


def _limit_rows(report: Report) -> list[list[str]]:
    return [
        [
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


def render(report: Report, console: Console) -> None:
    """Print ``report`` as rich tables: processes, tasks, bottlenecks, recommendations.

    Example:
        ```python
        from rich.console import Console

        render(await analyze(store, "research"), Console())
        ```
    """
    from rich import box
    from rich.table import Table
    from rich.text import Text

    def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> Table:
        made = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
        for index, header in enumerate(headers):
            made.add_column(header, justify="left" if index == 0 else "right")
        for row in rows:
            made.add_row(*(Text(cell) for cell in row))  # Text: names may hold [brackets]
        return made

    scope = f"crew {report.crew}" if report.crew else "every crew"
    if not report.runs or report.since is None or report.until is None:
        console.print(Text(f"No runs recorded for {scope}: nothing to analyse yet."))
        return
    span = f"{report.since:%Y-%m-%d %H:%M} to {report.until:%Y-%m-%d %H:%M}"
    console.print(Text(f"{report.runs} runs of {scope}, {span}", style="bold"))
    several = len({stats.crew for stats in report.processes}) > 1
    crew_column = ["crew"] if several else []
    headers = [*crew_column, "process", "runs", "success", "p50", "p95", "tokens/run", "cost"]
    console.print(table("Processes", headers, _process_rows(report, several)))
    headers = ["task", "runs", "p50", "p95", "failed", "retries", "cache", "limit wait", "tokens"]
    console.print(table("Tasks", headers, _task_rows(report, several)))
    for path in report.bottlenecks.critical_paths:
        steps = " → ".join(f"{step.task} {step.seconds:.1f} s" for step in path.tasks)
        console.print(
            Text(
                f"Critical path of {path.crew} ({path.runs} completed runs): {steps} = "
                f"{path.seconds:.1f} s; all tasks one after another: {path.work_seconds:.1f} s"
            )
        )
    if report.bottlenecks.limits:
        headers = ["limit", "waited", "share of run time", "runs", "longest waits"]
        console.print(table("Limits waited on", headers, _limit_rows(report)))
    if not report.recommendations:
        console.print(Text("No recommendations: nothing measured crosses a threshold."))
        return
    console.print(Text("Recommendations", style="bold"))
    for line, style in _recommendation_lines(report):
        console.print(Text(line, style=style))
