"""How ``crewflow runs`` and ``crewflow show`` draw the run records: the runs, the run's header,
its tasks and its outputs (in the tables of `crewflow.cli._table`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rich import box
from rich.padding import Padding
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from crewflow.cli._common import format_seconds, shown_database
from crewflow.cli._table import Cell as _Cell
from crewflow.cli._table import print_table
from crewflow.cli._transcript import show_prompts
from crewflow.store import RunStatus
from crewflow.store._history import run_seconds
from crewflow.store._lease import lapse_reason
from crewflow.store._records import HEALTH_KEY

if TYPE_CHECKING:
    from collections.abc import Sequence
    from datetime import datetime

    from rich.console import Console, RenderableType

    from crewflow._records import ProcessChoice
    from crewflow.cli._common import Database
    from crewflow.cli._store import RecordedPlan, RunDetails
    from crewflow.store import AttemptRecord, OutputRow, RunRecord

_RUN_STYLES: dict[str, str] = {
    RunStatus.RUNNING: "cyan",
    RunStatus.COMPLETED: "green",
    RunStatus.FAILED: "red",
    RunStatus.CANCELLED: "yellow",
    RunStatus.INTERRUPTED: "magenta",
    "pending": "dim",
    "not run": "dim",
}


def _when(moment: datetime, *, seconds: bool = True) -> str:
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")


def _span(start: datetime, end: datetime | None) -> str:
    return "" if end is None else _duration((end - start).total_seconds())


def _duration(seconds: float) -> str:
    if seconds < 60:
        return format_seconds(seconds)
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {rest:02d}s"
    return f"{minutes // 60}h {minutes % 60:02d}m"


def _cost(cost: float | None) -> str:
    return "" if cost is None else f"${cost:.4f}"


def _status(status: str) -> Text:
    return Text(status, style=_RUN_STYLES.get(status, ""))


def show_runs(
    console: Console, records: Sequence[RunRecord], *, db: Database | None = None
) -> None:
    """One row per run: id, crew, process, status, start (local time), duration, size, usage;
    then the command that finishes each interrupted run (``db``: the database given with
    ``--db``, which the command names too).

    The cost column is there when some run's cost is known.
    """
    costs = any(run.usage.cost is not None for run in records)
    columns = ["run id!", "crew~", "process~", "status", "started", "duration>", "tasks>"]
    columns += ["tokens>", *(["cost>"] if costs else [])]
    rows: list[list[_Cell]] = []
    for run in records:
        usage = run.usage
        cells: list[_Cell] = [
            Text(run.run_id),
            Text(run.crew),
            Text(f"{run.process} → {run.chosen}" if run.chosen else run.process),
            _status(run.status),
            _when(run.started, seconds=False),
            _span(run.started, run.ended) if run.ended else _live(run),
            f"{len(run.graph)}" if run.graph else "",
            f"{usage.prompt_tokens + usage.completion_tokens:,}",
        ]
        rows.append([*cells, *([_cost(usage.cost)] if costs else [])])
    optional = ["process~", "tasks>", "cost>", "duration>", "tokens>", "started"]
    print_table(console, columns, rows, optional=optional)
    _show_interrupted(console, [run for run in records if run.status == RunStatus.INTERRUPTED], db)


def _live(run: RunRecord) -> Text | str:
    """The duration cell of a run that has not ended: it is running, or nothing is."""
    return _status("running") if run.status == RunStatus.RUNNING else ""


RESUME_LINES = 5
"""Interrupted runs whose resume command ``crewflow runs`` prints (the rest are counted)."""


def resume_command(run: RunRecord, db: Database | None = None) -> str:
    """The command that finishes ``run``: ``crewflow resume RUN_ID``, with ``--file FILE.py``
    for a run started from code (which recorded no file) and ``--db`` when one was given."""
    command = f"crewflow resume {run.run_id}"
    if run.source is None:
        command += " --file FILE.py"
    return command if db is None else f"{command} --db {shown_database(db)}"


def _show_interrupted(console: Console, runs: Sequence[RunRecord], db: Database | None) -> None:
    """How to finish the interrupted runs listed: a line per run's command, up to a few."""
    if not runs:
        return
    many = len(runs) > 1
    what = f"{len(runs)} runs were" if many else "1 run was"
    line = f"{what} interrupted (nothing executes {'them' if many else 'it'} any more); finish "
    line += "each with:" if many else "it with:"
    console.print(Text(line, style=_RUN_STYLES[RunStatus.INTERRUPTED]))
    for run in runs[:RESUME_LINES]:
        console.print(Text(f"  {resume_command(run, db)}"), soft_wrap=True)
    if len(runs) > RESUME_LINES:
        console.print(Text(f"  … and {len(runs) - RESUME_LINES} more"))
    if any(run.source is None for run in runs):
        console.print(
            Text(
                "(--file FILE.py: a run started from code is resumed with the file that "
                'defines its crew, or with await crew.resume("RUN_ID") in that code)',
                style="dim",
            )
        )


