"""Declared limits: concurrency, rate limits and the circuit breaker, as plain values.

These values say what the limits are; the runtime's registry (`crewflow.set_limits`, a crew's
``limits``) applies them to every LLM call of the process, shared by every crew (DESIGN.md).

**Keys.** A `Limit` is declared under a key of `Limits`: a model string (``"openai/gpt-4o"``,
shared by every endpoint serving that model), an LLM's `limit_key`
(``"openai|https://api.openai.com/v1|gpt-4o"``: one endpoint and model, its URL without
credentials), or a group name given to agents or tasks (``"search"``). A call is subject to
the limit of each of its groups, plus its model's limit, looked up by limit key first, then by
model string. Undeclared groups limit nothing. Declarations are process-wide (`set_limits`)
or passed to a crew; the most recent declaration of a key wins, and declaring a key again keeps
its state (calls in flight, bucket levels).

**Buckets.** ``rpm`` and ``tpm`` are token buckets that refill continuously at ``rpm / 60``
requests (``tpm / 60`` tokens) per second up to a capacity, the burst: by default one second's
worth, at least 1 (``Limit(rpm=600)`` lets 10 requests start at once, then one every 0.1 s;
``Limit(rpm=600, burst=1)`` spaces every request). A call takes one request and its estimated
prompt tokens (characters / 4); when it finishes, the provider's reported usage corrects the
charge (charging the difference, or refunding up to the capacity). A call the provider did not
process (a 4xx answer other than 429, or a connection that failed before the request was sent)
gets its estimate back. A call estimated bigger than the token bucket waits for the bucket to be
full and goes alone, leaving it in debt, so it never deadlocks and the average rate still holds.

**Pauses.** A 429 with Retry-After pauses the call's limit key: no call of that key starts before
the pause ends, whatever crew or task it belongs to. Pauses only ever extend.

**Breaker.** One circuit breaker per limit key: after ``Breaker.failures`` consecutive failures
(the caller decides what counts: retryable provider errors other than 429) from at least
``Breaker.requests`` distinct requests (one bad prompt retried over and over says nothing of the
model's health) the circuit opens. While it is open, calls wait for it to close (``wait=True``,
the default), at most twice the cooldown, or fail fast (``wait=False``), with a non-retryable
`LLMError` either way when it stays open; after ``Breaker.cooldown`` seconds it half-opens and
lets one trial call through; the trial's success closes it, its failure opens it again.

**Calls too big for a limit.** A call estimated above twice a key's tpm (or above twice its
bucket's capacity, when that is the larger) could never go without stalling every other call
for minutes: it fails at once with a non-retryable `LLMError` naming the limit.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

from pydantic import Field, ValidationInfo, field_validator, model_validator

from crewflow._spec import Value
from crewflow.exceptions import ConfigurationError
from crewflow.llm._redact import public_url

__all__ = ["Auto", "Breaker", "Limit", "Limits"]


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class Auto(Value):
    """Concurrency that finds the provider's capacity by itself, between ``min`` and ``max``.

    A controller per limit key raises the limit while replies stay healthy and cuts it when
    the provider pushes back (a 429, a 5xx, or latency well above its recent baseline); see
    the guide "Runs that drive themselves". ``Limit(concurrency="auto")`` is
    ``Limit(concurrency=Auto())``.

    Example:
        ```python
        Limits({"openai/gpt-4o": Limit(concurrency=Auto(min=2, max=32))})
        ```

    Args:
        min: The fewest calls in flight it ever allows (default 1).
        max: The most calls in flight it ever allows (default 64).

    Raises:
        ConfigurationError: A bound is not a whole number >= 1, or ``min`` > ``max``.
    """

    min: int = 1
    max: int = 64

    @field_validator("min", "max", mode="before")
    @classmethod
    def _whole_number(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigurationError(
                f"Auto({info.field_name}={value!r}): the bounds count calls in flight at once "
                f"and must be whole numbers >= 1"
            )
        return value

    @model_validator(mode="after")
    def _ordered(self) -> Auto:
        if self.min > self.max:
            raise ConfigurationError(
                f"Auto(min={self.min}, max={self.max}): min must not exceed max"
            )
        return self


class Limit(Value):
    """How much one key (a model, an endpoint, a group) may be used at once and per minute.

    Example:
        ```python
        Limits({"openai/gpt-4o": Limit(concurrency=4, rpm=500, tpm=30_000)},
               search=Limit(concurrency=2))
        ```

    Every argument defaults to ``None``: no such limit.

    Args:
        concurrency: Calls in flight at once: a whole number, or ``"auto"`` (or an `Auto`
            with bounds) for a limit that follows the provider's capacity.
        rpm: Requests per minute, as a token bucket.
        tpm: Tokens per minute, as a token bucket charged by each call's estimated prompt tokens
            and corrected by its reported usage.
        burst: Requests the rpm bucket holds when full (default one second's worth,
            ``rpm / 60``, at least 1).
        token_burst: Tokens the tpm bucket holds when full (default ``tpm / 60``, at least 1).
            A bigger call waits for a full bucket and goes alone; one estimated above twice
            the larger of ``tpm`` and ``token_burst`` fails at once.

    Raises:
        ConfigurationError: A value is not a positive number, or a burst lacks its rate.
    """

    concurrency: int | Auto | None = None
    rpm: float | None = None
    tpm: float | None = None
    burst: float | None = None
    token_burst: float | None = None

    # "before" validators see what was given: pydantic would otherwise turn True into 1 and
    # "1000" into 1000.0, and its messages would not say what the number means.
    @field_validator("concurrency", mode="before")
    @classmethod
    def _whole_number(cls, value: Any) -> Any:
        if value == "auto":
            return Auto()
        if isinstance(value, Auto):
            return value
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise ConfigurationError(
                f"Limit(concurrency={value!r}): concurrency counts calls in flight at once "
                f"and must be a whole number >= 1, 'auto' or Auto(min=..., max=...) "
                f"(or None for no limit)"
            )
        return value

    @field_validator("rpm", "tpm", "burst", "token_burst", mode="before")
    @classmethod
    def _positive(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None and not (_is_number(value) and value > 0):
            raise ConfigurationError(
                f"Limit({info.field_name}={value!r}): {info.field_name} must be a positive "
                f"finite number (or None for no limit)"
            )
        return value

    @model_validator(mode="after")
    def _bursts_need_their_rates(self) -> Limit:
        if self.burst is not None:
            if self.rpm is None:
                raise ConfigurationError(
                    "Limit(burst=...) sizes the rpm bucket: set rpm too, e.g. "
                    "Limit(rpm=60, burst=5)"
                )
            if self.burst < 1:
                raise ConfigurationError(
                    f"Limit(burst={self.burst!r}): the rpm bucket must hold at least one request"
                )
        if self.token_burst is not None and self.tpm is None:
            raise ConfigurationError(
                "Limit(token_burst=...) sizes the tpm bucket: set tpm too, e.g. "
                "Limit(tpm=60_000, token_burst=5_000)"
            )
        return self

    @property
    def auto(self) -> bool:
        """Whether its concurrency is an auto limit (``"auto"`` or an `Auto`)."""
        return isinstance(self.concurrency, Auto)

    @property
    def request_capacity(self) -> float:
        """Requests the rpm bucket holds when full (0 without rpm)."""
        if self.rpm is None:
            return 0.0
        return float(self.burst) if self.burst is not None else max(1.0, self.rpm / 60)

    @property
    def token_capacity(self) -> float:
        """Tokens the tpm bucket holds when full (0 without tpm)."""
        if self.tpm is None:
            return 0.0
        return float(self.token_burst) if self.token_burst is not None else max(1.0, self.tpm / 60)


class Breaker(Value):
    """The circuit breaker applied to every model (limit key).

    Example:
        ```python
        Limits(breaker=Breaker(failures=3, cooldown=60))   # callers wait while it is open
        Limits(breaker=Breaker(wait=False))                # callers fail at once instead
        ```

    Args:
        failures: Consecutive counted failures that open the circuit (default 5).
        requests: Distinct requests those failures must come from (default 2): one prompt
            that always fails, retried, never opens the circuit for every other call.
        cooldown: Seconds the circuit stays open before one trial call is let through
            (default 30.0).
        wait: While the circuit is open, calls wait for it to close (the trial call's
            success), at most twice ``cooldown`` (and within the task's timeout), then fail;
            ``False``: they fail at once (default ``True``).

    Raises:
        ConfigurationError: ``failures`` or ``requests`` is not a whole number >= 1,
            ``cooldown`` is negative, or ``wait`` is not a bool.
    """

    failures: int = 5
    requests: int = 2
    cooldown: float = 30.0
    wait: bool = True

    @field_validator("failures", "requests", mode="before")
    @classmethod
    def _whole_number(cls, value: Any, info: ValidationInfo) -> Any:
        name = info.field_name
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigurationError(f"Breaker({name}={value!r}) must be a whole number >= 1")
        if value < 1:
            raise ConfigurationError(f"Breaker({name}={value!r}) must be >= 1")
        return value

    @field_validator("wait", mode="before")
    @classmethod
    def _flag(cls, value: Any) -> Any:
        if not isinstance(value, bool):
            raise ConfigurationError(
                f"Breaker(wait={value!r}) must be True (wait for the circuit to close) or "
                f"False (fail at once)"
            )
        return value

    @field_validator("cooldown", mode="before")
    @classmethod
    def _seconds(cls, value: Any) -> Any:
        if not (_is_number(value) and value >= 0):
            raise ConfigurationError(
                f"Breaker(cooldown={value!r}) must be a finite number of seconds >= 0"
            )
        return value


class _Unset:
    """Marks an argument that was not given."""

    def __repr__(self) -> str:
        return "<unset>"


_UNSET = _Unset()


def _public_key(key: str) -> str:
    """A limit key (``"provider|<url>|model"``) with its URL's credentials left out, as LLMs'
    `limit_key` leaves them out; other keys as they are."""
    provider, bar, rest = key.partition("|")
    url, bar, model = rest.rpartition("|")
    if not bar or "://" not in url:
        return key
    return f"{provider}|{public_url(url)}|{model}"


class Limits(Value, Mapping[str, Limit]):
    """A declaration of limits: key -> `Limit`, plus the circuit breaker.

    Keys are model strings (``"openai/gpt-4o-mini"``), LLM limit keys
    (``"openai|https://api.openai.com/v1|gpt-4o-mini"``) or group names (``"search"``). A
    read-only mapping of keys to limits, equal to another with the same limits and breaker. A
    crew's ``limits`` also takes a plain dict, as ``Limits(**that_dict)``.

    Example:
        ```python
        crewflow.set_limits(Limits({"openai/gpt-4o": Limit(rpm=500)}, search=Limit(concurrency=2)))
        ```

    Args:
        limits: Limits by key.
        breaker: The circuit breaker for every model; ``None`` turns breakers off. Like limits,
            the most recent declaration that gives one wins; ``Limits`` that do not mention it
            leave the process's breaker as it is (by default ``Breaker()``).
        **groups: More limits by key (convenient for group names).

    Raises:
        ConfigurationError: A value is not a `Limit`, a key is empty or given twice.
    """

    limits: dict[str, Limit] = Field(default_factory=dict)
    """Limits by key."""
    # A factory: building a Breaker here would build its schema at import.
    breaker: Breaker | None = Field(default_factory=Breaker)
    """The circuit breaker declared with these limits (``None``: no breakers)."""

    def __init__(
        self,
        limits: Mapping[str, Limit] | None = None,
        /,
        *,
        breaker: Breaker | _Unset | None = _UNSET,
        **groups: Limit,
    ) -> None:
        if limits is not None and not isinstance(limits, Mapping):
            raise ConfigurationError(
                f"Limits({limits!r}): give limits by key, e.g. Limits({{'search': Limit(rpm=60)}})"
            )
        merged = dict(limits or {})
        twice = groups.keys() & merged.keys()
        if twice:
            raise ConfigurationError(f"Limits: {sorted(twice)} given twice; give each key once")
        merged.update(groups)
        # Not given, the breaker stays out of `model_fields_set`: the registry then keeps the
        # process's breaker.
        if isinstance(breaker, _Unset):
            super().__init__(limits=merged)
        else:
            super().__init__(limits=merged, breaker=breaker)

    @field_validator("limits", mode="before")
    @classmethod
    def _limits_by_key(cls, value: dict[Any, Any]) -> dict[Any, Any]:
        # Always the dict __init__ built: pydantic validates any input through the custom
        # __init__, a parent model's too (``Crew(limits={...})`` is ``Limits(**{...})``).
        public: dict[str, Limit] = {}
        for key, limit in value.items():
            if not isinstance(key, str) or not key:
                raise ConfigurationError(f"Limits: keys are non-empty strings, not {key!r}")
            if not isinstance(limit, Limit):
                raise ConfigurationError(
                    f"Limits[{_public_key(key)!r}] is {limit!r}: use crewflow.Limit(...), "
                    f"e.g. Limit(concurrency=2, rpm=60)"
                )
            shown = _public_key(key)
            if shown in public:
                raise ConfigurationError(
                    f"Limits: {shown!r} given twice (its URL differs only in credentials, which "
                    "limit keys leave out); give each endpoint once"
                )
            public[shown] = limit
        return public

    @field_validator("breaker", mode="before")
    @classmethod
    def _breaker_or_none(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, Breaker):
            raise ConfigurationError(f"Limits(breaker={value!r}): use crewflow.Breaker or None")
        return value

    def __getitem__(self, key: str) -> Limit:
        return self.limits[key]

    # A mapping iterates over its keys (a pydantic model would give (field, value) pairs).
    def __iter__(self) -> Iterator[str]:  # type: ignore[override]
        return iter(self.limits)

    def __len__(self) -> int:
        return len(self.limits)

    def __contains__(self, key: object) -> bool:
        return key in self.limits

    def __hash__(self) -> int:
        return hash((frozenset(self.limits.items()), self.breaker))

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # As it is built: the limits by position (``limits=`` would name a group).
        yield None, self.limits
        yield "breaker", self.breaker
