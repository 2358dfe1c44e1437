"""`Run`: one execution of a crew, and the per-task layer of the runtime.

A process decides what runs and in what order; a `Run` decides how. ``execute(task)`` is the one
place that runs a task: it gathers the context, renders the prompt, hands the agent a managed LLM,
makes attempts under the retry policy and the task's timeout, records the timeline and usage, and
emits events. All state here belongs to this run; two kickoffs of one crew share nothing mutable.
"""

from __future__ import annotations

import itertools
from contextlib import AsyncExitStack
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from crewflow import events
from crewflow._logging import get_logger
from crewflow._prompts import task_prompt
from crewflow._runtime.calls import AttemptState, ManagedLLM
from crewflow._runtime.clock import current_clock
from crewflow._runtime.records import AttemptRecord, TaskRecord, TaskStatus
from crewflow._spec import new_id
from crewflow.exceptions import CrewflowError, CrewRunError, LLMError, TaskFailed, TaskTimeout
from crewflow.llm._models import resolve_llm
from crewflow.llm._types import Usage
from crewflow.task import TaskOutput

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from crewflow._runtime.retry import RetryPolicy
    from crewflow.agent import Agent, AgentAnswer
    from crewflow.events import EventSink
    from crewflow.graph import TaskGraph
    from crewflow.llm._base import LLM
    from crewflow.processes import Process
    from crewflow.task import Task

__all__ = ["Run", "capture_sink"]

RunStatus = Literal["pending", "running", "completed", "failed", "cancelled"]

_capture_sinks: ContextVar[tuple[EventSink, ...]] = ContextVar("crewflow_sinks", default=())


def capture_sink(sink: EventSink) -> object:
    """Send the events of every run started in this context to ``sink`` too; returns a token
    for `release_sink`."""
    return _capture_sinks.set((*_capture_sinks.get(), sink))