@dataclass
class _TaskSummary:
    name: str
    status: str
    attempts: list[AttemptRecord]
    output: OutputRow | None


def _task_summaries(details: RunDetails) -> list[_TaskSummary]:
    """Every task of the run in graph order, then the tasks its process added, in the order
    added (then any other task its records name)."""
    from crewflow.report._status import skip_reasons, task_names, task_statuses

    run = details.run
    names = task_names(run, details.added, details.attempts, details.outputs)
    depends_on = {**{task.name: task.depends_on for task in details.added}, **run.graph}
    reasons = skip_reasons(details.decisions)
    statuses = task_statuses(run, names, details.attempts, details.outputs, depends_on, reasons)
    return [
        _TaskSummary(
            name,
            statuses[name],
            [row for row in details.attempts if row.task == name],
            details.outputs.get(name),
        )
        for name in names
    ]


def show_details(
    console: Console, details: RunDetails, *, full: bool = False, db: Database | None = None
) -> None:
    """The run's header (with the command that finishes an interrupted run: ``db`` is the
    database given with ``--db``); the choice of a choosing process (adaptive) and the plan of
    a planning one (hierarchical); a table of its tasks, their errors and failed tool calls,
    then each output; then, when they were read, what each LLM call sent and got back."""
    console.print(_header(details.run))
    if details.run.status == RunStatus.INTERRUPTED:
        _show_interrupted(console, [details.run], db)
    _show_health(console, details.run)
    choice, plan = details.choice, details.plan
    if choice is not None:
        _show_choice(console, details.run, choice)
    if plan is not None:
        _show_plan(console, plan)
    tasks = _task_summaries(details)
    _show_tasks(console, details.run, tasks)
    for task in tasks:
        for row in task.attempts:
            # A guardrail round: the task asked again with the reason its guardrail gave.
            attempt = (
                f"attempt {row.number}{' (guardrail round)' if row.kind == 'guardrail' else ''}"
            )
            if row.error_type or row.error:
                problem = ": ".join(part for part in (row.error_type, row.error) if part)
                line = f"{task.name}: {attempt} {row.status}: {problem}"
                console.print(Text(line, style="red"), soft_wrap=True)
            elif row.kind == "guardrail":
                console.print(Text(f"{task.name}: {attempt} {row.status}"), soft_wrap=True)
            if row.context_cut is not None:
                console.print(Text(_cut_line(task.name, row), style="yellow"))
    _show_course(console, details, tasks)
    _show_failed_tools(console, tasks, full=full)
    for task in tasks:
        if task.output is not None:
            console.print(_output_panel(task.output, full=full, width=console.width))
    if details.prompts is not None:
        show_prompts(console, [row for task in tasks for row in task.attempts], details.prompts)


_HEALTH_STYLES = {"ok": "green", "degraded": "yellow", "stalled": "red"}


