"""`Run`: one execution of a crew, and what its process's `ProcessContext` stands on.

A process decides what runs and in what order; a `Run` decides how. ``execute`` is the one place
that runs a task: a scheduling slot, the context, the prompt, then the attempts of
`attempts.TaskAttempts` (retries, timeout, fallback, records, events), then the checkpoint. The
failure policy lives here too: with ``on_failure="continue"`` a failed task returns ``None`` and
every task that depends on it is skipped when its turn comes, so processes need no failure logic
of their own.

The run's graph grows while it runs (`add_tasks`, `ask`): added tasks are recorded as they are
added, and on resume the process is replayed: a task that finished under the same name and spec
hash is restored instead of run. All state here belongs to this run; two kickoffs of one crew
share nothing mutable.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from crewflow import _dag, events
from crewflow._fingerprint import task_hash
from crewflow._logging import get_logger
from crewflow._prompts import task_prompt
from crewflow._records import ProcessChoice, RunStatus, TaskRecord, TaskStatus
from crewflow._runtime.attempts import TaskAttempts
from crewflow._runtime.clock import SystemClock, current_clock, real_work
from crewflow._runtime.context import RunContext
from crewflow._runtime.dispatch import Dispatcher
from crewflow._runtime.limiter import registry
from crewflow._runtime.mapping import find_items, gathered, item_task
from crewflow._runtime.slots import Slot, SlotPool
from crewflow._runtime.state import RunState, with_order
from crewflow._runtime.workflow import call_user, condition_holds, route
from crewflow._spec import new_id
from crewflow.exceptions import (
    CredentialsError,
    CrewChange,
    CrewChanged,
    CrewflowError,
    CrewPartialFailure,
    CrewRunError,
    InvalidPlan,
    LeaseLost,
    LoopLimitReached,
    StateUpdateError,
    StoreError,
    TaskFailed,
    WorkflowError,
)
from crewflow.limits import Limit, Limits
from crewflow.llm._models import resolve_llm
from crewflow.llm._types import Usage
from crewflow.store import AddedTaskRecord, DecisionRecord, History, read_history
from crewflow.store._history import learned_concurrency
from crewflow.task import Task, function_name, takes_state

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence

    from pydantic import BaseModel

    from crewflow._plan import PlanProblem
    from crewflow._records import AttemptRecord, Prediction
    from crewflow._runtime.cache import ReplyCache
    from crewflow._runtime.health import HealthMonitor
    from crewflow._runtime.recording import Recorder, Resumption
    from crewflow.agent import Agent
    from crewflow.events import EventSink, RunHealth
    from crewflow.graph import TaskGraph
    from crewflow.health import HealthPolicy
    from crewflow.llm._base import LLM
    from crewflow.loop import Loop
    from crewflow.processes import Process
    from crewflow.retry import RetryPolicy
    from crewflow.task import TaskOutput

__all__ = ["Run", "capture_sink", "release_sink"]

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
    """One execution of a crew (private: processes see its `RunContext`).

    Attributes:
        run_id: This run's id.
        graph: The validated task graph (this run's own copy, which may grow).
        process: The process driving the run.
        inputs: The kickoff inputs (a private copy).
        usage: Requests, tokens and cost so far, over every task and attempt.
        status: Where the run is (`RunStatus`).
        slots: The run's task slots (``max_concurrency``, pause, resume).
        recorder: Writes the run's records and checkpoints to the crew's store (``None``: no
            store).
        cache: Whether tasks that do not say otherwise reuse cached LLM replies.
        record_prompts: Whether attempts record what their LLM calls sent and got back.
        replies: The reply cache, when some task uses one.
        restored: Tasks whose outputs a resumed run read from the store.
        final: The output the process calls its final one (`Process.final_output`).
        skipped: The tasks skipped, with why.
        state: The crew's shared state as it is now (``None``: the crew has none); each
            finished task's update replaces it with a new object.
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
        record_prompts: bool = True,
        resumption: Resumption | None = None,
        state: BaseModel | None = None,
    ) -> None:
        self.run_id = run_id or new_id()
        self.state = state
        self._state = None if state is None else RunState(state, resumption)
        self.graph = graph
        self.process = process
        self.crew_name = crew_name
        self.inputs = inputs
        self.inputs_view: Mapping[str, Any] = MappingProxyType(dict(inputs))
        self.retry = retry
        self.on_failure = on_failure
        self.clock = current_clock()
        self.now: Callable[[], float] = self.clock.now
        """Seconds on the run's clock (the running loop's time, unless a test swapped it)."""
        # Wall-clock times are derived from the run's clock, so that a timeline's start/end
        # agree with its durations (also on a fake or virtual clock).
        self._wall_origin = (datetime.now(UTC).timestamp(), self.now())
        self.usage = resumption.usage.copy() if resumption else Usage()
        self.status = RunStatus.PENDING
        self.slots = SlotPool(max_concurrency)
        self.recorder: Recorder | None = None
        self.auto_keys: tuple[str, ...] = ()
        """Keys of auto concurrency limits the crew declared: they start from what the store
        learned, unless this process runs them already."""
        self.auto_models = False
        """``Crew(max_concurrency="auto")``: an auto limit on every model without a limit."""
        self.cache = cache
        self.record_prompts = record_prompts
        self.replies: ReplyCache | None = None
        self.health: HealthMonitor | None = None
        """The run's health watch, when someone asked for it (`watch_health`)."""
        self.restored: list[str] = []
        self.final: TaskOutput | None = None
        self.plan: BaseModel | None = None
        self.start: datetime | None = None
        self.end: datetime | None = None
        self.duration = 0.0
        self.running: set[str] = set()
        """Names of the tasks running now."""
        self.unended = len(graph)
        """How many tasks of the graph have not ended."""
        self._resumption = resumption
        self._llm_override = llm_override
        self._llms: dict[str, LLM] = {}
        self._outputs: dict[str, TaskOutput] = {}
        self._failures: dict[str, TaskFailed] = {}
        self.skipped: dict[str, str] = {}
        """The tasks skipped so far, with why (``"condition false"``, ...)."""
        self._unchosen: dict[str, str] = {}  # task -> the router task that did not choose it
        self._route_pending: set[str] = set()  # restored router tasks whose choice is unknown
        self._unsaved: list[DecisionRecord] = []  # skips not yet recorded
        self.owned: set[str] = set()
        """Tasks another task runs itself (a map's items): never dispatched on their own."""
        self._records: dict[str, TaskRecord] = {}
        self._saved: set[str] = set()
        self._dispatcher: Dispatcher | None = None
        self.delegated: dict[str, str] = {}
        """Tasks the process delegated (`delegate`), with the task each ends with."""
        self._waiting_on: dict[str, list[str]] = {}
        self.choice: ProcessChoice | None = None
        """The process a choosing process picked (`choose`), or the one recorded before a
        resume."""
        self._history: History | None = None
        self._paused = False
        self._stack: AsyncExitStack | None = None
        self._opened: set[int] = set()
        sinks = _capture_sinks.get()
        self._sinks: tuple[EventSink, ...] = (*sinks, on_event) if on_event else sinks
        self.listening = bool(self._sinks)
        self.log = get_logger(verbose=verbose, run_id=self.run_id, crew=crew_name)
        # A loop is started by executing its first task; its other tasks end when it does.
        self._loop_heads: dict[str, str] = {}
        self._end_waiters: dict[str, Any] = {}  # task name -> an anyio.Event set when it ends
        for label, (_, members) in graph.loops.items():
            self._loop_heads[members[0]] = label
            self.owned.update(members[1:])
        if resumption is not None:
            for name in graph.deliverables:
                if self._whole_loop_finished(name, resumption):
                    self._restore(name, graph.task(name))
            if self._state is not None:
                self.state = self._state.settle()
            recorded = resumption.record
            if recorded.chosen:
                self.choice = recorded.choice or ProcessChoice(
                    process=recorded.chosen, reason=recorded.process_reason
                )

    # -- what the process context forwards -----------------------------------------------------

    @property
    def outputs(self) -> Mapping[str, TaskOutput]:
        """Outputs of the tasks finished so far, by task name (read-only view)."""
        return MappingProxyType(self._outputs)

    def ended(self, name: str) -> bool:
        """Whether the task called ``name`` ended: finished (its output perhaps still being
        checkpointed), failed, skipped or cancelled. Its dependants wait for `released`."""
        return name in self._outputs or name in self._failures or name in self._records

    def released(self, name: str) -> bool:
        """Whether the dependants of task ``name`` may start: it finished (its checkpoint
        written), failed, or was skipped. A task cancelled (its run is stopping) releases
        nothing until the run, going on, gives it up (`give_up_cancelled`), nor one that
        finished while its checkpoint is still being written."""
        return name in self._outputs or name in self._failures or name in self.skipped

    def is_running(self, name: str) -> bool:
        """Whether the task called ``name`` is running now."""
        return name in self.running

    def ready(self) -> list[Task]:
        """Tasks not started whose dependencies have all finished, failed or been skipped
        (`released`), in graph order (not those delegated to another task)."""
        self.give_up_cancelled()  # the process asks: the run goes on
        graph = self.graph
        return [
            task
            for task, name in zip(graph.tasks, graph.names, strict=True)
            if not self.ended(name)
            and name not in self.running
            and name not in self.delegated
            and name not in self.owned
            and all(self.released(dep) for dep in graph.dependency_names(name))
        ]

    async def execute(
        self,
        name: str,
        *,
        context: Sequence[TaskOutput] | None = None,
        agent: Agent | None = None,
        priority: float = 0,
        slot: Slot | None = None,
        prompt: str | None = None,
    ) -> TaskOutput | None:
        """Run task ``name`` of the graph to its output (see `ProcessContext.execute`).

        Args:
            name: The task's name in the run.
            context: Outputs to give it instead of its dependencies'.
            agent: The agent to do it instead of its own.
            priority: When slots are scarce, higher goes first.
            slot: A slot the dispatcher took already (released when the task ends).
            prompt: The whole user message, instead of the task's rendered one (``ask``).
        """
        output: TaskOutput | None = None
        try:
            if name in self.running:
                self._refuse(name)
            if self.ended(name):
                return self._outputs.get(name)
            if name in self.delegated:
                self._refuse(name)
            if name in self._loop_heads:
                return await self._run_loop(name, slot)
            task = self.graph.task(name)
            if task.condition is not None or self._route_pending:
                context = await self._steered_context(task, name, context)
            elif context is None:
                context = self._context_or_skip(task, name)
            if context is None:  # skipped (or its condition failed): recorded, with why
                await self._save_skips()
            else:
                self.running.add(name)
                try:
                    if task.map_over is not None:
                        output = await self._run_map(task, name, context, slot)
                    else:
                        if slot is None:
                            slot = await self.slots.acquire(priority, self.graph.position(name))
                        # A slot taken just before a pause does not start its task until the
                        # resume.
                        await self.slots.unpaused()
                        output = await self._run_task(task, name, context, agent, prompt)
                finally:
                    self.running.discard(name)
                    if self.ended(name):
                        self._ended(name)
        finally:
            if slot is not None:
                slot.release()
        if name in self._waiting_on:  # tasks delegated to this one end with it
            await self._hand_over(name)
        return output

    def _refuse(self, name: str) -> None:
        """Refuse to start task ``name`` twice, or a task delegated to another (it is running,
        or delegated)."""
        if name in self.running:
            raise RuntimeError(f"task {name!r} is already running in this run")
        if name in self.delegated:
            raise RuntimeError(
                f"task {name!r} is delegated to {self.delegated[name]!r}: it ends when that "
                "task does, and is never executed itself"
            )

    def check_plan(self, tasks: Sequence[Task]) -> list[PlanProblem]:
        """What stops ``tasks`` from being added (see `ProcessContext.check_plan`)."""
        return self.graph.check_tasks(tasks, inputs=self.inputs)

    async def add_tasks(self, tasks: Sequence[Task]) -> list[str]:
        """Add a whole plan to the run (see `ProcessContext.add_tasks`)."""
        return await self._grow(tasks, "task")

    async def ask(
        self,
        key: str,
        agent: Agent,
        prompt: str,
        *,
        output_model: type[BaseModel] | None = None,
    ) -> TaskOutput:
        """One recorded LLM step of the process itself (see `ProcessContext.ask`)."""
        task = Task(prompt, agent=agent, output_model=output_model, name=key, context=[])
        await self._grow([task], "ask")
        output = await self.execute(key, context=(), prompt=prompt)
        if output is None:
            raise self._failures[key]  # on_failure="continue" kept it; a process cannot
        return output

    async def run_ready(self) -> None:
        """Run every task of the graph as its dependencies allow (see
        `ProcessContext.run_ready`)."""
        if self._dispatcher is None:
            durations: Mapping[str, float] = {}
            if self.slots.capacity is not None:  # only then does an order matter
                durations = (await self.history()).task_seconds
            self._dispatcher = Dispatcher(self, durations)
        await self._dispatcher.run_ready()

    async def history(self) -> History:
        """Earlier settled runs of this crew's key (see `ProcessContext.history`)."""
        if self._history is None:
            self._history = History()
            recorder = self.recorder
            if recorder is not None:
                try:
                    with real_work():
                        self._history = await read_history(recorder.store, recorder.record.crew_key)
                except CrewflowError as exc:
                    self.log.warning("could not read the crew's history", error=str(exc))
        return self._history

    async def choose(
        self,
        process: str,
        reason: str,
        *,
        explored: bool = False,
        features: Mapping[str, float] | None = None,
        predictions: Sequence[Prediction] = (),
    ) -> None:
        """Record the process chosen to run the crew (see `ProcessContext.choose`)."""
        choice = ProcessChoice(
            process=process,
            reason=reason,
            explored=explored,
            features=dict(features or {}),
            predictions=list(predictions),
        )
        self.choice = choice
        self.log.info("process chosen", chosen=process, reason=reason, explored=explored)
        self.publish(events.ProcessChosen, process=process, reason=reason)
        if self.recorder is not None:
            await self._store_write("record the process chosen", self.recorder.chosen(choice))

    async def delegate(self, name: str, to: str) -> None:
        """End task ``name`` with task ``to``'s output (see `ProcessContext.delegate`)."""
        graph = self.graph
        for each in (name, to):
            if not graph.has(each):
                raise RuntimeError(
                    f"process {self.process.name!r} delegated {name!r} to {to!r}, but {each!r} "
                    "is not a task of this run: add it with ctx.add_tasks([...]) first"
                )
        if name == to or _dag.reaches(graph.nx, name, to):
            raise RuntimeError(
                f"process {self.process.name!r} delegated {name!r} to {to!r}, which depends on "
                f"{name!r}: {to!r} would wait for it for ever"
            )
        if name in self.running or (
            self.ended(name) and name not in self.delegated and name not in self.restored
        ):
            raise RuntimeError(
                f"process {self.process.name!r} delegated {name!r}, which has already "
                "started: delegate a task before it runs"
            )
        previous = self.delegated.get(name)
        if previous is not None and name in self._waiting_on.get(previous, ()):
            self._waiting_on[previous].remove(name)
        self.delegated[name] = to
        self.publish(events.TaskDelegated, task=name, to=to)
        if self.ended(to):
            await self._take_over(name, to)
        else:
            self._waiting_on.setdefault(to, []).append(name)

    async def _hand_over(self, to: str) -> None:
        """Task ``to`` ended: end the tasks delegated to it."""
        for name in self._waiting_on.pop(to, ()):
            await self._take_over(name, to)

    async def _take_over(self, name: str, to: str) -> None:
        """End (or, delegated again, update) task ``name`` with the end of task ``to``: its
        output, checkpointed under ``name``; skipped if ``to`` failed or was skipped."""
        was_ended = self.ended(name)
        found = self._outputs.get(to)
        if found is None:
            if not was_ended:
                why = "failed" if to in self._failures else "was skipped"
                self._skip(self.graph.task(name), name, [to], f"delegated to {to!r}, which {why}")
                await self._save_skips()
            return
        current = self._outputs.get(name)
        if current is not None and (current.text, current.data) == (found.text, found.data):
            return  # replayed on resume: it already holds this output
        output = found.model_copy(update={"task": name, "usage": Usage()})
        source = self._records.get(to)
        start = source.start if source is not None else None
        end = source.end if source is not None else self.wall()
        self._records[name] = TaskRecord(
            task=name,
            agent=output.agent,
            status=TaskStatus.COMPLETED,
            kind=self.graph.kind(name),
            start=start,
            end=end,
            duration=source.duration if source is not None else 0.0,
        )
        self.skipped.pop(name, None)
        self._outputs[name] = output
        if self.recorder is not None:
            await self._store_write(
                f"checkpoint task {name!r}", self.recorder.task_finished(output, (), at=end)
            )
        self._saved.add(name)
        self.publish(
            events.TaskFinished,
            task=name,
            attempt=0,
            duration=self._records[name].duration,
            prompt_tokens=0,
            completion_tokens=0,
        )
        if not was_ended:
            self._ended(name)

    # -- growing the graph, and replaying it on resume -----------------------------------------

    async def _grow(self, tasks: Sequence[Task], step: Literal["task", "ask"]) -> list[str]:
        """Add ``tasks`` to the graph as a whole, record them, and restore those a resumed run
        finished under the same name and spec."""
        problems = self.graph.check_tasks(tasks, inputs=self.inputs if step == "task" else None)
        if problems:
            listed = "; ".join(f"{p.task}: {p.message}" for p in problems)
            raise InvalidPlan(
                f"process {self.process.name!r} cannot add {len(tasks)} task(s): {listed}",
                problems=problems,
                plan=tasks,
                outputs=self._outputs,
            )
        names = self.graph._extend(tasks, checked=True)
        self.unended += len(names)
        now = self.wall()
        added = []
        for task, name in zip(tasks, names, strict=True):
            agent = self.graph.agent_of(task)
            depends_on = self.graph.dependency_names(name)
            spec = task_hash(name, task, agent, depends_on, self._llm_override)
            added.append(
                AddedTaskRecord(
                    name=name,
                    step=step,
                    agent=agent.role,
                    depends_on=list(depends_on),
                    spec_hash=spec,
                    added=now,
                )
            )
            self.publish(
                events.TaskAdded, task=name, agent=agent.role, step=step, depends_on=depends_on
            )
            self._replay(name, task, spec)
        if self._state is not None:
            self.state = self._state.settle()
        if self.recorder is not None:
            await self._store_write("record the tasks added", self.recorder.tasks_added(added))
        if self._dispatcher is not None:
            self._dispatcher.added(names)
            self.slots.wake()
        return names

    def _replay(self, name: str, task: Task, spec: str) -> None:
        """Restore task ``name`` from the run this one resumes, if it finished there as the
        same task (a different one is `CrewChanged`, or runs again with ``force``)."""
        resumption = self._resumption
        if resumption is None or name not in resumption.outputs:
            return
        recorded = resumption.specs.get(name)
        if recorded is not None and recorded != spec:
            if resumption.force:
                return
            raise CrewChanged(
                f"resuming run {self.run_id!r}, process {self.process.name!r} added task "
                f"{name!r}, which differs from the task recorded under that name (its "
                "description, agent, model, dependencies or output model)",
                run_id=self.run_id,
                action="run it again",
                changes=[CrewChange("changed", name)],
            )
        self._restore(name, task)

    def _restore(self, name: str, task: Task) -> None:
        assert self._resumption is not None
        found = self._resumption.restore(name, task, self.graph.kind(name))
        if found is None:
            return
        self._outputs[name], self._records[name] = found
        if self._state is not None:
            self._state.restored(name, found[0])
        self._saved.add(name)
        self.restored.append(name)
        self.unended -= 1
        if task.router is not None:
            recorded = self._recorded(f"router:{name}")
            if recorded is not None and isinstance(recorded.value, list):
                self._apply_route(name, [str(each) for each in recorded.value])
            else:
                self._route_pending.add(name)
        self.publish(events.TaskRestored, task=name)

    def attempts_before(self, name: str) -> int:
        """How many attempts of task ``name`` earlier runs of this run recorded (a resumed run
        numbers its attempts on from them)."""
        return 0 if self._resumption is None else self._resumption.attempts_before(name)

    # -- running one task ----------------------------------------------------------------------

    async def _run_task(
        self,
        task: Task,
        name: str,
        context: Sequence[TaskOutput],
        agent: Agent | None,
        prompt: str | None,
    ) -> TaskOutput | None:
        agent = agent or self.graph.agent_of(task)
        if prompt is None:
            description, expected = task.render(self.inputs, self.state)
            pairs = [(o.task, o.text) for o in context]
            prompt = task_prompt(description, expected, pairs)
            # The parts too: each agent's context budget may cut the context outputs.
            attempts = TaskAttempts(
                self,
                task,
                name,
                prompt,
                agent,
                description=description,
                expected=expected,
                context=pairs,
            )
            del pairs  # the attempts hold it, and let it go with them (below)
        else:
            attempts = TaskAttempts(self, task, name, prompt, agent)
        recorder = self.recorder
        try:
            if recorder is None:
                output = await attempts.run_to_output()
            else:
                recorder.task_running(name)
                try:
                    output = await attempts.run_to_output()
                finally:
                    recorder.task_stopped(name)
            if self._state is not None:
                self._update_state(output, attempts)
        except TaskFailed as failure:
            await self._save_attempts(name, attempts)
            if self.on_failure == "stop":
                raise
            self._failures[name] = failure
            return None
        if task.router is not None:
            try:
                await self._route(task, name, output)
            except BaseException:
                if self.recorder is not None:  # finished: kept, whatever the router did
                    import anyio

                    with anyio.CancelScope(shield=True):
                        await self._checkpoint(output, attempts.records)
                self._outputs[name] = output
                raise
        if self.recorder is not None:
            records = attempts.records
            # Only the records wait for the commit: in a wide graph many tasks wait for it at
            # once, and the collector walks whatever they hold (8 % fewer collections of the
            # youngest generation on a 10,000-task DAG).
            del attempts
            await self._checkpoint(output, records)
        self._outputs[name] = output
        return output

    def _update_state(self, output: TaskOutput, attempts: TaskAttempts) -> None:
        """Apply a finished task's update to the state, at once (no await between reading and
        writing it), and put its order on the attempts the checkpoint writes.

        Raises:
            TaskFailed: The update failed (`StateUpdateError`); the state is as it was.
        """
        assert self._state is not None
        try:
            number = self._state.apply(output)
        except StateUpdateError as exc:
            raise attempts.failed(exc) from exc
        if number is not None:
            with_order(attempts.records, number)
            self.state = self._state.current
            record = self._records.get(output.task)
            if record is not None:  # the timeline shows the attempts as they are stored
                self._records[output.task] = record.model_copy(
                    update={"attempts": tuple(attempts.records)}
                )

    async def _checkpoint(self, output: TaskOutput, records: Sequence[AttemptRecord]) -> None:
        """Commit a finished task's output and the ``records`` of its attempts before anything
        depending on it starts.

        Raises:
            CrewRunError: The store failed; the output stays in the run's outputs.
        """
        assert self.recorder is not None
        try:
            await self.recorder.task_finished(output, records)
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
            await self.recorder.attempts_ended(attempts.records)
        except CrewflowError as exc:
            self.log.error("could not record the attempts", task=name, error=str(exc))

    async def _store_write(self, what: str, write: Awaitable[None]) -> None:
        """Await a record's write; a store that fails it fails the run, with every output."""
        try:
            await write
        except CrewflowError as exc:
            raise CrewRunError(f"could not {what}: {exc}", outputs=self._outputs) from exc

    def _context_or_skip(self, task: Task, name: str) -> list[TaskOutput] | None:
        """The dependencies' outputs, or ``None`` after recording the task as skipped: a
        dependency failed, a required one was skipped, or a router did not choose it."""
        dependencies = self.graph.dependency_names(name)
        outputs = self._outputs
        if self._failures or self.skipped or self._unchosen:  # else none of them can be
            router = self._unchosen.get(name)
            if router is not None:
                self._skip(task, name, [router], f"not chosen by the router of {router!r}")
                return None
            failed = [d for d in dependencies if d in self._failures]
            if failed:
                self._skip(task, name, failed, f"needs {_listed(failed)}, which failed")
                return None
            optional = self.graph.optional_dependencies(name)
            missing = [d for d in dependencies if d in self.skipped and d not in optional]
            if missing:
                # A skipped task recorded cancelled was given up (`give_up_cancelled`).
                cancelled = all(self._records[d].status is TaskStatus.CANCELLED for d in missing)
                why = "cancelled" if cancelled else "skipped"
                self._skip(task, name, missing, f"needs {_listed(missing)}, which was {why}")
                return None
        context = [outputs[d] for d in dependencies if d in outputs]
        if len(context) < len(dependencies):
            waiting = [d for d in dependencies if d not in outputs and d not in self.skipped]
            if waiting and self.give_up_cancelled():
                return self._context_or_skip(task, name)  # skipped, needing what was cancelled
            if waiting:
                raise RuntimeError(
                    f"process {self.process.name!r} started task {name!r} before its "
                    f"dependencies {waiting} finished"
                )
        return context

    async def _steered_context(
        self, task: Task, name: str, context: Sequence[TaskOutput] | None
    ) -> Sequence[TaskOutput] | None:
        """The context of task ``name`` when a condition or a router's pending choice has a
        say: the routes of its restored routers decided, then its dependencies' outputs (or
        ``None``: skipped), then its condition."""
        if context is None:
            if self._route_pending:
                await self._settle_routes(name)
            context = self._context_or_skip(task, name)
        if context is not None and task.condition is not None:
            context = await self._if_condition(task, name, context)
        return context

    async def _if_condition(
        self, task: Task, name: str, context: Sequence[TaskOutput]
    ) -> Sequence[TaskOutput] | None:
        """``context`` if task ``name``'s condition holds (as recorded, on a resume), else
        ``None`` after recording the task as skipped; a condition that fails fails the task."""
        key = f"condition:{name}"
        recorded = self._recorded(key)
        if recorded is not None and isinstance(recorded.value, bool):
            holds = recorded.value
        else:
            self.running.add(name)  # nobody starts it twice while its condition runs
            try:
                holds = await condition_holds(task, name, self.outputs, self.state)
            except WorkflowError as error:
                self.running.discard(name)
                self._fail_unstarted(task, name, error)
                return None
            finally:
                self.running.discard(name)
            await self._decide(key, "condition", name, holds)
        if holds:
            return context
        self._skip(task, name, [], "condition false")
        return None

    def _fail_unstarted(
        self, task: Task, name: str, error: BaseException, *, end: bool = True
    ) -> None:
        """Task ``name`` fails before any attempt of its own (its condition failed, its map's
        list could not be read, items of its map failed): raised as `TaskFailed` with
        ``on_failure="stop"``, else kept as a failure (``end``: and the task ended here)."""
        self.log.error("task failed", task=name, error=str(error))
        self.record(
            TaskRecord(
                task=name,
                agent=self.graph.agent_of(task).role,
                status=TaskStatus.FAILED,
                kind=self.graph.kind(name),
            )
        )
        failure = TaskFailed(
            f"task {name!r} failed: {error}",
            task=name,
            attempts=0,
            cause=error,
            outputs=self._outputs,
        )
        failure.__cause__ = error
        if self.on_failure == "stop":
            raise failure
        self._failures[name] = failure
        if end:
            self._ended(name)

    async def _route(self, task: Task, name: str, output: TaskOutput) -> None:
        """Let task ``name``'s router choose among its dependants, from its output, and record
        the choice (before the output is checkpointed: a restored router task has its choice on
        record)."""
        chosen = await route(self.graph, name, output, self.state)
        await self._decide(f"router:{name}", "router", name, chosen)
        self._apply_route(name, chosen)

    def _apply_route(self, name: str, chosen: Sequence[str]) -> None:
        """Skip, when their turn comes, the branches of task ``name``'s router not in
        ``chosen``: the tasks a mapping router maps to, or every dependant of a function
        router's task."""
        routes = self.graph.routes(name)
        branches = self.graph.dependant_names(name) if routes is None else set(routes.values())
        for dependant in branches:
            if dependant in chosen:
                if self._unchosen.get(dependant) == name:
                    del self._unchosen[dependant]
            else:
                self._unchosen[dependant] = name
        self.log.info("router chose", task=name, chosen=list(chosen))

    async def _settle_routes(self, name: str) -> None:
        """Decide, now, the routes of the restored router tasks task ``name`` depends on whose
        choice was not on record (a store that keeps no decisions)."""
        for dependency in self.graph.dependency_names(name):
            if dependency in self._route_pending:
                self._route_pending.discard(dependency)
                task = self.graph.task(dependency)
                await self._route(task, dependency, self._outputs[dependency])

    def _recorded(self, key: str) -> DecisionRecord | None:
        """The decision recorded under ``key`` by the run this one resumes, if any."""
        resumption = self._resumption
        return None if resumption is None else resumption.decisions.get(key)

    async def _decide(
        self, key: str, kind: Any, task: str, value: Any, *, reason: str = ""
    ) -> None:
        """Record a decision before anything acts on it."""
        if self.recorder is None:
            return
        decision = DecisionRecord(
            key=key, kind=kind, task=task, value=value, reason=reason, at=self.wall()
        )
        await self._store_write("record a decision", self.recorder.decided([decision]))

    async def _run_map(
        self, task: Task, name: str, context: Sequence[TaskOutput], slot: Slot | None
    ) -> TaskOutput | None:
        """Run map task ``name``: an added task per item, then its output from theirs, in item
        order. Items run at most ``max_concurrency`` at once when the dispatcher started the
        map (it gave ``slot``), one at a time when a process executed it itself; each takes a
        slot of the crew's, and the map gives back the one it was started in."""
        dispatched = slot is not None
        if slot is not None:
            slot.release()
        began = self.now()
        items = await self._map_items(task, name)
        if items is None:
            return None
        names: list[str] = []
        if items:
            needs = [output.task for output in context]
            made = [item_task(task, name, i, item, needs) for i, item in enumerate(items)]
            names = await self._grow(made, "task")
            self.owned.update(names)
        limit = task.max_concurrency if dispatched else 1
        if limit == 1:
            for each in names:
                await self.execute(each)
        else:
            import anyio

            limiter = anyio.CapacityLimiter(limit) if limit else None

            async def one(each: str) -> None:
                if limiter is None:
                    await self.execute(each)
                else:
                    async with limiter:
                        await self.execute(each)

            async with anyio.create_task_group() as group:
                for each in names:
                    group.start_soon(one, each)
        agent = self.graph.agent_of(task).role
        failed = [each for each in names if each in self._failures]
        if failed:
            shown = _listed(failed[:3]) + (", ..." if len(failed) > 3 else "")
            cause = WorkflowError(
                f"{len(failed)} of the {len(names)} items of map {name!r} failed: {shown}",
                task=name,
                step="map",
                function=repr(task.map_over) if isinstance(task.map_over, str) else "map_over",
            )
            cause.__cause__ = self._failures[failed[0]]
            self._fail_unstarted(task, name, cause, end=False)
            return None
        output = gathered(name, agent, [self._outputs[each] for each in names])
        end = self.wall()
        duration = self.now() - began
        self.record(
            TaskRecord(
                task=name,
                agent=agent,
                status=TaskStatus.COMPLETED,
                kind=self.graph.kind(name),
                start=self.wall(began),
                end=end,
                duration=duration,
            )
        )
        if self.recorder is not None:
            await self._store_write(
                f"checkpoint task {name!r}", self.recorder.task_finished(output, (), at=end)
            )
        self._saved.add(name)
        self._outputs[name] = output
        self.publish(
            events.TaskFinished,
            task=name,
            attempt=0,
            duration=duration,
            prompt_tokens=output.usage.prompt_tokens,
            completion_tokens=output.usage.completion_tokens,
        )
        return output

    async def _map_items(self, task: Task, name: str) -> list[Any] | None:
        """The items map task ``name`` runs over: as recorded, on a resume; else read (and cut
        to ``max_items``), then recorded. ``None``: they could not be read (the task failed)."""
        key = f"map:{name}"
        recorded = self._recorded(key)
        if recorded is not None and isinstance(recorded.value, list):
            return recorded.value
        try:
            items = await find_items(self.graph, name, self.outputs, self.state)
        except WorkflowError as error:
            self._fail_unstarted(task, name, error, end=False)
            return None
        cut = ""
        if task.max_items is not None and len(items) > task.max_items:
            cut = f"cut from {len(items)} items to max_items={task.max_items}"
            self.log.warning("map cut", task=name, items=len(items), max_items=task.max_items)
            items = items[: task.max_items]
        await self._decide(key, "map", name, items, reason=cut)
        return items

    async def _save_skips(self) -> None:
        """Record the skips not recorded yet (what they say is never acted on: a resumed run
        works out its skips again)."""
        unsaved, self._unsaved = self._unsaved, []
        if self.recorder is not None and unsaved:
            await self._store_write("record the tasks skipped", self.recorder.decided(unsaved))

    def give_up_cancelled(self) -> bool:
        """End for good the tasks whose execution the process cancelled while the run went on
        (a deadline of its own, say): they count as skipped, and their dependants, released,
        are skipped in turn when their turn comes. Whether there were any.

        Called where the process goes on (it asks for what is ready, or executes a dependant;
        the dispatcher, woken, finds nothing else to do), and does nothing when the caller is
        being cancelled itself (`_unwinding`): a task cancelled because the run is stopping
        releases nothing (see `released`).
        """
        if self._unwinding():
            return False
        cancelled = [
            name
            for name, record in self._records.items()
            if record.status is TaskStatus.CANCELLED
            and name not in self.skipped
            and name not in self._outputs
            and name not in self._failures
            and name not in self.running
        ]
        for name in cancelled:
            reason = f"cancelled by process {self.process.name!r} while the run went on"
            self._skipped(name, reason)
            self.log.info("task given up", task=name, reason=reason)
            self.publish(events.TaskSkipped, task=name, because=[], reason=reason)
            if self._dispatcher is not None:
                self._dispatcher.ended(name)
        return bool(cancelled)

    @staticmethod
    def _unwinding() -> bool:
        """Whether the caller is being cancelled: ``task.cancel()`` was called on it (a
        ``crew.start()`` handle's `cancel`, ``asyncio.timeout``), or a cancel scope around it
        was cancelled or is past its deadline, the cancellation not delivered yet."""
        import anyio

        task = asyncio.current_task()
        if task is not None and task.cancelling():
            return True
        return anyio.current_effective_deadline() <= anyio.current_time()

    def _skip(self, task: Task, name: str, because: list[str], reason: str) -> None:
        """Record task ``name`` as skipped, with why (``because``: the tasks that made it)."""
        agent = self.graph.agent_of(task)
        self.record(
            TaskRecord(
                task=name,
                agent=agent.role,
                status=TaskStatus.SKIPPED,
                kind=self.graph.kind(name),
            )
        )
        self._skipped(name, reason)
        self._ended(name)
        self.log.info("task skipped", task=name, because=because, reason=reason)
        self.publish(events.TaskSkipped, task=name, because=because, reason=reason)

    def _skipped(self, name: str, reason: str) -> None:
        """Count task ``name`` as skipped, with why, and keep the decision to record."""
        self.skipped[name] = reason
        if self.recorder is not None:
            self._unsaved.append(
                DecisionRecord(
                    key=f"skip:{name}", kind="skip", task=name, reason=reason, at=self.wall()
                )
            )

    def _ended(self, name: str) -> None:
        """Task ``name`` ended: one fewer to wait for, and its dependants may be ready."""
        self.unended -= 1
        if self._dispatcher is not None:
            # A task cancelled (its run is stopping) releases none of its dependants: they
            # would find no output to read, and a dispatcher not yet cancelled would start them.
            if self.released(name):
                self._dispatcher.ended(name)
            self.slots.wake()
        if self._end_waiters:
            waiter = self._end_waiters.pop(name, None)
            if waiter is not None:
                waiter.set()

    async def _wait_ended(self, names: Iterable[str]) -> None:
        """Wait until every task of ``names`` has ended."""
        import anyio

        for name in names:
            while not self.ended(name):
                waiter = self._end_waiters.get(name)
                if waiter is None:
                    waiter = self._end_waiters[name] = anyio.Event()
                await waiter.wait()

    # -- loops ---------------------------------------------------------------------------------

    def _whole_loop_finished(self, name: str, resumption: Resumption) -> bool:
        """Whether task ``name`` may be restored: it is in no loop, or every task of its loop
        finished (a loop that stopped between its tasks' checkpoints runs its last round's
        end again, from its rounds' own checkpoints)."""
        label = self.graph.loop_of(name)
        if label is None:
            return True
        return all(member in resumption.outputs for member in self.graph.loops[label][1])

    async def _run_loop(self, head: str, slot: Slot | None) -> TaskOutput | None:
        """Run the loop whose first task is ``head``, round after round, then end its tasks with
        the last round's outputs. The loop holds no slot: its rounds' tasks take their own."""
        if slot is not None:
            slot.release()
        label = self._loop_heads[head]
        loop, members = self.graph.loops[label]
        self.running.add(head)
        try:
            await self._wait_ended(
                dict.fromkeys(
                    dep
                    for member in members
                    for dep in self.graph.dependency_names(member)
                    if dep not in members
                )
            )
            spent, rounds = 0, 0
            names: list[str] = []
            while True:
                rounds += 1
                names = await self._loop_round(members, rounds, names)
                outputs: dict[str, TaskOutput] = {}
                for member, each in zip(members, names, strict=True):
                    output = await self.execute(each)
                    if output is None:  # failed or skipped (on_failure="continue")
                        why = "failed" if each in self._failures else "was skipped"
                        for task in members:
                            reason = f"loop {label!r} stopped: {each!r} {why}"
                            self._skip(self.graph.task(task), task, [each], reason)
                        await self._save_skips()
                        return None
                    outputs[member] = output
                    spent += output.usage.total_tokens
                if await self._loop_done(loop, label, rounds, outputs):
                    break
                spent_all = loop.max_tokens is not None and spent >= loop.max_tokens
                if rounds >= loop.max_rounds or spent_all:
                    if loop.on_limit == "raise":
                        bound = (
                            f"its token budget ({spent} of max_tokens={loop.max_tokens})"
                            if spent_all
                            else f"max_rounds={loop.max_rounds}"
                        )
                        raise LoopLimitReached(
                            f"loop {label!r} reached {bound} after {rounds} round(s) and its "
                            f"predicate never held; raise max_rounds, or say "
                            'on_limit="accept" to take the last round',
                            loop=label,
                            rounds=rounds,
                            last=outputs,
                            outputs=self._outputs,
                        )
                    self.log.warning("loop limit reached", loop=label, rounds=rounds)
                    break
            for member, each in zip(members, names, strict=True):
                await self._take_over(member, each)
        finally:
            self.running.discard(head)
        return self._outputs.get(head)

    async def _loop_round(
        self, members: Sequence[str], number: int, previous: Sequence[str]
    ) -> list[str]:
        """Add round ``number`` of a loop's tasks (``write#2``, ...): each a copy of its task,
        the loop's tasks in its context taken from this round; the first also gets the
        ``previous`` round's outputs."""
        from crewflow.task import optional

        made = []
        for index, member in enumerate(members):
            optional_deps = self.graph.optional_dependencies(member)
            refs: list[Any] = []
            for dep in self.graph.dependency_names(member):
                target = f"{dep}#{number}" if dep in members else dep
                refs.append(optional(target) if dep in optional_deps else target)
            if index == 0:
                refs.extend(each for each in previous if each not in refs)
            made.append(
                self.graph.task(member).model_copy(
                    update={"id": new_id(), "name": f"{member}#{number}", "context": tuple(refs)}
                )
            )
        names = await self._grow(made, "task")
        self.owned.update(names)
        return names

    async def _loop_done(
        self, loop: Loop, label: str, rounds: int, outputs: Mapping[str, TaskOutput]
    ) -> bool:
        """Whether the loop ends after round ``rounds``: as recorded, on a resume; else its
        predicate over the round's outputs (by the loop's task names), recorded."""
        key = f"loop:{label}#{rounds}"
        recorded = self._recorded(key)
        if recorded is not None and isinstance(recorded.value, bool):
            return recorded.value
        until = loop.until
        args = (outputs, self.state) if takes_state(until, "until", "") else (outputs,)
        done = await call_user(until, args, task=label, step="loop", limit=None)
        if not isinstance(done, bool):
            raise WorkflowError(
                f"the predicate {function_name(until)!r} of loop {label!r} returned "
                f"{type(done).__name__}; it returns True (the loop ends) or False (another round)",
                task=label,
                step="loop",
                function=function_name(until),
            )
        await self._decide(key, "loop", label, done)
        return done

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

    def watch_health(
        self, policy: HealthPolicy, on_alert: Callable[[events.RunHealthChanged], Any] | None
    ) -> HealthMonitor:
        """Judge the run's health from its events from now on (before it starts), calling
        ``on_alert`` on each change; returns the watch (the same one when called again)."""
        from crewflow._runtime.health import HealthMonitor

        if self.health is None:
            self.health = HealthMonitor(
                run_id=self.run_id,
                policy=policy,
                clock=self.clock,
                now=lambda: self.now(),
                emit=self.emit,
                limit_keys=lambda: {llm.model: llm.limit_key for llm in self._llms.values()},
                log=self.log,
                on_alert=on_alert,
                record=self._record_health,
            )
            self.add_sink(self.health)
        return self.health

    async def _record_health(self, health: RunHealth) -> None:
        """Record a change of the run's health with the run (when it has a store)."""
        if self.recorder is not None:
            await self.recorder.health_changed(health, at=self.wall(health.time))

    # -- control -------------------------------------------------------------------------------

    def pause(self) -> None:
        """Start no new task until `resume`; tasks in flight finish.

        Works before the run has begun too (``crew.start()`` then ``pause()`` at once).
        """
        if self.status not in (RunStatus.PENDING, RunStatus.RUNNING):
            return
        self.slots.pause()
        self.status = RunStatus.PAUSED
        self._paused = True
        self._control_event(events.RunPaused)

    def resume(self) -> None:
        """Start tasks again after `pause`."""
        if self.status != RunStatus.PAUSED:
            return
        self.status = RunStatus.RUNNING
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
        """Every task's record in graph order (tasks that never started: pending)."""
        graph = self.graph
        return [
            self._records.get(name)
            or TaskRecord(
                task=name,
                agent=graph.agent_of(task).role,
                status=TaskStatus.RUNNING if name in self.running else TaskStatus.PENDING,
                kind=graph.kind(name),
            )
            for task, name in zip(graph.tasks, graph.names, strict=True)
        ]

    async def drive(self) -> None:
        """Open the LLM clients, let the process run every task, and close the clients.

        Raises:
            CrewRunError: The run failed; ``.outputs`` holds every output that finished
                (`CrewPartialFailure` when ``on_failure="continue"`` and some tasks failed).
            CredentialsError: A model has no credentials (nothing was recorded or announced),
                or its provider refused them before any task finished.
            ConfigurationError: A client could not be opened (e.g. litellm is missing).
        """
        if isinstance(self.clock, SystemClock):
            # The loop's own clock, without looking the loop up on every reading.
            self.now = asyncio.get_running_loop().time
        began: float | None = None
        try:
            async with AsyncExitStack() as stack:
                self._stack = stack
                try:
                    # Before the run is announced or recorded: a client that cannot open (a
                    # missing API key) leaves no run behind.
                    for agent in self._all_agents():
                        await self.llm_for(agent)
                    if self.auto_models:
                        self._declare_auto()
                    recorder = self.recorder
                    if recorder is not None and recorder.resuming:
                        # Before the run is announced: a resume refused (RunInProgress) must
                        # leave the run to the process that executes it, untouched.
                        await recorder.take_over(watched=self.health is not None)
                    now = self.now()
                    if recorder is not None and not recorder.resuming:
                        # Before the run is announced too: a store that cannot record it (a
                        # corrupt, locked or read-only file) fails the kickoff with its own
                        # error, and no end is recorded for a run the store never held.
                        await recorder.started(self.wall(now), watched=self.health is not None)
                    began = self._started(now)
                    if self.auto_keys:
                        await self._learn_concurrency()
                    await self._keeping_lease(self._run_process)
                finally:
                    self._stack = None
                    self._dispatcher = None
            self._check_complete()
        except BaseException as exc:
            if began is None:
                # Nothing was recorded or announced: the caller sees the error as it is.
                if isinstance(exc, Exception):
                    self.status = RunStatus.FAILED
                raise
            error = self._as_run_error(exc)
            status = RunStatus.CANCELLED if error is None else RunStatus.FAILED
            self._finish(status, began, error)
            await self._record_end()
            if error is None or error is exc:
                raise
            # Not "from exc": an error out of a group keeps its own cause (TaskFailed -> LLMError).
            raise error  # noqa: B904
        self._finish(RunStatus.COMPLETED, began, None)
        await self._record_end()

    def _declare_auto(self) -> None:
        """Put an auto concurrency limit on each model of the run that has no limit yet."""
        limits = registry()
        keys = []
        for llm in {id(llm): llm for llm in self._llms.values()}.values():
            if not limits.declared(llm.limit_key, llm.model):
                keys.append(llm.limit_key)
        if keys:
            limits.configure(Limits({key: Limit(concurrency="auto") for key in keys}))
        self.auto_keys = tuple(dict.fromkeys((*self.auto_keys, *keys)))

    async def _learn_concurrency(self) -> None:
        """Start the crew's auto concurrency limits from what earlier clean runs learned."""
        limits = registry()
        keys = [key for key in self.auto_keys if limits.concurrency(key) is None]
        if not keys or self.recorder is None:
            return
        try:
            learned = await learned_concurrency(self.recorder.store, keys)
        except StoreError as exc:
            self.log.warning("could not read what earlier runs learned", error=str(exc))
            return
        for key, level in learned.items():
            change = limits.learn(key, level)
            if change is not None:
                self.publish(
                    events.ConcurrencyChanged,
                    at=change.time,
                    key=key,
                    old=change.old,
                    new=change.new,
                    reason="learned",
                )

    def _started(self, began: float) -> float:
        """Mark the run started at ``began`` on the run's clock (log, `RunStarted` event);
        returns ``began``."""
        self.status = RunStatus.PAUSED if self.slots.paused else RunStatus.RUNNING
        self.start = self.wall(began)
        self.log.info("run started", process=self.process.name, tasks=len(self.graph))
        self.publish(
            events.RunStarted,
            crew=self.crew_name,
            process=self.process.name,
            tasks=len(self.graph),
            at=began,
        )
        return began

    async def _run_process(self) -> None:
        """Let the process run every task (the LLM clients are open)."""
        # Made here, not kept: a run that held its context (or its dispatcher) would be a
        # reference cycle, and each run's outputs would wait for the garbage collector to be
        # freed.
        context = RunContext(self)
        if self.health is None:
            await self.process.run(context)
        else:
            await self.health.watch(lambda: self.process.run(context))
        self.final = self.process.final_output(context)
        self.plan = self.process.result_plan(context)

    async def _keeping_lease(self, body: Callable[[], Awaitable[None]]) -> None:
        """Await ``body`` while the recorder renews the run's lease in the background, paused
        or not; ``body``'s error comes out as it was raised, not wrapped in a group."""
        recorder = self.recorder
        if recorder is None:
            await body()
            return
        import anyio

        failure: BaseException | None = None
        try:
            async with anyio.create_task_group() as renewing:
                renewing.start_soon(recorder.keep_lease, self.log)
                try:
                    await body()
                except anyio.get_cancelled_exc_class():
                    raise
                except BaseException as exc:  # raised below as it is
                    failure = exc
                finally:
                    renewing.cancel_scope.cancel()
        except* LeaseLost as group:
            # Another process took the run over while this one stalled: stop running tasks.
            lost = group.exceptions[0]
            raise CrewRunError(f"the run stopped: {lost}", outputs=self._outputs) from lost
        if failure is not None:
            raise failure

    async def _record_end(self) -> None:
        """Record the attempts not recorded yet (tasks cancelled in flight) and how the run
        ended; shielded from the cancellation that may be ending it."""
        recorder = self.recorder
        if recorder is None or self.end is None:
            return
        import anyio

        recorded = False
        with anyio.CancelScope(shield=True), anyio.move_on_after(_RECORD_END_TIMEOUT):
            try:
                for name, record in self._records.items():
                    if name not in self._saved and record.attempts:
                        await recorder.attempts_ended(record.attempts)
                await self._save_skips()
                await recorder.finished(self.status, self.end, self.usage, paused=self._paused)
                recorded = True
            except LeaseLost as exc:
                # The run is another process's now: its record is that process's to end.
                self.log.warning("the end of the run is not recorded", error=str(exc))
            except CrewflowError as exc:
                # The outputs are checkpointed already; a run record left "running" is the
                # only loss, and the caller's result or error matters more.
                self.log.error("could not record the end of the run", error=str(exc))
        if not recorded:
            # Else the run would read as executed by this process until its lease expires,
            # and a resume here, once the store works again, would be refused meanwhile.
            recorder.abandoned()

    def _all_agents(self) -> list[Agent]:
        """Every agent the run may need, fallbacks and the process's own (a manager) included,
        so clients open before any task."""
        agents = {agent.id: agent for agent in self.graph.agents}
        own = self.process.default_agent()
        if own is not None:
            agents.setdefault(own.id, own)
        for task in self.graph.tasks:
            if task.fallback_agent is not None:
                agents.setdefault(task.fallback_agent.id, task.fallback_agent)
        return list(agents.values())

    def _check_complete(self) -> None:
        self.give_up_cancelled()  # those nothing needed: the process has returned
        missing = [name for name in self.graph.names if not self.ended(name)]
        if missing:
            raise CrewRunError(
                f"process {self.process.name!r} returned without running {missing}",
                outputs=self._outputs,
            )
        if self._failures:
            failed = ", ".join(self._failures)
            skipped = (
                f"; skipped because of them: {', '.join(self.skipped)}" if self.skipped else ""
            )
            raise CrewPartialFailure(
                f"{len(self._failures)} task(s) failed: {failed}{skipped}. Every other task ran; "
                "the finished outputs are in .outputs and each failure in .failures",
                failures=self._failures,
                skipped=list(self.skipped),
                outputs=self._outputs,
            )

    def _as_run_error(self, exc: BaseException) -> CrewflowError | None:
        """The error kickoff raises for ``exc`` (``None``: let a cancellation through)."""
        leaves = _leaves(exc)
        for leaf in leaves:
            if isinstance(leaf, CrewRunError):
                error = self._refused_at_once(leaf) or leaf
                self._attach(error)
                return error
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

    def _refused_at_once(self, error: CrewRunError) -> CredentialsError | None:
        """The provider's refusal of a key, when that is all that happened: every failed task
        failed on it and no task finished (none restored either). Such a run has nothing to
        resume; its error is the configuration problem, as a missing key's is."""
        if self._outputs:
            return None
        if isinstance(error, TaskFailed):
            causes = [error.cause]
        elif isinstance(error, CrewPartialFailure):
            causes = [failure.cause for failure in error.failures.values()]
        else:
            return None
        refused = [cause for cause in causes if isinstance(cause, CredentialsError)]
        return refused[0] if refused and len(refused) == len(causes) else None

    def _attach(self, error: CrewRunError) -> None:
        """What a failed run leaves: every finished output, the timeline, the usage."""
        error.outputs = MappingProxyType(dict(self._outputs))
        error.run_id = self.run_id
        error.timeline = self.timeline
        error.usage = self.usage.copy()
        error.state = self.state

    def _finish(self, status: RunStatus, began: float, error: BaseException | None) -> None:
        self.status = status
        self.end = self.wall()
        self.duration = self.now() - began
        # A failed task was already logged as an error and the caller gets the exception:
        # the run's own line stays at INFO so a failure is not reported twice.
        self.log.info(
            "run finished",
            status=status.value,
            duration=round(self.duration, 3),
            error=None if error is None else f"{type(error).__name__}: {error}",
        )
        self.publish(
            events.RunFinished,
            status=status.value,
            duration=self.duration,
            error=None if error is None else str(error),
        )


def _listed(names: Sequence[str]) -> str:
    return ", ".join(repr(name) for name in names)


_RECORD_END_TIMEOUT = 30.0
"""Seconds the end of a run may wait for the store (e.g. another process's write lock)."""


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]
