"""Crews: tasks and agents under a process; ``kickoff`` runs them and returns a `CrewResult`.

A `Crew` is a spec, validated when it is constructed (task graph, agents, process). Each kickoff
builds a fresh `Run` for the mutable state of that execution, so one crew can run many times,
even concurrently.
"""

from __future__ import annotations

import json
import operator
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SerializeAsAny,
    field_validator,
    model_validator,
)

from crewflow._caller import CallerModule
from crewflow._records import ProcessChoice, RunStatus, TaskKind, TaskRecord
from crewflow._spec import Spec
from crewflow.agent import Agent
from crewflow.exceptions import ConfigurationError, CrewflowError, KickoffsFailed
from crewflow.limits import Limits
from crewflow.llm._base import LLM  # noqa: TC001 - pydantic needs it at runtime
from crewflow.llm._types import Usage
from crewflow.processes import Process, get_process
from crewflow.retry import RetryPolicy
from crewflow.task import Task, TaskOutput, function_name

if TYPE_CHECKING:
    from pathlib import Path

    # Not at runtime: networkx loads when a crew is built, not on `import crewflow`.
    # Nor the events and health policy: `_bind_field_types` names them for pydantic when the
    # first crew is built (the events' 29 models take about 11 ms to define).
    from crewflow._fingerprint import Fingerprint  # noqa: TC004
    from crewflow._runtime.handle import RunHandle
    from crewflow._runtime.recording import Recorder, Resumption
    from crewflow._runtime.run import Run
    from crewflow.events import Event, RunHealthChanged  # noqa: TC004
    from crewflow.executors import RayExecutor
    from crewflow.graph import TaskGraph  # noqa: TC004
    from crewflow.health import HealthPolicy  # noqa: TC004
    from crewflow.report import Report
    from crewflow.report._notebook import KernelProgress
    from crewflow.store import Store

__all__ = ["Crew", "CrewResult"]

DEFAULT_NAME = "crew"
"""The name of a crew built where there is no file to name it after (a notebook, a REPL,
``python -c``)."""


def _default_name() -> str:
    module = CallerModule.find()
    return module.stem if module is not None else DEFAULT_NAME


