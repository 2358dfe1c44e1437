"""Retry policy: how many attempts, how long to wait between them, and what is worth retrying.

A plain value, like `crewflow.limits`: the runtime applies it, specs (`Crew`, `Task`) carry it.
"""

from __future__ import annotations

import random
from collections.abc import Callable  # noqa: TC003 - pydantic evaluates this dataclass (Crew.retry)
from dataclasses import dataclass

from crewflow.exceptions import ConfigurationError, LLMError, TaskTimeout

__all__ = ["RetryPolicy"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Attempts with exponential backoff and jitter.

    The runtime applies it in two places. Provider errors are retried per LLM call, inside the
    agent's conversation, so tool results already gathered are kept; a 429's Retry-After is
    honoured up to ``max`` seconds. Other retryable failures (by default a task attempt that hit
    its ``timeout``) re-run the task.

    Args:
        max_attempts: Attempts in all, the first included (1 disables retries).
        initial: Seconds before the first retry; doubles on each retry.
        max: Cap on one wait, Retry-After included.
        jitter: Randomise each wait between half and all of it, so that many callers that failed
            together do not retry together.
        retry_on: Exception types (or a predicate) worth retrying. Default: retryable
            `LLMError` (429, 5xx, timeouts, connection errors) and `TaskTimeout`.
    """

    max_attempts: int = 3
    initial: float = 1.0
    max: float = 30.0
    jitter: bool = True
    retry_on: tuple[type[BaseException], ...] | Callable[[BaseException], bool] | None = None

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigurationError("RetryPolicy.max_attempts must be at least 1")
        if self.initial < 0 or self.max < 0:
            raise ConfigurationError("RetryPolicy waits (initial, max) must be >= 0")

    def should_retry(self, error: BaseException) -> bool:
        """Whether ``error`` is worth another attempt under this policy."""
        if self.retry_on is None:
            return isinstance(error, TaskTimeout) or (
                isinstance(error, LLMError) and error.retryable
            )
        if isinstance(self.retry_on, tuple):
            return isinstance(error, self.retry_on)
        return self.retry_on(error)

    def delay(self, failed_attempts: int, retry_after: float | None = None) -> float:
        """Seconds to wait after ``failed_attempts`` failures (1 for the first retry)."""
        wait = min(self.max, self.initial * 2.0 ** (failed_attempts - 1))
        if self.jitter:
            wait *= 0.5 + random.random() / 2  # not for security: no need for `secrets`
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.max))
        return wait
