"""How a run is recorded in the store: the run record, a checkpoint per finished task, the end.

`Recorder` is what `Run` calls; it knows the store's records, the run knows nothing of them.
`run_source` tells the runs started inside it how they were started (``crewflow run`` sets it,
so that ``crewflow resume`` can find the crew again).
"""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from crewflow._runtime.clock import real_work

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from crewflow._runtime.records import AttemptRecord, TaskRecord
    from crewflow.agent import Agent
    from crewflow.graph import TaskGraph
    from crewflow.llm._base import LLM
    from crewflow.llm._types import Usage
    from crewflow.store import AttemptRow, RunRecord, RunSource, Store
    from crewflow.task import TaskOutput

__all__ = [
    "Recorder",
    "Resumption",
    "changes",
    "current_source",
    "fingerprint",
    "graph_record",
    "load_resumption",
    "run_source",
]

_source: ContextVar[RunSource | None] = ContextVar("crewflow_run_source", default=None)


@contextmanager
def run_source(file: str, attribute: str | None = None) -> Iterator[None]:
    """Record runs started inside this block as started from ``file`` (its crew ``attribute``).

    Example:
        ```python
        with run_source("examples/research.py", "crew"):
            result = await crew.kickoff(inputs)
        ```
    """
    from crewflow.store import RunSource

    token = _source.set(RunSource(file=file, attribute=attribute))
    try:
        yield
    finally:
        _source.reset(token)


def current_source() -> RunSource | None:
    """The source set by the innermost `run_source`, if any."""
    return _source.get()


def fingerprint(graph: TaskGraph, process: str, llm: str | LLM | None = None) -> str:
    """A hash of what a run's outputs depend on: every task (name, templates, dependencies,
    output schema), the agents doing them (role, goal, backstory, model, tools, fallbacks) and
    the process. `Crew.resume` refuses a run whose crew no longer has the recorded one.

    Args:
        graph: The crew's task graph.
        process: The process's name.
        llm: The model every agent is made to use (``kickoff(llm=...)``), if any.
    """
    from crewflow.llm._models import default_model

    def model(of: str | LLM | None) -> str:
        chosen = llm if llm is not None else of
        if chosen is None:
            return default_model()
        return chosen if isinstance(chosen, str) else chosen.model

    def agent(spec: Agent | None) -> dict[str, Any] | None:
        if spec is None:
            return None
        return {
            "role": spec.role,
            "goal": spec.goal,
            "backstory": spec.backstory,
            "model": model(spec.llm),
            "tools": [[tool.name, tool.description, tool.parameters] for tool in spec.tools],
            "max_iterations": spec.max_iterations,
        }

    tasks = []
    for task, name in zip(graph.tasks, graph.names, strict=True):
        schema = task.output_model.model_json_schema() if task.output_model else None
        tasks.append(
            {
                "name": name,
                "description": task.description,
                "expected_output": task.expected_output,
                "depends_on": list(graph.dependency_names(name)),
                "output_schema": schema,
                "agent": agent(graph.agent_of(task)),
                "fallback_agent": agent(task.fallback_agent),
            }
        )
    text = json.dumps(
        {"process": process, "tasks": tasks}, sort_keys=True, ensure_ascii=False, default=repr
    )
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def graph_record(graph: TaskGraph) -> dict[str, list[str]]:
    """Each task's name with its dependencies' names, in declaration order (as recorded)."""
    return {name: list(graph.dependency_names(name)) for name in graph.names}


def changes(recorded: RunRecord, graph: TaskGraph) -> list[str]:
    """What differs between a recorded run's graph and ``graph``, as far as the record tells."""
    now = graph_record(graph)
    found = [f"task {name!r} was added" for name in now if name not in recorded.graph]
    found += [f"task {name!r} was removed" for name in recorded.graph if name not in now]
    found += [
        f"task {name!r} now depends on {now[name]} instead of {deps}"
        for name, deps in recorded.graph.items()
        if name in now and now[name] != deps
    ]
    return found or [
        "a task's description, expected output or output model, an agent, a model, a tool or "
        "the process changed"
    ]


class Recorder:
    """Writes one run's records: the run, a checkpoint per finished task, failed attempts, the
    end. `Run` calls it; a resumed run numbers attempts on from the recorded ones.

    Args:
        store: Where the records go.
        record: The run's record as it starts (or as it was, when resuming).
        resuming: The run exists in the store already (`Crew.resume`).
    """

    def __init__(self, store: Store, record: RunRecord, *, resuming: bool = False) -> None:
        self.store = store
        self.record = record
        self.resuming = resuming

    async def started(self, at: datetime, process_reason: str) -> None:
        """Record the run as running (a new record, or the recorded one reopened).

        Args:
            at: When the run began.
            process_reason: Why its process runs it.
        """
        if self.resuming:
            with real_work():
                await self.store.reopen_run(self.record.run_id)
        else:
            self.record = self.record.model_copy(
                update={"started": at, "process_reason": process_reason}
            )
            with real_work():
                await self.store.start_run(self.record)

    async def task_finished(self, output: TaskOutput, attempts: Sequence[AttemptRecord]) -> None:
        """Checkpoint a finished task: its output and attempts, committed when this returns."""
        from crewflow.store import OutputRow

        data = output.data
        if isinstance(data, BaseModel):
            data = data.model_dump(mode="json")
        row = OutputRow(
            run_id=self.record.run_id,
            task=output.task,
            text=output.text,
            data=data,
            agent=output.agent,
            model=output.model,
            finished_at=attempts[-1].end if attempts else datetime.now(UTC),
        )
        with real_work():
            await self.store.save_task(row, [self._row(output.task, a) for a in attempts])

    async def attempts_ended(self, task: str, attempts: Sequence[AttemptRecord]) -> None:
        """Record the attempts of a task that did not finish (failed or cancelled)."""
        for attempt in attempts:
            with real_work():
                await self.store.record_attempt(self._row(task, attempt))

    async def finished(self, status: str, ended: datetime, usage: Usage) -> None:
        """Record how the run ended."""
        from crewflow.store import RunStatus

        with real_work():
            await self.store.finish_run(self.record.run_id, RunStatus(status), ended, usage)

    def _row(self, task: str, attempt: AttemptRecord) -> AttemptRow:
        from crewflow.store import AttemptRow, AttemptStatus

        usage = attempt.usage
        return AttemptRow(
            run_id=self.record.run_id,
            task=task,
            attempt=attempt.number,
            agent=attempt.agent,
            start=attempt.start,
            end=attempt.end,
            status=AttemptStatus(attempt.status.value),  # completed, failed or cancelled
            error_type=attempt.error_type,
            error=attempt.error,
            model=attempt.model,
            requests=usage.requests,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cost=usage.cost,
            cache_hit=attempt.cache_hits > 0,
            llm_retries=attempt.llm_retries,
            limit_wait=attempt.limit_wait,
            limit_waits=attempt.limit_waits,
        )


