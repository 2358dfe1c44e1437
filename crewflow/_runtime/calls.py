"""The per-LLM-call layer of the runtime.

The agent loop calls ``llm.complete()`` and knows nothing else; the LLM it is handed is a
`ManagedLLM`, which retries retryable provider errors (honouring Retry-After up to the policy's
cap), adds up usage for the task attempt, and emits LLM events. Limits, circuit breakers and the
cache belong here too, so that every process gets them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from crewflow import events
from crewflow.exceptions import LLMError
from crewflow.llm._base import LLM
from crewflow.llm._types import Usage

if TYPE_CHECKING:
    from crewflow._runtime.run import Run
    from crewflow.llm._types import LLMRequest, LLMResponse


@dataclass(slots=True)
class AttemptState:
    """What one attempt of one task has spent so far."""

    task: str
    number: int
    model: str
    usage: Usage = field(default_factory=Usage)
    llm_retries: int = 0


class ManagedLLM(LLM):
    """The LLM an agent sees inside a run: ``inner`` plus the runtime's per-call work."""

    def __init__(self, inner: LLM, run: Run, attempt: AttemptState) -> None:
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

    async def complete(self, request: LLMRequest) -> LLMResponse:
        """Call the wrapped LLM, retrying retryable provider errors under the run's policy."""
        run, attempt, policy = self._run, self._attempt, self._run.retry
        clock = run.clock
        call_attempt = 1
        while True:
            if run.listening:
                run.emit(
                    events.LLMCallStarted(
                        run_id=run.run_id,
                        time=clock.now(),
                        task=attempt.task,
                        model=self.model,
                        attempt=attempt.number,
                    )
                )
            started = clock.now()
            try:
                response = await self.inner.complete(request)
            except LLMError as exc:
                attempt.usage.requests += 1
                self._finished(started, None, exc)
                if call_attempt >= policy.max_attempts or not policy.should_retry(exc):
                    raise
                delay = policy.delay(call_attempt, exc.retry_after)
                self._retrying(call_attempt, exc, delay)
                attempt.llm_retries += 1
                call_attempt += 1
                await clock.sleep(delay)
                continue
            except Exception as exc:
                # Not a provider error (a client bug, a test double's exception): not retried
                # here, but the request was made and its event pair stays balanced.
                attempt.usage.requests += 1
                self._finished(started, None, exc)
                raise
            except BaseException as exc:
                self._finished(started, None, exc)
                raise
            attempt.usage.add(response.usage)
            self._finished(started, response, None)
            return response

    def _finished(
        self, started: float, response: LLMResponse | None, error: BaseException | None
    ) -> None:
        run = self._run
        if not run.listening:
            return
        usage = response.usage if response is not None else Usage()
        run.emit(
            events.LLMCallFinished(
                run_id=run.run_id,
                time=run.clock.now(),
                task=self._attempt.task,
                model=self.model,
                latency=run.clock.now() - started,
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                error=None if error is None else str(error) or type(error).__name__,
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
        if run.listening:
            run.emit(
                events.LLMCallRetrying(
                    run_id=run.run_id,
                    time=run.clock.now(),
                    task=self._attempt.task,
                    model=self.model,
                    call_attempt=call_attempt,
                    status_code=error.status_code,
                    delay=delay,
                )
            )
