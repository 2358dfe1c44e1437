"""How a run is recorded in the store: the run record, the tasks its process adds, a checkpoint per
finished task, the process chosen, the end; and what a resumed run reads back.

`Recorder` is what `Run` calls; it knows the store's records, the run knows nothing of them.
`run_source` tells the runs started inside it how they were started (``crewflow run`` sets it,
so that ``crewflow resume`` can find the crew again).
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio
from pydantic import BaseModel

from crewflow._fingerprint import changed_aspects
from crewflow._runtime.clock import real_work
from crewflow.exceptions import CrewChange, LeaseLost, RunInProgress
from crewflow.llm._types import Usage
from crewflow.store._base import FinishedOutput
from crewflow.store._records import HEALTH_KEY

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from crewflow._fingerprint import Fingerprint
    from crewflow._records import AttemptRecord, ProcessChoice, RunStatus, TaskKind, TaskRecord
    from crewflow.events import RunHealth
    from crewflow.graph import TaskGraph
    from crewflow.store import (
        AddedTaskRecord,
        DecisionRecord,
        Lease,
        OutputRow,
        RunRecord,
        RunSource,
        Store,
    )
    from crewflow.task import Task, TaskOutput

__all__ = [
    "Recorder",
    "Resumption",
    "changes",
    "current_source",
    "describe",
    "graph_record",
    "in_progress",
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


def graph_record(graph: TaskGraph) -> dict[str, list[str]]:
    """Each crew task's name with its dependencies' names, in declaration order (as recorded)."""
    return {name: list(graph.dependency_names(name)) for name in graph.deliverables}


ASPECTS_KEY = "task_aspects"
"""Where a run record's ``details`` keep each crew task's aspect digests (`Fingerprint.aspects`)."""


def changes(recorded: RunRecord, now: Fingerprint, graph: TaskGraph) -> list[CrewChange]:
    """What differs between a recorded run's crew and the crew ``now``: each task added,
    removed or changed, with what changed in it where the record tells (runs recorded without
    aspect digests say that a task changed; those without task hashes, only tasks and
    dependencies), then the process."""

    graph_now = graph_record(graph)
    if recorded.task_hashes:
        found = _task_changes(recorded, now, graph_now)
    else:
        found = [CrewChange("added", name) for name in graph_now if name not in recorded.graph]
        found += [CrewChange("removed", name) for name in recorded.graph if name not in graph_now]
        found += [
            CrewChange("changed", name, ("dependencies",), _dependencies(deps, graph_now[name]))
            for name, deps in recorded.graph.items()
            if name in graph_now and graph_now[name] != deps
        ]
    if recorded.process != now.process:
        found.append(
            CrewChange(
                "process",
                detail=f"the process changed from {recorded.process!r} to {now.process!r}",
            )
        )
    elif recorded.task_hashes and recorded.process_config != now.process_config:
        found.append(
            CrewChange(
                "process",
                detail=f"the process's configuration changed from {recorded.process_config} "
                f"to {now.process_config}",
            )
        )
    if not found:
        found.append(
            CrewChange(
                "changed",
                detail="a task's description, expected output or output model, an agent, a "
                "model, a tool, the process or the shared state (its model, reducers or initial "
                "values) changed",
            )
        )
    return found


def _task_changes(
    recorded: RunRecord, now: Fingerprint, graph_now: dict[str, list[str]]
) -> list[CrewChange]:
    before = recorded.task_hashes
    kept = recorded.details.get(ASPECTS_KEY)
    aspects_before = kept if isinstance(kept, dict) else {}
    found = [CrewChange("added", name) for name in now.tasks if name not in before]
    found += [CrewChange("removed", name) for name in before if name not in now.tasks]
    for name, digest in now.tasks.items():
        if name not in before or before[name] == digest:
            continue
        old = aspects_before.get(name)
        what = changed_aspects(old, now.aspects[name]) if isinstance(old, str) else ()
        detail = ""
        deps_before = recorded.graph.get(name)
        if "dependencies" in what and deps_before is not None:
            detail = _dependencies(deps_before, graph_now[name])
        elif not what:
            detail = (
                "its description, expected output, output model, dependencies, agent, model or "
                "tools"
            )
        found.append(CrewChange("changed", name, what, detail))
    return found


def _dependencies(before: list[str], now: list[str]) -> str:
    return f"it depends on {now} instead of {before}"


def in_progress(record: RunRecord | None, *, meanwhile: bool = False) -> RunInProgress | None:
    """The error that refuses to resume ``record`` (as read: `observed`) while another process
    executes it, or ``None`` when none does. ``meanwhile``: that process took the run over after
    this one read it, so its lease holds whatever a reader now makes of it."""
    if record is None or record.lease is None:
        return None
    # A lease that holds refuses, whatever the status: a resume that took the run over has its
    # lease before it reopens the run (a failed run holding a live lease is being resumed).
    if not meanwhile and record.lease.lapsed() is not None:
        return None
    return RunInProgress(record.run_id, record.lease.owner, record.lease.expires)


def describe(found: Sequence[CrewChange], *, shown: int = 5) -> str:
    """The first ``shown`` changes in words, and how many more there are (a crew with
    thousands of changed tasks gets a short message; `CrewChanged.changes` has them all)."""
    told = "; ".join(str(change) for change in found[:shown])
    rest = len(found) - shown
    return f"{told}; and {rest:,} more" if rest > 0 else told


class Recorder:
    """Writes one run's records: the run and its lease, the tasks its process adds, a checkpoint
    per finished task, failed attempts, the process chosen, the end. `Run` calls it.

    Args:
        store: Where the records go.
        record: The run's record as it starts (or as it was, when resuming).
        resuming: The run exists in the store already (`Crew.resume`).

    Attributes:
        lease: The run's lease, once it started (renewed by `keep_lease`).
    """

    def __init__(self, store: Store, record: RunRecord, *, resuming: bool = False) -> None:
        self.store = store
        self.record = record
        self.resuming = resuming
        self.lease: Lease | None = None
        # The tasks in flight, in the order they started (a dict keeps it), which `keep_lease`
        # writes on the lease; ``_moved`` wakes it when they change.
        self._running: dict[str, None] = {}
        self._moved: anyio.Event | None = None

    def task_running(self, name: str) -> None:
        """Task ``name`` started an attempt (`keep_lease` writes it on the lease)."""
        self._running[name] = None
        if self._moved is not None:
            self._moved.set()

    def task_stopped(self, name: str) -> None:
        """Task ``name`` is no longer in flight (it finished, failed or was cancelled)."""
        if self._running.pop(name, 0) is None and self._moved is not None:
            self._moved.set()

    @property
    def token(self) -> str | None:
        """The token of the run's lease, which every write of the run's records carries."""
        return None if self.lease is None else self.lease.token

    async def started(self, at: datetime, *, watched: bool = False) -> None:
        """Record a new run as running (started ``at``) and held by this process's lease;
        a ``watched`` run (`crewflow.health`) with its health ``ok``, in the same write."""
        from crewflow.store import Lease

        lease = Lease.new()
        update: dict[str, Any] = {"started": at, "lease": lease}
        if watched:
            update["details"] = {**self.record.details, HEALTH_KEY: _health_json(None, at)}
        self.record = self.record.model_copy(update=update)
        with real_work():
            await self.store.start_run(self.record)
        self.lease = lease
        # Written: the run's later writes need its id and key, not each task's dependencies
        # (a list a task, for the garbage collector to walk while the run lasts).
        self.record = self.record.model_copy(update={"graph": {}})

    async def take_over(self, *, watched: bool = False) -> None:
        """Take the recorded run over for a resume, then reopen it: its lease is replaced only
        if it is still the one read with the run (compare-and-set), so of two resumes at once
        exactly one goes on. Its health starts afresh: ``ok`` when it is ``watched``
        (`crewflow.health`), else none.

        Raises:
            RunInProgress: Another process executes the run: its owner is alive and its lease
                holds, or it took the run over since it was read.
        """
        from crewflow.store import Lease

        refused = in_progress(self.record)
        if refused is not None:
            raise refused
        lease = Lease.new()
        run_id = self.record.run_id
        held = self.record.lease
        with real_work():
            taken = await self.store.take_lease(
                run_id, lease, replacing=None if held is None else held.token
            )
            if not taken:
                now = await self.store.get_run(run_id)
                raise in_progress(now, meanwhile=True) or RunInProgress(run_id, None, None)
            await self.store.reopen_run(run_id, lease=lease.token)
            if watched or HEALTH_KEY in self.record.details:
                # Health is judged afresh: what the run's last process saw is gone with it.
                health = _health_json(None, datetime.now(UTC)) if watched else None
                await self.store.record_health(run_id, health, lease=lease.token)
        self.lease = lease

    async def keep_lease(self, log: Any) -> None:
        """Keep the run's lease until cancelled (a run's background task, pauses included):
        renew it every `RENEW_SECONDS`, and write the tasks in flight on it when they change,
        at most once every `RUNNING_SECONDS` (each write renews it too). A write that fails is
        logged and tried again `RENEW_SECONDS` later.

        Raises:
            LeaseLost: The lease is no longer this run's (another process took the run over
                while this one stalled): the run must stop.
        """
        from crewflow.store._lease import RENEW_SECONDS, RUNNING_SECONDS, expiry

        lease = self.lease
        if lease is None:
            return
        run_id = self.record.run_id
        # A store written before `renew_lease` took ``running`` still has its lease renewed
        # (it shows no tasks in flight): a renewal failing on every turn would let it lapse.
        tells_running = _takes(self.store.renew_lease, "running")
        # The loop's clock, not the run's: a test's fake clock would return at once.
        renewal = anyio.current_time() + RENEW_SECONDS
        written: tuple[str, ...] = ()
        while True:
            running = tuple(self._running)
            if running == written:
                self._moved = anyio.Event()
                with anyio.move_on_after(renewal - anyio.current_time()):
                    await self._moved.wait()
                self._moved = None
                running = tuple(self._running)
            if running == written and anyio.current_time() < renewal:
                continue
            renewal = anyio.current_time() + RENEW_SECONDS
            try:
                with real_work():
                    if tells_running:
                        held = await self.store.renew_lease(
                            run_id, lease.token, expiry(), running=running
                        )
                    else:
                        held = await self.store.renew_lease(run_id, lease.token, expiry())
                    now = None if held else await self.store.get_run(run_id)
            except Exception as exc:  # losing a renewal must not end the run
                log.warning("could not renew the run's lease", error=str(exc))
                await anyio.sleep(renewal - anyio.current_time())
                continue
            if not held:
                owner = None if now is None or now.lease is None else now.lease.owner
                raise LeaseLost(run_id, owner)
            written = running
            await anyio.sleep(RUNNING_SECONDS)

    async def task_finished(
        self,
        output: TaskOutput,
        attempts: Sequence[AttemptRecord],
        *,
        at: datetime | None = None,
    ) -> None:
        """Checkpoint a finished task: its output and attempts, committed when this returns
        (``at``: when it finished, default its last attempt's end)."""
        data = output.data
        finished_at = at or (attempts[-1].end if attempts else datetime.now(UTC))
        if data is None:  # the usual case: a store may write the fields as they are
            # What waits for the commit is the store's write alone (`SQLiteStore` makes its
            # rows before it returns it): in a wide graph many checkpoints wait at once.
            write = self.store._save_finished(
                self.record.run_id,
                FinishedOutput(output.task, output.text, output.agent, output.model, finished_at),
                attempts,
                lease=self.token,
            )
            with real_work():
                await write
            return
        from crewflow.store import OutputRow

        if isinstance(data, BaseModel):
            data = data.model_dump(mode="json")
        elif isinstance(data, list):  # a map's: each item's structured output, or text
            data = [i.model_dump(mode="json") if isinstance(i, BaseModel) else i for i in data]
        row = OutputRow(
            run_id=self.record.run_id,
            task=output.task,
            text=output.text,
            data=data,
            agent=output.agent,
            model=output.model,
            finished_at=finished_at,
        )
        with real_work():
            await self.store.save_task(row, attempts, lease=self.token)

    async def attempts_ended(self, attempts: Sequence[AttemptRecord]) -> None:
        """Record the attempts of a task that did not finish (failed or cancelled)."""
        for attempt in attempts:
            with real_work():
                await self.store.record_attempt(self.record.run_id, attempt, lease=self.token)

    async def tasks_added(self, tasks: Sequence[AddedTaskRecord]) -> None:
        """Record tasks the process added to the run."""
        with real_work():
            await self.store.add_tasks(self.record.run_id, tasks, lease=self.token)

    async def decided(self, decisions: Sequence[DecisionRecord]) -> None:
        """Record decisions the run made about its course (before anything acts on them)."""
        with real_work():
            await self.store.record_decisions(self.record.run_id, decisions, lease=self.token)

    async def health_changed(self, health: RunHealth, *, at: datetime) -> None:
        """Record the run's health, as it changed ``at``."""
        with real_work():
            await self.store.record_health(
                self.record.run_id, _health_json(health, at), lease=self.token
            )

    async def chosen(self, choice: ProcessChoice) -> None:
        """Record the process a choosing process picked, why, and what it predicted."""
        details = {"choice": choice.model_dump(mode="json")}
        with real_work():
            await self.store.record_choice(
                self.record.run_id, choice.process, choice.reason, details, lease=self.token
            )

    def abandoned(self) -> None:
        """The run ended, but its end could not be recorded: its lease holds it no more."""
        from crewflow.store._lease import abandon

        if self.lease is not None:
            abandon(self.lease)

    async def finished(
        self, status: RunStatus, ended: datetime, usage: Usage, *, paused: bool
    ) -> None:
        """Record how the run ended (and that it was paused, if it was)."""
        with real_work():
            if paused:
                await self.store.record_pause(self.record.run_id, lease=self.token)
            await self.store.finish_run(self.record.run_id, status, ended, usage, lease=self.token)


def _health_json(health: RunHealth | None, at: datetime) -> dict[str, Any]:
    """``health`` (``None``: ``ok``, nothing judged yet) as a run's details keep it."""
    from crewflow.events import RunHealth

    found = RunHealth() if health is None else health
    return {**found.model_dump(mode="json"), "recorded": at.isoformat()}


def _takes(method: Callable[..., Any], name: str) -> bool:
    """Whether ``method`` takes a keyword argument ``name`` (or any keyword)."""
    import inspect

    try:
        parameters = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):
        return True  # no signature to read (a builtin): assume the current one
    return any(p.name == name or p.kind is p.VAR_KEYWORD for p in parameters)


