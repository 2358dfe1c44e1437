"""What the provider clients share for turning SDK failures into `crewflow.exceptions.LLMError`.

Each client maps its own SDK's exception classes in its ``_map_error``, scrubbing secrets out of
the messages it quotes (`crewflow.llm._redact`); the helpers here build the resulting errors
(status, timeout, connection, unreadable answer), read Retry-After, and raise them at the SDK
boundary (`sdk_call`) without the SDK's exception chained: its response object (and the request
under it) can echo the API key and the base URL's credentials.
"""

from __future__ import annotations

import email.utils
import functools
import json
import time
from typing import TYPE_CHECKING, Final, TypeVar

from crewflow.exceptions import ContextLengthExceeded, LLMError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

T = TypeVar("T")

MAX_DETAIL: Final = 500
"""How many characters of a provider's message an error quotes."""


@functools.cache
def sdk_errors() -> tuple[type[Exception], ...]:
    """The exception classes `OpenAIChat` and `LiteLLM` translate: the provider's fault, not ours.

    litellm's exceptions subclass openai's. ``JSONDecodeError``: the SDK parses a malformed 200
    body (or SSE event) with ``json.loads`` and lets the error through.
    """
    import httpx
    import openai

    return (openai.OpenAIError, httpx.HTTPError, json.JSONDecodeError)


async def sdk_call(call: Awaitable[T], map_error: Callable[[Exception], LLMError]) -> T:
    """Await one SDK call (a request, or a stream's next chunk), raising its failure as the
    `LLMError` that ``map_error`` makes of it, with no exception chained: neither cause nor
    context. The error carries what the caller needs (status, Retry-After, the provider's
    message, scrubbed); the SDK's exception holds its HTTP response and request, whose text and
    URL can hold secrets, and `crewflow.exceptions.TaskFailed.cause` would keep them alive.
    """
    try:
        return await call
    except sdk_errors() as exc:
        error = map_error(exc)
    # Raised outside the handler, so the SDK's exception is not even the implicit context.
    raise error from None


# -- the errors -------------------------------------------------------------------------------


def status_error(
    model: str,
    status: int,
    headers: Mapping[str, str] | None,
    detail: str,
    where: str,
    key_hint: str,
) -> LLMError:
    """The `LLMError` of an HTTP error answer: retryable for 408, 409, 429 and 5xx."""
    retryable = status in (408, 409, 429) or status >= 500
    retry_after = parse_retry_after(headers) if headers is not None else None
    advice = _status_advice(status, key_hint, retry_after)
    return LLMError(
        f"{model} failed with HTTP {status} at {where}: {detail}. {advice}",
        model=model,
        status_code=status,
        retryable=retryable,
        retry_after=retry_after,
    )


_CONTEXT_LENGTH_CODE: Final = "context_length_exceeded"
_CONTEXT_LENGTH_WORDS: Final = "maximum context length"


def is_context_length(body: object, detail: str) -> bool:
    """Whether an HTTP 400's error body says the request was longer than the model's context
    window: OpenAI's code ``context_length_exceeded``, or the message vLLM and older OpenAI
    servers send (``"This model's maximum context length is ... tokens"``)."""
    error = body.get("error", body) if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("code") == _CONTEXT_LENGTH_CODE:
        return True
    return _CONTEXT_LENGTH_WORDS in detail.lower()


def context_length_error(model: str, detail: str, where: str) -> ContextLengthExceeded:
    """The error of a request the provider refused as longer than the model's context window."""
    return ContextLengthExceeded(
        f"{model} refused the request as longer than its context window at {where}: {detail}. "
        "crewflow cuts the task's context outputs once more and tries again; if that is not "
        "enough, set Agent(max_context_tokens=...) to the model's real window",
        model=model,
        status_code=400,
    )


def _status_advice(status: int, key_hint: str, retry_after: float | None) -> str:
    if status == 429:
        wait = f" in {retry_after:g}s" if retry_after is not None else ""
        return f"Rate limited: crewflow retries{wait}; lower the model's rpm/concurrency limits."
    if status >= 500 or status in (408, 409):
        return "The server failed; retrying may succeed."
    if status in (401, 403):
        return f"The API key was refused: {key_hint}."
    if status == 404:
        return "Check the model name and the base URL."
    return "The request was rejected; retrying will not help."


def timeout_error(model: str, timeout: float | None, where: str, *, sent: bool) -> LLMError:
    """The `LLMError` of a call that got no (complete) answer in time (``sent=False``: not
    even a connection)."""
    limit = f" within {timeout:g}s" if timeout is not None else ""
    return LLMError(
        f"{model} did not answer{limit} at {where}; retrying may succeed, or raise timeout=.",
        model=model,
        retryable=True,
        sent=sent,
    )


def connection_error(model: str, detail: str, where: str, *, sent: bool) -> LLMError:
    """The `LLMError` of a failed or broken connection (``sent=False``: it failed before the
    request was sent)."""
    return LLMError(
        f"{model}: the connection to {where} failed ({detail}); check that the server is "
        "running and the base URL is right. Retrying may succeed.",
        model=model,
        retryable=True,
        sent=sent,
    )


_E = TypeVar("_E", bound=BaseException)


def was_sent(exc: BaseException) -> bool:
    """Whether the request of a failed call may have reached the provider: ``False`` only when
    httpx failed to connect (or to get a pooled connection), which happens before a byte of the
    request is written. A read error, a reset or a read timeout may come after the provider got
    it all, so those count as sent."""
    import httpx

    return in_chain(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)) is None


def in_chain(exc: BaseException, kinds: tuple[type[_E], ...]) -> _E | None:
    """The first exception of ``kinds`` in ``exc``'s chain of causes and contexts (``exc``
    itself included), or ``None``."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kinds):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def malformed_error(model: str, detail: str, where: str) -> LLMError:
    """The `LLMError` of a 200 answer that could not be read."""
    return LLMError(
        f"{model} sent an unreadable answer from {where}: {detail[:MAX_DETAIL]}. Retrying "
        "may succeed; if not, the server does not speak the OpenAI chat-completions API.",
        model=model,
        status_code=200,
        retryable=True,
    )


def other_error(model: str, detail: str, where: str, *, retryable: bool) -> LLMError:
    """The `LLMError` of any other failure: an error event inside a stream, or an SDK failure
    without an HTTP status."""
    return LLMError(f"{model} failed at {where}: {detail}", model=model, retryable=retryable)


# -- what went wrong --------------------------------------------------------------------------


def describe_malformed(exc: BaseException) -> str:
    """What was wrong with an unreadable answer."""
    if isinstance(exc, json.JSONDecodeError):
        return f"invalid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
    return str(exc)


def describe_cause(exc: BaseException) -> str:
    """The SDK's message plus the transport error under it (e.g. ``ConnectError: refused``)."""
    cause = exc.__cause__ or exc.__context__
    text = str(exc)
    if cause is not None and str(cause):
        text = f"{text} {type(cause).__name__}: {cause}"
    return text[:MAX_DETAIL]


def provider_detail(body: object, fallback: str) -> str:
    """The provider's own error message from an error body, else ``fallback``."""
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])[:MAX_DETAIL]
        if isinstance(error, str):
            return error[:MAX_DETAIL]
    return fallback[:MAX_DETAIL]


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date)."""
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())
