"""The records a store keeps: runs, task attempts, finished outputs.

Frozen pydantic models, serialised as JSON (never pickled), so that any store, the CLI and the
optimizer read the same shapes. Datetimes must carry a timezone. Nothing here holds secrets: no
record has a field for API keys, headers or client settings, and a store never takes any.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, JsonValue, field_validator
from pydantic_core import to_jsonable_python

if TYPE_CHECKING:
    from crewflow.llm._types import Usage

__all__ = [
    "AttemptRow",
    "AttemptStatus",
    "OutputRow",
    "RunRecord",
    "RunSource",
    "RunStatus",
    "UsageRecord",
]


class RunStatus(StrEnum):
    """Where a run is: ``running`` until it ends as ``completed``, ``failed`` or ``cancelled``."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class AttemptStatus(StrEnum):
    """How one attempt of a task ended (``running`` while it is still going)."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)


class UsageRecord(_Record):
    """Requests, tokens and cost, as stored.

    Attributes:
        requests: Provider calls made (retries included).
        prompt_tokens: Input tokens.
        completion_tokens: Output tokens.
        cost: Cost in USD when known, else ``None``.
    """

    requests: int = Field(default=0, ge=0)
    prompt_tokens: int = Field(default=0, ge=0)
    completion_tokens: int = Field(default=0, ge=0)
    cost: float | None = None

    @classmethod
    def from_usage(cls, usage: Usage | UsageRecord) -> UsageRecord:
        """The stored form of the runtime's `crewflow.llm.Usage` (a record is returned as is)."""
        if isinstance(usage, UsageRecord):
            return usage
        return cls(
            requests=usage.requests,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cost=usage.cost,
        )


class RunSource(_Record):
    """How a run was started by the CLI: the file and the crew's attribute in it.

    Attributes:
        file: The path given to ``crewflow run``.
        attribute: The name of the crew object in that file, when one was named or found.
    """

    file: str
    attribute: str | None = None


class RunRecord(_Record):
    """One kickoff of a crew.

    Attributes:
        run_id: The run's id (as in logs, events and `CrewResult.run_id`).
        crew: The crew's name.
        fingerprint: A hash of the crew's tasks, agents, models and process; resume compares it.
        source: How the CLI started it, or ``None`` when started from code.
        process: The process that ran it.
        process_reason: Why that process was chosen (the adaptive process explains itself).
        inputs: The kickoff inputs, as JSON (values JSON cannot hold are stored as text).
        status: ``running``, ``completed``, ``failed`` or ``cancelled``.
        started: When it began.
        ended: When it ended, ``None`` while running.
        usage: Requests, tokens and cost of the whole run.
        graph: Each task's name with the names of the tasks it depends on, in declaration
            order (the optimizer's critical path and what-if estimates use it).
        max_concurrency: The crew's ``max_concurrency`` (``None``: unbounded).
        resumed: How many times the run was resumed.
    """

    run_id: str = Field(min_length=1)
    crew: str
    fingerprint: str = ""
    source: RunSource | None = None
    process: str = ""
    process_reason: str = ""
    inputs: dict[str, JsonValue] = Field(default_factory=dict)
    status: RunStatus = RunStatus.RUNNING
    started: AwareDatetime
    ended: AwareDatetime | None = None
    usage: UsageRecord = Field(default_factory=UsageRecord)
    graph: dict[str, list[str]] = Field(default_factory=dict)
    max_concurrency: int | None = Field(default=None, ge=1)
    resumed: int = Field(default=0, ge=0)

    @field_validator("inputs", mode="before")
    @classmethod
    def _jsonable_inputs(cls, value: Any) -> Any:
        # Inputs are user values of any type; a record must hold them as JSON, never pickled.
        return to_jsonable_python(value, fallback=repr)


class AttemptRow(_Record):
    """One attempt of one task in one run.

    A store keeps one row per ``(run_id, task, attempt)``: recording the same attempt again
    replaces it (e.g. a ``running`` row updated when the attempt ends), so a resumed run must
    number its attempts on from the ones already recorded.

    Attributes:
        run_id: The run it belongs to.
        task: The task's name.
        attempt: 1 for the first attempt.
        agent: The role of the agent that made it (the fallback agent's on a fallback attempt).
        start: When it began.
        end: When it ended, ``None`` while running.
        status: ``running``, ``completed``, ``failed`` or ``cancelled``.
        error_type: The exception's class name when it failed.
        error: The error message when it failed.
        model: The model the agent used.
        requests: Provider calls of this attempt.
        prompt_tokens: Input tokens of this attempt.
        completion_tokens: Output tokens of this attempt.
        cost: Cost in USD when known.
        cache_hit: The reply came from the cache.
        llm_retries: Provider calls retried inside this attempt.
        limit_wait: Seconds its calls waited for limits (concurrency, rpm, tpm, Retry-After).
        limit_waits: Those seconds by the limit that held the call, e.g.
            ``{"concurrency:search": 1.5}`` (a wait held by two limits counts for both).
    """

    run_id: str = Field(min_length=1)
    task: str
    attempt: int = Field(ge=1)
    agent: str = ""
    start: AwareDatetime
    end: AwareDatetime | None = None
    status: AttemptStatus
    error_type: str | None = None
    error: str | None = None
    model: str = ""
    requests: int = Field(default=0, ge=0)
    prompt_tokens: int = Field(default=0, ge=0)
    completion_tokens: int = Field(default=0, ge=0)
    cost: float | None = None
    cache_hit: bool = False
    llm_retries: int = Field(default=0, ge=0)
    limit_wait: float = Field(default=0.0, ge=0)
    limit_waits: dict[str, float] = Field(default_factory=dict)


class OutputRow(_Record):
    """A finished task's output: the checkpoint a resumed run starts from.

    Attributes:
        run_id: The run it belongs to.
        task: The task's name.
        text: The answer as text.
        data: The structured answer as JSON (``output_model`` dumped in JSON mode), or ``None``.
        agent: The role of the agent that produced it.
        model: The model that answered.
        finished_at: When the task finished.
    """

    run_id: str = Field(min_length=1)
    task: str
    text: str
    data: JsonValue = None
    agent: str = ""
    model: str = ""
    finished_at: AwareDatetime
