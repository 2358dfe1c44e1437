"""What a run records: how runs and tasks end, each finished attempt, each task's timeline line.

One model per concept, used unchanged by the runtime (which builds them), the result's
timeline, the store (which keeps them as JSON) and the CLI (which shows them).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, JsonValue

from crewflow._usage import Usage

__all__ = [
    "AttemptRecord",
    "Prediction",
    "ProcessChoice",
    "RunStatus",
    "TaskKind",
    "TaskRecord",
    "TaskStatus",
]


class RunStatus(StrEnum):
    """Where a run is. A store keeps ``running`` until the run ends as ``completed``,
    ``failed`` or ``cancelled``; ``pending`` and ``paused`` are seen on a live run's handle.

    ``interrupted`` is never written: a store reports it for a run recorded ``running`` that
    nothing executes any more, because its lease lapsed (its process was killed, or its host
    stopped renewing it: see `crewflow.store.Lease`). `Crew.resume` finishes it, as it
    finishes a failed run."""

    PENDING = "pending"
    """Started in the background (`Crew.start`) but not yet running."""
    RUNNING = "running"
    """Running, under a lease its process renews."""
    PAUSED = "paused"
    """Paused through its handle: no new task starts until it is resumed."""
    COMPLETED = "completed"
    """Ended with every task done."""
    FAILED = "failed"
    """Ended with an error (a task failed, a plan could not be used...)."""
    CANCELLED = "cancelled"
    """Ended because it was cancelled before it could finish (``handle.cancel()``, Ctrl-C)."""
    INTERRUPTED = "interrupted"
    """Recorded as running, but nothing runs it any more: its lease lapsed (resume it)."""


class TaskStatus(StrEnum):
    """Where a task is, or how it (or one of its attempts) ended."""

    PENDING = "pending"
    """Not started yet."""
    RUNNING = "running"
    """An attempt is running."""
    COMPLETED = "completed"
    """Finished with an output."""
    FAILED = "failed"
    """Failed: every attempt of the task, or this one attempt."""
    SKIPPED = "skipped"
    """Never ran: a task it depends on failed or was skipped (``on_failure="continue"``)."""
    CANCELLED = "cancelled"
    """Stopped by a cancellation (of the run, or because another task failed)."""


class TaskKind(StrEnum):
    """Whose a task is: the crew's (``deliverable``: declared in ``Crew(tasks=...)``, its output
    is in `CrewResult.outputs`) or the process's (``internal``: a manager's plan, a plan step, a
    review; in `CrewResult.internal`)."""

    DELIVERABLE = "deliverable"
    """One of the crew's tasks."""
    INTERNAL = "internal"
    """A task the process added while it ran."""


class AttemptRecord(BaseModel):
    """One finished attempt of one task.

    Attributes:
        task: The task's name.
        number: 1 for the first attempt (a resumed run numbers on from the recorded ones).
        agent: The role of the agent that made it (the fallback agent's on a fallback attempt).
        start: When it began (UTC).
        end: When it ended (UTC).
        duration: Seconds it took, on the run's monotonic clock.
        status: ``completed``, ``failed`` or ``cancelled``.
        error_type: The exception's class name when it failed.
        error: The error message when it failed.
        model: The model the agent used.
        usage: Requests, tokens and cost of this attempt.
        llm_retries: Provider calls retried inside this attempt.
        limit_wait: Seconds this attempt's calls waited for limits (concurrency, rpm, tpm,
            Retry-After pauses).
        limit_waits: Those seconds by the limit that held the calls, e.g.
            ``{"concurrency:search": 1.5}`` (a wait held by two limits counts for both).
        cache_hits: Calls answered from the reply cache (no request made).
        details: More about the attempt, for features that need no query of their own.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    task: str
    number: int = Field(ge=1)
    agent: str = ""
    start: AwareDatetime
    end: AwareDatetime
    duration: float = Field(ge=0)
    status: TaskStatus
    error_type: str | None = None
    error: str | None = None
    model: str = ""
    usage: Usage = Field(default_factory=Usage)
    llm_retries: int = Field(default=0, ge=0)
    limit_wait: float = Field(default=0.0, ge=0)
    limit_waits: dict[str, float] = Field(default_factory=dict)
    cache_hits: int = Field(default=0, ge=0)
    details: dict[str, JsonValue] = Field(default_factory=dict)


class TaskRecord(BaseModel):
    """A task's line on the timeline.

    Attributes:
        task: The task's name.
        agent: The agent's role.
        status: Where it is, or how it ended.
        kind: ``deliverable`` (a crew task) or ``internal`` (added by the process).
        start: When its first attempt began (UTC), ``None`` if it never started.
        end: When it ended (UTC).
        duration: Seconds from first start to end.
        attempts: Every attempt, in order.
    """

    model_config = ConfigDict(frozen=True, defer_build=True)

    task: str
    agent: str
    status: TaskStatus
    kind: TaskKind = TaskKind.DELIVERABLE
    start: AwareDatetime | None = None
    end: AwareDatetime | None = None
    duration: float = 0.0
    attempts: tuple[AttemptRecord, ...] = ()


class Prediction(BaseModel):
    """What a choosing process (adaptive) expected of one candidate process.

    Attributes:
        process: The candidate.
        seconds: Its predicted duration: the median of its measured runs, else an estimate from
            the graph (in seconds where tasks were measured, else in task units, each
            unmeasured task counting 1: see ``unit``).
        unit: ``"s"``, or ``"task units"`` for a graph estimate made before any task was
            measured.
        lower_bound: The least the graph allows it (critical path, or work over the slots),
            in task units (each task one unit, whatever was measured): what hopelessness is
            judged on.
        success: Its measured success rate (``None`` before it has settled runs).
        tokens: Its mean tokens per clean run (``None`` before it has one).
        runs: The measured (settled) runs the prediction rests on.
        basis: ``"graph"`` or ``"N runs"``: where ``seconds`` comes from.
        hopeless: Its lower bound is above 1.5x the best graph estimate: never explored.
    """

    model_config = ConfigDict(frozen=True, defer_build=True)

    process: str
    seconds: float
    unit: Literal["s", "task units"] = "s"
    lower_bound: float
    success: float | None = None
    tokens: float | None = None
    runs: int = 0
    basis: str = "graph"
    hopeless: bool = False


class ProcessChoice(BaseModel):
    """The process a choosing process picked for one run, and why (`CrewResult.process_choice`).

    Attributes:
        process: The process that ran the crew.
        reason: Why, in a sentence.
        explored: Whether this run tried a candidate to measure it, rather than the best one.
        features: What it looked at in the crew's graph (tasks, depth, width, work, critical
            path, ...).
        predictions: Each candidate's prediction, best first.
    """

    model_config = ConfigDict(frozen=True, defer_build=True)

    process: str
    reason: str
    explored: bool = False
    features: dict[str, float] = Field(default_factory=dict)
    predictions: list[Prediction] = Field(default_factory=list)
