"""The one error tree of crewflow.

Every error crewflow raises on purpose is a `CrewflowError`. Developer mistakes are
`ConfigurationError` (raised as early as possible: at construction, else at kickoff); everything
that goes wrong while a crew runs is a `CrewRunError`, which always carries `.outputs`: every task
output that finished before the failure, so that nothing finished is ever lost.

```
CrewflowError
├── ConfigurationError            (also a ValueError) bad specs, templates, models, inputs
│   └── CrewChanged               .run_id, .changes: resume refused, the crew is not the same
├── StoreError                    reading or writing run records failed
│   ├── UnknownRunError           (also a LookupError) .run_id: no run with that id is stored
│   ├── DuplicateRunError         (also a ValueError) .run_id: a run with that id already exists
│   ├── RunInProgress             .run_id, .owner: resume refused, another process executes the run
│   ├── LeaseLost                 .run_id, .owner: another process took the run over; no more writes
│   └── SchemaVersionError        .found, .supported: the database is newer (or, read-only, older)
└── CrewRunError                  .outputs: every TaskOutput that finished, by task name
    ├── TaskFailed                .task, .attempts, .cause: a task failed after all its attempts
    ├── CrewPartialFailure        .failures, .skipped: on_failure="continue" and some tasks failed
    ├── InvalidPlan               .problems, .plan: a process's plan cannot be added to the run
    ├── RunCancelled              the run was cancelled through its handle before it finished
    ├── KickoffsFailed            .results, .failures: some kickoffs of kickoff_for_each failed
    ├── TaskTimeout               (also a TimeoutError) .task, .timeout, .running_tools: too slow
    ├── LLMError                  .model, .status_code, .retryable: a provider call failed
    │   ├── CredentialsError      (also a ConfigurationError) .variables: no key, or a refused one
    │   └── ContextLengthExceeded the request was longer than the model's context window
    ├── ToolError                 .tool: a tool raised (fed back to the model inside the agent loop)
    ├── OutputValidationError     .errors, .reasons: bad output (output_model, or guardrail)
    ├── WorkflowError             .task, .step, .function: a condition, router or map failed
    ├── LoopLimitReached          .loop, .rounds, .last: a loop's bound came before its predicate
    ├── StateUpdateError          .field, .reducer: an output could not update the crew's state
    └── MaxIterationsExceeded     .max_iterations: the agent loop did not reach a final answer
CrewflowWarning                   (also a UserWarning) a likely mistake that still runs
```

Messages say what was wrong and how to fix it; details live in fields, not packed into strings.
`CrewflowWarning` is a warning, not an error: a tool parameter without a type hint, for one.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from datetime import datetime

    from crewflow._plan import PlanProblem
    from crewflow.store._lease import LeaseOwner
    from crewflow.task import Task, TaskOutput

__all__ = [
    "ConfigurationError",
    "ContextLengthExceeded",
    "CredentialsError",
    "CrewChange",
    "CrewChanged",
    "CrewPartialFailure",
    "CrewRunError",
    "CrewflowError",
    "CrewflowWarning",
    "DuplicateRunError",
    "InvalidPlan",
    "KickoffsFailed",
    "LLMError",
    "LeaseLost",
    "LoopLimitReached",
    "MaxIterationsExceeded",
    "OutputValidationError",
    "RunCancelled",
    "RunInProgress",
    "SchemaVersionError",
    "StateUpdateError",
    "StoreError",
    "TaskFailed",
    "TaskTimeout",
    "ToolError",
    "UnknownRunError",
    "WorkflowError",
]

_EMPTY: Mapping[str, TaskOutput] = MappingProxyType({})


class CrewflowWarning(UserWarning):
    """A likely mistake crewflow can run with anyway (filter it with ``warnings`` as usual)."""


class CrewflowError(Exception):
    """Base class of every error crewflow raises on purpose."""

    def __reduce__(self) -> tuple[Any, ...]:
        # The subclasses take keyword-only fields, which Exception's pickling would drop.
        state = dict(self.__dict__)
        if isinstance(state.get("outputs"), MappingProxyType):
            state["outputs"] = dict(state["outputs"])
        return (_rebuild, (type(self), self.args, state))


def _rebuild(cls: type[CrewflowError], args: tuple[Any, ...], state: dict[str, Any]) -> Any:
    error = cls.__new__(cls, *args)
    error.args = args
    if isinstance(state.get("outputs"), dict):
        state["outputs"] = MappingProxyType(state["outputs"])
    error.__dict__.update(state)
    return error


class ConfigurationError(CrewflowError, ValueError):
    """A developer mistake: a bad spec, template, model string, input or process name.

    Raised at construction where possible (`Agent(...)`, `Task(...)`, `Crew(...)`), otherwise at
    the start of `kickoff` (missing template inputs, inputs that are not JSON-serialisable).
    """


@dataclass(frozen=True, slots=True)
class CrewChange:
    """One way a crew differs from the crew a run was recorded with (`CrewChanged.changes`).

    ``str(change)`` says it in a line: ``task 'draft': description, model changed``,
    ``task 'notes' was added``, ``the process changed from 'sequential' to 'parallel'``.

    Attributes:
        kind: ``"added"``, ``"removed"`` or ``"changed"`` (a task), or ``"process"`` (the
            process or its configuration).
        task: The task's name (``None`` for the process, or when the record cannot say which
            task changed).
        aspects: What changed in a changed task, among ``"description"``, ``"expected output"``,
            ``"dependencies"``, ``"output model"``, ``"agent"`` (role, goal, backstory,
            iterations), ``"model"``, ``"tools"`` and ``"fallback agent"``; empty when the
            run's record does not tell (runs recorded by crewflow before it kept them).
        detail: More, in words: the dependencies before and after, what the process was.
    """

    kind: Literal["added", "removed", "changed", "process"]
    task: str | None = None
    aspects: tuple[str, ...] = ()
    detail: str = ""

    def __str__(self) -> str:
        if self.task is None:
            return self.detail
        if self.kind in ("added", "removed"):
            return f"task {self.task!r} was {self.kind}"
        what = f"{', '.join(self.aspects)} changed" if self.aspects else "changed"
        said = f"task {self.task!r}: {what}" if self.aspects else f"task {self.task!r} {what}"
        return f"{said} ({self.detail})" if self.detail else said


class CrewChanged(ConfigurationError):
    """`Crew.resume` refused: the crew's fingerprint (tasks, agents, models, process) is not the
    one recorded for the run, so the saved outputs may not fit it.

    The message names the first few changes and counts the rest; ``changes`` holds them all.

    Attributes:
        run_id: The run that was to be resumed.
        changes: Every difference the record tells (`CrewChange`): each task added, removed or
            changed with what changed in it (its description, agent, model, tools, output model,
            dependencies...), or the process.
        reason: What was refused and why, without the way round it (``force=True``; on the
            command line, ``--force``).
        action: What ``force`` would do, e.g. ``"resume anyway"``.
    """

    def __init__(
        self,
        reason: str,
        *,
        run_id: str,
        changes: Sequence[CrewChange] = (),
        action: str = "resume anyway",
    ) -> None:
        super().__init__(f"{reason}; pass force=True to {action}")
        self.run_id = run_id
        self.changes = list(changes)
        self.reason = reason
        self.action = action


class StoreError(CrewflowError):
    """Something went wrong reading or writing run records."""


class UnknownRunError(StoreError, LookupError):
    """No run with this id is in the store.

    Attributes:
        run_id: The id that was asked for.
    """

    def __init__(self, run_id: str) -> None:
        super().__init__(f"no run {run_id!r} in the store; `crewflow runs` lists the runs it holds")
        self.run_id = run_id


class DuplicateRunError(StoreError, ValueError):
    """A run with this id was already started.

    Attributes:
        run_id: The id that was reused.
    """

    def __init__(self, run_id: str) -> None:
        super().__init__(f"a run {run_id!r} is already in the store; run ids must be unique")
        self.run_id = run_id


class RunInProgress(StoreError):
    """A resume was refused: another process is executing the run (it holds the run's lease,
    and its process is alive), so resuming it now would run its tasks twice.

    Attributes:
        run_id: The run.
        owner: The process executing it (`crewflow.store.LeaseOwner`: host and pid), or
            ``None`` when it already ended the run it took over meanwhile.
        expires: When its lease lapses unless it renews it (``None`` with no owner).
    """

    def __init__(
        self, run_id: str, owner: LeaseOwner | None, expires: datetime | None = None
    ) -> None:
        if owner is None:
            said = (
                f"run {run_id!r} was resumed by another process while this one started to, "
                f"and that one finished it; `crewflow show {run_id}` tells how it ended"
            )
        else:
            until = "" if expires is None else f", at {expires.isoformat(timespec='seconds')}"
            said = (
                f"run {run_id!r} is being executed by another process ({owner}), so resuming "
                "it now would run its tasks twice; wait for that run to end, or stop that "
                f"process: once it is gone (or its lease expires{until} unless renewed), "
                f"`crewflow resume {run_id}` takes the run over"
            )
        super().__init__(said)
        self.run_id = run_id
        self.owner = owner
        self.expires = expires


class LeaseLost(StoreError):
    """A run's record write was refused: the run's lease is no longer this process's (another
    process took the run over after this one stalled, or the run was ended). The run stops.

    Attributes:
        run_id: The run.
        owner: The process that holds the run now, or ``None`` when no process does.
    """

    def __init__(self, run_id: str, owner: LeaseOwner | None) -> None:
        holder = "no process holds it now" if owner is None else f"{owner} holds it now"
        super().__init__(
            f"run {run_id!r} is no longer this process's ({holder}): its lease was taken over "
            "while this process stalled, so it writes no more of the run's records and stops; "
            "the run goes on where it is held"
        )
        self.run_id = run_id
        self.owner = owner


class SchemaVersionError(StoreError):
    """The database was written by a newer crewflow whose schema this version cannot read, or
    by an older one and is opened read-only, which never upgrades it.

    Attributes:
        found: The database's schema version.
        supported: The newest version this crewflow knows.
    """

    def __init__(self, path: str, found: int, supported: int) -> None:
        if found < supported:
            message = (
                f"the run database {path} has schema version {found}, older than this "
                f"crewflow's {supported}, and opened read-only it is not upgraded: open it "
                "writable once (run or resume a crew with it), or read it with the crewflow "
                "that wrote it"
            )
        else:
            message = (
                f"the run database {path} has schema version {found}, but this crewflow only "
                f"knows versions up to {supported}; upgrade crewflow or point CREWFLOW_HOME "
                "elsewhere"
            )
        super().__init__(message)
        self.found = found
        self.supported = supported


class CrewRunError(CrewflowError):
    """A failure while a crew runs.

    Attributes:
        outputs: Every task output that finished before the failure, by task name.
        run_id: The failed run's id (set when the error leaves a kickoff).
        timeline: Every task's record up to the failure (finished, failed, skipped, cancelled,
            pending), as `CrewResult.timeline` would have been.
        usage: Requests and tokens the run spent before it failed.
        state: The crew's shared state when the run failed (``None``: the crew has none).
    """

    def __init__(self, message: str, *, outputs: Mapping[str, TaskOutput] | None = None) -> None:
        super().__init__(message)
        self.outputs: Mapping[str, TaskOutput] = (
            MappingProxyType(dict(outputs)) if outputs else _EMPTY
        )
        self.run_id: str | None = None
        self.timeline: list[Any] = []
        self.usage: Any = None
        self.state: Any = None


class LLMError(CrewRunError):
    """A call to an LLM provider failed.

    Attributes:
        model: The model string of the call (e.g. ``"openai/gpt-4o-mini"``).
        status_code: The HTTP status when the provider answered, else ``None``.
        retryable: Whether retrying the same call may succeed (429, 5xx, timeouts, connection
            errors); the runtime retries these by itself.
        retry_after: Seconds the provider asked to wait before retrying, when it said.
        sent: ``False`` when the request never reached the provider (the connection failed
            before it was sent), so nothing of it was processed or billed.
    """

    def __init__(
        self,
        message: str,
        *,
        model: str,
        status_code: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
        sent: bool = True,
        outputs: Mapping[str, TaskOutput] | None = None,
    ) -> None:
        super().__init__(message, outputs=outputs)
        self.model = model
        self.status_code = status_code
        self.retryable = retryable
        self.retry_after = retry_after
        self.sent = sent


class CredentialsError(LLMError, ConfigurationError):
    """A model cannot be used for want of credentials: no API key is set for it, or its
    provider refused the key (HTTP 401).

    A missing key is found when the run opens its clients, before the run is recorded, so
    nothing is left behind. A key refused on a run's first calls, before any task finished,
    ends the run with this error too (a `ConfigurationError`: ``crewflow run`` exits 2); once
    tasks have finished, a refused key fails its task like any other provider error (a
    `TaskFailed` whose ``cause`` is this error), and the run can be resumed with a valid key.

    Attributes:
        variables: The environment variables that would supply the key, as far as crewflow
            (and LiteLLM) know them, e.g. ``("ANTHROPIC_API_KEY",)``; empty when unknown.
    """

    def __init__(
        self,
        message: str,
        *,
        model: str,
        variables: Sequence[str] = (),
        status_code: int | None = None,
    ) -> None:
        super().__init__(message, model=model, status_code=status_code, retryable=False)
        self.variables = tuple(variables)


class ContextLengthExceeded(LLMError):
    """The provider refused a request for being longer than the model's context window
    (OpenAI's HTTP 400 with code ``context_length_exceeded``, LiteLLM's
    ``ContextWindowExceededError``). Never retryable as it is: the runtime cuts the task's
    context outputs once more and makes one more attempt (see the context budget guide).
    """


class ToolError(CrewRunError):
    """A tool raised, or was called with arguments that do not match its schema.

    Inside the agent loop this is not fatal: the message is sent back to the model as the tool's
    result so that it can correct itself.

    Attributes:
        tool: The tool's name.
    """

    def __init__(self, message: str, *, tool: str) -> None:
        super().__init__(message)
        self.tool = tool


class OutputValidationError(CrewRunError):
    """The model's answer never matched the task's `output_model`, even after re-asking; or
    the task's guardrail rejected every output, after ``guardrail_retries`` rounds.

    Attributes:
        errors: Pydantic's error list of the last attempt (empty for a guardrail).
        text: The last raw answer.
        guardrail: The qualified name of the guardrail that rejected the outputs, or ``None``.
        reasons: Every reason the guardrail gave, in order (one per rejected output).
        output: The last output the guardrail rejected, or ``None``.
    """

    def __init__(
        self,
        message: str,
        *,
        errors: Sequence[Any] = (),
        text: str = "",
        guardrail: str | None = None,
        reasons: Sequence[str] = (),
        output: TaskOutput | None = None,
    ) -> None:
        super().__init__(message)
        self.errors = list(errors)
        self.text = text
        self.guardrail = guardrail
        self.reasons = tuple(reasons)
        self.output = output


class WorkflowError(CrewRunError):
    """What steers the run failed: a task's condition, router or map raised, took longer than
    the task's timeout, or gave something it cannot (a router choosing a task that does not
    depend on its task, a map's list that is not a list), or items of a map failed.

    Attributes:
        task: The name of the task the function belongs to.
        step: ``"condition"``, ``"router"``, ``"map"`` or ``"loop"``.
        function: The function's qualified name (``"'mapping'"`` for a mapping router).
    """

    def __init__(self, message: str, *, task: str, step: str, function: str) -> None:
        super().__init__(message)
        self.task = task
        self.step = step
        self.function = function


class LoopLimitReached(CrewRunError):
    """A loop ran ``max_rounds`` rounds (or spent its ``max_tokens``) and its predicate never
    held, and the loop says ``on_limit="raise"``.

    Attributes:
        loop: The loop's name.
        rounds: How many rounds ran.
        last: The last round's outputs, by the loop's task names.
    """

    def __init__(
        self,
        message: str,
        *,
        loop: str,
        rounds: int,
        last: Mapping[str, TaskOutput] | None = None,
        outputs: Mapping[str, TaskOutput] | None = None,
    ) -> None:
        super().__init__(message, outputs=outputs)
        self.loop = loop
        self.rounds = rounds
        self.last = dict(last or {})


class StateUpdateError(CrewRunError):
    """A task's output could not update the crew's shared state: the field's reducer raised,
    or the state model rejected what it returned (the cause is chained as ``__cause__``).

    Attributes:
        field: The state field.
        reducer: The reducer's name (``replace``, ``append``, ``merge`` or the callable's).
    """

    def __init__(self, message: str, *, field: str, reducer: str) -> None:
        super().__init__(message)
        self.field = field
        self.reducer = reducer


class MaxIterationsExceeded(CrewRunError):
    """The agent loop made `max_iterations` LLM calls without reaching a final answer.

    Attributes:
        max_iterations: The limit that was reached.
    """

    def __init__(self, message: str, *, max_iterations: int) -> None:
        super().__init__(message)
        self.max_iterations = max_iterations


class TaskTimeout(CrewRunError, TimeoutError):
    """One attempt of a task ran longer than the task's `timeout`.

    Attributes:
        task: The task's name.
        timeout: The limit in seconds.
        running_tools: Sync tools whose call was still running in a thread when the attempt
            ended: the threads are abandoned (they run on until the tools return).
    """

    def __init__(
        self, message: str, *, task: str, timeout: float, running_tools: Sequence[str] = ()
    ) -> None:
        super().__init__(message)
        self.task = task
        self.timeout = timeout
        self.running_tools = tuple(running_tools)


class TaskFailed(CrewRunError):
    """A task failed after all its attempts; the crew stopped.

    Attributes:
        task: The failed task's name.
        attempts: How many attempts were made.
        cause: The error of the last attempt (also chained as ``__cause__``).
    """

    def __init__(
        self,
        message: str,
        *,
        task: str,
        attempts: int,
        cause: BaseException,
        outputs: Mapping[str, TaskOutput] | None = None,
    ) -> None:
        super().__init__(message, outputs=outputs)
        self.task = task
        self.attempts = attempts
        self.cause = cause


class CrewPartialFailure(CrewRunError):
    """With ``on_failure="continue"``, some tasks failed; everything else that could run, ran.

    Attributes:
        failures: The `TaskFailed` error of each failed task, by task name.
        skipped: Names of the tasks not run because something they depend on failed.
    """

    def __init__(
        self,
        message: str,
        *,
        failures: Mapping[str, TaskFailed],
        skipped: Sequence[str] = (),
        outputs: Mapping[str, TaskOutput] | None = None,
    ) -> None:
        super().__init__(message, outputs=outputs)
        self.failures = dict(failures)
        self.skipped = list(skipped)


class InvalidPlan(CrewRunError):
    """Tasks a process wanted to add to a running crew (a manager's plan) cannot be added: a
    missing or taken name, an unknown dependency, a cycle, no agent. A run-time failure of the
    process, not a `ConfigurationError`: the crew itself was valid.

    Attributes:
        problems: Each `crewflow.processes.PlanProblem` found (``problem.describe()`` is a line
            to show a model that should plan again).
        plan: The plan: the tasks that were to be added (a list of `crewflow.Task`), or the
            manager's last `crewflow.processes.hierarchical.Plan`.
    """

    def __init__(
        self,
        message: str,
        *,
        problems: Sequence[PlanProblem],
        plan: Sequence[Task] | object = (),
        outputs: Mapping[str, TaskOutput] | None = None,
    ) -> None:
        super().__init__(message, outputs=outputs)
        self.problems = list(problems)
        self.plan: list[Task] | object = list(plan) if isinstance(plan, list | tuple) else plan


class RunCancelled(CrewRunError):
    """The run was cancelled before it finished (``handle.cancel()``); in-flight calls were
    aborted. ``.outputs`` holds what finished before."""


class KickoffsFailed(CrewRunError):
    """Some kickoffs of `Crew.kickoff_for_each` failed; raised once all of them have ended.

    Attributes:
        results: One entry per input, in input order: the `CrewResult`, or the error of that
            kickoff.
        failures: The error of each failed kickoff, by input index.
    """

    def __init__(
        self, message: str, *, results: Sequence[Any], failures: Mapping[int, BaseException]
    ) -> None:
        super().__init__(message)
        self.results = list(results)
        self.failures = dict(failures)