class CrewResult(BaseModel):
    """What a kickoff produced.

    Attributes:
        run_id: The run's id (as in logs and events).
        crew: The crew's name.
        process: The process that ran it.
        outputs: The output of each of the crew's tasks (its deliverables), in the order the
            crew declares them.
        internal: The outputs of the tasks the process added while it ran (a manager's plan,
            plan steps, reviews), in the order they were added.
        final_task: The name of the task whose output is the run's final one (`output`).
        usage: Requests, tokens and cost of the whole run.
        timeline: Each task's start, end, attempts, status and kind: the crew's tasks in
            declaration order, then the process's in the order added.
        start: When the run began (UTC).
        end: When it ended (UTC).
        duration: Seconds it took.
        restored: Tasks whose outputs came from the store instead of running (`Crew.resume`).
        skipped: The tasks that did not run, with why (``"condition false"``, ``"not chosen
            by the router of 'triage'"``, ...), in the order they were skipped.
        plan: The plan the run followed, as data, when its process plans (hierarchical: the
            manager's `crewflow.processes.hierarchical.Plan`), else ``None``.
        process_choice: What a choosing process (adaptive) picked, why, what it looked at and
            predicted (`crewflow.processes.ProcessChoice`), else ``None``.
        state: The crew's shared state as the run left it (an instance of the crew's ``state``
            model), else ``None``.

    Example:
        ```python
        result = await crew.kickoff(inputs={"topic": "batteries"})
        result.output.text       # the final answer (by default the last task's)
        result["facts"].text     # any task's, by name (the process's too)
        result.usage.total_tokens
        ```
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True, defer_build=True)

    run_id: str
    crew: str
    process: str
    outputs: list[TaskOutput]
    internal: list[TaskOutput] = Field(default_factory=list)
    final_task: str = ""
    usage: Usage
    timeline: list[TaskRecord]
    start: datetime
    end: datetime
    duration: float
    restored: list[str] = Field(default_factory=list)
    skipped: dict[str, str] = Field(default_factory=dict)
    plan: SerializeAsAny[BaseModel] | None = None
    process_choice: ProcessChoice | None = None
    state: SerializeAsAny[BaseModel] | None = None
    # The run's task graph (its added tasks too) and whether a store recorded the run: what a
    # report needs beyond the timeline.
    _graph: TaskGraph | None = PrivateAttr(default=None)
    _stored: bool = PrivateAttr(default=False)

    @property
    def output(self) -> TaskOutput:
        """The run's final output: what the process calls final (by default the output of the
        crew's last task, by declaration; when that task was skipped, of the last declared
        task that ran).

        Raises:
            LookupError: No task of the crew ran (every one was skipped).
        """
        if self.final_task and self.final_task not in self.skipped:
            return self[self.final_task]
        if not self.outputs:
            raise LookupError(
                f"no task of crew {self.crew!r} ran; skipped: "
                + "; ".join(f"{name} ({why})" for name, why in self.skipped.items())
            )
        return self.outputs[-1]

    @property
    def text(self) -> str:
        """The final answer as text."""
        return self.output.text

    def __getitem__(self, name: str) -> TaskOutput:
        for output in (*self.outputs, *self.internal):
            if output.task == name:
                return output
        if name in self.skipped:
            raise KeyError(f"task {name!r} was skipped ({self.skipped[name]}): it has no output")
        names = [o.task for o in (*self.outputs, *self.internal)]
        raise KeyError(f"no task named {name!r}; tasks: {names}")

    def __contains__(self, name: object) -> bool:
        return any(output.task == name for output in (*self.outputs, *self.internal))

    def __iter__(self) -> Iterator[TaskOutput]:  # type: ignore[override]
        return iter(self.outputs)

    def __len__(self) -> int:
        return len(self.outputs)

    def __str__(self) -> str:
        return self.output.text

    def report(self, path: str | Path | None = None) -> Report:
        """The run's report (`crewflow.Report`), from this result's timeline: no store is read,
        so it works with ``store=None`` (its recommendations then say "no history"; a stored
        run's report, `Report.from_store`, has them).

        Args:
            path: Where to write the report's HTML page, if anywhere.

        Returns:
            The report (``report.html()`` is the page, and it shows itself in a notebook).

        Example:
            ```python
            result = await crew.kickoff()
            result.report("run.html")  # open it in a browser
            ```
        """
        from crewflow.report import Report

        graph = self._graph
        dependencies = {} if graph is None else {n: graph.dependency_names(n) for n in graph.names}
        report = Report.from_result(self, dependencies, stored=self._stored)
        if path is not None:
            report.save(path)
        return report

    def __repr__(self) -> str:
        # Short: asyncio and debuggers repr results, and a full one of a big run is megabytes.
        return (
            f"CrewResult(run_id={self.run_id!r}, crew={self.crew!r}, process={self.process!r}, "
            f"tasks={len(self.outputs)}, duration={self.duration:.3f})"
        )

    def _repr_html_(self) -> str:
        """The run's report, inline in a notebook (`Report._repr_html_`): its summary, its
        Gantt and its outputs, with prompts and tool calls folded."""
        return self.report()._repr_html_()

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))


class Crew(Spec):
    """Agents doing tasks under a process.

    Example:
        ```python
        crew = Crew(tasks=[facts, draft], process="sequential")
        result = await crew.kickoff(inputs={"topic": "sodium batteries"})
        ```

    Args:
        tasks: The tasks, in order. Their ``context`` makes the dependency graph. A `Loop`
            among them stands for its tasks, in its place (they run round after round).
        agents: The crew's agents. Optional: by default, the agents of the tasks. When there is
            exactly one, tasks without an agent get it.
        process: ``"sequential"`` (tasks in list order; a task with undeclared context gets the
            previous output), ``"parallel"`` (each task as soon as its dependencies are done,
            most urgent first, at most ``max_concurrency`` at once), the name of an installed
            plug-in, or a
            `crewflow.processes.Process` subclass or object. ``"hierarchical"`` (a manager
            plans the tasks as steps for the crew's agents, reviews and answers) and
            ``"adaptive"`` (picks sequential or parallel per kickoff from the crew's recorded
            runs) are built in too.
        manager: The manager of a hierarchical crew: an `Agent`, or a model string for the
            catalogue's ``manager`` agent (default: that agent on the default model). Builds
            ``Hierarchical(manager=...)`` for ``process="hierarchical"``, and gives the
            adaptive process its hierarchical candidate.
        name: Names the crew in results, logs and records; ``crewflow runs``, ``crewflow
            optimize`` and `crewflow.optimizer.analyze` tell crews apart by it. Default: the
            file name of the module that builds the crew (``research`` for ``research.py``,
            however it is run: ``python research.py``, ``crewflow run research.py`` or an
            import), followed by the module attribute that holds it when the module holds
            several crews (``research:draft``, settled when the crew first runs, once the
            module has built them all); ``"crew"`` in a notebook, a REPL or ``python -c``.
        max_concurrency: The most tasks running at once, for processes that run several;
            ``"auto"``: no fixed number of tasks, and an auto concurrency limit
            (``Limit(concurrency="auto")``) on every model the crew uses whose limit is not
            declared already (by ``limits`` or `crewflow.set_limits`), which finds the
            provider's capacity by itself.
        verbose: Log progress at INFO level when the application has not configured logging.
        retry: How provider errors and timed-out attempts are retried (a task's own ``retry``
            wins).
        on_failure: ``"stop"`` (cancel everything in flight and raise `TaskFailed`) or
            ``"continue"`` (run what does not depend on the failure, skip its dependants, and
            raise `CrewPartialFailure` with every finished output).
        limits: Concurrency and rate limits per model or group (`crewflow.Limits`), shared
            with every crew of the process that uses the same models or groups.
        on_event: Called with every `crewflow.events.Event` of every run of this crew.
        health: When a run counts as stalled or degraded (`crewflow.HealthPolicy`). Given (or
            with ``on_alert``), every run's health is judged from its events and each change is
            a `crewflow.events.RunHealthChanged` event; runs started with `start` are watched
            under the default policy when none is given. ``None`` and no ``on_alert``: runs
            of `kickoff` are not watched, and pay nothing for it.
        on_alert: Called with each `crewflow.events.RunHealthChanged` of a run (a task
            stalled or moving again, a model's error rate too high, its breaker opening, a
            task retried ``HealthPolicy.retries`` times): a plain function (run in a worker
            thread) or an ``async`` one, given ``HealthPolicy.alert_timeout`` seconds. One
            that raises or hangs is logged and never breaks the run.
        store: Where runs are recorded and checkpointed: ``"default"`` (``CREWFLOW_STORE``
            when set, else ``runs.db`` in ``CREWFLOW_HOME`` or the user data directory), the
            path of a SQLite file (or ``sqlite:///PATH``), a ``postgresql://`` URL (a
            `crewflow.store.PostgresStore`), a `crewflow.store.Store`, or ``None`` to record
            nothing (no resume then).
        cache: Reuse LLM replies to identical calls (a task's own ``cache`` wins); kept in the
            store, or in memory for the run when ``store=None``.
        record_prompts: Record what each LLM call sent and got back on its attempt
            (`AttemptRecord.prompts`, ``crewflow show RUN --prompts``), up to 64 K characters
            a call. ``False`` records none (for prompts that hold data which must not be
            stored); outputs are the same either way, so it is not part of the fingerprint.
        default_inputs: Inputs every kickoff gets unless it gives its own (``kickoff``,
            ``start``, ``kickoff_for_each`` and ``crewflow run --input`` values win), so that a
            crew runs as it is: ``Crew(..., default_inputs={"topic": "batteries"})``.
        state: Shared state (`crewflow.state`): a pydantic model class whose fields all have
            defaults (each kickoff starts from ``state()``), or an instance of one (each
            kickoff starts from a deep copy of it). Tasks read it in their templates
            (``{state.field}``) and update it from their structured outputs: each field an
            output model shares with the state goes through that field's reducer. The final
            state is `CrewResult.state`.

    Raises:
        ConfigurationError: A cycle, unknown context, duplicate names, a task with no agent to
            do it, an unknown process, a state model with fields that have no default, or a
            ``{state.field}`` the state does not have, named in the message with how to fix
            it.
    """

    tasks: tuple[Task, ...]
    loops: tuple[Any, ...] = ()
    """The loops among the tasks (`crewflow.Loop`; ``tasks`` holds their tasks, in their
    place)."""
    agents: tuple[Agent, ...] | None = None
    process: str | Process | type[Process] = "sequential"
    manager: Agent | str | None = None
    name: str = Field(default_factory=_default_name, min_length=1)
    max_concurrency: int | Literal["auto"] | None = None
    verbose: bool = False
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    on_failure: Literal["stop", "continue"] = "stop"
    limits: Limits | None = None
    on_event: Callable[[Event], None] | None = None
    health: HealthPolicy | None = None
    on_alert: Callable[[RunHealthChanged], Any] | None = None
    store: Any = Field(default="default", repr=False)  # a URL may hold a password
    cache: bool = False
    record_prompts: bool = True
    default_inputs: dict[str, Any] = Field(default_factory=dict)
    state: type[BaseModel] | BaseModel | None = None

    _process: Process = PrivateAttr()
    _graph: TaskGraph = PrivateAttr()
    _fingerprint: Fingerprint | None = PrivateAttr(default=None)
    # Where a crew with the default name was built, until its name is settled (`settled_name`).
    _module: CallerModule | None = PrivateAttr(default=None)

    def __init__(self, /, **data: Any) -> None:
        if not type(self).__pydantic_complete__:
            _bind_field_types()
            type(self).model_rebuild()
        super().__init__(**data)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Before pydantic copies this class's fields into the subclass, they must be whole.
        if not Crew.__pydantic_complete__:
            _bind_field_types()
            Crew.model_rebuild()
        super().__init_subclass__(**kwargs)

    @field_validator("max_concurrency", mode="before")
    @classmethod
    def _tasks_at_once(cls, value: Any) -> Any:
        if value is None or value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigurationError(
                f"Crew(max_concurrency={value!r}): give a whole number >= 1 of tasks at once, "
                f"'auto' to let each model's limit find its capacity, or None for no limit"
            )
        return value

    @field_validator("store", mode="before")
    @classmethod
    def _check_store(cls, value: Any) -> Any:
        import os

        from crewflow.store import Store
        from crewflow.store._base import POSTGRES_SCHEMES, store_path

        if value is None or isinstance(value, (Store, os.PathLike)):
            return value
        if isinstance(value, str) and value.startswith(POSTGRES_SCHEMES):
            return value
        if isinstance(value, str) and value.strip():
            store_path(value)  # a URL of an unknown scheme fails here
            return value
        raise ValueError(
            'store must be "default", the path of a SQLite file, a postgresql:// URL, a '
            f"crewflow.store.Store, or None to record nothing, not {value!r}"
        )

    @field_validator("default_inputs")
    @classmethod
    def _check_default_inputs(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key, item in value.items():
            problem = _not_recordable(key, item)
            if problem:
                raise ValueError(f"default {problem}")
        return value

    @field_validator("state", mode="before")
    @classmethod
    def _check_state(cls, value: Any) -> Any:
        if value is None:
            return value
        if isinstance(value, BaseModel):
            _check_reducers(type(value))
            return value
        if not (isinstance(value, type) and issubclass(value, BaseModel)):
            raise ValueError(
                "state must be a pydantic model class (or an instance of one), e.g. "
                f"Crew(..., state=Notes), not {value!r}"
            )
        _check_reducers(value)
        required = [name for name, field in value.model_fields.items() if field.is_required()]
        if required:
            raise ValueError(
                f"every field of the state model {value.__name__} needs a default, since each "
                f"kickoff starts from {value.__name__}(); these have none: {', '.join(required)}"
                f". Give them defaults, or pass an instance: state={value.__name__}(...)"
            )
        return value

    @model_validator(mode="before")
    @classmethod
    def _unroll_loops(cls, data: Any) -> Any:
        """A `Loop` in ``tasks`` stands for its tasks, in its place; it is kept in ``loops``."""
        if not isinstance(data, dict):
            return data
        tasks = data.get("tasks")
        if not isinstance(tasks, (list, tuple)) or all(isinstance(t, Task) for t in tasks):
            return data  # no loop: crewflow.loop is not even loaded
        from crewflow.loop import Loop

        if any(isinstance(t, Loop) for t in tasks):
            loops = [t for t in tasks if isinstance(t, Loop)]
            flat = [each for t in tasks for each in (t.tasks if isinstance(t, Loop) else (t,))]
            data = {**data, "tasks": flat, "loops": (*data.get("loops", ()), *loops)}
        return data

    @field_validator("loops")
    @classmethod
    def _check_loops(cls, value: tuple[Any, ...]) -> tuple[Any, ...]:
        if value:
            from crewflow.loop import Loop

            for loop in value:
                if not isinstance(loop, Loop):
                    raise ValueError(f"loops holds {loop!r}, which is not a crewflow.Loop")
        return value

    @field_validator("tasks", mode="before")
    @classmethod
    def _check_tasks(cls, value: Any) -> Any:
        if isinstance(value, Task) or type(value).__name__ == "Loop":
            raise ValueError("tasks must be a list of tasks, e.g. Crew(tasks=[facts, draft])")
        return value

    def model_post_init(self, context: Any, /) -> None:
        """Validate the process and the task graph (this is where construction errors come
        from)."""
        from crewflow.graph import TaskGraph

        if "name" not in self.model_fields_set:
            self._module = CallerModule.find()
        process = get_process(self.process)
        if self.manager is not None:
            process = process.with_manager(self.manager)
        self._process = process
        if self.state is not None and process.name == "hierarchical":
            raise ConfigurationError(
                "the hierarchical process cannot run a crew with shared state (state=...): a "
                "manager plans the work itself, and how its plan meets the state is not "
                'designed yet. Use process="parallel" or "sequential", or drop state'
            )
        agents = self.agents if self.agents is not None else _task_agents(self.tasks)
        self._graph = TaskGraph(
            self.tasks, agents=agents, default_agent=process.default_agent(), loops=self.loops
        )
        self._process.prepare_graph(self._graph)
        self._process.validate(self._graph)
        self._check_state_references()

    def _check_state_references(self) -> None:
        """Every ``{state.field}`` of a task names a field of the crew's state."""
        model = self.state_model
        graph = self._graph
        # Most crews' templates read no state: one search over all of them, at C speed, says so
        # (this runs at every construction; a loop per task cost 4 % of it at 2,000 tasks).
        tasks = graph.tasks
        if "{state." not in "\0".join(map(_DESCRIPTION, tasks)) + "\0".join(map(_EXPECTED, tasks)):
            return
        for task, name in zip(tasks, graph.names, strict=True):
            fields = task.state_fields
            if not fields:
                continue
            if model is None:
                raise ConfigurationError(
                    f"task {name!r} reads {', '.join(f'{{state.{f}}}' for f in sorted(fields))}"
                    " but the crew has no state: give it one, Crew(..., state=MyState), or "
                    "write {{state.name}} for a literal brace"
                )
            unknown = sorted(fields - model.model_fields.keys())
            if unknown:
                raise ConfigurationError(
                    f"task {name!r} reads "
                    f"{', '.join(f'{{state.{f}}}' for f in unknown)}, which the state model "
                    f"{model.__name__} has no field for; its fields: "
                    f"{', '.join(model.model_fields) or '(none)'}"
                )

    @property
    def state_model(self) -> type[BaseModel] | None:
        """The class of the crew's shared state, or ``None`` when it has none."""
        state = self.state
        if state is None or isinstance(state, type):
            return state
        return type(state)

    def _initial_state(self) -> BaseModel | None:
        """A kickoff's own initial state: nothing mutable is shared with another run."""
        state = self.state
        if state is None:
            return None
        if isinstance(state, type):
            return state()
        return state.model_copy(deep=True)

    @property
    def graph(self) -> TaskGraph:
        """The validated task graph (``crew.graph.to_mermaid()`` draws it)."""
        return self._graph

    def _repr_html_(self) -> str:
        """The crew in a notebook: its dependency graph, its tasks and agents (role, goal,
        model, tools) and its process, in a sandboxed frame."""
        from crewflow.report._notebook import crew_html

        return crew_html(self)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(
            f"Crew(name={self.name!r}, process={self.process_name!r}, "
            f"tasks={len(self._graph.names)}, agents={len(self._graph.members)})"
        )

    @property
    def process_name(self) -> str:
        """The name of the process this crew runs under."""
        return self._process.name

    def __getstate__(self) -> dict[Any, Any]:
        # A pickled crew leaves the module that built it behind: its name is settled first.
        self._settle_name()
        return super().__getstate__()

    def _settle_name(self) -> str:
        """The crew's name, settled: a default name gets the attribute that holds the crew when
        the module that built it holds several crews. Done when the crew first runs (or is
        analysed), by when that module has built them all; the same for every copy."""
        module, self._module = self._module, None
        if module is not None and "name" not in self.model_fields_set:
            attribute = module.attribute_of(self, Crew)
            if attribute is not None:
                # The one change to a built crew: the rest of its default name, known only now.
                object.__setattr__(self, "name", f"{self.name}:{attribute}")
        return self.name

    def resolved_store(self) -> Store | None:
        """The store this crew records its runs in (``None`` when ``store=None``)."""
        from crewflow.store import resolve_store

        return resolve_store(self.store)

    def fingerprint(self, llm: str | LLM | None = None) -> Fingerprint:
        """What the crew's runs compute from, as hashes: one per task (templates, dependencies,
        output schema, agent, model, tools), the process with its configuration, and two
        digests: ``crew_key`` (the tasks alone) and ``digest`` (what `resume` compares).

        Args:
            llm: The model a kickoff makes every agent use, if any.
        """
        from crewflow._fingerprint import fingerprint

        process = self._process
        state = self._state_schema()
        if llm is not None:
            return fingerprint(self._graph, process.name, process.config(), llm, state=state)
        if self._fingerprint is None:
            self._fingerprint = fingerprint(
                self._graph, process.name, process.config(), state=state
            )
        return self._fingerprint

    def _state_schema(self) -> dict[str, Any] | None:
        """What the fingerprint holds of the state: its model's JSON schema, its reducers' names
        and the initial values (a resumed run rebuilds its state from them)."""
        initial = self._initial_state()
        if initial is None:
            return None
        from crewflow.state import reducers_of

        model = type(initial)
        return {
            "schema": model.model_json_schema(),
            "initial": initial.model_dump(mode="json"),
            "reducers": {f: function_name(r) for f, r in reducers_of(model).items()},
        }

    async def resume(
        self,
        run_id: str,
        *,
        force: bool = False,
        llm: str | LLM | None = None,
        progress: bool = True,
    ) -> CrewResult:
        """Finish an earlier run of this crew: re-run only the tasks that had not finished.

        The run keeps its id, inputs and finished outputs (read from the crew's store); its
        record is marked running again, held by this process's lease, and then completed (or
        failed). Works after a crash or a ``kill -9`` (the run reads as ``interrupted``), a
        failure or a cancellation, with every process. A run that completed
        has nothing to resume: its result comes back from the records, which are left as they
        are (to run the crew again, kick it off with the run's inputs).

        Args:
            run_id: The run to finish (`CrewResult.run_id`, ``crewflow runs``).
            force: Resume even if the crew changed since the run was recorded.
            llm: As in `kickoff` (the fingerprint includes it: pass the same one).
            progress: As in `kickoff`.

        Returns:
            The whole run's result; `CrewResult.restored` names the tasks that did not run
            again.

        Raises:
            ConfigurationError: The crew has ``store=None``.
            UnknownRunError: The store has no run ``run_id``.
            RunInProgress: Another process is executing the run (its first run or another
                resume, alive and holding the run's lease); nothing was sent or written.
            CrewChanged: The crew's tasks, agents, models or process differ from the recorded
                ones (``force=True`` to resume anyway).
            CrewRunError: As `kickoff`; with a `LeaseLost` cause when another process took the
                run over while this one stalled.
        """
        from crewflow._runtime.recording import load_resumption

        store = self.resolved_store()
        if store is None:
            raise ConfigurationError(
                "this crew has store=None, so no run of it was recorded; give it a store to "
                "make its runs resumable"
            )
        override = self._override(llm)
        loaded = await load_resumption(
            store, run_id, self.fingerprint(override), self._graph, force=force
        )
        run = self._new_run(loaded.record.inputs, llm, resumption=loaded)
        if loaded.record.status == RunStatus.COMPLETED:
            # Nothing to resume: its result is replayed from the records, which stay as they are.
            run.recorder = None
        return await self._finish_showing(run, _progress(progress))

    async def kickoff(
        self,
        inputs: Mapping[str, Any] | None = None,
        *,
        llm: str | LLM | None = None,
        progress: bool = True,
        run_id: str | None = None,
    ) -> CrewResult:
        """Run the crew to completion.

        Args:
            inputs: Values for the tasks' ``{placeholders}``; must be JSON-serialisable.
            llm: Use this model for every agent in this run instead of their own (what
                ``crewflow run --model`` does).
            progress: In a notebook (an IPython kernel), show the run's progress in the cell,
                updated in place as tasks start and finish. ``False`` shows none. Outside a
                kernel it does nothing.
            run_id: The new run's id (default: a fresh one). Given before the run starts (as
                ``crewflow batch`` does, recording it first), it lets a caller that was killed
                find the run again and resume it; an id the store already holds fails with
                `DuplicateRunError` before anything runs.

        Returns:
            Every task's output, usage and the timeline.

        Raises:
            ConfigurationError: Missing template inputs (all listed), inputs that are not
                JSON-serialisable, or a model that cannot be used (e.g. no API key).
            CrewRunError: The run failed; ``.outputs`` holds every output that finished
                (`TaskFailed` with ``on_failure="stop"``, `CrewPartialFailure` with
                ``"continue"``).
        """
        await _load_runtime()
        run = self._new_run(inputs, llm, run_id=run_id)
        return await self._finish_showing(run, _progress(progress))

    async def _carry_out(
        self, inputs: Mapping[str, Any], run_id: str, llm: str | LLM | None
    ) -> CrewResult:
        """Bring the run ``run_id`` to its end: kick it off under that id when the store has
        no such run yet, else resume it (a completed run's result is read back from its records,
        and nothing runs). What a batch does for each input, first run or resumed."""
        store = self.resolved_store()
        if store is None:
            raise ConfigurationError("a run given its id needs a store; this crew has store=None")
        if await store.get_run(run_id) is None:
            return await self.kickoff(inputs, llm=llm, progress=False, run_id=run_id)
        return await self.resume(run_id, llm=llm, progress=False)

    def start(
        self,
        inputs: Mapping[str, Any] | None = None,
        *,
        llm: str | LLM | None = None,
        progress: bool = True,
    ) -> RunHandle:
        """Start a run in the background of the running event loop and return at once.

        For notebooks and services: pause, resume, cancel, scale and watch the run through the
        handle. ``async with crew.start(...) as handle:`` cancels the run if the block exits
        before it ends.

        Args:
            inputs: As in `kickoff`.
            llm: As in `kickoff`.
            progress: As in `kickoff`: in a notebook, the run's progress shows in the cell that
                started it, updated in place while it runs in the background.

        Raises:
            ConfigurationError: As `kickoff`, or when no event loop is running (use
                `kickoff_sync` in scripts).
        """
        import asyncio

        from crewflow._runtime.handle import RunHandle

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            raise ConfigurationError(
                "start() needs a running event loop (a notebook or an async application); in "
                "a script use crew.kickoff_sync(...)"
            ) from None
        run = self._new_run(inputs, llm)
        from crewflow.health import HealthPolicy

        run.watch_health(self.health or HealthPolicy(), self.on_alert)  # for handle.health()
        view = _progress(progress)
        if view is not None:
            view.expect(run.run_id, self.name, len(run.graph.names))  # in the calling cell
        return RunHandle(run, lambda: self._finish_showing(run, view), html=_run_status_html)

    async def kickoff_for_each(
        self,
        inputs: Sequence[Mapping[str, Any]],
        *,
        concurrency: int | None = None,
        return_exceptions: bool = False,
        llm: str | LLM | None = None,
        progress: bool = True,
        executor: RayExecutor | None = None,
    ) -> list[Any]:
        """Run one kickoff per input, at most ``concurrency`` at once, results in input order.

        Every input is checked before any run starts. Limits, Retry-After pauses and circuit
        breakers are shared by all the runs (they are per model, process-wide).

        Args:
            inputs: One inputs mapping per kickoff.
            concurrency: The most kickoffs running at once (``None``: all of them).
            return_exceptions: Put each failed kickoff's error in its place in the list
                instead of raising.
            llm: As in `kickoff`.
            progress: As in `kickoff`, one display for all the runs, a line each.
            executor: Where the kickoffs run: ``None``, in this process; a
                `crewflow.executors.RayExecutor`, each whole kickoff in a worker of a Ray
                cluster, recording its run in the crew's store (see "Scaling out" in the docs).
                ``llm`` must then be a model string.

        Returns:
            One `CrewResult` per input (or, with ``return_exceptions``, the error).

        Raises:
            KickoffsFailed: Some kickoffs failed (raised once all have ended), carrying every
                result and each failure by input index.
        """
        import anyio

        for index, values in enumerate(inputs):
            try:
                self._check_inputs(values)
            except ConfigurationError as exc:
                raise ConfigurationError(f"inputs[{index}]: {exc}") from None
        if concurrency is not None and concurrency < 1:
            raise ConfigurationError(f"concurrency must be at least 1, not {concurrency}")
        if executor is not None:
            done = await executor.kickoffs(self, inputs, concurrency=concurrency, llm=llm)
            return _gathered(list(done), return_exceptions)
        results: list[Any] = [None] * len(inputs)
        limiter = anyio.CapacityLimiter(concurrency or max(1, len(inputs)))

        view = _progress(progress)

        async def one(index: int, values: Mapping[str, Any]) -> None:
            async with limiter:
                try:
                    await _load_runtime()
                    run = self._new_run(values, llm)
                    results[index] = await self._finish_showing(run, view, close=False)
                except CrewflowError as exc:
                    results[index] = exc

        try:
            async with anyio.create_task_group() as group:
                for index, values in enumerate(inputs):
                    group.start_soon(one, index, values)
        finally:
            if view is not None:
                view.close()
        return _gathered(results, return_exceptions)

    def _override(self, llm: str | LLM | None) -> LLM | None:
        from crewflow.llm._models import check_model, resolve_llm

        return resolve_llm(check_model(llm) if isinstance(llm, str) else llm) if llm else None

    def _new_run(
        self,
        inputs: Mapping[str, Any] | None,
        llm: str | LLM | None,
        *,
        resumption: Resumption | None = None,
        run_id: str | None = None,
    ) -> Run:
        from crewflow._runtime.limiter import registry
        from crewflow._runtime.run import Run

        values = self._check_inputs(inputs)
        override = self._override(llm)
        self._settle_name()
        if self.limits is not None:
            registry().configure(self.limits)
        run = Run(
            graph=self._graph.copy(),
            process=self._process,
            crew_name=self.name,
            inputs=values,
            retry=self.retry,
            on_failure=self.on_failure,
            max_concurrency=None if self.max_concurrency == "auto" else self.max_concurrency,
            llm_override=override,
            on_event=self.on_event,
            verbose=self.verbose,
            cache=self.cache,
            record_prompts=self.record_prompts,
            run_id=run_id if resumption is None else resumption.record.run_id,
            resumption=resumption,
            state=self._initial_state(),
        )
        if self.limits is not None:
            run.auto_keys = tuple(key for key, limit in self.limits.items() if limit.auto)
        run.auto_models = self.max_concurrency == "auto"
        if self.health is not None or self.on_alert is not None:
            from crewflow.health import HealthPolicy

            run.watch_health(self.health or HealthPolicy(), self.on_alert)
        store = self.resolved_store()
        if store is not None:
            run.recorder = self._recorder(store, run, override, resumption)
        if self.cache or any(task.cache for task in self._graph.tasks):
            from crewflow._runtime.cache import ReplyCache

            run.replies = ReplyCache(store)
        return run

    def _recorder(
        self, store: Store, run: Run, override: LLM | None, resumption: Resumption | None
    ) -> Recorder:
        from crewflow._runtime.recording import (
            ASPECTS_KEY,
            Recorder,
            current_source,
            graph_record,
        )
        from crewflow.store import RunRecord

        if resumption is not None:
            return Recorder(store, resumption.record, resuming=True)
        fingerprint = self.fingerprint(override)
        record = RunRecord(
            run_id=run.run_id,
            crew=self.name,
            fingerprint=fingerprint.digest,
            crew_key=fingerprint.crew_key,
            task_hashes=fingerprint.tasks,
            process_config=fingerprint.process_config,
            source=current_source(),
            process=self._process.name,
            process_reason=f"the crew's process is {self._process.name!r}",
            inputs=run.inputs,
            started=run.wall(),
            graph=graph_record(self._graph),
            max_concurrency=None if self.max_concurrency == "auto" else self.max_concurrency,
            details={ASPECTS_KEY: fingerprint.aspects},
        )
        return Recorder(store, record)

    async def _finish_showing(
        self, run: Run, view: KernelProgress | None, *, close: bool = True
    ) -> CrewResult:
        """`_finish`, with ``view`` (a notebook's progress, if any) watching the run's events."""
        if view is None:
            return await self._finish(run)
        run.add_sink(view)
        try:
            return await self._finish(run)
        finally:
            run.remove_sink(view)
            if close:
                view.close()

    async def _finish(self, run: Run) -> CrewResult:
        await run.drive()
        assert run.start is not None
        assert run.end is not None
        graph, outputs = run.graph, run.outputs
        internal = [name for name in graph.names if graph.kind(name) == TaskKind.INTERNAL]
        result = CrewResult(
            run_id=run.run_id,
            crew=self.name,
            process=self._process.name,
            outputs=[outputs[name] for name in graph.deliverables if name in outputs],
            internal=[outputs[name] for name in internal if name in outputs],
            final_task=run.final.task if run.final is not None else graph.deliverables[-1],
            usage=run.usage,
            timeline=run.timeline,
            start=run.start,
            end=run.end,
            duration=run.duration,
            restored=run.restored,
            skipped=dict(run.skipped),
            plan=run.plan,
            process_choice=run.choice,
            state=run.state,
        )
        result._graph, result._stored = graph, run.recorder is not None
        return result

    def kickoff_sync(
        self, inputs: Mapping[str, Any] | None = None, *, llm: str | LLM | None = None
    ) -> CrewResult:
        """`kickoff` for scripts: runs its own event loop, and closes the model clients it made
        before that loop ends.

        Raises:
            ConfigurationError: Called inside a running event loop (a notebook, an async app):
                use ``await crew.kickoff(...)`` there.
        """
        import asyncio
        from functools import partial

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise ConfigurationError(
                "kickoff_sync() cannot run inside a running event loop (a notebook or an async "
                "application); use `await crew.kickoff(...)` there"
            )
        import anyio

        return anyio.run(partial(self._kickoff_and_close, inputs, llm))

    async def _kickoff_and_close(
        self, inputs: Mapping[str, Any] | None, llm: str | LLM | None
    ) -> CrewResult:
        """`kickoff`, then close the clients of this loop (its own: `kickoff_sync` made it)."""
        from crewflow.llm._pool import aclose_loop_clients

        try:
            return await self.kickoff(inputs, llm=llm)
        finally:
            await aclose_loop_clients()

    def _check_inputs(self, inputs: Mapping[str, Any] | None) -> dict[str, Any]:
        if inputs is None:
            inputs = {}
        if not isinstance(inputs, Mapping):
            raise ConfigurationError(
                "inputs must be a mapping of names to values, e.g. {'topic': 'batteries'}, "
                f"not {type(inputs).__name__}"
            )
        if self.default_inputs:
            inputs = {**self.default_inputs, **inputs}
        for key, value in inputs.items():
            problem = _not_recordable(key, value)
            if problem:
                raise ConfigurationError(problem)
        needed = self._graph.placeholders
        missing = sorted(set(needed) - set(inputs))
        if missing:
            detail = "; ".join(f"{name!r} (used by {', '.join(needed[name])})" for name in missing)
            raise ConfigurationError(
                f"missing inputs for the task templates: {detail}. Pass them as "
                "kickoff(inputs={...}), or write {{name}} for a literal brace"
            )
        # A private deep copy: a run must not see later changes to the caller's objects.
        copied: dict[str, Any] = json.loads(json.dumps(dict(inputs)))
        return copied


_DESCRIPTION = operator.attrgetter("description")
_EXPECTED = operator.attrgetter("expected_output")


def _gathered(results: list[Any], return_exceptions: bool) -> list[Any]:
    """``kickoff_for_each``'s results, or `KickoffsFailed` when some failed and the caller did
    not ask for the errors in the list."""
    failures = {i: r for i, r in enumerate(results) if isinstance(r, BaseException)}
    if failures and not return_exceptions:
        first = next(iter(failures.items()))
        raise KickoffsFailed(
            f"{len(failures)} of {len(results)} kickoffs failed (first: inputs[{first[0]}]: "
            f"{first[1]}); every result is in .results and each failure in .failures",
            results=results,
            failures=failures,
        )
    return results


def _check_reducers(model: type[BaseModel]) -> None:
    """Every reducer of the state model ``model`` is a plain (not async) callable: an update is
    applied with no await between reading the state and writing it."""
    import inspect

    from crewflow.state import reducers_of

    for field, reducer in reducers_of(model).items():
        call = getattr(reducer, "__call__", None)  # noqa: B004 - an object's own __call__
        if inspect.iscoroutinefunction(reducer) or inspect.iscoroutinefunction(call):
            raise ValueError(
                f"the reducer {function_name(reducer)} of state field {field!r} is async; a "
                "reducer must be a plain function (current, update) -> new value, since the "
                "state is updated at once when a task finishes"
            )


def _not_recordable(key: object, value: Any) -> str | None:
    """Why the input ``key`` = ``value`` cannot be recorded as it is, or None when it can.

    A run's record is JSON in UTF-8: no NaN or Infinity, and no lone surrogate (which Python
    makes of bytes that are not UTF-8, e.g. from a command line in another encoding).
    """
    if not isinstance(key, str):
        return f"input names must be strings, not {key!r}"
    try:
        json.dumps({key: value}, allow_nan=False, ensure_ascii=False).encode()
    except UnicodeEncodeError as error:
        return (
            f"input {key!r} holds text that is not valid Unicode (a lone surrogate, "
            f"{error.object[error.start : error.end]!r}, often bytes in another encoding than "
            "UTF-8); pass it as UTF-8 text"
        )
    except ValueError:
        return (
            f"input {key!r} holds NaN or Infinity, which JSON (and so the run's record) "
            "cannot hold; pass a finite number, None, or a string such as 'NaN'"
        )
    except TypeError:
        return (
            f"input {key!r} is not JSON-serialisable ({type(value).__name__}); pass "
            "strings, numbers, booleans, None, or lists and dicts of them"
        )
    return None


# What a crew's first kickoff imports that `import crewflow` and building a crew do not.
_RUNTIME_MODULES = (
    "crewflow._runtime.run",
    "crewflow._runtime.recording",
    "crewflow._fingerprint",
    "crewflow.store.sqlite",
)
# The models every kickoff validates whose schemas are built on first use (``defer_build``,
# which keeps `import crewflow` light): module, then class names.
_RUNTIME_MODELS = (
    ("crewflow._fingerprint", ("Fingerprint",)),
    ("crewflow._records", ("AttemptRecord", "PromptRecord", "TaskRecord")),
    ("crewflow.crew", ("CrewResult",)),
    ("crewflow.store._lease", ("Lease", "LeaseOwner")),
    ("crewflow.store._records", ("OutputRow", "RunRecord")),
    ("crewflow.task", ("TaskOutput",)),
)


def _bind_field_types() -> None:
    """Import the types of `Crew`'s fields that `import crewflow` leaves out (the events of its
    hooks, the health policy) and name them in this module, where pydantic looks for them:
    before the first crew is built, or a subclass defined."""
    if "HealthPolicy" in globals():
        return
    from crewflow.events import Event, RunHealthChanged
    from crewflow.health import HealthPolicy

    globals().update(Event=Event, RunHealthChanged=RunHealthChanged, HealthPolicy=HealthPolicy)


def _progress(wanted: bool) -> KernelProgress | None:
    """A notebook's live progress display for a kickoff, or ``None``: when not ``wanted``, or
    outside an IPython kernel (a process that never imported IPython is none, which costs a
    dictionary look-up to tell)."""
    if not wanted or "IPython" not in sys.modules:
        return None
    from crewflow.report._notebook import kernel_progress

    return kernel_progress()


async def _load_runtime() -> None:
    """Import the runtime and build its models' schemas in a worker thread, the first time a
    crew runs in this process.

    About 45 ms of imports (the runtime, the store, sqlite3) and 15-20 ms of schema builds that
    would otherwise hold the event loop, and every other task on it, in one block; in a thread
    the loop runs between the interpreter's switches. Later kickoffs find the modules loaded
    and skip the thread.
    """
    missing = [name for name in _RUNTIME_MODULES if name not in sys.modules]
    if not missing:
        return
    import importlib

    import anyio

    def load() -> None:
        for name in missing:
            importlib.import_module(name)
        for module, names in _RUNTIME_MODELS:
            for name in names:
                getattr(sys.modules[module], name).model_rebuild()

    await anyio.to_thread.run_sync(load)


def _run_status_html(run: Run, status: RunStatus) -> str:
    """A run's status as it is now (``status``: as its handle tells it), for its handle in a
    notebook (the report's escaping templates, imported when a notebook asks)."""
    from crewflow.report._notebook import RunLine, status_html

    ended = run.end is not None and run.start is not None
    line = RunLine(
        run_id=run.run_id,
        crew=run.crew_name,
        status=status.value,
        done=len(run.outputs),
        total=len(run.graph.names),
        running=sorted(run.running),
        tokens=run.usage.total_tokens,
        seconds=run.duration if ended else None,
    )
    return status_html([line])


def _task_agents(tasks: tuple[Task, ...]) -> tuple[Agent, ...]:
    seen: dict[str, Agent] = {}
    for task in tasks:
        if task.agent is not None:
            seen.setdefault(task.agent.id, task.agent)
    return tuple(seen.values())
