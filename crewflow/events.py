"""Typed events of a run.

The runtime emits these for every process alike; subscribe with ``Crew(on_event=callback)`` or,
in tests, `crewflow.testing.capture_events`. Events are built only when someone listens, so a run
nobody watches pays nothing for them.

Every event has ``kind`` (a stable string, handy for matching), ``run_id`` and ``time`` (seconds on
the runtime's monotonic clock).

Example:
    ```python
    def show(event: events.Event) -> None:
        if isinstance(event, events.TaskFinished):
            print(event.task, event.duration)

    crew = Crew(tasks=[...], on_event=show)
    ```
"""

from __future__ import annotations

from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict

__all__ = [
    "Event",
    "EventSink",
    "LLMCallFinished",
    "LLMCallRetrying",
    "LLMCallStarted",
    "LimiterWait",
    "ProcessChosen",
    "RunFinished",
    "RunPaused",
    "RunResumed",
    "RunStarted",
    "TaskAdded",
    "TaskDelegated",
    "TaskFailed",
    "TaskFallback",
    "TaskFinished",
    "TaskRetrying",
    "TaskSkipped",
    "TaskStarted",
    "TokenDelta",
    "ToolCalled",
]


class Event(BaseModel):
    """Base of all run events."""

    # Built on first use: a run nobody listens to never pays for the schemas.
    model_config = ConfigDict(frozen=True, defer_build=True)

    kind: str
    run_id: str
    time: float


class RunStarted(Event):
    """A run began."""

    kind: Literal["run_started"] = "run_started"
    crew: str
    process: str
    tasks: int


class RunFinished(Event):
    """A run ended (``status`` is ``completed``, ``failed`` or ``cancelled``)."""

    kind: Literal["run_finished"] = "run_finished"
    status: Literal["completed", "failed", "cancelled"]
    duration: float
    error: str | None = None


class TaskAdded(Event):
    """The process added a task to the run while it ran: a manager's question (``step`` is
    ``"ask"``) or a step of its plan (``"task"``); live views show it as it comes."""

    kind: Literal["task_added"] = "task_added"
    task: str
    agent: str
    step: Literal["task", "ask"]
    depends_on: list[str]


class TaskDelegated(Event):
    """The process delegated a task to another (``to``): it is not run itself, and ends when
    ``to`` does, with its output (a manager's plan delivers a crew task through its steps).
    Its `TaskFinished` then says ``attempt=0``."""

    kind: Literal["task_delegated"] = "task_delegated"
    task: str
    to: str


class ProcessChosen(Event):
    """A choosing process (adaptive) picked the process that runs the crew, and why."""

    kind: Literal["process_chosen"] = "process_chosen"
    process: str
    reason: str


class TaskStarted(Event):
    """An attempt of a task began."""

    kind: Literal["task_started"] = "task_started"
    task: str
    agent: str
    attempt: int


class TaskFinished(Event):
    """A task finished with an output."""

    kind: Literal["task_finished"] = "task_finished"
    task: str
    attempt: int
    duration: float
    prompt_tokens: int
    completion_tokens: int


class TaskRetrying(Event):
    """An attempt of a task failed and another one follows after ``delay`` seconds."""

    kind: Literal["task_retrying"] = "task_retrying"
    task: str
    attempt: int
    error: str
    delay: float


class TaskFailed(Event):
    """A task failed after all its attempts."""

    kind: Literal["task_failed"] = "task_failed"
    task: str
    attempts: int
    error_type: str
    error: str


class TaskSkipped(Event):
    """A task did not run because a task it depends on failed (``on_failure="continue"``)."""

    kind: Literal["task_skipped"] = "task_skipped"
    task: str
    because: list[str]


class TaskFallback(Event):
    """A task's agent used up its attempts; its fallback agent takes over."""

    kind: Literal["task_fallback"] = "task_fallback"
    task: str
    agent: str
    fallback: str
    error: str


class RunPaused(Event):
    """The run was paused: no new task starts until it is resumed."""

    kind: Literal["run_paused"] = "run_paused"


class RunResumed(Event):
    """The run was resumed after a pause."""

    kind: Literal["run_resumed"] = "run_resumed"


class LimiterWait(Event):
    """A call waited for limits (concurrency, rpm, tpm, a Retry-After pause) before it was sent.

    ``reasons`` names each limit that made it wait, e.g. ``"rpm:openai/gpt-4o-mini"``.
    """

    kind: Literal["limiter_wait"] = "limiter_wait"
    task: str
    model: str
    waited: float
    reasons: list[str]


class TokenDelta(Event):
    """A piece of streamed answer text (agents with ``stream=True``)."""

    kind: Literal["token_delta"] = "token_delta"
    task: str
    model: str
    text: str


class LLMCallStarted(Event):
    """A provider call began."""

    kind: Literal["llm_call_started"] = "llm_call_started"
    task: str
    model: str
    attempt: int


class LLMCallFinished(Event):
    """A provider call ended, with its tokens and latency (``error`` set when it failed;
    ``cached`` when the reply came from the cache and no request was made)."""

    kind: Literal["llm_call_finished"] = "llm_call_finished"
    task: str
    model: str
    latency: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    cached: bool = False


class LLMCallRetrying(Event):
    """A retryable provider error; the call is made again after ``delay`` seconds."""

    kind: Literal["llm_call_retrying"] = "llm_call_retrying"
    task: str
    model: str
    call_attempt: int
    status_code: int | None
    delay: float


class ToolCalled(Event):
    """An agent's tool call ended. A failed one was sent to the model as the tool's result (the
    model may correct itself), logged at WARNING with its traceback, and recorded on the
    attempt (`crewflow.store.ToolCallRecord`).

    Attributes:
        task: The task whose attempt made the call.
        tool: The tool's name, as the model called it.
        ok: Whether the tool returned a result.
        duration: Seconds the call took.
        error_type: When it failed, the class name of what the tool raised
            (``"ToolError"`` for a tool the agent does not have; pydantic's
            ``"ValidationError"`` for arguments that do not fit the tool's schema).
        error: When it failed, what the model was told (at most 2 K characters).
    """

    kind: Literal["tool_called"] = "tool_called"
    task: str
    tool: str
    ok: bool
    duration: float
    error_type: str | None = None
    error: str | None = None


class EventSink(Protocol):
    """Receives events as they happen (keep it fast: it runs on the event loop)."""

    def __call__(self, event: Event, /) -> None: ...