def _show_health(console: Console, run: RunRecord) -> None:
    """The run's last recorded health (when it was watched), and each issue it had then."""
    health = run.health
    if health is None:
        return
    running = run.status == RunStatus.RUNNING
    line = Text.assemble(
        ("health: " if running else "last health: ", "bold"),
        (health.status, _HEALTH_STYLES[health.status]),
        _recorded_at(run),
    )
    console.print(line)
    for issue in health.issues:
        console.print(Padding(Text(issue.detail, style="yellow"), (0, 0, 0, 2)))


def _recorded_at(run: RunRecord) -> str:
    """`` (at <local time>)``: when the run's health was recorded, if it says."""
    from datetime import datetime

    kept = run.details.get(HEALTH_KEY)
    when = kept.get("recorded") if isinstance(kept, dict) else None
    try:
        at = datetime.fromisoformat(when) if isinstance(when, str) else None
    except ValueError:
        at = None
    return "" if at is None else f" (at {at.astimezone().strftime('%Y-%m-%d %H:%M:%S')})"


def _show_course(console: Console, details: RunDetails, tasks: Sequence[_TaskSummary]) -> None:
    """A line per router's choice and per task skipped, with why."""
    for decision in details.decisions:
        if decision.kind == "router" and isinstance(decision.value, list):
            chosen = ", ".join(str(name) for name in decision.value) or "none"
            line = f"{decision.task}: its router chose {chosen}"
            console.print(Text(line, style="dim"), soft_wrap=True)
    reasons = {d.task: d.reason for d in details.decisions if d.kind == "skip"}
    for task in tasks:
        if task.status == "skipped" and task.name in reasons:
            line = f"{task.name}: skipped: {reasons[task.name]}"
            console.print(Text(line, style="yellow"), soft_wrap=True)


def _cut_line(task: str, row: AttemptRecord) -> str:
    """One line for an attempt whose context outputs were cut to fit its model's window."""
    cut = row.context_cut
    assert cut is not None
    why = "after the provider refused it, " if cut.reason == "refused" else ""
    outputs = ", ".join(
        f"{name} {before:,} → {after:,}" for name, (before, after) in cut.outputs.items()
    )
    return (
        f"{task}: attempt {row.number} context cut {why}to {cut.budget:,} tokens: {outputs} "
        "characters"
    )


def _show_failed_tools(console: Console, tasks: Sequence[_TaskSummary], *, full: bool) -> None:
    """Each failed tool call: its task, attempt, tool, duration and error (its first line
    unless ``full``), wrapped to the width."""
    failed = [
        (task.name, row.number, call)
        for task in tasks
        for row in task.attempts
        for call in row.tool_calls
        if not call.ok
    ]
    if not failed:
        return
    console.print(Text(f"Failed tool calls ({len(failed)})", style="bold"))
    for task, number, call in failed:
        error = call.error or call.error_type or ""
        if not full:
            first, _, rest = error.strip().partition("\n")
            error = f"{first} …" if rest else first
        where = Text(f"{task}, attempt {number}, {call.tool} ({format_seconds(call.duration)}): ")
        # Indented as a block: a message that wraps stays under its call.
        console.print(Padding(Text.assemble(where, (error, "yellow")), (0, 0, 0, 2)))


