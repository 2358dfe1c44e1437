"""What a report shows, gathered once from a stored run or from a `CrewResult`.

A `Report` holds records only (`RunRecord`'s fields, each task's `AttemptRecord` with its
prompts and tool calls, each output's text), never live runtime state, so a report of a run
read back from the store and one of the result in hand show the same things.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any

from crewflow._records import AttemptRecord, ProcessChoice, RunStatus, TaskKind, TaskStatus
from crewflow._usage import Usage
from crewflow.report._status import (
    CONDITION_FALSE,
    NOT_RUN,
    not_chosen,
    skip_reasons,
    task_statuses,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence
    from datetime import datetime
    from pathlib import Path

    from crewflow.crew import CrewResult
    from crewflow.optimizer import Recommendation
    from crewflow.report._compare import Comparison
    from crewflow.store import DecisionRecord, RunRecord, Store

__all__ = ["Report", "TaskEntry"]


@dataclass(frozen=True, slots=True)
class TaskEntry:
    """One task of a reported run.

    Attributes:
        name: The task's name.
        agent: The role of the agent that did it (its first attempt's), ``""`` if it never ran.
        kind: ``deliverable`` (a crew task) or ``internal`` (a manager's plan, a review...).
        status: How it ended (``skipped`` for a task that never ran: its condition was false,
            a router did not choose it, or a task it needs failed or was skipped).
        depends_on: The names of the tasks it depends on.
        attempts: Its attempts, in order, with their prompts and tool calls when recorded.
        output: Its output's text, ``None`` when it has none.
        reason: Why it was skipped, as recorded (``""``: not skipped, or not recorded).
        condition: Whether its condition held (``None``: it has none, or it was never asked).
        chose: The tasks its router chose (``None``: it has no router, or it never chose).
    """

    name: str
    agent: str
    kind: TaskKind
    status: TaskStatus
    depends_on: tuple[str, ...] = ()
    attempts: tuple[AttemptRecord, ...] = ()
    output: str | None = None
    reason: str = ""
    condition: bool | None = None
    chose: tuple[str, ...] | None = None

    @property
    def usage(self) -> Usage:
        """Requests, tokens and cost of all its attempts."""
        total = Usage()
        for attempt in self.attempts:
            total.add(attempt.usage)
        return total


@dataclass(frozen=True)
class Report:
    """One run, ready to be seen: a self-contained HTML page (`html`, `save`), or inline in a
    notebook (`_repr_html_`).

    Build it from a stored run with `from_store`, or from a result in hand with
    `crewflow.CrewResult.report` (which works with ``store=None`` too).

    Example:
        ```python
        result = await crew.kickoff()
        result.report("run.html")            # writes the page; returns the Report

        async with SQLiteStore() as store:
            report = await Report.from_store(store, result.run_id)
        report.save("run.html")
        ```

    Attributes:
        run_id: The run's id.
        crew: The crew's name.
        status: How the run ended (or ``running``).
        process: The crew's process.
        chosen: The process a choosing process (adaptive) picked, if one did.
        reason: Why the crew ran under the process that ran it.
        choice: What the choosing process looked at and predicted, if one chose.
        start: When the run began.
        end: When it ended (``None`` while it runs).
        usage: Requests, tokens and cost of the whole run.
        tasks: The crew's tasks in declaration order, then the process's in the order added.
        recommendations: The optimizer's recommendations for this crew, from the store's
            history; ``None`` when the report was made without a store (no history).
        stored: Whether the run is in a store (``crewflow show RUN_ID`` can print it whole).
        crew_key: The crew's key (`crewflow.store.RunRecord.crew_key`) for a stored run, else
            ``""`` (unknown).
    """

    run_id: str
    crew: str
    status: RunStatus
    process: str
    reason: str
    start: datetime
    end: datetime | None
    usage: Usage
    tasks: tuple[TaskEntry, ...]
    chosen: str | None = None
    choice: ProcessChoice | None = None
    recommendations: tuple[Recommendation, ...] | None = None
    stored: bool = False
    crew_key: str = ""

    @property
    def ran(self) -> str:
        """The process that ran the tasks: the chosen one, else the crew's."""
        return self.chosen or self.process

    @classmethod
    async def from_store(cls, store: Store, run_id: str) -> Report:
        """The report of the run ``run_id`` recorded in ``store``, with the optimizer's
        recommendations for its crew from the runs recorded there.

        Raises:
            crewflow.exceptions.UnknownRunError: No run has that id.
        """
        from crewflow.exceptions import UnknownRunError
        from crewflow.optimizer import analyze

        run = await store.get_run(run_id)
        if run is None:
            raise UnknownRunError(run_id)
        added = await store.added_tasks(run_id)
        outputs = await store.outputs(run_id)
        prompts = await store.prompts(run_id)
        by_task: dict[str, list[AttemptRecord]] = {}
        for attempt in await store.attempts(run_id):
            sent = prompts.get((attempt.task, attempt.number))
            if sent:
                attempt = attempt.model_copy(update={"prompts": tuple(sent)})
            by_task.setdefault(attempt.task, []).append(attempt)
        graph: dict[str, tuple[tuple[str, ...], TaskKind]] = {
            name: (tuple(deps), TaskKind.DELIVERABLE) for name, deps in run.graph.items()
        }
        for task in added:
            graph.setdefault(task.name, (tuple(task.depends_on), task.kind))
        for name in [*by_task, *outputs]:  # recorded but not in the graph (an older record)
            graph.setdefault(name, ((), TaskKind.INTERNAL))
        decisions = await store.decisions(run_id)
        reasons = skip_reasons(decisions)
        statuses = task_statuses(
            run,
            list(graph),
            [attempt for attempts in by_task.values() for attempt in attempts],
            outputs,
            {name: list(deps) for name, (deps, _) in graph.items()},
            reasons,
        )
        tasks = tuple(
            _stored_task(
                name, deps, kind, by_task.get(name, []), outputs, _status(statuses[name], run)
            )
            for name, (deps, kind) in graph.items()
        )
        tasks = tuple(
            replace(task, reason=reasons[task.name])
            if task.status == TaskStatus.SKIPPED and task.name in reasons
            else task
            for task in tasks
        )
        tasks = _with_decisions(tasks, decisions)
        advice = await analyze(store, run.crew)
        return cls(
            run_id=run.run_id,
            crew=run.crew,
            status=run.status,
            process=run.process,
            chosen=run.chosen,
            reason=run.process_reason,
            choice=run.choice,
            start=run.started,
            end=run.ended,
            usage=run.usage,
            tasks=tasks,
            recommendations=tuple(r for r in advice.recommendations if r.crew == run.crew),
            stored=True,
            crew_key=run.crew_key,
        )

    @classmethod
    def from_result(
        cls, result: CrewResult, graph: Mapping[str, Sequence[str]], *, stored: bool = False
    ) -> Report:
        """The report of a result in hand, from its timeline (no store read).

        Args:
            result: The run's result.
            graph: Each task's dependencies, by name.
            stored: Whether the run was recorded in a store.
        """
        outputs = {o.task: o.text for o in (*result.outputs, *result.internal)}
        decided = _result_decisions(result)
        tasks = tuple(
            TaskEntry(
                name=line.task,
                agent=line.agent,
                kind=line.kind,
                status=line.status,
                depends_on=tuple(graph.get(line.task, ())),
                attempts=line.attempts,
                output=outputs.get(line.task),
                reason=result.skipped.get(line.task, ""),
                **decided.get(line.task, {}),
            )
            for line in result.timeline
        )
        choice = result.process_choice
        reason = (
            choice.reason if choice is not None else f"the crew's process is {result.process!r}"
        )
        return cls(
            run_id=result.run_id,
            crew=result.crew,
            status=_result_status(tasks),
            process=result.process,
            chosen=choice.process if choice is not None else None,
            reason=reason,
            choice=choice,
            start=result.start,
            end=result.end,
            usage=result.usage,
            tasks=tasks,
            stored=stored,
        )

    def html(self) -> str:
        """The report as one self-contained HTML page: no network, no CDN; styles, pictures
        (SVG) and its one small script inline."""
        return self._page

    @cached_property
    def _page(self) -> str:
        from crewflow.report._html import render_page

        return render_page(self)

    def save(self, path: str | Path) -> Path:
        """Write `html` to ``path`` (UTF-8); returns the path written."""
        from pathlib import Path

        target = Path(path)
        target.write_text(self.html(), encoding="utf-8")
        return target

    def compare(self, other: Report) -> Comparison:
        """This run (A) and ``other`` (B) side by side, tasks matched by name (see
        `crewflow.report.Comparison`)."""
        from crewflow.report._compare import Comparison

        return Comparison(self, other)

    def _repr_html_(self) -> str:
        """The page in a sandboxed ``<iframe srcdoc>`` for notebooks: the report's styles and
        script stay inside the frame, which may run its tooltip script but reach nothing of the
        notebook's (no same-origin access)."""
        from crewflow.report._html import framed

        return framed(self.html())

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))

    def __repr__(self) -> str:
        return (
            f"Report(run_id={self.run_id!r}, crew={self.crew!r}, status={self.status.value!r}, "
            f"tasks={len(self.tasks)})"
        )