@dataclass(frozen=True, slots=True)
class Resumption:
    """What a resumed run starts from: its record and everything it had finished.

    Attributes:
        record: The run as recorded.
        outputs: Every finished task's output, the crew's and the process's, by name.
        attempts: Every recorded attempt, by task name, in order.
        specs: The spec hash of each task the process had added, by name.
        usage: What the recorded attempts spent (the resumed run adds to it).
        force: Resume even where a task differs from the recorded one (it runs again).
        decisions: The run's recorded decisions (`DecisionRecord`), by key: replayed.
    """

    record: RunRecord
    outputs: dict[str, OutputRow]
    attempts: dict[str, list[AttemptRecord]]
    specs: dict[str, str]
    usage: Usage
    force: bool = False
    decisions: dict[str, DecisionRecord] = field(default_factory=dict)

    def attempts_before(self, name: str) -> int:
        """How many attempts of task ``name`` are on record."""
        attempts = self.attempts.get(name)
        return max(attempt.number for attempt in attempts) if attempts else 0

    def restore(
        self, name: str, task: Task, kind: TaskKind
    ) -> tuple[TaskOutput, TaskRecord] | None:
        """Task ``name``'s recorded output and timeline line, or ``None`` when it has none (or
        its structured output no longer fits its ``output_model``: it then runs again)."""
        from crewflow._records import TaskRecord, TaskStatus
        from crewflow.task import TaskOutput

        saved = self.outputs.get(name)
        if saved is None:
            return None
        data: Any = saved.data
        model = task.output_model
        if model is not None and data is not None:
            try:
                if task.map_over is not None and isinstance(data, list):
                    # A map's output: each item's structured output (or text), in item order.
                    data = [
                        item if isinstance(item, str) else model.model_validate(item)
                        for item in data
                    ]
                else:
                    data = model.model_validate(data)
            except ValueError:
                return None
        attempts = self.attempts.get(name, [])
        usage = Usage()
        for attempt in attempts:
            usage.add(attempt.usage)
        output = TaskOutput(
            task=name, agent=saved.agent, text=saved.text, data=data, usage=usage, model=saved.model
        )
        start = attempts[0].start if attempts else saved.finished_at
        record = TaskRecord(
            task=name,
            agent=saved.agent,
            status=TaskStatus.COMPLETED,
            kind=kind,
            start=start,
            end=saved.finished_at,
            duration=max(0.0, (saved.finished_at - start).total_seconds()),
            attempts=tuple(attempts),
        )
        return output, record