def _header(run: RunRecord) -> Table:
    table = Table(box=box.SIMPLE, show_header=False, pad_edge=False)
    table.add_column(style="dim")
    table.add_column()
    usage = run.usage
    # "the crew's process is 'x'" next to x says nothing; a chosen process says why.
    said = run.process_reason and run.process_reason != f"the crew's process is {run.process!r}"
    reason = f" ({run.process_reason})" if said else ""
    process = f"{run.process} → {run.chosen}" if run.chosen else run.process
    rows: list[tuple[str, RenderableType]] = [
        ("run id", Text(run.run_id)),
        ("crew", Text(run.crew)),
        ("process", Text(f"{process}{reason}")),
        *_explored_row(run.choice),
        ("status", _status(run.status)),
        *_lease_row(run),
        ("started", _when(run.started)),
        ("ended", _when(run.ended) if run.ended else ""),
        ("duration", _span(run.started, run.ended)),
    ]
    if run.resumed:
        rows.append(("resumed", f"{run.resumed} time{'s' if run.resumed != 1 else ''}"))
    if run.paused:
        rows.append(("paused", "yes (its duration is not a measure of its process)"))
    if run.source is not None:
        attribute = f" ({run.source.attribute})" if run.source.attribute else ""
        rows.append(("source", Text(f"{run.source.file}{attribute}")))
    if run.inputs:
        rows.append(("inputs", Text(json.dumps(run.inputs, ensure_ascii=False))))
    rows += [
        ("requests", f"{usage.requests:,}"),
        ("prompt tokens", f"{usage.prompt_tokens:,}"),
        ("completion tokens", f"{usage.completion_tokens:,}"),
    ]
    if usage.cost is not None:
        rows.append(("cost", _cost(usage.cost)))
    for name, value in rows:
        table.add_row(name, value)
    return table


def _lease_row(run: RunRecord) -> list[tuple[str, RenderableType]]:
    """Who executes a running run, or why nothing executes an interrupted one."""
    if run.status == RunStatus.INTERRUPTED:
        return [("why", Text(lapse_reason(run)))]
    if run.status == RunStatus.RUNNING and run.lease is not None:
        until = _when(run.lease.expires)
        rows: list[tuple[str, RenderableType]] = [
            ("owner", Text(f"{run.lease.owner} (its lease runs until {until})"))
        ]
        if run.lease.running:
            rows.append(("in flight", Text(", ".join(run.lease.running))))
        return rows
    return []


def _explored_row(choice: ProcessChoice | None) -> list[tuple[str, RenderableType]]:
    if choice is None:
        return []
    if not choice.explored:
        return [("explored", "no: it ran the best prediction")]
    best = choice.predictions[0].process if choice.predictions else "another candidate"
    return [("explored", Text(f"yes: it ran {choice.process} to measure it (best: {best})"))]


def _in_seconds(choice: ProcessChoice) -> bool:
    """Whether the predictions are seconds, not task units (graph estimates made before any
    task was measured)."""
    return all(prediction.unit == "s" for prediction in choice.predictions)


def _predicted(seconds: float, in_seconds: bool) -> str:
    return _duration(seconds) if in_seconds else f"{seconds:.3g} units"


def _show_choice(console: Console, run: RunRecord, choice: ProcessChoice) -> None:
    """What the choosing process predicted of each candidate, best first; for a clean run, the
    chosen prediction against the measured duration."""
    if not choice.predictions:
        return
    in_seconds = _in_seconds(choice)
    unit = "" if in_seconds else " (task units: no task measured yet)"
    console.print(Text(f"Predictions of {run.process}, best first{unit}", style="bold"))
    columns = ["candidate~", "predicted>", "basis", "success>", "hopeless", "lower bound>"]
    rows: list[list[_Cell]] = [
        [
            Text(f"{p.process} (ran)" if p.process == choice.process else p.process),
            _predicted(p.seconds, in_seconds),
            Text(p.basis),
            "–" if p.success is None else f"{p.success * 100:.0f} %",
            "yes" if p.hopeless else "",
            _predicted(p.lower_bound, False),  # always in task units
        ]
        for p in choice.predictions
    ]
    print_table(console, columns, rows, optional=["lower bound>"])
    actual = run_seconds(run)
    chosen = next((p for p in choice.predictions if p.process == choice.process), None)
    if actual is None or chosen is None or not in_seconds:
        return
    off = f": off by {(chosen.seconds - actual) / actual * 100:+.0f} %" if actual > 0 else ""
    line = f"took {_duration(actual)}, predicted {_duration(chosen.seconds)}{off}"
    console.print(Text(line), soft_wrap=True)


