"""Retry policy: how many attempts, how long to wait between them, and what is worth retrying.

A plain value, like `crewflow.limits`: the runtime applies it, specs (`Crew`, `Task`) carry it.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from pydantic import ValidationInfo, field_validator

from crewflow._spec import Value
from crewflow.exceptions import ConfigurationError, LLMError, TaskTimeout

__all__ = ["RetryPolicy"]


class RetryPolicy(Value):
    """Attempts with exponential backoff and jitter.

    The runtime applies it in two places. Provider errors are retried per LLM call, inside the
    agent's conversation, so tool results already gathered are kept; a 429's Retry-After is
    honoured up to ``max`` seconds. Other retryable failures (by default a task attempt that hit
    its ``timeout``) re-run the task.

    A 429 (rate limited) says "not now", not "this call fails": 429 answers count against their
    own budget, ``rate_limit_attempts``, not against ``max_attempts``, so a call rides out a storm
    of them (the model is paused for every caller meanwhile) and still fails after a few real
    errors.

    Example:
        ```python
        RetryPolicy(max_attempts=5, initial=0.5, retry_on=(TimeoutError, ConnectionError))
        ```

    Args:
        max_attempts: Attempts in all, the first included (default 3; 1 disables
            retries, but for 429s: see ``rate_limit_attempts``).
        initial: Seconds before the first retry (default 1.0); doubles on each retry.
        max: Cap on one wait, Retry-After included (default 30.0).
        jitter: Randomise each wait between half and all of it, so that many callers that failed
            together do not retry together (default ``True``).
        retry_on: Exception types (or a predicate) worth retrying. Default: retryable
            `LLMError` (429, 5xx, timeouts, connection errors) and `TaskTimeout`.
        rate_limit_attempts: 429 answers one LLM call may get before it gives up (default 10);
            they do not count against ``max_attempts``. Set it to 1 to fail at the first 429.

    Raises:
        ConfigurationError: No attempt at all, a negative wait, or a ``retry_on`` that is neither
            exception types nor a predicate.
    """

    max_attempts: int = 3
    initial: float = 1.0
    max: float = 30.0
    jitter: bool = True
    retry_on: tuple[type[BaseException], ...] | Callable[[BaseException], bool] | None = None
    rate_limit_attempts: int = 10

    @field_validator("max_attempts", "rate_limit_attempts")
    @classmethod
    def _at_least_one(cls, value: int, info: ValidationInfo) -> int:
        if value < 1:
            raise ConfigurationError(f"RetryPolicy.{info.field_name} must be at least 1")
        return value

    @field_validator("initial", "max")
    @classmethod
    def _not_negative(cls, value: float) -> float:
        if value < 0:
            raise ConfigurationError("RetryPolicy waits (initial, max) must be >= 0")
        return value

    @field_validator("retry_on", mode="before")
    @classmethod
    def _types_or_predicate(cls, value: Any) -> Any:
        # A bare exception class is callable too: taken as a predicate, it would retry anything.
        if isinstance(value, type) and issubclass(value, BaseException):
            return (value,)
        if isinstance(value, tuple | list) and all(
            isinstance(item, type) and issubclass(item, BaseException) for item in value
        ):
            return tuple(value)
        if value is None or (callable(value) and not isinstance(value, type)):
            return value
        raise ConfigurationError(
            f"RetryPolicy(retry_on={value!r}): give exception types, e.g. "
            f"retry_on=(TimeoutError, ConnectionError), or a predicate, e.g. "
            f"retry_on=lambda error: isinstance(error, TimeoutError)"
        )

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