@dataclass(frozen=True, slots=True)
class Resumption:
    """What a resumed run starts from: its record and the tasks that had finished.

    Attributes:
        record: The run as recorded.
        restored: Each finished task's output and timeline record, by name.
        attempts_before: How many attempts each task already has on record.
        usage: What the recorded attempts spent (the resumed run adds to it).
    """

    record: RunRecord
    restored: dict[str, tuple[TaskOutput, TaskRecord]]
    attempts_before: dict[str, int]
    usage: Usage

    def run_state(self) -> dict[str, Any]:
        """The `Run` arguments that make a run continue this one."""
        return {
            "run_id": self.record.run_id,
            "restored": self.restored,
            "attempts_before": self.attempts_before,
            "usage": self.usage.copy(),
        }


async def load_resumption(
    store: Store, run_id: str, graph: TaskGraph, current: str, *, force: bool = False
) -> Resumption:
    """Read what run ``run_id`` finished, for `Crew.resume`.

    Args:
        store: The crew's store.
        run_id: The run to resume.
        graph: The crew's graph now.
        current: The crew's fingerprint now.
        force: Resume even if the fingerprint differs (outputs of tasks the crew no longer
            has are ignored; a structured output that no longer fits its model re-runs).

    Raises:
        UnknownRunError: No such run in the store.
        CrewChanged: The crew's fingerprint is not the recorded one (and not ``force``).
    """
    from crewflow._runtime.records import AttemptRecord, TaskRecord, TaskStatus
    from crewflow.exceptions import CrewChanged, UnknownRunError
    from crewflow.llm._types import Usage
    from crewflow.task import TaskOutput

    record = await store.get_run(run_id)
    if record is None:
        raise UnknownRunError(run_id)
    if record.fingerprint != current and not force:
        found = changes(record, graph)
        raise CrewChanged(
            f"run {run_id!r} was recorded for a different crew ({'; '.join(found)}), so its "
            "saved outputs may not fit this one; pass force=True (crewflow resume --force) to "
            "resume anyway",
            run_id=run_id,
            changes=found,
        )
    outputs = await store.outputs(run_id)
    rows = await store.attempts(run_id)
    by_task: dict[str, list[AttemptRow]] = {}
    for row in rows:
        by_task.setdefault(row.task, []).append(row)
    usage = Usage()
    timelines: dict[str, list[AttemptRecord]] = {}
    for name, task_rows in by_task.items():
        timelines[name] = []
        for row in task_rows:
            spent = Usage(
                requests=row.requests,
                prompt_tokens=row.prompt_tokens,
                completion_tokens=row.completion_tokens,
                cost=row.cost,
            )
            usage.add(spent)
            end = row.end or row.start
            timelines[name].append(
                AttemptRecord(
                    number=row.attempt,
                    agent=row.agent,
                    start=row.start,
                    end=end,
                    duration=(end - row.start).total_seconds(),
                    status=TaskStatus(row.status if row.status != "running" else "cancelled"),
                    error_type=row.error_type,
                    error=row.error,
                    model=row.model,
                    usage=spent,
                    llm_retries=row.llm_retries,
                    limit_wait=row.limit_wait,
                    limit_waits=row.limit_waits,
                    cache_hits=int(row.cache_hit),
                )
            )
    restored: dict[str, tuple[TaskOutput, TaskRecord]] = {}
    names = set(graph.names)
    for name, saved in outputs.items():
        if name not in names:
            continue
        model = graph.task(name).output_model
        data: Any = saved.data
        if model is not None and data is not None:
            try:
                data = model.model_validate(data)
            except ValueError:
                continue  # only with force: the model changed, so the task runs again
        attempts = timelines.get(name, [])
        task_usage = Usage()
        for attempt in attempts:
            task_usage.add(attempt.usage)
        output = TaskOutput(
            task=name,
            agent=saved.agent,
            text=saved.text,
            data=data,
            usage=task_usage,
            model=saved.model,
        )
        start = attempts[0].start if attempts else saved.finished_at
        timeline = TaskRecord(
            task=name,
            agent=saved.agent,
            status=TaskStatus.COMPLETED,
            start=start,
            end=saved.finished_at,
            duration=(saved.finished_at - start).total_seconds(),
            attempts=attempts,
        )
        restored[name] = (output, timeline)
    attempts_before = {
        name: max(row.attempt for row in task_rows) for name, task_rows in by_task.items()
    }
    return Resumption(record, restored, attempts_before, usage)