def _show_plan(console: Console, plan: RecordedPlan) -> None:
    """Each crew task with its steps (worker, the tasks it waits for, its instructions), one
    line each, cut to the width."""
    source = "fixed by the process's configuration" if plan.task is None else f"from {plan.task}"
    console.print(Text(f"Plan ({source})", style="bold"))
    for task, steps in plan.steps.items():
        console.print(Text(f"  {task}"), soft_wrap=True)
        for number, step in enumerate(steps, start=1):
            after = f" (after {', '.join(step.after)})" if step.after else ""
            line = Text.assemble(
                f"    {number}. ",
                (step.worker, "bold"),
                after,
                ": ",
                " ".join(step.instructions.split()),  # one line: newlines become spaces
            )
            line.truncate(console.width, overflow="ellipsis")
            console.print(line, soft_wrap=True)


def _show_tasks(console: Console, run: RunRecord, tasks: Sequence[_TaskSummary]) -> None:
    costs = any(row.usage.cost is not None for task in tasks for row in task.attempts)
    tools = any(row.tool_calls for task in tasks for row in task.attempts)
    columns = ["task~", "status", "attempts>", "start>", "duration>", "model~", "tokens>"]
    columns += [*(["cost>"] if costs else []), *(["tool calls>"] if tools else [])]
    columns += ["cache hits>", "limit wait>"]
    rows: list[list[_Cell]] = []
    for task in tasks:
        attempts = task.attempts
        if not attempts:
            rows.append([Text(task.name), _status(task.status), *[""] * (len(columns) - 2)])
            continue
        # From the first attempt's start to the last one's end; in a resumed run only the last
        # attempt is timed (the earlier ones may predate the restart), as the optimizer does.
        timed = attempts[-1:] if run.resumed else attempts
        first = timed[0]
        end = timed[-1].end
        model = task.output.model if task.output else attempts[-1].model
        known = [row.usage.cost for row in attempts if row.usage.cost is not None]
        cached = sum(row.cache_hits for row in attempts)
        waited = sum(row.limit_wait for row in attempts)
        cells: list[_Cell] = [
            Text(task.name),
            _status(task.status),
            f"{len(attempts)}",
            f"+{_duration((first.start - run.started).total_seconds())}",
            _span(first.start, end),
            Text(model),
            f"{sum(row.usage.total_tokens for row in attempts):,}",
        ]
        if costs:
            cells.append(_cost(sum(known)) if known else "")
        if tools:
            cells.append(_tool_calls(attempts))
        rows.append(
            [*cells, f"{cached}" if cached else "", format_seconds(waited) if waited else ""]
        )
    # The failed tool calls are listed below the table, so their column may go.
    optional = ["cache hits>", "limit wait>", "start>", "tool calls>", "cost>"]
    print_table(console, columns, rows, optional=optional)


def _tool_calls(attempts: Sequence[AttemptRecord]) -> _Cell:
    """``"3"``, or ``"3, 1 failed"`` (in yellow)."""
    calls = [call for row in attempts for call in row.tool_calls]
    failed = sum(not call.ok for call in calls)
    if not failed:
        return f"{len(calls)}" if calls else ""
    return Text(f"{len(calls)}, {failed} failed", style="yellow")


OUTPUT_LINES = 20
"""Lines of each output ``crewflow show`` prints unless ``--full``."""


def _output_panel(output: OutputRow, *, full: bool, width: int) -> Panel:
    lines = output.text.splitlines()
    text = Text(output.text)
    if not full and len(lines) > OUTPUT_LINES:
        hidden = len(lines) - OUTPUT_LINES
        text = Text("\n".join(lines[:OUTPUT_LINES]))
        text.append(f"\n… {hidden} more line{'s' if hidden != 1 else ''}; --full shows all", "dim")
    by = Text(" · ".join(part for part in (output.agent, output.model) if part), style="dim")
    # As wide as the text needs, but never so narrow that the subtitle is cut.
    widest = max((line.cell_len for line in text.split()), default=0)
    needed = max(widest, by.cell_len + 4) + 4  # 4: the borders and their padding
    return Panel(
        text,
        title=Text(output.task, style="bold"),
        subtitle=by if by.plain else None,
        width=min(needed, width),
    )
