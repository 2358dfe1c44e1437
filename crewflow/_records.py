"""What a run records: how runs and tasks end, each finished attempt (with its tool calls and
the prompts its LLM calls sent), each task's timeline line.

One model per concept, used unchanged by the runtime (which builds them), the result's
timeline, the store (which keeps them as JSON) and the CLI (which shows them).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from functools import cache, partial
from typing import TYPE_CHECKING, Any, Literal, Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, JsonValue

from crewflow._messages import Message
from crewflow._spec import fields_set_of, share_fields_set
from crewflow._usage import Usage

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "AttemptRecord",
    "CallRecord",
    "Compact",
    "ContextCutRecord",
    "Prediction",
    "ProcessChoice",
    "PromptRecord",
    "RunStatus",
    "TaskKind",
    "TaskRecord",
    "TaskStatus",
    "ToolCallRecord",
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


class Compact(BaseModel):
    """A frozen model made once or more per task, whose instances share their fields-set
    (`crewflow._spec.share_fields_set`).

    pydantic gives every instance a set of the fields it was given (``model_fields_set``): 728
    bytes for a model of 6 to 21 fields, more than its values' dict, and four per task
    (`TaskOutput`, `TaskRecord`, `AttemptRecord`, `PromptRecord`): about 3 KB a task, 29 MB
    of a 10,000-task run's result.
    """

    # Built when first used, like the records: building it at import would also make pydantic
    # look for its plugins then (a scan of every installed distribution, 20 ms or more).
    model_config = ConfigDict(defer_build=True)

    def model_post_init(self, context: Any, /) -> None:
        share_fields_set(self)

    @classmethod
    def built(cls, **values: Any) -> Self:
        """An instance holding ``values`` as they are, unvalidated: for the records the runtime
        makes on its hot path, from values it made of the fields' own types (a validated
        `AttemptRecord` costs 6.1 us, this 2.9). The fields not given take their defaults, and
        the fields-set is shared as `model_post_init` shares it.

        Raises:
            TypeError: A name that is not one of the model's fields.
        """
        fields, every = _field_defaults(cls)
        if values.keys() == fields.keys():  # the usual call: every field (in the model's order)
            given = every
        else:
            unknown = values.keys() - fields.keys()
            if unknown:
                raise TypeError(f"{cls.__name__} has no field {', '.join(sorted(unknown))}")
            given = fields_set_of(values)
            values = {
                name: values[name] if name in values else default()
                for name, default in fields.items()
            }
        record = cls.__new__(cls)
        object.__setattr__(record, "__dict__", values)
        object.__setattr__(record, "__pydantic_fields_set__", given)
        object.__setattr__(record, "__pydantic_extra__", None)
        object.__setattr__(record, "__pydantic_private__", None)
        return record


@cache
def _field_defaults(model: type[BaseModel]) -> tuple[dict[str, Callable[..., Any]], set[str]]:
    """Each field of ``model``, in order, with what makes its default (`Compact.built`): the
    default itself, immutable in every record, or a fresh one from its factory; and the
    shared fields-set of them all."""
    fields = {
        name: field.default_factory or partial(_same, field.default)
        for name, field in model.model_fields.items()
    }
    return fields, fields_set_of(fields)


def _same(value: Any) -> Any:
    return value


class ToolCallRecord(BaseModel):
    """One tool call of an attempt, as it ended. Its arguments are never recorded.

    Attributes:
        tool: The tool's name, as the model called it.
        ok: Whether the tool returned a result.
        duration: Seconds the call took.
        error_type: When it failed, the class name of what the tool raised (``"ValueError"``);
            ``"ValidationError"`` or ``"JSONDecodeError"`` for arguments that did not fit the
            tool's schema; ``"ToolError"`` for a tool the agent does not have; the cancellation's
            class for a call cut short by the attempt's timeout or a stopped run.
        error: When it failed, what the model was told (``"tool 'search' raised ValueError:
            ..."``), at most 2 K characters (cut with a note past that).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    tool: str
    ok: bool
    duration: float = Field(ge=0)
    error_type: str | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One LLM call of an attempt: when it began, waited and ended, its tokens, and how it
    ended. A request retried after a provider error is a call of its own; a reply from the
    reply cache is one too, that sent nothing. Kept whether or not the crew records prompts.

    A dataclass, not a pydantic model: one is made per call on the runtime's hot path, where a
    validated model cost about three times as much (a record holds it as it is).

    Attributes:
        start: Seconds after the attempt's start when the call began (and began to wait for
            its limits).
        end: Seconds after the attempt's start when it ended.
        wait: Seconds it waited for limits (concurrency, rpm, tpm, a Retry-After pause) before
            it was sent.
        prompt_tokens: Prompt tokens of its reply (0 without one).
        completion_tokens: Completion tokens of its reply (0 without one).
        outcome: ``completed`` (a reply), ``cached`` (a reply from the cache: no request),
            ``failed`` (an error: ``status_code`` says which when the provider answered) or
            ``cancelled`` (cut short by the attempt's timeout or a stopped run).
        status_code: The HTTP status of a failed call the provider answered.
    """

    start: float
    end: float
    wait: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    outcome: Literal["completed", "cached", "failed", "cancelled"] = "completed"
    status_code: int | None = None


class PromptRecord(Compact):
    """One LLM call of an attempt: the messages it sent and the reply it got.

    The calls of an attempt are one conversation that grows: each call sends the previous
    call's messages and reply again, then what came since (tool results, a re-ask). Those are
    not recorded twice: ``repeated`` counts them and ``messages`` holds the rest, so the whole
    request of call *n* is the messages and replies of the calls before it, then its own
    ``messages``. ``crewflow show RUN --prompts`` prints them.

    A call's texts (message contents, tool calls' arguments, the reply) are kept up to 64 K
    characters together; past that the longest are cut, each with a note of how much was left
    out (``cut`` counts it). Lone surrogates and NUL become U+FFFD, and the API key of the
    model's client, should a text hold it, becomes ``***``. Request headers and client settings
    are never recorded.

    Attributes:
        repeated: How many messages at the start of the request were the previous call's
            messages and reply, not recorded again (0 for an attempt's first call).
        messages: The messages the call sent after those.
        reply: What the model answered (role ``assistant``: its text, or the tools it called),
            ``None`` when the call failed or was cancelled.
        tools: The names of the tools the model was offered.
        output: The name of the output schema the answer had to match, if any.
        cached: The reply came from the reply cache: no request was made.
        error: Why the call got no reply (``"LLMError: ..."``, or that it was cancelled).
        cut: Characters left out of the call's texts to keep it within 64 K (0: whole).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    repeated: int = Field(default=0, ge=0)
    messages: tuple[Message, ...] = ()
    reply: Message | None = None
    tools: tuple[str, ...] = ()
    output: str | None = None
    cached: bool = False
    error: str | None = None
    cut: int = Field(default=0, ge=0)


CONTEXT_CUT = "context_cut"
"""The key of `AttemptRecord.details` that holds its `ContextCutRecord`."""
CONCURRENCY_CHANGES = "concurrency"
"""The key of `AttemptRecord.details` that holds the changes of auto concurrency limits its
calls caused: a list of ``{"at", "key", "old", "new", "reason"}`` (``at``: seconds from the
attempt's start)."""


class ContextCutRecord(BaseModel):
    """How an attempt's prompt was cut to fit its model's context budget.

    Attributes:
        window: The model's context window in tokens (``Agent.max_context_tokens``, else the
            table of well-known windows).
        budget: Tokens left for the task's context outputs: 80 % of the window, less the
            system message, the tool and output schemas and the rest of the task's prompt
            (characters / 4). After a refusal (``reason="refused"``): half of what the outputs
            took in the refused request.
        reason: ``"budget"``: the outputs did not fit the budget; ``"refused"``: the provider
            refused the previous attempt's request as longer than its window, and the outputs
            were cut once more.
        outputs: The context outputs that were cut, by task name, in dependency order:
            ``(characters before, characters after)`` (0 after: nothing of it fitted).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    window: int | None = Field(default=None, ge=1)
    budget: int = Field(ge=0)
    reason: Literal["budget", "refused"] = "budget"
    outputs: dict[str, tuple[int, int]]


class AttemptRecord(Compact):
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
        tool_calls: Each tool call the attempt made, in the order they ended.
        calls: Each LLM call the attempt made (a request retried after an error, or a reply
            from the cache, included), in order: when, how long it waited, tokens, outcome
            (the model is the attempt's).
        prompts: What each LLM call of the attempt sent and got back, in order. Empty when the
            crew has ``record_prompts=False``, and as read by `crewflow.store.Store.attempts`
            (prompts can be large: `crewflow.store.Store.prompts` reads them).
        kind: ``task`` for an attempt at the task, ``guardrail`` for a guardrail round: the
            task asked again, with the reason its guardrail rejected the previous output (it
            does not count toward the retry policy's attempts). Stored in ``details``.
        details: More about the attempt, for features that need no query of their own.
            ``"repaired": true`` says a reply held text no store can keep (a lone UTF-16
            surrogate, a NUL), which the task, its dependants and this record all received
            as U+FFFD, or that a recorded prompt (a tool's result) held some.
            ``"context_cut"`` holds how the task's context outputs were cut to fit the model's
            context budget (read it as `context_cut`).
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
    tool_calls: tuple[ToolCallRecord, ...] = ()
    calls: tuple[CallRecord, ...] = ()
    prompts: tuple[PromptRecord, ...] = ()
    kind: Literal["task", "guardrail"] = "task"
    details: dict[str, JsonValue] = Field(default_factory=dict)

    @property
    def context_cut(self) -> ContextCutRecord | None:
        """How the task's context outputs were cut to fit the model's context budget for this
        attempt (``details["context_cut"]``), ``None`` when nothing was cut.

        Kept in ``details`` rather than a field of its own: every attempt of every run would
        pay for a field that most never fill.
        """
        found = self.details.get(CONTEXT_CUT)
        return None if found is None else ContextCutRecord.model_validate(found)


class TaskRecord(Compact):
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
