"""`Run`: one execution of a crew — what processes are written against.

A process decides what runs and in what order; a `Run` decides how. ``execute(task)`` is the one
place that runs a task: a scheduling slot, the context, the prompt, then the attempts of
`attempts.TaskAttempts` (retries, timeout, fallback, records, events). The failure policy lives
here too: with ``on_failure="continue"`` a failed task returns ``None`` and every task that
depends on it is skipped when its turn comes, so processes need no failure logic of their own.
All state here belongs to this run; two kickoffs of one crew share nothing mutable.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from crewflow import events
from crewflow._logging import get_logger
from crewflow._prompts import task_prompt
from crewflow._runtime.attempts import TaskAttempts
from crewflow._runtime.clock import SystemClock, current_clock, real_work
from crewflow._runtime.records import TaskRecord, TaskStatus
from crewflow._runtime.slots import Slot, SlotPool
from crewflow._spec import new_id
from crewflow.exceptions import CrewflowError, CrewPartialFailure, CrewRunError, TaskFailed
from crewflow.llm._models import resolve_llm
from crewflow.llm._types import Usage

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from crewflow._runtime.cache import ReplyCache
    from crewflow._runtime.recording import Recorder
    from crewflow.agent import Agent
    from crewflow.events import EventSink
    from crewflow.graph import TaskGraph
    from crewflow.llm._base import LLM
    from crewflow.processes import Process
    from crewflow.retry import RetryPolicy
    from crewflow.task import Task, TaskOutput

__all__ = ["Run", "capture_sink", "release_sink"]

RunStatus = Literal["pending", "running", "paused", "completed", "failed", "cancelled"]
OnFailure = Literal["stop", "continue"]

_capture_sinks: ContextVar[tuple[EventSink, ...]] = ContextVar("crewflow_sinks", default=())


def capture_sink(sink: EventSink) -> object:
    """Send the events of every run started in this context to ``sink`` too; returns a token
    for `release_sink`."""
    return _capture_sinks.set((*_capture_sinks.get(), sink))


def release_sink(token: object) -> None:
    """Undo a `capture_sink`."""
    _capture_sinks.reset(token)  # type: ignore[arg-type]


class Run:
    """One execution of a crew: what processes are written against.

    Attributes:
        run_id: This run's id.
        graph: The validated task graph (this run's own copy).
        process: The process driving the run.
        inputs: The kickoff inputs (a private copy).
        usage: Requests, tokens and cost so far, over every task and attempt.
        status: ``pending``, ``running``, ``paused``, ``completed``, ``failed`` or ``cancelled``.
        slots: The run's task slots (``max_concurrency``, pause, resume).
        durations: Expected seconds per task name, where earlier runs measured them (else
            empty: processes then treat tasks as equally long).
        process_reason: Why this process runs the crew (a process that chooses, like the
            adaptive one, replaces it with its reasons; it is recorded with the run).
        recorder: Writes the run's records and checkpoints to the crew's store (``None``: no
            store).
        cache: Whether tasks that do not say otherwise reuse cached LLM replies.
        replies: The reply cache, when some task uses one.
        restored: Tasks whose outputs a resumed run read from the store.
    """

    def __init__(
        self,
        *,
        graph: TaskGraph,
        process: Process,
        crew_name: str,
        inputs: Mapping[str, Any],
        retry: RetryPolicy,
        on_failure: OnFailure = "stop",
        max_concurrency: int | None = None,
        llm_override: LLM | None = None,
        on_event: EventSink | None = None,
        verbose: bool = False,
        run_id: str | None = None,
        cache: bool = False,
        recorder: Recorder | None = None,
        restored: Mapping[str, tuple[TaskOutput, TaskRecord]] | None = None,
        attempts_before: Mapping[str, int] | None = None,
        usage: Usage | None = None,
    ) -> None:
        self.run_id = run_id or new_id()
        self.graph = graph
        self.process = process
        self.crew_name = crew_name
        self.inputs = inputs
        self.retry = retry
        self.on_failure = on_failure
        self.clock = current_clock()
        self.now: Callable[[], float] = self.clock.now
        """Seconds on the run's clock (the running loop's time, unless a test swapped it)."""
        # Wall-clock times are derived from the run's clock, so that a timeline's start/end
        # agree with its durations (also on a fake or virtual clock).
        self._wall_origin = (datetime.now(UTC).timestamp(), self.now())
        self.usage = usage or Usage()
        self.status: RunStatus = "pending"
        self.slots = SlotPool(max_concurrency)
        self.durations: Mapping[str, float] = {}
        self.process_reason = f"the crew's process is {process.name!r}"
        self.recorder = recorder
        self.cache = cache
        self.replies: ReplyCache | None = None
        self.restored = list(restored or ())
        self._attempts_before = dict(attempts_before or {})
        self._saved: set[str] = set()
        self.start: datetime | None = None
        self.end: datetime | None = None
        self.duration = 0.0
        self._llm_override = llm_override
        self._llms: dict[str, LLM] = {}
        self._outputs: dict[str, TaskOutput] = {}
        self._failures: dict[str, TaskFailed] = {}
        self._skipped: list[str] = []
        self._records: dict[str, TaskRecord] = {}
        for name, (output, record) in (restored or {}).items():
            self._outputs[name] = output
            self._records[name] = record
            self._saved.add(name)
        self._running: set[str] = set()
        self._stack: AsyncExitStack | None = None
        self._opened: set[int] = set()
        sinks = _capture_sinks.get()
        self._sinks: tuple[EventSink, ...] = (*sinks, on_event) if on_event else sinks
        self.listening = bool(self._sinks)
        self.log = get_logger(verbose=verbose, run_id=self.run_id, crew=crew_name)

    # -- what processes use --------------------------------------------------------------------

    @property
    def outputs(self) -> Mapping[str, TaskOutput]:
        """Outputs of the tasks finished so far, by task name (read-only view)."""
        return MappingProxyType(self._outputs)

    def ended(self, name: str) -> bool:
        """Whether the task called ``name`` finished, failed or was skipped."""
        return name in self._outputs or name in self._failures or name in self._records

    def ready(self) -> list[Task]:
        """Tasks not started whose dependencies have all ended, in declaration order.

        With ``on_failure="continue"``, a task whose dependency failed is ready too:
        executing it records it as skipped.
        """
        graph = self.graph
        return [
            task
            for task, name in zip(graph.tasks, graph.names, strict=True)
            if not self.ended(name)
            and name not in self._running
            and all(self.ended(dep) for dep in graph.dependency_names(name))
        ]

    def add_task(self, task: Task, depends_on: Sequence[Task | str] = ()) -> str:
        """Add a task to this run's graph (not the crew's), e.g. a step of a manager's plan.

        Returns:
            The task's name in this run.
        """
        return self.graph.add_task(task, depends_on)

    async def execute(
        self,
        task: Task,
        *,
        context: Sequence[TaskOutput] | None = None,
        priority: float = 0.0,
        slot: Slot | None = None,
    ) -> TaskOutput | None:
        """Run one task to its output, in a slot: attempts, timeout, fallback, records, events.

        A task that already finished returns its output without running again.

        Args:
            task: A task of this run's graph.
            context: Outputs to give the task instead of its dependencies' outputs.
            priority: When slots are scarce, higher goes first (ties: declaration order).
            slot: A slot the process already took with ``run.slots.try_acquire()``; it is
                released when the task ends.

        Returns:
            The output; ``None`` when, with ``on_failure="continue"``, the task failed or was
            skipped because a task it depends on failed.

        Raises:
            TaskFailed: Every attempt failed (``on_failure="stop"``); carries the outputs
                finished so far.
        """
        try:
            name = self.graph.name_of(task)
            if name in self._running:
                raise RuntimeError(f"task {name!r} is already running in this run")
            if self.ended(name):
                return self._outputs.get(name)
            if context is None:
                context = self._context_or_skip(task, name)
                if context is None:
                    return None
            self._running.add(name)
            try:
                if slot is None:
                    slot = await self.slots.acquire(priority, self.graph.position(name))
                # A slot taken just before a pause does not start its task until the resume.
                await self.slots.unpaused()
                return await self._run_task(task, name, context)
            finally:
                self._running.discard(name)
        finally:
            if slot is not None:
                slot.release()

    async def _run_task(
        self, task: Task, name: str, context: Sequence[TaskOutput]
    ) -> TaskOutput | None:
        description, expected = task.render(self.inputs)
        prompt = task_prompt(description, expected, [(o.task, o.text) for o in context])
        attempts = TaskAttempts(self, task, name, prompt)
        try:
            output = await attempts.run_to_output()
        except TaskFailed as failure:
            await self._save_attempts(name, attempts)
            if self.on_failure == "stop":
                raise
            self._failures[name] = failure
            return None
        if self.recorder is not None:
            await self._checkpoint(output, attempts)
        self._outputs[name] = output
        return output

    async def _checkpoint(self, output: TaskOutput, attempts: TaskAttempts) -> None:
        """Commit a finished task's output and attempts before anything depending on it starts.

        Raises:
            CrewRunError: The store failed; the output stays in the run's outputs.
        """
        assert self.recorder is not None
        try:
            await self.recorder.task_finished(output, attempts.records)
        except CrewflowError as exc:
            self._outputs[output.task] = output
            raise CrewRunError(
                f"task {output.task!r} finished but could not be checkpointed: {exc}",
                outputs=self._outputs,
            ) from exc
        except BaseException:
            # Cancelled while the checkpoint was written (it commits or rolls back as a whole
            # first): the output is finished all the same, and the error must carry it.
            self._outputs[output.task] = output
            self._saved.add(output.task)
            raise
        self._saved.add(output.task)

    async def _save_attempts(self, name: str, attempts: TaskAttempts) -> None:
        """Record the attempts of a task that failed (a failed store write is only logged: the
        run's own error matters more)."""
        if self.recorder is None or not attempts.records:
            return
        self._saved.add(name)
        try:
            await self.recorder.attempts_ended(name, attempts.records)
        except CrewflowError as exc:
            self.log.error("could not record the attempts", task=name, error=str(exc))

    def attempts_before(self, name: str) -> int:
        """How many attempts of task ``name`` earlier runs of this run recorded (a resumed run
        numbers its attempts on from them)."""
        return self._attempts_before.get(name, 0)

    def _context_or_skip(self, task: Task, name: str) -> list[TaskOutput] | None:
        """The dependencies' outputs, or ``None`` after recording the task as skipped."""
        dependencies = self.graph.dependency_names(name)
        blocked = [d for d in dependencies if d in self._failures or d in self._skipped]
        if blocked:
            self._skip(task, name, blocked)
            return None
        waiting = [d for d in dependencies if d not in self._outputs]
        if waiting:
            raise RuntimeError(
                f"process {self.process.name!r} started task {name!r} before its "
                f"dependencies {waiting} finished"
            )
        return [self._outputs[d] for d in dependencies]

    def _skip(self, task: Task, name: str, because: list[str]) -> None:
        self._skipped.append(name)
        agent = self.graph.agent_of(task)
        self.record(TaskRecord(task=name, agent=agent.role, status=TaskStatus.SKIPPED))
        self.log.info("task skipped", task=name, because=because)
        self.publish(events.TaskSkipped, task=name, because=because)

    # -- what the runtime's parts use ----------------------------------------------------------

    def wall(self, now: float | None = None) -> datetime:
        """The time in UTC at ``now`` on the run's clock (default: now)."""
        origin, at = self._wall_origin
        return datetime.fromtimestamp(origin + ((self.now() if now is None else now) - at), UTC)

    def record(self, record: TaskRecord) -> None:
        """Keep a task's timeline record (the last one for a task wins)."""
        self._records[record.task] = record

    async def llm_for(self, agent: Agent) -> LLM:
        """The LLM ``agent`` uses in this run, opened for the rest of the run."""
        llm = self._llms.get(agent.id)
        if llm is None:
            llm = self._llms[agent.id] = self._llm_override or resolve_llm(agent.llm)
        if self._stack is not None and id(llm) not in self._opened:
            self._opened.add(id(llm))
            await self._stack.enter_async_context(llm)
        return llm

    def publish(
        self, kind: type[events.Event], /, *, at: float | None = None, **fields: Any
    ) -> None:
        """Build a ``kind`` event for this run (``at``: its clock time, default now) and send it
        to every listener; nothing is built when nobody listens."""
        if self.listening:
            self.emit(kind(run_id=self.run_id, time=self.now() if at is None else at, **fields))

    def emit(self, event: events.Event) -> None:
        """Send ``event`` to every listener of this run.

        A listener that raises is logged and skipped: watching a run must not break it.
        """
        for sink in self._sinks:
            try:
                sink(event)
            except Exception as exc:
                self.log.warning(
                    "event listener failed",
                    listener=repr(sink),
                    event_kind=event.kind,
                    error=repr(exc),
                )

    def add_sink(self, sink: EventSink) -> None:
        """Send this run's events to ``sink`` from now on."""
        self._sinks = (*self._sinks, sink)
        self.listening = True

    def remove_sink(self, sink: EventSink) -> None:
        """Stop sending events to ``sink``."""
        self._sinks = tuple(s for s in self._sinks if s is not sink)
        self.listening = bool(self._sinks)

    # -- control -------------------------------------------------------------------------------

    def pause(self) -> None:
        """Start no new task until `resume`; tasks in flight finish.

        Works before the run has begun too (``crew.start()`` then ``pause()`` at once).
        """
        if self.status not in ("pending", "running"):
            return
        self.slots.pause()
        self.status = "paused"
        self._control_event(events.RunPaused)

    def resume(self) -> None:
        """Start tasks again after `pause`."""
        if self.status != "paused":
            return
        self.status = "running"
        self.slots.resume()
        self._control_event(events.RunResumed)

    def set_concurrency(self, limit: int | None) -> None:
        """Change how many tasks may run at once, while running."""
        self.slots.set_capacity(limit)
        self.log.info("concurrency changed", max_concurrency=limit)

    def _control_event(self, kind: type[events.RunPaused | events.RunResumed]) -> None:
        self.log.info(kind.__name__)
        self.publish(kind)

    # -- the run as a whole --------------------------------------------------------------------

    @property
    def timeline(self) -> list[TaskRecord]:
        """Every task's record, in declaration order (tasks that never started: pending)."""
        return [
            self._records.get(name)
            or TaskRecord(
                task=name,
                agent=self.graph.agent_of(task).role,
                status=TaskStatus.RUNNING if name in self._running else TaskStatus.PENDING,
            )
            for task, name in zip(self.graph.tasks, self.graph.names, strict=True)
        ]

    async def drive(self) -> None:
        """Open the LLM clients, let the process run every task, and close the clients.

        Raises:
            CrewRunError: The run failed; ``.outputs`` holds every output that finished
                (`CrewPartialFailure` when ``on_failure="continue"`` and some tasks failed).
            ConfigurationError: A client could not be opened (e.g. a missing API key).
        """
        if isinstance(self.clock, SystemClock):
            # The loop's own clock, without looking the loop up on every reading.
            self.now = asyncio.get_running_loop().time
        self.status = "paused" if self.slots.paused else "running"
        self.start = self.wall()
        began = self.now()
        self.log.info("run started", process=self.process.name, tasks=len(self.graph))
        self.publish(
            events.RunStarted,
            crew=self.crew_name,
            process=self.process.name,
            tasks=len(self.graph),
            at=began,
        )
        try:
            if self.recorder is not None:
                await self.recorder.started(self.start, self.process_reason)
                await self._measured_durations()
            async with AsyncExitStack() as stack:
                self._stack = stack
                try:
                    for agent in self._all_agents():
                        await self.llm_for(agent)
                    await self.process.run(self)
                finally:
                    self._stack = None
            self._check_complete()
        except BaseException as exc:
            error = self._as_run_error(exc)
            self._finish("cancelled" if error is None else "failed", began, error)
            await self._record_end()
            if error is None or error is exc:
                raise
            # Not "from exc": an error out of a group keeps its own cause (TaskFailed -> LLMError).
            raise error  # noqa: B904
        self._finish("completed", began, None)
        await self._record_end()

    async def _measured_durations(self) -> None:
        """Give a process that orders tasks by duration what earlier runs of this version of
        the crew measured (only worth a read when slots are scarce)."""
        assert self.recorder is not None
        if not self.process.uses_durations or self.slots.capacity is None:
            return
        from crewflow.optimizer import expected_durations

        record = self.recorder.record
        try:
            with real_work():
                self.durations = await expected_durations(
                    self.recorder.store, record.crew, fingerprint=record.fingerprint
                )
        except CrewflowError as exc:
            self.log.warning("could not read measured durations", error=str(exc))

    async def _record_end(self) -> None:
        """Record the attempts not recorded yet (tasks cancelled in flight) and how the run
        ended; shielded from the cancellation that may be ending it."""
        recorder = self.recorder
        if recorder is None or self.end is None:
            return
        import anyio

        with anyio.CancelScope(shield=True), anyio.move_on_after(_RECORD_END_TIMEOUT):
            try:
                for name, record in self._records.items():
                    if name not in self._saved and record.attempts:
                        await recorder.attempts_ended(name, record.attempts)
                await recorder.finished(self.status, self.end, self.usage)
            except CrewflowError as exc:
                # The outputs are checkpointed already; a run record left "running" is the
                # only loss, and the caller's result or error matters more.
                self.log.error("could not record the end of the run", error=str(exc))

    def _all_agents(self) -> list[Agent]:
        """Every agent the run may need, fallbacks included, so clients open before any task."""
        agents = {agent.id: agent for agent in self.graph.agents}
        for task in self.graph.tasks:
            if task.fallback_agent is not None:
                agents.setdefault(task.fallback_agent.id, task.fallback_agent)
        return list(agents.values())

    def _check_complete(self) -> None:
        missing = [name for name in self.graph.names if not self.ended(name)]
        if missing:
            raise CrewRunError(
                f"process {self.process.name!r} returned without running {missing}",
                outputs=self._outputs,
            )
        if self._failures:
            failed = ", ".join(self._failures)
            skipped = (
                f"; skipped because of them: {', '.join(self._skipped)}" if self._skipped else ""
            )
            raise CrewPartialFailure(
                f"{len(self._failures)} task(s) failed: {failed}{skipped}. Every other task ran; "
                "the finished outputs are in .outputs and each failure in .failures",
                failures=self._failures,
                skipped=self._skipped,
                outputs=self._outputs,
            )

    def _as_run_error(self, exc: BaseException) -> CrewflowError | None:
        """The error kickoff raises for ``exc`` (``None``: let a cancellation through)."""
        leaves = _leaves(exc)
        for leaf in leaves:
            if isinstance(leaf, CrewRunError):
                self._attach(leaf)
                return leaf
        for leaf in leaves:
            if isinstance(leaf, CrewflowError):
                return leaf
        for leaf in leaves:
            if isinstance(leaf, Exception):
                error = CrewRunError(
                    f"process {self.process.name!r} failed: {type(leaf).__name__}: {leaf}",
                    outputs=self._outputs,
                )
                error.__cause__ = leaf
                self._attach(error)
                return error
        return None

    def _attach(self, error: CrewRunError) -> None:
        """What a failed run leaves: every finished output, the timeline, the usage."""
        error.outputs = MappingProxyType(dict(self._outputs))
        error.run_id = self.run_id
        error.timeline = self.timeline
        error.usage = self.usage.copy()

    def _finish(self, status: RunStatus, began: float, error: BaseException | None) -> None:
        self.status = status
        self.end = self.wall()
        self.duration = self.now() - began
        # A failed task was already logged as an error and the caller gets the exception:
        # the run's own line stays at INFO so a failure is not reported twice.
        self.log.info(
            "run finished",
            status=status,
            duration=round(self.duration, 3),
            error=None if error is None else f"{type(error).__name__}: {error}",
        )
        self.publish(
            events.RunFinished,
            status=status,
            duration=self.duration,
            error=None if error is None else str(error),
        )


_RECORD_END_TIMEOUT = 30.0
"""Seconds the end of a run may wait for the store (e.g. another process's write lock)."""


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]