def release_sink(token: object) -> None:
    """Undo a `capture_sink`."""
    _capture_sinks.reset(token)  # type: ignore[arg-type]


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Run:
    """One execution of a crew: what processes are written against.

    Attributes:
        run_id: This run's id.
        graph: The validated task graph.
        process: The process driving the run.
        inputs: The kickoff inputs (a private copy).
        usage: Requests, tokens and cost so far, over every task and attempt.
        status: ``pending``, ``running``, ``completed``, ``failed`` or ``cancelled``.
    """

    def __init__(
        self,
        *,
        graph: TaskGraph,
        process: Process,
        crew_name: str,
        inputs: Mapping[str, Any],
        retry: RetryPolicy,
        llm_override: LLM | None = None,
        on_event: EventSink | None = None,
        verbose: bool = False,
        run_id: str | None = None,
    ) -> None:
        self.run_id = run_id or new_id()
        self.graph = graph
        self.process = process
        self.crew_name = crew_name
        self.inputs = inputs
        self.retry = retry
        self.clock = current_clock()
        self.usage = Usage()
        self.status: RunStatus = "pending"
        self.start: datetime | None = None
        self.end: datetime | None = None
        self.duration = 0.0
        self._llm_override = llm_override
        self._llms: dict[str, LLM] = {}
        self._outputs: dict[str, TaskOutput] = {}
        self._records: dict[str, TaskRecord] = {}
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

    def ready(self) -> list[Task]:
        """Tasks not started yet whose dependencies have all finished, in declaration order."""
        done, running = self._outputs, self._running
        return [
            task
            for task, name in zip(self.graph.tasks, self.graph.names, strict=True)
            if name not in done
            and name not in running
            and name not in self._records
            and all(dep in done for dep in self.graph.dependency_names(name))
        ]

    def add_task(self, task: Task, depends_on: Sequence[Task | str] = ()) -> str:
        """Add a task to this run's graph (not the crew's), e.g. a step of a manager's plan.

        Returns:
            The task's name in this run.
        """
        name = self.graph.add_task(task, depends_on)
        agent = self.graph.agent_of(task)
        if agent.id not in self._llms:
            self._llms[agent.id] = self._resolve(agent)
        return name

    async def execute(
        self, task: Task, *, context: Sequence[TaskOutput] | None = None
    ) -> TaskOutput:
        """Run one task to its output: attempts, timeout, records, events.

        A task that already finished in this run returns its output without running again.

        Args:
            task: A task of this run's graph.
            context: Outputs to give the task instead of its dependencies' outputs.

        Raises:
            TaskFailed: Every attempt failed; carries the outputs finished so far.
        """
        name = self.graph.name_of(task)
        finished = self._outputs.get(name)
        if finished is not None:
            return finished
        if name in self._running:
            raise RuntimeError(f"task {name!r} is already running in this run")
        if context is None:
            waiting = [d for d in self.graph.dependency_names(name) if d not in self._outputs]
            if waiting:
                raise RuntimeError(
                    f"process {self.process.name!r} started task {name!r} before its "
                    f"dependencies {waiting} finished"
                )
            context = [self._outputs[d] for d in self.graph.dependency_names(name)]
        agent = self.graph.agent_of(task)
        description, expected = task.render(self.inputs)
        prompt = task_prompt(description, expected, [(o.task, o.text) for o in context])
        self._running.add(name)
        try:
            await self._open(self._llms[agent.id])
            return await self._attempts(task, name, agent, prompt)
        finally:
            self._running.discard(name)

    # -- the per-task layer --------------------------------------------------------------------

    async def _attempts(self, task: Task, name: str, agent: Agent, prompt: str) -> TaskOutput:
        llm = self._llms[agent.id]
        records: list[AttemptRecord] = []
        task_usage = Usage()
        first_start = self.clock.now()
        start = _utcnow()
        for number in itertools.count(1):
            state = AttemptState(name, number, llm.model)
            began, began_at = self.clock.now(), _utcnow()
            self.log.info("task started", task=name, agent=agent.role, attempt=number)
            if self.listening:
                self.emit(
                    events.TaskStarted(
                        run_id=self.run_id, time=began, task=name, agent=agent.role, attempt=number
                    )
                )
            try:
                answer = await self._attempt(
                    task, name, agent, prompt, ManagedLLM(llm, self, state)
                )
            except Exception as exc:
                records.append(self._close_attempt(state, began, began_at, exc, task_usage))
                delay = self._retry_delay(exc, number)
                if delay is None:
                    raise self._failed(task, name, agent, records, start, first_start, exc) from exc
                self._retrying(name, agent, number, exc, delay)
                try:
                    await self.clock.sleep(delay)
                except BaseException:
                    self._record(name, agent, TaskStatus.CANCELLED, records, start, first_start)
                    raise
                continue
            except BaseException as exc:
                records.append(self._close_attempt(state, began, began_at, exc, task_usage))
                self._record(name, agent, TaskStatus.CANCELLED, records, start, first_start)
                raise
            records.append(self._close_attempt(state, began, began_at, None, task_usage))
            output = TaskOutput(
                task=name,
                agent=agent.role,
                text=answer.text,
                data=answer.data,
                usage=task_usage,
                model=llm.model,
            )
            self._outputs[name] = output
            self._record(name, agent, TaskStatus.COMPLETED, records, start, first_start)
            self.log.info("task finished", task=name, agent=agent.role, attempt=number)
            if self.listening:
                self.emit(
                    events.TaskFinished(
                        run_id=self.run_id,
                        time=self.clock.now(),
                        task=name,
                        attempt=number,
                        duration=self.clock.now() - first_start,
                        prompt_tokens=task_usage.prompt_tokens,
                        completion_tokens=task_usage.completion_tokens,
                    )
                )
            return output
        raise AssertionError("unreachable")  # pragma: no cover

    async def _attempt(
        self, task: Task, name: str, agent: Agent, prompt: str, llm: ManagedLLM
    ) -> AgentAnswer:
        on_tool = self._tool_observer(name) if self.listening else None
        if task.timeout is None:
            return await agent.run(prompt, llm=llm, output_model=task.output_model, on_tool=on_tool)
        import anyio

        try:
            with anyio.fail_after(task.timeout):
                return await agent.run(
                    prompt, llm=llm, output_model=task.output_model, on_tool=on_tool
                )
        except TimeoutError as exc:
            raise TaskTimeout(
                f"task {name!r} took longer than its timeout of {task.timeout:g} s; raise "
                "Task(timeout=...) or make the task smaller",
                task=name,
                timeout=task.timeout,
            ) from exc

    def _retry_delay(self, error: Exception, failed_attempts: int) -> float | None:
        """Seconds before the next attempt, or ``None`` when the task has failed for good.

        Provider errors were already retried per call (keeping the conversation), so they end
        the task here rather than multiplying attempts.
        """
        policy = self.retry
        if isinstance(error, LLMError) or failed_attempts >= policy.max_attempts:
            return None
        if not policy.should_retry(error):
            return None
        return policy.delay(failed_attempts)

    def _retrying(
        self, name: str, agent: Agent, number: int, error: Exception, delay: float
    ) -> None:
        self.log.warning(
            "task attempt failed, retrying",
            task=name,
            agent=agent.role,
            attempt=number,
            error=f"{type(error).__name__}: {error}",
            delay=round(delay, 3),
        )
        if self.listening:
            self.emit(
                events.TaskRetrying(
                    run_id=self.run_id,
                    time=self.clock.now(),
                    task=name,
                    attempt=number,
                    error=f"{type(error).__name__}: {error}",
                    delay=delay,
                )
            )

    def _failed(
        self,
        task: Task,
        name: str,
        agent: Agent,
        records: list[AttemptRecord],
        start: datetime,
        first_start: float,
        error: Exception,
    ) -> TaskFailed:
        self._record(name, agent, TaskStatus.FAILED, records, start, first_start)
        self.log.error(
            "task failed",
            task=name,
            agent=agent.role,
            attempt=len(records),
            error=f"{type(error).__name__}: {error}",
        )
        if self.listening:
            self.emit(
                events.TaskFailed(
                    run_id=self.run_id,
                    time=self.clock.now(),
                    task=name,
                    attempts=len(records),
                    error_type=type(error).__name__,
                    error=str(error),
                )
            )
        plural = "s" if len(records) > 1 else ""
        return TaskFailed(
            f"task {name!r} failed after {len(records)} attempt{plural}: "
            f"{type(error).__name__}: {error}",
            task=name,
            attempts=len(records),
            cause=error,
            outputs=self._outputs,
        )

    def _close_attempt(
        self,
        state: AttemptState,
        began: float,
        began_at: datetime,
        error: BaseException | None,
        task_usage: Usage,
    ) -> AttemptRecord:
        """Account an ended attempt's usage (task and run) and make its record."""
        task_usage.add(state.usage)
        self.usage.add(state.usage)
        if error is None:
            status = TaskStatus.COMPLETED
        elif isinstance(error, Exception):
            status = TaskStatus.FAILED
        else:
            status = TaskStatus.CANCELLED
        return AttemptRecord(
            number=state.number,
            start=began_at,
            end=_utcnow(),
            duration=self.clock.now() - began,
            status=status,
            error_type=None if error is None else type(error).__name__,
            error=None if error is None else str(error) or type(error).__name__,
            model=state.model,
            usage=state.usage,
            llm_retries=state.llm_retries,
        )

    def _record(
        self,
        name: str,
        agent: Agent,
        status: TaskStatus,
        attempts: list[AttemptRecord],
        start: datetime,
        first_start: float,
    ) -> None:
        self._records[name] = TaskRecord(
            task=name,
            agent=agent.role,
            status=status,
            start=start,
            end=_utcnow(),
            duration=self.clock.now() - first_start,
            attempts=attempts,
        )

    def _tool_observer(self, name: str) -> Any:
        def observe(tool: str, *, ok: bool, duration: float, error: str | None) -> None:
            self.emit(
                events.ToolCalled(
                    run_id=self.run_id,
                    time=self.clock.now(),
                    task=name,
                    tool=tool,
                    ok=ok,
                    duration=duration,
                    error=error,
                )
            )

        return observe

    # -- the run as a whole --------------------------------------------------------------------

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
            CrewRunError: The run failed; ``.outputs`` holds every output that finished.
            ConfigurationError: A client could not be opened (e.g. a missing API key).
        """
        self.status = "running"
        self.start = _utcnow()
        began = self.clock.now()
        self.log.info("run started", process=self.process.name, tasks=len(self.graph))
        if self.listening:
            self.emit(
                events.RunStarted(
                    run_id=self.run_id,
                    time=began,
                    crew=self.crew_name,
                    process=self.process.name,
                    tasks=len(self.graph),
                )
            )
        try:
            async with AsyncExitStack() as stack:
                self._stack = stack
                try:
                    for llm in self._open_llms():
                        await self._open(llm)
                    await self.process.run(self)
                finally:
                    self._stack = None
            self._check_complete()
        except BaseException as exc:
            error = self._as_run_error(exc)
            self._finish("cancelled" if error is None else "failed", began, error)
            if error is None or error is exc:
                raise
            # Not "from exc": an error out of a group keeps its own cause (TaskFailed -> LLMError).
            raise error  # noqa: B904
        self._finish("completed", began, None)

    async def _open(self, llm: LLM) -> None:
        """Open ``llm`` for the rest of the run, once (also for agents of added tasks)."""
        if self._stack is None or id(llm) in self._opened:
            return
        self._opened.add(id(llm))
        await self._stack.enter_async_context(llm)

    def _open_llms(self) -> list[LLM]:
        unique: dict[int, LLM] = {}
        for agent in self.graph.agents:
            llm = self._llms.get(agent.id) or self._resolve(agent)
            self._llms[agent.id] = llm
            unique.setdefault(id(llm), llm)
        return list(unique.values())

    def _resolve(self, agent: Agent) -> LLM:
        return self._llm_override or resolve_llm(agent.llm)

    def _check_complete(self) -> None:
        missing = [name for name in self.graph.names if name not in self._outputs]
        if missing:
            raise CrewRunError(
                f"process {self.process.name!r} returned without running {missing}",
                outputs=self._outputs,
            )

    def _as_run_error(self, exc: BaseException) -> CrewflowError | None:
        """The error kickoff raises for ``exc`` (``None``: let a cancellation through)."""
        leaves = _leaves(exc)
        for leaf in leaves:
            if isinstance(leaf, CrewRunError):
                leaf.outputs = MappingProxyType(dict(self._outputs))
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
                return error
        return None

    def _finish(self, status: RunStatus, began: float, error: BaseException | None) -> None:
        self.status = status
        self.end = _utcnow()
        self.duration = self.clock.now() - began
        # A failed task was already logged as an error and the caller gets the exception:
        # the run's own line stays at INFO so a failure is not reported twice.
        self.log.info(
            "run finished",
            status=status,
            duration=round(self.duration, 3),
            error=None if error is None else f"{type(error).__name__}: {error}",
        )
        if self.listening:
            self.emit(
                events.RunFinished(
                    run_id=self.run_id,
                    time=self.clock.now(),
                    status=status,
                    duration=self.duration,
                    error=None if error is None else str(error),
                )
            )


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]
