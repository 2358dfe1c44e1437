"""The OpenAI chat-completions wire format, which `OpenAIChat` and `LiteLLM` both speak.

Requests go out as the keyword arguments of ``create``/``acompletion``; answers come back as
OpenAI-shaped objects (litellm's, the SDK's stream chunks), whole or as a stream of deltas, or
as the JSON body of a whole answer (`OpenAIChat`), and become an `LLMResponse`. Nothing here
imports a provider SDK at module level.
"""

from __future__ import annotations

import contextlib
import inspect
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, TypeGuard

from crewflow.llm._errors import MAX_DETAIL, sdk_call
from crewflow.llm._types import (
    LLMResponse,
    ToolCall,
    Usage,
    estimate_prompt_tokens,
    estimate_tokens,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from crewflow.exceptions import LLMError
    from crewflow.llm._types import LLMRequest, OutputSchema

_STREAM_OPTIONS: Final = {"include_usage": True}


class MalformedResponse(ValueError):
    """A 200 answer that is not a chat completion."""


# -- requests ---------------------------------------------------------------------------------


def request_kwargs(
    model: str,
    request: LLMRequest,
    *,
    temperature: float | None = None,
    max_tokens_param: str = "max_tokens",
) -> dict[str, Any]:
    """The chat-completions arguments every client sends for ``request``.

    Args:
        model: The model name as the server (or litellm) knows it.
        request: The messages, tools, output schema and sampling settings (not ``extra``).
        temperature: The client's default temperature; the request's own wins.
        max_tokens_param: What the server calls the completion-token limit.
    """
    kwargs: dict[str, Any] = {
        "model": model,
        "messages": [message.to_openai() for message in request.messages],
    }
    if request.tools:
        kwargs["tools"] = [tool.to_openai() for tool in request.tools]
    if request.output is not None:
        kwargs["response_format"] = response_format(request.output)
    if request.temperature is not None:
        temperature = request.temperature
    if temperature is not None:
        kwargs["temperature"] = temperature
    if request.max_tokens is not None:
        kwargs[max_tokens_param] = request.max_tokens
    if request.stream:
        kwargs["stream"] = True
        kwargs["stream_options"] = _STREAM_OPTIONS
    return kwargs


def response_format(output: OutputSchema) -> dict[str, Any]:
    """The ``response_format`` asking for JSON that matches ``output``.

    ``strict`` is off: strict mode rejects common pydantic schemas (optional fields, defaults),
    and the agent validates the answer against the model anyway.
    """
    return {
        "type": "json_schema",
        "json_schema": {"name": output.name, "schema": output.schema, "strict": False},
    }


# -- whole answers ----------------------------------------------------------------------------


def response_from_completion(completion: Any, request: LLMRequest, model: str) -> LLMResponse:
    """Map an OpenAI-shaped chat completion (the SDK's or litellm's) to an `LLMResponse`.

    Raises:
        MalformedResponse: The answer is not a chat completion.
    """
    if isinstance(completion, str):
        # The SDK hands back the raw text when a 200 is not labelled as JSON.
        raise MalformedResponse(f"the body is not JSON: {completion[:MAX_DETAIL]!r}")
    try:
        choice = completion.choices[0]
        message = choice.message
        content: str | None = message.content
        calls = tool_calls_from(message.tool_calls)
        finish_reason: str | None = choice.finish_reason
    except (AttributeError, IndexError, TypeError) as exc:
        raise MalformedResponse(f"the body is not a chat completion ({exc})") from None
    usage = usage_from(getattr(completion, "usage", None), request, content, calls)
    return LLMResponse(content, calls, usage, model, finish_reason)


def response_from_json(body: bytes, request: LLMRequest, model: str) -> LLMResponse:
    """Map a chat completion's JSON body, as the server sent it, to an `LLMResponse`: what
    `response_from_completion` reads from the SDK's typed object, without building that object
    (which costs the SDK ~200 us of CPU a reply here).

    Raises:
        json.JSONDecodeError: The body is not JSON.
        MalformedResponse: It is JSON, but not a chat completion (or a field has the wrong type).
    """
    data = json.loads(body)
    try:
        choice = data["choices"][0]
        message = choice["message"]
        content = _optional_text(message.get("content"), "content")
        finish_reason = _optional_text(choice.get("finish_reason"), "finish_reason")
        calls = _tool_calls_from_json(message.get("tool_calls"))
        raw_usage = data.get("usage")
    except (AttributeError, IndexError, KeyError, TypeError) as exc:
        raise MalformedResponse(f"the body is not a chat completion ({exc!r})") from None
    prompt = raw_usage.get("prompt_tokens") if isinstance(raw_usage, dict) else None
    if _is_count(prompt):
        completion = raw_usage.get("completion_tokens")
        usage = Usage(1, prompt, completion if _is_count(completion) else 0)
    else:
        usage = _estimated_usage(request, content, calls)
    return LLMResponse(content, calls, usage, model, finish_reason)


def _tool_calls_from_json(raw_calls: Any) -> tuple[ToolCall, ...]:
    if not raw_calls:
        return ()
    calls = []
    for index, raw in enumerate(raw_calls):
        function = raw.get("function")
        if function is None:
            continue  # another kind of call
        calls.append(
            ToolCall(
                _optional_text(raw.get("id"), "tool call id") or f"call_{index}",
                _optional_text(function.get("name"), "tool name") or "",
                _optional_text(function.get("arguments"), "tool arguments") or "",
            )
        )
    return tuple(calls)


def _optional_text(value: Any, what: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise MalformedResponse(f"the {what} is {type(value).__name__}, not text")


def _is_count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def tool_calls_from(raw_calls: Iterable[Any] | None) -> tuple[ToolCall, ...]:
    """The function calls of an OpenAI-shaped assistant message (other call kinds skipped)."""
    if not raw_calls:
        return ()
    calls = []
    for index, raw in enumerate(raw_calls):
        function = getattr(raw, "function", None)
        if function is None:
            continue
        calls.append(
            ToolCall(raw.id or f"call_{index}", function.name or "", function.arguments or "")
        )
    return tuple(calls)


def usage_from(
    raw: Any, request: LLMRequest, content: str | None, calls: tuple[ToolCall, ...]
) -> Usage:
    """The provider's token counts, or estimates (characters / 4) when it sent none."""
    if raw is not None and getattr(raw, "prompt_tokens", None) is not None:
        return Usage(1, raw.prompt_tokens or 0, raw.completion_tokens or 0)
    return _estimated_usage(request, content, calls)


def _estimated_usage(
    request: LLMRequest, content: str | None, calls: tuple[ToolCall, ...]
) -> Usage:
    """Characters / 4, for a provider that sent no token counts."""
    written = (content or "") + "".join(call.name + call.arguments for call in calls)
    return Usage(1, estimate_prompt_tokens(request.messages), estimate_tokens(written))


# -- streams ----------------------------------------------------------------------------------


async def read_stream(
    stream: Any,
    request: LLMRequest,
    model: str,
    map_error: Callable[[Exception], LLMError],
) -> LLMResponse:
    """Read an OpenAI-shaped chunk stream to its end, passing text pieces to ``on_delta``.

    Only the stream's own errors go through ``map_error``: an error of the caller's callback
    is the caller's. The stream is closed however reading ends, cancellation included. A
    stream that ends without a finish reason was cut short: it fails as a malformed answer
    (retryable), never passes its partial text off as the answer.
    """
    state = StreamState()
    iterator = aiter(stream)
    try:
        while True:
            try:
                chunk = await sdk_call(anext(iterator), map_error)
            except StopAsyncIteration:
                break
            text = state.add(chunk)
            if text and request.on_delta is not None:
                await _call_on_delta(request.on_delta, text)
    finally:
        await close_shielded(stream)
    if state.finish_reason is None:
        # A stream cut short (the connection closed cleanly mid-answer) ends like a whole one;
        # only the missing finish reason tells them apart. Its text is not the answer.
        raise map_error(MalformedResponse("the stream ended without a finish reason (cut short)"))
    return state.response(request, model)


async def _call_on_delta(callback: Any, text: str) -> None:
    result = callback(text)
    if inspect.isawaitable(result):
        await result


@dataclass(slots=True)
class _PartialCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


@dataclass(slots=True)
class StreamState:
    """What a chat-completions stream has said so far: text, tool calls by index, usage."""

    parts: list[str] = field(default_factory=list)
    calls: dict[int, _PartialCall] = field(default_factory=dict)
    finish_reason: str | None = None
    usage: Any = None

    def add(self, chunk: Any) -> str | None:
        """Take one chunk in; return its text piece, if any."""
        usage = getattr(chunk, "usage", None)
        if usage is not None:
            self.usage = usage
        choices = chunk.choices
        if not choices:
            return None
        choice = choices[0]
        if choice.finish_reason:
            self.finish_reason = choice.finish_reason
        delta = choice.delta
        if delta is None:
            return None
        if delta.tool_calls:
            self._add_calls(delta.tool_calls)
        text: str | None = delta.content
        if text:
            self.parts.append(text)
        return text

    def _add_calls(self, deltas: Iterable[Any]) -> None:
        for delta in deltas:
            index = delta.index
            if index is None:
                # Some servers omit the index: a new id starts a call, no id continues the last.
                index = len(self.calls) if (delta.id or not self.calls) else max(self.calls)
            call = self.calls.setdefault(index, _PartialCall())
            if delta.id and not call.id:
                call.id = delta.id
            function = delta.function
            if function is None:
                continue
            if function.name and not call.name:
                call.name = function.name
            if function.arguments:
                call.arguments.append(function.arguments)

    def response(self, request: LLMRequest, model: str) -> LLMResponse:
        """The whole answer, once the stream has ended."""
        content = "".join(self.parts) if self.parts else None
        calls = tuple(
            ToolCall(call.id or f"call_{index}", call.name, "".join(call.arguments))
            for index, call in sorted(self.calls.items())
        )
        usage = usage_from(self.usage, request, content, calls)
        return LLMResponse(content, calls, usage, model, self.finish_reason)


async def close_shielded(resource: object) -> None:
    """Close a client or stream (``aclose()`` or ``close()``, awaited when async) even inside a
    cancelled scope, so no socket is left open; errors while closing are swallowed."""
    import anyio

    close = getattr(resource, "aclose", None) or getattr(resource, "close", None)
    if close is None:
        return
    with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
        result = close()
        if inspect.isawaitable(result):
            await result
