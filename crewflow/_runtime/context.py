"""`ProcessContext`: the one object a process sees of the run it drives.

A process decides what runs and in what order; everything about *how* (slots, limits, retries,
timeouts, fallbacks, checkpoints, records, events) is the runtime's, behind these members. The
runtime hands each process a `ProcessContext` and nothing else: not the run, not the store, not
a bare LLM client.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from pydantic import BaseModel

    from crewflow._plan import PlanProblem
    from crewflow._records import Prediction, ProcessChoice
    from crewflow._runtime.run import Run
    from crewflow.agent import Agent
    from crewflow.graph import TaskGraph
    from crewflow.store import History
    from crewflow.task import Task, TaskOutput

__all__ = ["ProcessContext", "RunContext"]


class ProcessContext(ABC):
    """What a process sees of one run: read-only views, and the calls that run work.

    **Resume is replay.** A resumed run runs its process again from the start: every `execute`
    and `ask` of a task that already finished returns the recorded output without a request,
    and tasks added with `add_tasks` come back under the same names (each is checked against
    what was recorded under its name, `crewflow.exceptions.CrewChanged` if it differs). So a
    process must be deterministic given those results: choose names and plans from the
    outputs it gets, never from the clock or a random number it does not seed.

    Example:
        ```python
        class Planned(Process):
            name = "planned"

            async def run(self, ctx: ProcessContext) -> None:
                plan = await ctx.ask("plan", planner, "List three steps", output_model=Steps)
                steps = [Task(text, name=f"step.{i}", agent=worker)
                         for i, text in enumerate(plan.data.steps, 1)]
                await ctx.add_tasks(steps)
                await ctx.run_ready()   # the plan's steps and the crew's tasks, as ready
        ```
    """

    __slots__ = ()

    @property
    @abstractmethod
    def graph(self) -> TaskGraph:
        """This run's task graph (read it; grow it only with `add_tasks`): the crew's tasks
        (deliverables) in declaration order, then the tasks the process added (internal)."""

    @property
    @abstractmethod
    def outputs(self) -> Mapping[str, TaskOutput]:
        """The outputs of the tasks finished so far, by task name (a read-only view)."""

    @property
    @abstractmethod
    def inputs(self) -> Mapping[str, Any]:
        """The kickoff inputs (a read-only view)."""

    @property
    @abstractmethod
    def max_concurrency(self) -> int | None:
        """The most tasks this run runs at once (``None``: no bound), as the crew set it."""

    @property
    @abstractmethod
    def chosen(self) -> ProcessChoice | None:
        """The choice `choose` recorded in this run, or, in a resumed run, the one the run
        recorded before it stopped (a choosing process reuses it: no new prediction); ``None``
        when no process chose."""

    @abstractmethod
    def ready(self) -> list[Task]:
        """Tasks not started whose dependencies have all finished, failed or been skipped, in
        graph order.

        With ``on_failure="continue"``, a task whose dependency failed is ready too: executing
        it records it as skipped. A dependency whose output is still being checkpointed, or
        that was cancelled because the run is stopping, keeps its dependants from being ready.
        One whose `execute` the process cancelled while the run goes on is given up (see
        `execute`): its dependants are ready, and executing them records them as skipped.
        """

    @abstractmethod
    async def execute(
        self,
        task: Task,
        *,
        context: Sequence[TaskOutput] | None = None,
        agent: Agent | None = None,
        priority: float = 0,
    ) -> TaskOutput | None:
        """Run one task of the graph to its output, in a slot: attempts, timeout, fallback,
        checkpoint, records, events. A task that already ended returns at once (its output,
        or ``None``).

        Cancelling this call (a deadline of the process's own, say) cancels the task. One
        that had started ends for good: the timeline shows it cancelled, with its attempts,
        and once the process asks for more (`ready`, `execute`, `run_ready`) the run gives it
        up, listing it in `CrewResult.skipped` and skipping its dependants ("needs 'a', which
        was cancelled"). One still waiting for a slot has not started, and may be executed
        again.

        Args:
            task: A task of `graph`.
            context: Outputs to give the task instead of its dependencies' outputs.
            agent: The agent to do it instead of its own.
            priority: When slots are scarce, higher goes first (ties: graph order).

        Returns:
            The output; ``None`` when the task was skipped, or, with
            ``on_failure="continue"``, failed.

        Raises:
            TaskFailed: Every attempt failed (``on_failure="stop"``).
        """

    @abstractmethod
    def check_plan(self, tasks: Sequence[Task]) -> list[PlanProblem]:
        """What stops ``tasks`` from being added as a whole (empty: nothing): a missing or
        taken name, an unknown dependency, a cycle, no agent, a template input the run lacks.
        Each `PlanProblem` has a ``describe()`` line to show a model that should plan again."""

    @abstractmethod
    async def add_tasks(self, tasks: Sequence[Task]) -> list[str]:
        """Add a whole plan to the run: ``internal`` tasks, named by the process (namespaced,
        e.g. ``"research.1"``), depending through their ``context`` on tasks of the graph or of
        the plan. They are recorded as they are added and dispatched by `run_ready`.

        Returns:
            Their names, in order.

        Raises:
            InvalidPlan: `check_plan` found problems (``.problems``); nothing was added.
            CrewChanged: Resuming, a task differs from the one recorded under its name.
        """

    @abstractmethod
    async def ask(
        self,
        key: str,
        agent: Agent,
        prompt: str,
        *,
        output_model: type[BaseModel] | None = None,
    ) -> TaskOutput:
        """One recorded, checkpointed LLM step of the process itself (a plan, a review, an
        answer): an internal task named ``key`` (unique in the run), run at once through the
        runtime's slots, limits, retries and events. ``prompt`` is the whole user message, sent
        as it is (no templates). On resume, a ``key`` that finished returns its recorded output.

        Raises:
            InvalidPlan: ``key`` is taken by another task of the run.
            TaskFailed: Every attempt failed (whatever ``on_failure`` says: a process cannot go
                on without its answer).
        """

    @abstractmethod
    async def delegate(self, task: Task | str, to: Task | str) -> None:
        """Let ``task`` (a crew task, usually) be done by ``to`` (usually a task the process
        added, e.g. the last step of its plan for ``task``): ``task`` is never executed or
        dispatched itself, and ends when ``to`` ends, with ``to``'s output (checkpointed under
        ``task``'s name, no request made), or skipped if ``to`` failed or was skipped.

        Delegating ``task`` again points it at another task (a manager's redo): its output
        becomes the new one's when that ends. If ``to`` has ended already, ``task`` takes its
        output at once (as on resume, when ``to`` was restored).

        Raises:
            RuntimeError: Either is not a task of the run, ``to`` depends on ``task``, or
                ``task`` already started (or ended) on its own.
        """

    @abstractmethod
    async def run_ready(self) -> None:
        """Run every task of the graph as its dependencies allow, until all have ended.

        Dependency-driven, never level by level: a task starts the moment its own dependencies
        have ended and a slot is free. When slots are scarce, the ready task that matters most
        goes first: higher ``Task.priority``, then the longest remaining path to the end of the
        graph (in measured seconds where earlier runs measured them), then graph order. Tasks
        added while it runs are dispatched too; it may be called again after more are added.
        A task started directly with `execute` is never dispatched twice.

        Cancelling it (a deadline of the process's own) cancels the tasks in flight, which are
        given up as a cancelled `execute` is; a later call runs the rest.
        """

    @abstractmethod
    async def history(self) -> History:
        """What the store knows of earlier settled runs of this crew's key (its tasks, agents
        and models, under any process): per process, runs, p50/p95 duration, success rate,
        tokens and cost; per task, the median duration. Read once per run; empty without a
        store."""

    @abstractmethod
    async def choose(
        self,
        process: str,
        reason: str,
        *,
        explored: bool = False,
        features: Mapping[str, float] | None = None,
        predictions: Sequence[Prediction] = (),
    ) -> None:
        """Say which process runs the crew, and why (a choosing process, like adaptive):
        recorded at once with what it looked at and predicted, shown by ``crewflow show``,
        sent as a `ProcessChosen` event, and kept as `chosen` (and
        `CrewResult.process_choice`).

        Args:
            process: The process that will run the crew.
            reason: Why, in one sentence.
            explored: Whether this run tries a candidate to measure it rather than the best.
            features: What the choice looked at (task count, depth, width, ...).
            predictions: Each candidate's `Prediction`.
        """


class RunContext(ProcessContext):
    """The `ProcessContext` of one `Run`: forwards each member to the run, and hides the rest
    of it (its store, its clients, its controls) from the process."""

    __slots__ = ("_run",)

    def __init__(self, run: Run) -> None:
        self._run = run

    def __repr__(self) -> str:
        return f"<ProcessContext of run {self._run.run_id}>"

    @property
    def graph(self) -> TaskGraph:
        return self._run.graph

    @property
    def outputs(self) -> Mapping[str, TaskOutput]:
        return self._run.outputs

    @property
    def inputs(self) -> Mapping[str, Any]:
        return self._run.inputs_view

    @property
    def max_concurrency(self) -> int | None:
        return self._run.slots.capacity

    @property
    def chosen(self) -> ProcessChoice | None:
        return self._run.choice

    def ready(self) -> list[Task]:
        return self._run.ready()

    async def execute(
        self,
        task: Task,
        *,
        context: Sequence[TaskOutput] | None = None,
        agent: Agent | None = None,
        priority: float = 0,
    ) -> TaskOutput | None:
        name = self._name(task, "executed")
        return await self._run.execute(name, context=context, agent=agent, priority=priority)

    def check_plan(self, tasks: Sequence[Task]) -> list[PlanProblem]:
        return self._run.check_plan(tasks)

    async def add_tasks(self, tasks: Sequence[Task]) -> list[str]:
        return await self._run.add_tasks(tasks)

    async def ask(
        self,
        key: str,
        agent: Agent,
        prompt: str,
        *,
        output_model: type[BaseModel] | None = None,
    ) -> TaskOutput:
        return await self._run.ask(key, agent, prompt, output_model=output_model)

    async def delegate(self, task: Task | str, to: Task | str) -> None:
        await self._run.delegate(self._name(task, "delegated"), self._name(to, "delegated to"))

    async def run_ready(self) -> None:
        await self._run.run_ready()

    async def history(self) -> History:
        return await self._run.history()

    async def choose(
        self,
        process: str,
        reason: str,
        *,
        explored: bool = False,
        features: Mapping[str, float] | None = None,
        predictions: Sequence[Prediction] = (),
    ) -> None:
        await self._run.choose(
            process, reason, explored=explored, features=features, predictions=predictions
        )

    def _name(self, task: Task | str, doing: str) -> str:
        """The name of ``task`` in the run (a name is taken as it is: the run checks it)."""
        run = self._run
        if isinstance(task, str):
            return task
        if task not in run.graph:
            raise RuntimeError(
                f"process {run.process.name!r} {doing} {task!r}, which is not a task of this "
                "run: add it with ctx.add_tasks([...]) first"
            )
        return run.graph.name_of(task)