def _status(status: str, run: RunRecord) -> TaskStatus:
    """A task's status as `crewflow.report._status.task_statuses` tells it, as a `TaskStatus`:
    one that never started (`NOT_RUN`) was cancelled with its run, or waits for a resume."""
    if status != NOT_RUN:
        return TaskStatus(status)
    if run.status in (RunStatus.CANCELLED, RunStatus.FAILED):
        return TaskStatus.CANCELLED
    return TaskStatus.PENDING


def _stored_task(
    name: str,
    depends_on: tuple[str, ...],
    kind: TaskKind,
    attempts: list[AttemptRecord],
    outputs: dict[str, Any],
    status: TaskStatus,
) -> TaskEntry:
    row = outputs.get(name)
    agent = attempts[0].agent if attempts else (row.agent if row is not None else "")
    return TaskEntry(
        name=name,
        agent=agent,
        kind=kind,
        status=status,
        depends_on=depends_on,
        attempts=tuple(attempts),
        output=row.text if row is not None else None,
    )


def _with_decisions(
    tasks: tuple[TaskEntry, ...], decisions: Iterable[DecisionRecord]
) -> tuple[TaskEntry, ...]:
    """``tasks`` with their conditions' results and their routers' choices, as recorded."""
    order = {task.name: index for index, task in enumerate(tasks)}
    found: dict[str, dict[str, Any]] = {}
    for decision in decisions:
        value = decision.value
        if decision.kind == "condition" and isinstance(value, bool):
            found.setdefault(decision.task, {})["condition"] = value
        elif decision.kind == "router" and isinstance(value, list):
            chose = tuple(sorted(map(str, value), key=lambda n: order.get(n, len(order))))
            found.setdefault(decision.task, {})["chose"] = chose
    if not found:
        return tasks
    return tuple(
        replace(task, **found[task.name]) if task.name in found else task for task in tasks
    )


