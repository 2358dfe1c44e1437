"""Test doubles for users' own crew tests: scripted and function LLMs, event capture, a fake
clock, and a switch that forbids real provider calls."""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import time
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel

from crewflow._runtime.clock import reset_clock, set_clock
from crewflow._runtime.run import capture_sink, release_sink
from crewflow.events import Event
from crewflow.exceptions import ContextLengthExceeded, LLMError
from crewflow.llm import _guard
from crewflow.llm._base import LLM
from crewflow.llm._types import (
    LLMRequest,
    LLMResponse,
    Usage,
    estimate_prompt_tokens,
    estimate_tokens,
)
from crewflow.llm._types import ToolCall as LLMToolCall
from crewflow.testing._server import (
    Cut,
    Disconnect,
    Error,
    Malformed,
    Reply,
    Slow,
    Text,
    ToolCalls,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator, Sequence

__all__ = [
    "EventCapture",
    "FakeClock",
    "FunctionLLM",
    "ScriptExhausted",
    "ScriptedLLM",
    "capture_events",
    "forbid_real_llm_calls",
    "reset_limits",
    "use_clock",
]

_WORD_PIECES = re.compile(r"\S+\s*|\s+")

ScriptItem = str | dict[str, Any] | BaseModel | Reply | LLMResponse | BaseException
"""One reply of a `ScriptedLLM` (or what a `FunctionLLM`'s function returns): see `ScriptedLLM`."""
E = TypeVar("E", bound=Event)


class ScriptExhausted(AssertionError):
    """A `ScriptedLLM` was called more times than it has replies."""


class ScriptedLLM(LLM):
    """An LLM that answers from a script, one item per call, and records every request.

    Items use the same vocabulary as the loopback `OpenAIServer`, plus shortcuts:

    - ``"text"``: a text answer; a ``dict`` or pydantic model: its JSON (structured output);
    - `Text`, `ToolCalls` ([`ToolCall`] ...), `Slow` (waits, then answers);
    - `Error` (429/5xx become retryable `LLMError`, with ``retry_after``), `Malformed`,
      `Disconnect` (retryable errors), or any exception instance (raised as is).

    Example:
        ```python
        llm = ScriptedLLM([ToolCalls([ToolCall("search", {"query": "x"})]), "the answer"])
        agent = Agent(role="R", goal="G", llm=llm, tools=[search])
        ```

    Args:
        script: The replies, in call order.
        model: The model string it reports.
        supports_output_schema: Whether the agent should ask for native structured output.
    """

    def __init__(
        self,
        script: Sequence[ScriptItem],
        *,
        model: str = "scripted",
        supports_output_schema: bool = True,
    ) -> None:
        self.model = model
        self._script = list(script)
        self._native = supports_output_schema
        self.requests: list[LLMRequest] = []

    @property
    def supports_output_schema(self) -> bool:
        """As given at construction."""
        return self._native

    @property
    def remaining(self) -> int:
        """Replies not used yet."""
        return max(0, len(self._script) - len(self.requests))

    async def complete(self, request: LLMRequest) -> LLMResponse:
        """Answer with the next scripted item."""
        index = len(self.requests)
        self.requests.append(request)
        if index >= len(self._script):
            raise ScriptExhausted(
                f"ScriptedLLM {self.model!r} was called {index + 1} times but has only "
                f"{len(self._script)} replies: add replies to its script (the last request "
                f"ended with: {_last_message(request)})"
            )
        return await _respond(self.model, request, self._script[index], index)


class FunctionLLM(LLM):
    """An LLM whose answers come from a function of the request.

    The function returns a string, an `LLMResponse`, or a reply item as `ScriptedLLM` takes;
    it may be async.

    Example:
        ```python
        llm = FunctionLLM(lambda request: request.messages[-1].content.upper())
        ```
    """

    def __init__(
        self,
        function: Callable[[LLMRequest], ScriptItem | Awaitable[ScriptItem]],
        *,
        model: str = "function",
        supports_output_schema: bool = True,
    ) -> None:
        self.model = model
        self._function = function
        self._native = supports_output_schema
        self.requests: list[LLMRequest] = []

    @property
    def supports_output_schema(self) -> bool:
        """As given at construction."""
        return self._native

    async def complete(self, request: LLMRequest) -> LLMResponse:
        """Call the function and turn its result into a response."""
        index = len(self.requests)
        self.requests.append(request)
        item = self._function(request)
        if inspect.isawaitable(item):
            item = await item
        return await _respond(self.model, request, item, index)


async def _respond(model: str, request: LLMRequest, item: Any, index: int) -> LLMResponse:
    if isinstance(item, Slow):
        import anyio

        await anyio.sleep(item.delay)
        item = item.reply
    if isinstance(item, BaseException):
        raise item
    if isinstance(item, LLMResponse):
        return item
    if isinstance(item, Error):
        retryable = item.status in (408, 409, 429) or item.status >= 500
        # The error a real client maps the body's code to: a refusal for length, as OpenAI's.
        error = ContextLengthExceeded if item.code == "context_length_exceeded" else LLMError
        raise error(
            f"{model}: HTTP {item.status}: {item.message}",
            model=model,
            status_code=item.status,
            retryable=retryable,
            retry_after=_retry_after(item),
        )
    if isinstance(item, (Malformed, Disconnect, Cut)):
        what = "a malformed reply" if isinstance(item, Malformed) else "a dropped connection"
        raise LLMError(f"{model}: {what}", model=model, retryable=True)
    if isinstance(item, ToolCalls):
        calls = tuple(
            LLMToolCall(
                id=call.id or f"call_{index}_{position}",
                name=call.name,
                arguments=call.arguments
                if isinstance(call.arguments, str)
                else json.dumps(call.arguments),
            )
            for position, call in enumerate(item.calls)
        )
        return await _response(model, request, item.content, calls)
    if isinstance(item, Text):
        response = await _response(model, request, item.content, (), item.usage)
        reason = item.finish_reason or response.finish_reason
        return dataclasses.replace(response, finish_reason=reason)
    if isinstance(item, BaseModel):
        return await _response(model, request, item.model_dump_json(), ())
    if isinstance(item, dict):
        return await _response(model, request, json.dumps(item), ())
    if isinstance(item, str):
        return await _response(model, request, item, ())
    raise TypeError(f"cannot answer with {type(item).__name__}: {item!r}")


def _retry_after(error: Error) -> float | None:
    if error.retry_after_ms is not None:
        return error.retry_after_ms / 1000
    if isinstance(error.retry_after, datetime):
        return max(0.0, error.retry_after.timestamp() - time.time())
    return error.retry_after


async def _response(
    model: str,
    request: LLMRequest,
    content: str | None,
    calls: tuple[LLMToolCall, ...],
    fixed_usage: tuple[int, int] | None = None,
) -> LLMResponse:
    if content and request.stream and request.on_delta is not None:
        # Stream word by word, as the loopback server does, so streaming consumers get pieces.
        for piece in _WORD_PIECES.findall(content):
            result = request.on_delta(piece)
            if inspect.isawaitable(result):
                await result
    if fixed_usage is not None:
        prompt_tokens, completion_tokens = fixed_usage
    else:
        prompt_tokens = estimate_prompt_tokens(request.messages)
        completion_tokens = estimate_tokens(content or "".join(c.arguments for c in calls))
    usage = Usage(requests=1, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
    reason = "tool_calls" if calls else "stop"
    return LLMResponse(content, calls, usage=usage, model=model, finish_reason=reason)


def _last_message(request: LLMRequest) -> str:
    if not request.messages:
        return "no messages"
    last = request.messages[-1]
    text = " ".join((last.content or "").split())
    return f"{last.role}: {text[:77] + '...' if len(text) > 80 else text!r}"


class EventCapture:
    """The events captured by `capture_events`, in the order they happened."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    @property
    def kinds(self) -> list[str]:
        """Each event's ``kind``, in order."""
        return [event.kind for event in self.events]

    def of_type(self, cls: type[E]) -> list[E]:
        """The events of one type, in order."""
        return [event for event in self.events if isinstance(event, cls)]

    def __len__(self) -> int:
        return len(self.events)

    def __iter__(self) -> Iterator[Event]:
        return iter(self.events)


@contextmanager
def capture_events() -> Iterator[EventCapture]:
    """Capture the events of every run started inside the block.

    Example:
        ```python
        with capture_events() as captured:
            await crew.kickoff()
        assert captured.kinds[0] == "run_started"
        ```
    """
    capture = EventCapture()
    token = capture_sink(capture)
    try:
        yield capture
    finally:
        release_sink(token)


def reset_limits() -> None:
    """Forget every declared limit, Retry-After pause, open circuit and bucket level.

    The limits registry is process-wide and outlives runs and event loops; call this between
    tests (e.g. from an autouse fixture) so that one test's limits never reach the next.
    """
    from crewflow._runtime.limiter import registry

    registry().reset()


@contextmanager
def forbid_real_llm_calls(*, allow_loopback: bool = True) -> Iterator[None]:
    """Make every real provider call inside the block fail with `ConfigurationError`.

    Calls to loopback addresses (the `OpenAIServer` of this module) stay allowed unless
    ``allow_loopback=False``. Set ``CREWFLOW_FORBID_REAL_LLM_CALLS=1`` to switch it on for a whole
    test session.
    """
    token = _guard.set_forbidden(True, allow_loopback=allow_loopback)
    try:
        yield
    finally:
        _guard.reset(token)


class FakeClock:
    """A clock whose sleeps return at once and move its time forward: retries and Retry-After
    pauses without waiting.

    Attributes:
        sleeps: Every sleep requested, in seconds, in order.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self.sleeps: list[float] = []

    def now(self) -> float:
        """The fake time."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Move the fake time forward."""
        self._now += seconds

    async def sleep(self, seconds: float) -> None:
        """Record the sleep, move time forward, and let other tasks run once."""
        import anyio.lowlevel

        self.sleeps.append(seconds)
        self._now += max(0.0, seconds)
        await anyio.lowlevel.checkpoint()


@contextmanager
def use_clock(clock: FakeClock) -> Iterator[FakeClock]:
    """Use ``clock`` for the runtime's waits (backoff, Retry-After) of runs started inside."""
    token = set_clock(clock)
    try:
        yield clock
    finally:
        reset_clock(token)
