"""The per-LLM-call layer of the runtime.

The agent loop calls ``llm.complete()`` and knows nothing else; the LLM it is handed is a
`ManagedLLM`, which for every call:

1. answers from the reply cache when the task uses one and an identical call was answered
   before (no request, no limits, nothing billed; the attempt counts a cache hit);
2. waits for the model's (and the task's groups') limits — concurrency, rpm and tpm token
   buckets, a Retry-After pause, the model's open circuit breaker — (`limiter.py`, shared by
   every crew in the process); the time waited is the attempt's. A call the provider did not
   process (a 4xx other than 429, a connection that failed before sending) gets its tpm
   estimate back;
3. calls the provider, retrying retryable errors with backoff under the task's policy (a 429's
   Retry-After pauses the model for every caller, not just this one, unless an auto limit's
   cut serves as the backoff (`LimitRegistry.cut_instead_of_pausing`); 429s spend the policy's
   ``rate_limit_attempts``, other errors its ``max_attempts``);
4. adds up usage, keeps a cacheable reply in the cache, and emits LLM events (token deltas
   when the agent streams, and a reset before a call when the task streamed text already);
5. records what it sent and got back on the attempt (`transcript.PromptLog`), unless the crew
   has ``record_prompts=False``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal

from crewflow import events
from crewflow._records import CONCURRENCY_CHANGES, AttemptRecord, CallRecord
from crewflow._runtime.cache import as_cached, cache_key, cacheable, replay_deltas
from crewflow._runtime.limiter import registry
from crewflow._runtime.transcript import valid_reply
from crewflow.exceptions import LLMError
from crewflow.llm._base import LLM
from crewflow.llm._types import Usage, estimate_prompt_tokens

if TYPE_CHECKING:
    from datetime import datetime

    from pydantic import JsonValue

    from crewflow._records import TaskStatus, ToolCallRecord
    from crewflow._runtime.cache import ReplyCache
    from crewflow._runtime.capacity import Change
    from crewflow._runtime.limiter import Permit
    from crewflow._runtime.run import Run
    from crewflow._runtime.transcript import PromptLog
    from crewflow.llm._types import DeltaCallback, LLMRequest, LLMResponse
    from crewflow.retry import RetryPolicy


@dataclass(slots=True)
class StreamedText:
    """What a task has streamed since its last `TokenDeltaReset`: one per task, shared by its
    attempts, so a retried attempt knows to reset too."""

    attempt: int | None = None
    """The attempt whose call streamed it (``None``: nothing streamed since the last reset)."""
    failed: bool = False
    """The call that streamed it failed."""


@dataclass(slots=True)
class AttemptBuilder:
    """One attempt of one task while it runs: what it has spent and done so far, and the rules
    it runs under; `finish` makes its `AttemptRecord`."""

    task: str
    number: int
    agent: str
    model: str
    policy: RetryPolicy
    groups: tuple[str, ...] = ()
    cache: ReplyCache | None = None
    usage: Usage = field(default_factory=Usage)
    llm_retries: int = 0
    limit_wait: float = 0.0
    limit_waits: dict[str, float] = field(default_factory=dict)
    cache_hits: int = 0
    tool_calls: list[ToolCallRecord] = field(default_factory=list)
    prompts: PromptLog | None = None
    """Where its LLM calls are recorded (``None``: the crew records no prompts)."""
    calls: list[CallRecord] = field(default_factory=list)
    """Its LLM calls so far (`CallRecord`)."""
    began: float = 0.0
    """When it began, on the run's clock (its calls' times are counted from it)."""
    repaired: bool = False
    """Whether a reply held text no store can keep (lone surrogates, NUL), replaced; the
    record also says so when a recorded prompt (a tool's result) held some."""
    streamed: StreamedText = field(default_factory=StreamedText)
    concurrency: list[dict[str, JsonValue]] = field(default_factory=list)
    """Changes of auto concurrency limits its calls caused (``at``: seconds from ``began``)."""

    def _repaired(self) -> bool:
        return self.repaired or (self.prompts is not None and self.prompts.repaired)

    def _details(self) -> dict[str, JsonValue]:
        details: dict[str, JsonValue] = {}
        if self._repaired():
            details["repaired"] = True
        if self.concurrency:
            details[CONCURRENCY_CHANGES] = list(self.concurrency)
        return details

    def finish(
        self,
        *,
        start: datetime,
        end: datetime,
        duration: float,
        status: TaskStatus,
        error: BaseException | None,
    ) -> AttemptRecord:
        """The record of this attempt, ended with ``status`` (``error``: why it did not
        complete)."""
        # Unvalidated (`Compact.built`): every value is made here, of its field's type.
        return AttemptRecord.built(
            task=self.task,
            number=self.number,
            agent=self.agent,
            start=start,
            end=end,
            duration=max(0.0, duration),
            status=status,
            error_type=None if error is None else type(error).__name__,
            error=None if error is None else str(error) or type(error).__name__,
            model=self.model,
            usage=self.usage,
            llm_retries=self.llm_retries,
            limit_wait=self.limit_wait,
            limit_waits=dict(self.limit_waits),  # its own: a late call may still add to it
            cache_hits=self.cache_hits,
            tool_calls=tuple(self.tool_calls),
            calls=tuple(self.calls),
            prompts=() if self.prompts is None else tuple(self.prompts.records),
            kind="task",
            details=self._details(),
        )


class ManagedLLM(LLM):
    """The LLM an agent sees inside a run: ``inner`` plus the runtime's per-call work."""

    def __init__(self, inner: LLM, run: Run, attempt: AttemptBuilder) -> None:
        self.inner = inner
        self.model = inner.model
        self._run = run
        self._attempt = attempt

    @property
    def supports_output_schema(self) -> bool:
        """As the wrapped LLM."""
        return self.inner.supports_output_schema

    @property
    def limit_key(self) -> str:
        """As the wrapped LLM."""
        return self.inner.limit_key

    def redact(self, text: str) -> str:
        """As the wrapped LLM."""
        return self.inner.redact(text)

    async def complete(self, request: LLMRequest) -> LLMResponse:
        """Call the wrapped LLM under the limits, retrying retryable provider errors."""
        run, attempt = self._run, self._attempt
        if request.stream and run.listening:
            request = replace(request, on_delta=self._deltas(request))
        key = None
        if attempt.cache is not None:
            key = cache_key(self.inner.limit_key, request)
            cached = await self._cached(key, request)
            if cached is not None:
                return cached
        call_attempt = 1
        rate_limited = 0  # 429 answers so far: they have their own budget
        while True:
            self._restart_stream()
            begun = run.now()
            permit = await self._permit(request)
            run.publish(
                events.LLMCallStarted,
                task=attempt.task,
                model=self.model,
                attempt=attempt.number,
            )
            started = run.now()
            try:
                response = await self.inner.complete(request)
            except LLMError as exc:
                health = _health(exc)
                if exc.status_code == 429 and exc.retry_after:
                    # Paused before the permit goes back, so that no call (on any worker, with
                    # shared limits) takes its slot in between and starts within the pause.
                    # An auto limit's first 429 cuts the limit instead (the release below).
                    seconds = min(exc.retry_after, attempt.policy.max)
                    limits = registry()
                    if not limits.cut_instead_of_pausing(self.inner.limit_key, seconds, permit):
                        limits.pause(self.inner.limit_key, seconds)
                self._changed(
                    permit.release(
                        tokens=None if _processed(exc) else 0,
                        ok=health,
                        # Which request failed, so one bad prompt retried is one request to the
                        # breaker; hashed only for a failure that counts.
                        request=key or cache_key(self.inner.limit_key, request)
                        if health is False
                        else None,
                        status_code=exc.status_code,
                    )
                )
                self._stream_failed()
                attempt.usage.requests += 1
                self._finished(started, None, exc)
                self._sent(request, None, exc)
                self._called(begun, started, "failed", status_code=exc.status_code)
                if exc.status_code == 429:
                    rate_limited += 1
                delay = self._retry_delay(exc, call_attempt, rate_limited)
                if delay is None:
                    raise
                call_attempt += 1
                await run.clock.sleep(delay)
                continue
            except Exception as exc:
                permit.release()
                self._stream_failed()
                attempt.usage.requests += 1
                self._finished(started, None, exc)
                self._sent(request, None, exc)
                self._called(begun, started, "failed")
                raise
            except BaseException as exc:
                # Cancelled (a timeout, a stop, handle.cancel()): the request was started and
                # may have been billed, so it counts.
                permit.release()
                self._stream_failed()
                attempt.usage.requests += 1
                self._sent(request, None, exc)
                self._called(begun, started, "cancelled")
                raise
            self._changed(permit.release(tokens=response.usage.total_tokens, ok=True))
            attempt.usage.add(response.usage)
            response = self._valid(response)
            self._finished(started, response, None)
            self._sent(request, response, None)
            self._called(begun, started, "completed", response.usage)
            if key is not None and attempt.cache is not None and cacheable(response, request):
                await attempt.cache.put(key, response)
            return response

    def _valid(self, response: LLMResponse) -> LLMResponse:
        """``response`` repaired (`valid_reply`), the attempt marked when it had to be: the
        task's output, its dependants and its record then hold the same text, live or
        resumed."""
        valid = valid_reply(response)
        if valid is not response:
            self._attempt.repaired = True
        return valid

    async def _cached(self, key: str, request: LLMRequest) -> LLMResponse | None:
        """The cached reply to ``request``, counted as a hit of the attempt, or ``None``."""
        attempt, run = self._attempt, self._run
        assert attempt.cache is not None
        found = await attempt.cache.get(key)
        if found is None:
            return None
        attempt.cache_hits += 1
        now = run.now()
        self._called(now, now, "cached")  # nothing sent, nothing billed
        response = self._valid(as_cached(found))
        self._restart_stream()
        if attempt.prompts is not None:
            attempt.prompts.add(request, response, cached=True)
        await replay_deltas(request, response)
        run.publish(
            events.LLMCallFinished,
            task=attempt.task,
            model=self.model,
            latency=0.0,
            cached=True,
        )
        return response

    def _changed(self, changes: tuple[Change, ...]) -> None:
        """Record and announce changes of auto concurrency limits this call caused."""
        if not changes:
            return
        attempt, run = self._attempt, self._run
        for change in changes:
            attempt.concurrency.append(
                {
                    "at": change.time - attempt.began,
                    "key": change.key,
                    "old": change.old,
                    "new": change.new,
                    "reason": change.reason,
                }
            )
            run.publish(
                events.ConcurrencyChanged,
                at=change.time,
                key=change.key,
                old=change.old,
                new=change.new,
                reason=change.reason,
            )

    async def _permit(self, request: LLMRequest) -> Permit:
        attempt, run = self._attempt, self._run
        limits, limit_key = registry(), self.inner.limit_key
        permit = limits.free(model=self.model, limit_key=limit_key, groups=attempt.groups)
        if permit is not None:  # the usual case: no limit applies
            return permit
        permit = await limits.acquire(
            model=self.model,
            limit_key=limit_key,
            groups=attempt.groups,
            tokens=estimate_prompt_tokens(request.messages),
        )
        if permit.waited > 0:
            attempt.limit_wait += permit.waited
            waits = attempt.limit_waits
            for reason in permit.reasons:
                waits[reason] = waits.get(reason, 0.0) + permit.waited
            run.publish(
                events.LimiterWait,
                task=attempt.task,
                model=self.model,
                waited=permit.waited,
                reasons=list(permit.reasons),
            )
        return permit

    def _retry_delay(self, error: LLMError, call_attempt: int, rate_limited: int) -> float | None:
        """Seconds before calling again, or ``None`` to give up (a 429's Retry-After has
        paused the model for every caller already).

        ``call_attempt`` counts this call's requests so far, ``rate_limited`` those answered
        with a 429: 429s spend ``rate_limit_attempts``, the others ``max_attempts``.
        """
        policy = self._attempt.policy
        if error.status_code == 429:
            spent, budget = rate_limited, policy.rate_limit_attempts
        else:
            spent, budget = call_attempt - rate_limited, policy.max_attempts
        if spent >= budget or not policy.should_retry(error):
            return None
        delay = policy.delay(call_attempt, error.retry_after)
        self._retrying(call_attempt, error, delay)
        self._attempt.llm_retries += 1
        return delay

    def _restart_stream(self) -> None:
        """Before a call: when the task streamed text already, that text is not the answer
        the call's deltas make up, and listeners are told to drop it (`TokenDeltaReset`)."""
        attempt = self._attempt
        streamed = attempt.streamed
        if streamed.attempt is None:
            return
        retry = streamed.failed or streamed.attempt != attempt.number
        self._run.publish(
            events.TokenDeltaReset,
            task=attempt.task,
            model=self.model,
            reason="retry" if retry else "next_call",
        )
        streamed.attempt, streamed.failed = None, False

    def _stream_failed(self) -> None:
        streamed = self._attempt.streamed
        if streamed.attempt is not None:
            streamed.failed = True

    def _deltas(self, request: LLMRequest) -> DeltaCallback:
        """Streamed text goes to the agent's own callback and to `TokenDelta` events."""
        run, task, model, downstream = self._run, self._attempt.task, self.model, request.on_delta
        streamed, number = self._attempt.streamed, self._attempt.number

        async def on_delta(text: str) -> None:
            streamed.attempt = number
            run.emit(
                events.TokenDelta(
                    run_id=run.run_id, time=run.now(), task=task, model=model, text=text
                )
            )
            if downstream is not None:
                result = downstream(text)
                if inspect.isawaitable(result):
                    await result

        return on_delta

    def _called(
        self,
        begun: float,
        sent: float,
        outcome: Literal["completed", "cached", "failed", "cancelled"],
        usage: Usage | None = None,
        *,
        status_code: int | None = None,
    ) -> None:
        """Record a call on the attempt: begun (then waited for its limits) at ``begun``, sent
        at ``sent``, ended now, on the run's clock."""
        attempt = self._attempt
        began = attempt.began
        attempt.calls.append(
            CallRecord(
                max(0.0, begun - began),
                max(0.0, self._run.now() - began),
                max(0.0, sent - begun),
                0 if usage is None else usage.prompt_tokens,
                0 if usage is None else usage.completion_tokens,
                outcome,
                status_code,
            )
        )

    def _sent(
        self, request: LLMRequest, response: LLMResponse | None, error: BaseException | None
    ) -> None:
        """Record the call on the attempt, when the crew records prompts."""
        prompts = self._attempt.prompts
        if prompts is None:
            return
        if error is None:
            prompts.add(request, response)
        elif isinstance(error, Exception):
            prompts.add(request, None, error=f"{type(error).__name__}: {error}")
        else:
            why = "cancelled before the reply (the attempt timed out or the run stopped)"
            prompts.add(request, None, error=f"{type(error).__name__}: {why}")

    def _finished(
        self, started: float, response: LLMResponse | None, error: Exception | None
    ) -> None:
        run = self._run
        if not run.listening:
            return
        usage = response.usage if response is not None else Usage()
        run.emit(
            events.LLMCallFinished(
                run_id=run.run_id,
                time=run.now(),
                task=self._attempt.task,
                model=self.model,
                latency=run.now() - started,
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                error=None if error is None else f"{type(error).__name__}: {error}",
                cost=usage.cost,
            )
        )

    def _retrying(self, call_attempt: int, error: LLMError, delay: float) -> None:
        run = self._run
        run.log.info(
            "llm call retrying",
            task=self._attempt.task,
            model=self.model,
            status_code=error.status_code,
            delay=round(delay, 3),
        )
        run.publish(
            events.LLMCallRetrying,
            task=self._attempt.task,
            model=self.model,
            call_attempt=call_attempt,
            status_code=error.status_code,
            delay=delay,
        )


def _health(error: LLMError) -> bool | None:
    """What a failed call says about the model's health, for its circuit breaker: a retryable
    failure counts (5xx, timeouts, connection errors), a 429 or a client error does not."""
    if error.retryable and error.status_code != 429:
        return False
    return None


def _processed(error: LLMError) -> bool:
    """Whether the provider may have processed (and counted the tokens of) a failed call: not
    when it rejected it (a 4xx other than 429) or never got it (a failed connection)."""
    status = error.status_code
    rejected = status is not None and 400 <= status < 500 and status != 429
    return error.sent and not rejected