async def load_resumption(
    store: Store, run_id: str, now: Fingerprint, graph: TaskGraph, *, force: bool = False
) -> Resumption:
    """Read what run ``run_id`` finished, for `Crew.resume`.

    Args:
        store: The crew's store.
        run_id: The run to resume.
        now: The crew's fingerprint now.
        graph: The crew's graph now.
        force: Resume even if the fingerprint differs (outputs of tasks the crew no longer
            has are ignored; a task that differs, or a structured output that no longer fits
            its model, runs again).

    Raises:
        UnknownRunError: No such run in the store.
        RunInProgress: Another process executes the run (it holds its lease).
        CrewChanged: The crew's fingerprint is not the recorded one (and not ``force``).
    """
    from crewflow.exceptions import CrewChanged, UnknownRunError

    record = await store.get_run(run_id)
    if record is None:
        raise UnknownRunError(run_id)
    refused = in_progress(record)
    if refused is not None:
        raise refused
    if record.fingerprint != now.digest and not force:
        found = changes(record, now, graph)
        raise CrewChanged(
            f"run {run_id!r} was recorded for a different crew ({describe(found)}), so its "
            "saved outputs may not fit this one",
            run_id=run_id,
            changes=found,
        )
    attempts: dict[str, list[AttemptRecord]] = {}
    usage = Usage()
    for attempt in await store.attempts(run_id):
        attempts.setdefault(attempt.task, []).append(attempt)
        usage.add(attempt.usage)
    for task_attempts in attempts.values():
        task_attempts.sort(key=lambda attempt: attempt.number)
    specs = {task.name: task.spec_hash for task in await store.added_tasks(run_id)}
    decisions = {decision.key: decision for decision in await store.decisions(run_id)}
    outputs = await store.outputs(run_id)
    return Resumption(record, outputs, attempts, specs, usage, force, decisions)