def _result_decisions(result: CrewResult) -> dict[str, dict[str, Any]]:
    """What a result in hand tells of its tasks' conditions and routers, as the decisions a
    stored run records would: a condition held when its task was not skipped for it and ran; a
    router chose each of its branches that it did not skip."""
    graph = result._graph  # the run's graph, kept by the crew that made the result
    if graph is None:
        return {}
    ran = {line.task for line in result.timeline if line.attempts} | {
        output.task for output in (*result.outputs, *result.internal)
    }
    found: dict[str, dict[str, Any]] = {}
    for name in graph.names:
        task = graph.task(name)
        if task.condition is not None:
            if result.skipped.get(name) == CONDITION_FALSE:
                found.setdefault(name, {})["condition"] = False
            elif name in ran:
                found.setdefault(name, {})["condition"] = True
        if task.router is not None and name in ran and name not in result.skipped:
            routes = graph.routes(name)
            branches = graph.dependant_names(name) if routes is None else set(routes.values())
            unchosen = not_chosen(name)
            chose = [b for b in graph.dependant_names(name) if b in branches]
            found.setdefault(name, {})["chose"] = tuple(
                b for b in chose if result.skipped.get(b) != unchosen
            )
    return found


def _result_status(tasks: tuple[TaskEntry, ...]) -> RunStatus:
    """A result's run completed, unless one of its tasks failed (a partial result)."""
    if any(t.status == TaskStatus.FAILED for t in tasks):
        return RunStatus.FAILED
    return RunStatus.COMPLETED
