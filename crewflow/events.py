"""Typed events of a run.

The runtime emits these for every process alike; subscribe with ``Crew(on_event=callback)`` or,
in tests, `crewflow.testing.capture_events`. Events are built only when someone listens, so a run
nobody watches pays nothing for them.

Every event has ``kind`` (a stable string, handy for matching), ``run_id`` and ``time`` (seconds on
the runtime's monotonic clock); each class below lists its own fields. A task is given by its
name, an agent by its role, a model by its model string, and durations are in seconds.

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
    "ConcurrencyChanged",
    "ContextCut",
    "Event",
    "EventSink",
    "GuardrailFailed",
    "LLMCallFinished",
    "LLMCallRetrying",
    "LLMCallStarted",
    "LimiterWait",
    "ProcessChosen",
    "RunFinished",
    "RunHealthChanged",
    "RunPaused",
    "RunResumed",
    "RunStarted",
    "TaskAdded",
    "TaskDelegated",
    "TaskFailed",
    "TaskFallback",
    "TaskFinished",
    "TaskRestored",
    "TaskRetrying",
    "TaskSkipped",
    "TaskStarted",
    "TokenDelta",
    "TokenDeltaReset",
    "ToolCalled",
]


class Event(BaseModel):
    """Base of all run events.

    Attributes:
        kind: What happened, as a stable string: ``"task_finished"`` for `TaskFinished`, and so
            on (one per class, handy in a ``match``).
        run_id: The run it happened in (`CrewResult.run_id`).
        time: When, in seconds on the runtime's monotonic clock: compare two events' times,
            not a time with the wall clock.
    """

    # Built on first use: a run nobody listens to never pays for the schemas.
    model_config = ConfigDict(frozen=True, defer_build=True)

    kind: str
    run_id: str
    time: float


class RunStarted(Event):
    """A run began.

    Attributes:
        crew: The crew's name.
        process: The process that runs it.
        tasks: How many tasks the crew has.
    """

    kind: Literal["run_started"] = "run_started"
    crew: str
    process: str
    tasks: int


class RunFinished(Event):
    """A run ended.

    Attributes:
        status: ``completed``, ``failed`` or ``cancelled``.
        duration: Seconds since the run began.
        error: What made it fail (the error's message), else ``None``.
    """

    kind: Literal["run_finished"] = "run_finished"
    status: Literal["completed", "failed", "cancelled"]
    duration: float
    error: str | None = None


class TaskAdded(Event):
    """The process added a task to the run while it ran; live views show it as it comes.

    Attributes:
        task: The added task's name.
        agent: The role of the agent that does it.
        step: ``"ask"`` for a process's own question (a manager's plan, review or answer),
            ``"task"`` for a task of its plan.
        depends_on: The names of the tasks it depends on.
    """

    kind: Literal["task_added"] = "task_added"
    task: str
    agent: str
    step: Literal["task", "ask"]
    depends_on: list[str]


class TaskDelegated(Event):
    """The process delegated a task to another: it is not run itself, and ends when the other
    does, with its output (a manager's plan delivers a crew task through its steps). Its
    `TaskFinished` then says ``attempt=0``.

    Attributes:
        task: The delegated task's name.
        to: The name of the task that does it.
    """

    kind: Literal["task_delegated"] = "task_delegated"
    task: str
    to: str


class ProcessChosen(Event):
    """A choosing process (adaptive) picked the process that runs the crew.

    Attributes:
        process: The process picked.
        reason: Why, in a sentence.
    """

    kind: Literal["process_chosen"] = "process_chosen"
    process: str
    reason: str


class TaskStarted(Event):
    """An attempt of a task began.

    Attributes:
        task: The task's name.
        agent: The role of the agent making the attempt (the fallback agent's, on a fallback).
        attempt: 1 for the first attempt (a resumed run numbers on from the recorded ones).
    """

    kind: Literal["task_started"] = "task_started"
    task: str
    agent: str
    attempt: int


class TaskFinished(Event):
    """A task finished with an output.

    Attributes:
        task: The task's name.
        attempt: The attempt that produced the output (0: delegated, see `TaskDelegated`).
        duration: Seconds since its first attempt began (retries and their waits included).
        prompt_tokens: Prompt tokens of all its attempts.
        completion_tokens: Completion tokens of all its attempts.
    """

    kind: Literal["task_finished"] = "task_finished"
    task: str
    attempt: int
    duration: float
    prompt_tokens: int
    completion_tokens: int


class TaskRestored(Event):
    """A resumed run restored a task's output from its checkpoint: the task is done, and is
    not run again (`CrewResult.restored` lists them at the end).

    Attributes:
        task: The task's name.
    """

    kind: Literal["task_restored"] = "task_restored"
    task: str


class TaskRetrying(Event):
    """An attempt of a task failed, and another one follows.

    Attributes:
        task: The task's name.
        attempt: The attempt that failed.
        error: Its error, as ``"Type: message"``.
        delay: Seconds until the next attempt.
    """

    kind: Literal["task_retrying"] = "task_retrying"
    task: str
    attempt: int
    error: str
    delay: float


class GuardrailFailed(Event):
    """A task's guardrail rejected its output; unless the rounds are used up, the agent is
    asked again with the reason.

    Attributes:
        task: The task's name.
        attempt: The attempt whose output was rejected.
        round: 1 for the first rejection of the task's output, 2 for the next...
        reason: Why, as the guardrail said it.
    """

    kind: Literal["guardrail_failed"] = "guardrail_failed"
    task: str
    attempt: int
    round: int
    reason: str


class TaskFailed(Event):
    """A task failed after all its attempts.

    Attributes:
        task: The task's name.
        attempts: How many attempts it made.
        error_type: The last error's class name (e.g. ``"LLMError"``).
        error: The last error's message.
    """

    kind: Literal["task_failed"] = "task_failed"
    task: str
    attempts: int
    error_type: str
    error: str


class TaskSkipped(Event):
    """A task did not run: its condition was false, a router did not choose it, or a task it
    needs failed (``on_failure="continue"``) or was skipped. Also published for a task whose
    execution a custom process cancelled while the run went on, once the run gives it up.

    Attributes:
        task: The task's name.
        because: The names of the tasks that made it skip (the dependencies that failed or
            were skipped, the router that did not choose it); empty for a false condition.
        reason: Why, in words (``"condition false"``, ``"not chosen by the router of
            'triage'"``, ...), as recorded.
    """

    kind: Literal["task_skipped"] = "task_skipped"
    task: str
    because: list[str]
    reason: str = ""


class TaskFallback(Event):
    """A task's agent used up its attempts; its fallback agent takes over.

    Attributes:
        task: The task's name.
        agent: The role of the agent that used up its attempts.
        fallback: The role of the fallback agent.
        error: The last error, as ``"Type: message"``.
    """

    kind: Literal["task_fallback"] = "task_fallback"
    task: str
    agent: str
    fallback: str
    error: str


class ContextCut(Event):
    """A task's context outputs were cut to fit its agent's context budget, before an attempt
    (see the context budget guide); the attempt's record says the same
    (`crewflow.store.AttemptRecord.context_cut`).

    Attributes:
        task: The task's name.
        agent: The role of the agent whose model's window the prompt was cut for.
        attempt: The attempt that sends the cut prompt.
        window: The model's context window in tokens, if known.
        budget: Tokens left for the context outputs.
        reason: ``"budget"``, or ``"refused"`` when the provider refused the previous attempt's
            request as too long and the outputs were cut once more.
        outputs: The outputs cut, by task name: ``(characters before, characters after)``.
    """

    kind: Literal["context_cut"] = "context_cut"
    task: str
    agent: str
    attempt: int
    window: int | None
    budget: int
    reason: Literal["budget", "refused"]
    outputs: dict[str, tuple[int, int]]


class RunPaused(Event):
    """The run was paused: no new task starts until it is resumed."""

    kind: Literal["run_paused"] = "run_paused"


class RunResumed(Event):
    """The run was resumed after a pause."""

    kind: Literal["run_resumed"] = "run_resumed"


class LimiterWait(Event):
    """A call waited for limits (concurrency, rpm, tpm, a Retry-After pause) before it was sent.

    Attributes:
        task: The name of the task making the call.
        model: The model called.
        waited: Seconds it waited.
        reasons: Each limit that made it wait, e.g. ``"rpm:openai/gpt-4o-mini"``.
    """

    kind: Literal["limiter_wait"] = "limiter_wait"
    task: str
    model: str
    waited: float
    reasons: list[str]


class ConcurrencyChanged(Event):
    """An auto concurrency limit (``Limit(concurrency="auto")``) changed.

    Emitted by the run whose call's outcome caused the change (the limit itself is shared by
    every crew of the process), and kept in that attempt's record.

    Attributes:
        key: The limit's key (a model string, an endpoint's limit key, or a group).
        old: The limit before.
        new: The limit now.
        reason: ``"healthy"`` (replies stayed healthy: raised), ``"rate_limited"`` (a 429),
            ``"server_error"`` (a 5xx), ``"failure"`` (a timeout or a dropped connection),
            ``"latency"`` (a reply well above the recent baseline), or ``"learned"`` (started
            from what earlier runs learned).
    """

    kind: Literal["concurrency_changed"] = "concurrency_changed"
    key: str
    old: int
    new: int
    reason: Literal["learned", "healthy", "rate_limited", "server_error", "failure", "latency"]


class TokenDelta(Event):
    """A piece of streamed answer text (agents with ``stream=True``).

    Attributes:
        task: The name of the task being answered.
        model: The model answering.
        text: The new text, to append to what came before.
    """

    kind: Literal["token_delta"] = "token_delta"
    task: str
    model: str
    text: str


class TokenDeltaReset(Event):
    """The text a task has streamed so far is not its answer: drop it. The deltas that follow
    start the text again.

    Emitted before a call's first delta when the task streamed text since its last reset:
    the call that streamed it failed and is retried (a stream cut short, a retried attempt,
    the fallback agent), or it was not the final answer (the model called tools, or its
    answer failed validation and was asked again). So the `TokenDelta` texts after a task's
    last reset join to exactly the text of its answer: `TaskOutput.text`, or for a task with
    an ``output_model`` the JSON the model wrote (which ``text`` holds re-serialized).

    Attributes:
        task: The name of the task whose streamed text is dropped.
        model: The model about to stream again.
        reason: ``"retry"`` when the text came from a call that failed (the provider call or
            the task's attempt is made again), ``"next_call"`` when it came from an answer
            that was not final.
    """

    kind: Literal["token_delta_reset"] = "token_delta_reset"
    task: str
    model: str
    reason: Literal["retry", "next_call"]


class LLMCallStarted(Event):
    """A provider call began.

    Attributes:
        task: The name of the task making the call.
        model: The model called.
        attempt: The task's attempt the call belongs to.
    """

    kind: Literal["llm_call_started"] = "llm_call_started"
    task: str
    model: str
    attempt: int


class LLMCallFinished(Event):
    """A provider call ended, with its tokens and latency.

    Attributes:
        task: The name of the task that made the call.
        model: The model called.
        latency: Seconds the call took (0 for a cached reply).
        prompt_tokens: Prompt tokens the provider reported.
        completion_tokens: Completion tokens the provider reported.
        error: Why it failed, as ``"Type: message"``, else ``None``.
        cached: The reply came from the cache: no request was made.
        cost: What the call cost in USD, when the model's price is known (``None`` otherwise,
            and for a failed or cached call).
    """

    kind: Literal["llm_call_finished"] = "llm_call_finished"
    task: str
    model: str
    latency: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    cached: bool = False
    cost: float | None = None


class LLMCallRetrying(Event):
    """A retryable provider error; the call is made again.

    Attributes:
        task: The name of the task making the call.
        model: The model called.
        call_attempt: The attempt of this call that failed (1 for the first).
        status_code: The HTTP status of the error (429, 503...), ``None`` without one (e.g. a
            timeout or a dropped connection).
        delay: Seconds until the call is made again.
    """

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
        task: The name of the task whose agent called it.
        tool: The tool's name, as the model called it.
        ok: False when the tool raised, got arguments that do not fit its schema, or the model
            named no tool of the agent's (the model was told the error).
        duration: Seconds the call took.
        error_type: When ``ok`` is false, the class name of what the tool raised
            (``"ToolError"`` for a tool the agent does not have; pydantic's
            ``"ValidationError"`` for arguments that do not fit the tool's schema), else
            ``None``.
        error: When ``ok`` is false, what the model was told (at most 2 K characters), else
            ``None``.
    """

    kind: Literal["tool_called"] = "tool_called"
    task: str
    tool: str
    ok: bool
    duration: float
    error_type: str | None = None
    error: str | None = None


# The two models below are what `RunHealthChanged` carries; they are public as
# `crewflow.health.RunHealth` and `crewflow.health.HealthIssue` (this module lists events only).


class HealthIssue(BaseModel):
    """One thing wrong with a running run (see `crewflow.health.RunHealth`).

    Attributes:
        kind: ``"stalled"`` (a task in flight with no event for longer than
            ``HealthPolicy.stall_after``), ``"error_rate"`` (a model's failed calls over its
            recent calls above ``HealthPolicy.error_rate``), ``"breaker_open"`` (a model's
            circuit breaker is open or half-open), ``"retries"`` (a task in flight retried
            ``HealthPolicy.retries`` times or more) or ``"limit_waits"`` (the tasks spent more
            than ``HealthPolicy.limit_wait_share`` of their time waiting for limits).
        subject: The task (stalled, retries), the model (error_rate, breaker_open), or
            ``"run"`` (limit_waits).
        detail: What is wrong, in a sentence.
        since: When it began, in seconds on the run's clock.
    """

    model_config = ConfigDict(frozen=True, defer_build=True)

    kind: Literal["stalled", "error_rate", "breaker_open", "retries", "limit_waits"]
    subject: str
    detail: str
    since: float


class RunHealth(BaseModel):
    """How a run is doing, computed from its events (`crewflow.RunHandle.health`).

    Attributes:
        status: ``"ok"`` (no issue), ``"degraded"`` (issues, none of them a stalled task) or
            ``"stalled"`` (some task in flight made no progress for too long).
        time: When it was computed, in seconds on the run's clock.
        issues: What is wrong, oldest first.
        in_flight: How many tasks are in flight.
        error_rates: Per model, its failed calls over its calls in the recent window
            (``HealthPolicy.error_window``); models without a call in it are left out.
        limit_wait_share: The share of the tasks' time in flight spent waiting for limits
            (concurrency, rpm, tpm, Retry-After pauses, an open breaker), from 0 to 1.
        breakers: The models whose circuit breaker is not closed, with its state.
    """

    model_config = ConfigDict(frozen=True, defer_build=True)

    status: Literal["ok", "degraded", "stalled"] = "ok"
    time: float = 0.0
    issues: list[HealthIssue] = []
    in_flight: int = 0
    error_rates: dict[str, float] = {}
    limit_wait_share: float = 0.0
    breakers: dict[str, Literal["open", "half_open"]] = {}


class RunHealthChanged(Event):
    """The run's health changed: an issue began or ended (emitted only on a change, to
    ``on_event`` listeners and to ``Crew(on_alert=...)``).

    Attributes:
        health: The run's health now (`crewflow.health.RunHealth`).
        raised: The issues that began (`crewflow.health.HealthIssue`).
        cleared: The issues that ended.
    """

    kind: Literal["run_health_changed"] = "run_health_changed"
    health: RunHealth
    raised: list[HealthIssue]
    cleared: list[HealthIssue]


class EventSink(Protocol):
    """Receives events as they happen (keep it fast: it runs on the event loop)."""

    def __call__(self, event: Event, /) -> None: ...
