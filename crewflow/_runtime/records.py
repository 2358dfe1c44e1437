"""What the runtime records of each task: its attempts and how it ended (the result's timeline)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from crewflow.llm._types import Usage

__all__ = ["AttemptRecord", "TaskRecord", "TaskStatus"]


class TaskStatus(StrEnum):
    """How a task ended (or where it is)."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


class AttemptRecord(BaseModel):
    """One attempt of one task.

    Attributes:
        number: 1 for the first attempt (a resumed run numbers on from the recorded ones).
        agent: The role of the agent that made it (the fallback agent's on a fallback attempt).
        start: When it began (UTC).
        end: When it ended (UTC).
        duration: Seconds, on the monotonic clock.
        status: ``completed``, ``failed`` or ``cancelled``.
        error_type: The exception's class name when it failed.
        error: The error message when it failed.
        model: The model the agent used.
        usage: Requests and tokens of this attempt.
        llm_retries: Provider calls retried inside this attempt.
        limit_wait: Seconds this attempt's calls waited for limits (concurrency, rpm, tpm,
            Retry-After pauses).
        limit_waits: Those seconds by the limit that held the calls, e.g.
            ``{"concurrency:search": 1.5}`` (a wait held by two limits counts for both).
        cache_hits: Calls answered from the cache (no request made).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, defer_build=True)

    number: int
    agent: str = ""
    start: datetime
    end: datetime
    duration: float
    status: TaskStatus
    error_type: str | None = None
    error: str | None = None
    model: str = ""
    usage: Usage = Field(default_factory=Usage)
    llm_retries: int = 0
    limit_wait: float = 0.0
    limit_waits: dict[str, float] = Field(default_factory=dict)
    cache_hits: int = 0


class TaskRecord(BaseModel):
    """A task's line on the timeline.

    Attributes:
        task: The task's name.
        agent: The agent's role.
        status: How it ended.
        start: When its first attempt began (UTC), ``None`` if it never started.
        end: When it ended (UTC).
        duration: Seconds from first start to end.
        attempts: Every attempt, in order.
    """

    model_config = ConfigDict(defer_build=True)

    task: str
    agent: str
    status: TaskStatus
    start: datetime | None = None
    end: datetime | None = None
    duration: float = 0.0
    attempts: list[AttemptRecord] = Field(default_factory=list)
