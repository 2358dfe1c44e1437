"""A loopback HTTP server speaking OpenAI's chat-completions protocol.

It exists so that tests, user test suites and benchmarks can drive real LLM
clients (the ``openai`` SDK, litellm, crewflow's own backends) over a real socket
without a network or a model: replies are scripted (:meth:`OpenAIServer.enqueue`),
computed (``responder=``) or defaulted (a loopback text, a tool call for each
offered tool, or a schema-valid JSON document for structured output).

The HTTP layer is a deliberately small hand-written HTTP/1.1 implementation on
``asyncio.start_server`` (keep-alive, ``Content-Length`` and chunked request
bodies, chunked SSE responses): the package must not grow a web-framework
dependency for its test kit, and benchmarks need the per-request server cost to
stay far below a client's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email.utils
import inspect
import json
import logging
import math
import os
import random
import re
import signal
import socket
import stat
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from http import HTTPStatus
from typing import Any, Literal, TypeAlias

from crewflow._jsonschema import example_for_schema

__all__ = [
    "Capacity",
    "Cut",
    "Disconnect",
    "Error",
    "Malformed",
    "OpenAIServer",
    "ReceivedRequest",
    "Reply",
    "Responder",
    "Slow",
    "Storm",
    "Text",
    "ToolCall",
    "ToolCalls",
    "main",
]

_log = logging.getLogger(__name__)

_CHAT_PATHS = frozenset({"/v1/chat/completions", "/chat/completions"})
_MODEL_PATHS = frozenset({"/v1/models", "/models"})
_MODEL_IDS = ("test-model", "gpt-4o-mini", "gpt-4o")
# Never recorded: a test suite's canary key must not end up in assertions or logs.
_SECRET_HEADERS = frozenset(
    {"authorization", "api-key", "x-api-key", "proxy-authorization", "cookie"}
)
_AUTH_HEADERS = ("authorization", "api-key", "x-api-key")
_WORD_PIECES = re.compile(r"\S+\s*|\s+")
_ARGUMENT_PIECE = 16
_MAX_HEAD_BYTES = 64 * 1024
_THREAD_START_TIMEOUT = 30.0
# SO_LINGER on, with a zero timeout: closing the socket sends a TCP RST instead of a FIN.
_LINGER_RESET = struct.pack("ii", 1, 0)


# --- scripted replies ---------------------------------------------------------------------


@dataclass
class Text:
    """An assistant text reply.

    Attributes:
        content: The message content (sent as ``null`` when empty and ``refusal`` is set).
        usage: ``(prompt_tokens, completion_tokens)``; computed as characters / 4
            when omitted.
        finish_reason: The finish reason sent (``"stop"`` when omitted); ``"length"``
            or ``"content_filter"`` make a reply cut by the token limit or a filter.
        refusal: A refusal message, sent in the message's ``refusal`` field as
            OpenAI does when a model declines structured output.
    """

    content: str
    usage: tuple[int, int] | None = None
    finish_reason: str | None = None
    refusal: str | None = None


@dataclass
class ToolCall:
    """One function call requested by the assistant.

    Attributes:
        name: The function name.
        arguments: A dict (sent JSON-encoded) or a raw string (sent verbatim, which
            lets tests send malformed arguments).
        id: The tool-call id; ``call_<request index>_<position>`` when omitted.
    """

    name: str
    arguments: dict[str, Any] | str
    id: str | None = None


@dataclass
class ToolCalls:
    """An assistant reply that calls tools (``finish_reason="tool_calls"``).

    Attributes:
        calls: The calls, in order.
        content: Optional text sent alongside the calls.
    """

    calls: list[ToolCall]
    content: str | None = None


@dataclass
class Error:
    """An HTTP error reply with an OpenAI-shaped ``{"error": {...}}`` body.

    Attributes:
        status: The HTTP status (e.g. 429, 500, 503).
        message: The error message.
        retry_after: The ``retry-after`` header: seconds (a fractional value is also
            sent as ``retry-after-ms``), or an aware `datetime` sent as an HTTP date.
        retry_after_ms: Milliseconds for a ``retry-after-ms`` header sent alone.
        code: The body's ``error.code``, e.g. ``"context_length_exceeded"`` (by default the
            one OpenAI sends with the status, if any).
    """

    status: int
    message: str = "simulated error from the loopback server"
    retry_after: float | datetime | None = None
    retry_after_ms: float | None = None
    code: str | None = None


@dataclass
class Malformed:
    """A 200 reply whose body is not valid JSON (or an SSE event that is not).

    Attributes:
        body: The raw body text.
    """

    body: str = "{not json"


@dataclass
class Disconnect:
    """Close the connection without replying."""


@dataclass
class Slow:
    """Wait ``delay`` seconds server-side, then send ``reply``.

    Attributes:
        delay: Seconds to wait; a client disconnect during the wait is recorded.
        reply: The reply sent afterwards.
    """

    delay: float
    reply: Reply


@dataclass
class Cut:
    """Send the start of ``reply``, then break off the way ``then`` says.

    Attributes:
        reply: The reply that is cut.
        keep: What goes out before the break: SSE events for a streamed reply (the
            first carries only the role), bytes of the JSON body for a plain one.
        then: ``"reset"`` aborts the connection (the client sees a connection
            reset); ``"stall"`` sends nothing more and holds the connection until
            the client hangs up (recorded as ``disconnected``); ``"end"`` ends the
            response there: a stream closes cleanly without its finish reason and
            ``[DONE]``, a plain body closes the connection short of its
            ``content-length``.

    Example:
        ```python
        server.enqueue(Cut(Text("never finished"), keep=2, then="stall"))
        ```
    """

    reply: Text | ToolCalls
    keep: int = 2
    then: Literal["reset", "stall", "end"] = "reset"


Reply: TypeAlias = Text | ToolCalls | Error | Malformed | Disconnect | Slow | Cut
"""Anything the server can be told to answer with."""


@dataclass
class ReceivedRequest:
    """One chat-completions request as the server saw it.

    Credentials are never stored: ``authorization``, ``api-key`` and ``x-api-key``
    (and cookies) are dropped from ``headers``; ``has_auth`` says whether one was sent.

    Attributes:
        index: Position among the requests since the last reset, from 0.
        path: The request path (``/v1/chat/completions`` or ``/chat/completions``).
        model: The requested model.
        body: The parsed JSON body.
        messages: ``body["messages"]``.
        stream: Whether a streamed reply was requested.
        tools: The offered tools, if any.
        response_format: The requested response format, if any.
        headers: Request headers with lower-cased names, secrets removed.
        has_auth: Whether an API key or authorization header was present.
        received_at: ``time.monotonic()`` when the body had been read.
        finished_at: ``time.monotonic()`` when handling ended (None while in flight).
        status: The HTTP status sent, None if nothing was sent.
        disconnected: True if the client went away before the reply was sent.
    """

    index: int
    path: str
    model: str
    body: dict[str, Any]
    messages: list[dict[str, Any]]
    stream: bool
    tools: list[dict[str, Any]] | None
    response_format: dict[str, Any] | None
    headers: dict[str, str]
    has_auth: bool
    received_at: float
    finished_at: float | None = None
    status: int | None = None
    disconnected: bool = False

    @cached_property
    def last_user_message(self) -> str:
        """The text of the last ``role: user`` message ("" if there is none)."""
        for message in reversed(self.messages):
            if isinstance(message, dict) and message.get("role") == "user":
                return _content_text(message.get("content"))
        return ""


Responder: TypeAlias = Callable[[ReceivedRequest], Reply | Awaitable[Reply | None] | None]
"""Computes a reply for a request; returning None falls back to the default reply."""


class Storm:
    """A responder that answers a seeded share of requests with a 429 for a while.

    Pass it as ``OpenAIServer(responder=Storm(...))``. The storm starts with the first
    request it sees and lasts ``duration`` seconds; during it, each request gets
    ``Error(429, retry_after=...)`` with probability ``rate``, the Retry-After drawn
    uniformly from ``retry_after``. Other requests (and every request after the storm) go
    to ``then``, or get the default reply. Draws come from ``random.Random(seed)`` in
    arrival order, so a run with the same arrivals sees the same storm.

    Example:
        ```python
        storm = Storm(rate=0.3, retry_after=(0.2, 1.0), duration=10.0, seed=7)
        async with OpenAIServer(responder=storm) as server:
            ...
        assert storm.limited > 0
        ```

    Attributes:
        rate: The share of requests answered with a 429 during the storm.
        retry_after: The range of the Retry-After sent, in seconds.
        duration: How long the storm lasts from its first request, in seconds.
        limited: Requests answered with a 429 so far.
        passed: Requests the storm let through so far (during it or after it).
    """

    def __init__(
        self,
        *,
        rate: float = 0.3,
        retry_after: tuple[float, float] = (0.2, 1.0),
        duration: float = 10.0,
        seed: int = 0,
        then: Responder | None = None,
    ) -> None:
        """Configure the storm; it starts with the first request.

        Args:
            rate: Share of requests limited during the storm, from 0 to 1.
            retry_after: ``(low, high)`` seconds for each 429's Retry-After.
            duration: Seconds the storm lasts from its first request.
            seed: Seed of the draws (which requests are limited, and for how long).
            then: The responder for requests the storm lets through.

        Raises:
            ValueError: ``rate`` is not between 0 and 1, or a duration is negative.
        """
        low, high = retry_after
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"Storm(rate={rate!r}): rate is a share, from 0 to 1")
        if duration < 0 or low < 0 or high < low:
            raise ValueError(
                f"Storm(duration={duration!r}, retry_after={retry_after!r}): durations are "
                f"seconds >= 0, and retry_after is (low, high) with low <= high"
            )
        self.rate = rate
        self.retry_after = (low, high)
        self.duration = duration
        self.limited = 0
        self.passed = 0
        self._then = then
        self._random = random.Random(seed)
        self._started_at: float | None = None
        self._lock = threading.Lock()

    @property
    def raging(self) -> bool:
        """Whether the storm has started and not ended yet."""
        started = self._started_at
        return started is not None and time.monotonic() - started < self.duration

    def __call__(self, request: ReceivedRequest) -> Reply | Awaitable[Reply | None] | None:
        """Answer ``request``: a 429 for a drawn share during the storm, else ``then``'s reply."""
        with self._lock:
            if self._started_at is None:
                self._started_at = time.monotonic()
            if self.raging and self._random.random() < self.rate:
                self.limited += 1
                return Error(
                    429,
                    message="loopback storm: rate limited",
                    retry_after=round(self._random.uniform(*self.retry_after), 3),
                )
            self.passed += 1
        return self._then(request) if self._then is not None else None


class Capacity:
    """A responder with a hidden capacity: what a provider's real concurrency limit looks like.

    Pass it as ``OpenAIServer(responder=Capacity(...))``, or to ``FunctionLLM(Capacity(...))``
    for an in-process model (under `run_virtual` its sleeps take no real time). Each reply
    takes ``latency`` seconds; what happens above ``capacity`` requests in flight depends on
    ``mode``:

    - ``"reject"``: a request arriving when ``capacity`` are in flight already gets
      ``Error(429, retry_after=retry_after)`` at once;
    - ``"slow"``: every reply slows in proportion, taking ``latency * in_flight / capacity``
      seconds (``in_flight`` counted when it arrives, itself included).

    Example:
        ```python
        hidden = Capacity(6, mode="reject", latency=0.2)
        async with OpenAIServer(responder=hidden) as server:
            ...
        print(hidden.rejected, hidden.max_in_flight)
        ```

    Attributes:
        capacity: The hidden capacity (requests in flight it serves at full speed).
        mode: ``"reject"`` or ``"slow"``.
        latency: Seconds each reply takes within the capacity.
        retry_after: The Retry-After of its 429s, in seconds.
        in_flight: Requests it holds now.
        max_in_flight: The most it held at once.
        served: Requests it answered normally.
        rejected: Requests it answered with a 429.
    """

    def __init__(
        self,
        capacity: int,
        *,
        mode: Literal["reject", "slow"] = "reject",
        latency: float = 0.2,
        retry_after: float = 1.0,
        then: Responder | None = None,
    ) -> None:
        """Configure the hidden capacity.

        Args:
            capacity: Requests in flight it serves at full speed, >= 1.
            mode: ``"reject"`` (429 above the capacity) or ``"slow"`` (replies slow down in
                proportion above it).
            latency: Seconds each reply takes within the capacity, >= 0.
            retry_after: Retry-After of its 429s, in seconds, >= 0.
            then: Computes the replies it lets through (default: the server's default reply,
                or ``"served"`` in a `FunctionLLM`).

        Raises:
            ValueError: A value is out of range, or ``mode`` is neither.
        """
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"Capacity({capacity!r}): capacity is a whole number >= 1")
        if mode not in ("reject", "slow"):
            raise ValueError(f"Capacity(mode={mode!r}): mode is 'reject' or 'slow'")
        if not (latency >= 0 and retry_after >= 0):
            raise ValueError(
                f"Capacity(latency={latency!r}, retry_after={retry_after!r}): seconds >= 0"
            )
        self.capacity = capacity
        self.mode = mode
        self.latency = latency
        self.retry_after = retry_after
        self.in_flight = 0
        self.max_in_flight = 0
        self.served = 0
        self.rejected = 0
        self._then = then
        self._lock = threading.Lock()

    async def __call__(self, request: Any) -> Reply | None:
        """Answer ``request`` after its latency, or with a 429 above the capacity."""
        import anyio

        with self._lock:
            if self.mode == "reject" and self.in_flight >= self.capacity:
                self.rejected += 1
                return Error(
                    429, message="loopback capacity exceeded", retry_after=self.retry_after
                )
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            delay = self.latency
            if self.mode == "slow":
                delay *= max(1.0, self.in_flight / self.capacity)
        try:
            await anyio.sleep(delay)
        finally:
            with self._lock:
                self.in_flight -= 1
        with self._lock:
            self.served += 1
        if self._then is None:
            return None if isinstance(request, ReceivedRequest) else Text("served")
        result = self._then(request)
        return await result if inspect.isawaitable(result) else result


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


# --- default replies and usage ---------------------------------------------------------------


def _prompt_tokens(messages: Sequence[Any]) -> int:
    chars = sum(len(_content_text(m.get("content"))) for m in messages if isinstance(m, dict))
    return max(1, chars // 4)


def _default_reply(request: ReceivedRequest) -> Reply:
    last = request.last_user_message
    try:
        structured = _structured_reply(request.response_format, last)
        if structured is not None:
            return structured
        if request.tools and not any(
            isinstance(m, dict) and m.get("role") == "tool" for m in request.messages
        ):
            return ToolCalls([_example_call(tool, last) for tool in request.tools])
    except ValueError as exc:
        return Error(400, f"loopback server cannot build a reply: {exc}")
    return Text("loopback reply: " + last[:60])


def _structured_reply(response_format: dict[str, Any] | None, seed: str) -> Text | None:
    if not isinstance(response_format, dict):
        return None
    kind = response_format.get("type")
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if isinstance(schema, dict):
            return Text(json.dumps(example_for_schema(schema, seed=seed)))
    if kind == "json_object":
        return Text(json.dumps({"reply": "loopback reply: " + seed[:60]}))
    return None


def _example_call(tool: Any, seed: str) -> ToolCall:
    function = tool.get("function", {}) if isinstance(tool, dict) else {}
    name = str(function.get("name", "tool"))
    parameters = function.get("parameters") or {"type": "object", "properties": {}}
    arguments = example_for_schema(parameters, seed=seed)
    return ToolCall(name, arguments if isinstance(arguments, dict) else {})


# --- rendering ----------------------------------------------------------------------------------

_ERROR_KINDS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "permission_denied"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    408: ("timeout", "request_timeout"),
    409: ("invalid_request_error", "conflict"),
    413: ("invalid_request_error", "request_too_large"),
    422: ("invalid_request_error", "unprocessable_entity"),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    502: ("server_error", "bad_gateway"),
    503: ("server_error", "service_unavailable"),
    504: ("server_error", "gateway_timeout"),
}


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _http_head(status: int, headers: Sequence[tuple[str, str]], *, keep_alive: bool) -> bytes:
    lines = [f"HTTP/1.1 {status} {_reason(status)}"]
    lines += [f"{name}: {value}" for name, value in headers]
    lines.append("connection: keep-alive" if keep_alive else "connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _json_response(
    status: int,
    body: bytes,
    *,
    keep_alive: bool,
    extra: Sequence[tuple[str, str]] = (),
) -> bytes:
    headers = [("content-type", "application/json"), ("content-length", str(len(body)))]
    return _http_head(status, [*headers, *extra], keep_alive=keep_alive) + body


_SSE_HEADERS = (
    ("content-type", "text/event-stream; charset=utf-8"),
    ("cache-control", "no-cache"),
    ("transfer-encoding", "chunked"),
)


def _sse_response(payload: bytes, *, keep_alive: bool, extra: Sequence[tuple[str, str]]) -> bytes:
    headers = [*_SSE_HEADERS, *extra]
    # The whole stream goes out as one chunk: replies are instant, and one write
    # keeps the per-request server cost minimal for benchmarks.
    framed = b"%x\r\n%s\r\n0\r\n\r\n" % (len(payload), payload)
    return _http_head(200, headers, keep_alive=keep_alive) + framed


def _error_body(status: int, message: str, code: str | None = None) -> bytes:
    kind, default = _ERROR_KINDS.get(
        status, ("server_error", None) if status >= 500 else ("invalid_request_error", None)
    )
    code = code or default
    error = {"message": message, "type": kind, "param": None, "code": code}
    return json.dumps({"error": error}).encode()


def _retry_headers(error: Error) -> list[tuple[str, str]]:
    headers: list[tuple[str, str]] = []
    retry_after = error.retry_after
    if isinstance(retry_after, datetime):
        headers.append(("retry-after", email.utils.format_datetime(retry_after, usegmt=True)))
    elif retry_after is not None and float(retry_after).is_integer():
        headers.append(("retry-after", str(int(retry_after))))
    elif retry_after is not None:
        headers.append(("retry-after", f"{retry_after:g}"))
        headers.append(("retry-after-ms", f"{retry_after * 1000:g}"))
    if error.retry_after_ms is not None:
        headers.append(("retry-after-ms", f"{error.retry_after_ms:g}"))
    return headers


def _rendered_calls(request: ReceivedRequest, calls: Sequence[ToolCall]) -> list[dict[str, Any]]:
    return [
        {
            "id": call.id or f"call_{request.index}_{position}",
            "type": "function",
            "function": {
                "name": call.name,
                "arguments": call.arguments
                if isinstance(call.arguments, str)
                else json.dumps(call.arguments),
            },
        }
        for position, call in enumerate(calls)
    ]


@dataclass
class _Answer:
    """A text or tool-call reply normalised for both wire formats."""

    content: str | None
    tool_calls: list[dict[str, Any]]
    usage: dict[str, int]
    finish: str | None = None
    refusal: str | None = None

    @property
    def finish_reason(self) -> str:
        if self.finish is not None:
            return self.finish
        return "tool_calls" if self.tool_calls else "stop"


def _answer(request: ReceivedRequest, reply: Text | ToolCalls) -> _Answer:
    finish = refusal = None
    if isinstance(reply, Text):
        content: str | None = reply.content
        calls: list[dict[str, Any]] = []
        fixed, finish, refusal = reply.usage, reply.finish_reason, reply.refusal
        if refusal is not None and not content:
            content = None
    else:
        content, calls, fixed = reply.content, _rendered_calls(request, reply.calls), None
    if fixed is None:
        chars = len(content or "") + sum(
            len(c["function"]["name"]) + len(c["function"]["arguments"]) for c in calls
        )
        fixed = (_prompt_tokens(request.messages), max(1, chars // 4))
    usage = {
        "prompt_tokens": fixed[0],
        "completion_tokens": fixed[1],
        "total_tokens": fixed[0] + fixed[1],
    }
    return _Answer(content, calls, usage, finish, refusal)


def _completion_body(request: ReceivedRequest, answer: _Answer) -> bytes:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": answer.content,
        "refusal": answer.refusal,
    }
    if answer.tool_calls:
        message["tool_calls"] = answer.tool_calls
    body = {
        "id": f"chatcmpl-loopback-{request.index}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request.model,
        "system_fingerprint": "fp_loopback",
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": answer.finish_reason,
            }
        ],
        "usage": answer.usage,
    }
    return json.dumps(body).encode()


def _stream_deltas(answer: _Answer) -> Iterator[dict[str, Any]]:
    yield {"role": "assistant", "content": ""}
    for piece in _WORD_PIECES.findall(answer.content or ""):
        yield {"content": piece}
    for piece in _WORD_PIECES.findall(answer.refusal or ""):
        yield {"refusal": piece}
    for position, call in enumerate(answer.tool_calls):
        function = call["function"]
        yield {
            "tool_calls": [
                {
                    "index": position,
                    "id": call["id"],
                    "type": "function",
                    "function": {"name": function["name"], "arguments": ""},
                }
            ]
        }
        arguments: str = function["arguments"]
        for start in range(0, len(arguments), _ARGUMENT_PIECE):
            piece = arguments[start : start + _ARGUMENT_PIECE]
            yield {"tool_calls": [{"index": position, "function": {"arguments": piece}}]}


def _stream_events(request: ReceivedRequest, answer: _Answer) -> list[bytes]:
    base = {
        "id": f"chatcmpl-loopback-{request.index}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": request.model,
        "system_fingerprint": "fp_loopback",
    }
    chunks = [
        {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
        for delta in _stream_deltas(answer)
    ]
    chunks.append(
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": answer.finish_reason}]}
    )
    options = request.body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage"):
        chunks.append({**base, "choices": [], "usage": answer.usage})
    events = [f"data: {json.dumps(chunk)}\n\n".encode() for chunk in chunks]
    events.append(b"data: [DONE]\n\n")
    return events


def _render(request: ReceivedRequest, reply: Reply, *, keep_alive: bool) -> tuple[bytes, int]:
    """Return the full HTTP response for a final (non-Slow, non-Disconnect, non-Cut) reply."""
    extra = [("x-request-id", f"req_loopback_{request.index}")]
    if isinstance(reply, Error):
        body = _error_body(reply.status, reply.message, reply.code)
        extra += _retry_headers(reply)
        return _json_response(reply.status, body, keep_alive=keep_alive, extra=extra), reply.status
    if isinstance(reply, Malformed):
        if request.stream:
            payload = f"data: {reply.body}\n\n".encode()
            return _sse_response(payload, keep_alive=keep_alive, extra=extra), 200
        return _json_response(200, reply.body.encode(), keep_alive=keep_alive, extra=extra), 200
    if not isinstance(reply, Text | ToolCalls):
        raise TypeError(f"cannot render {reply!r}")
    answer = _answer(request, reply)
    if request.stream:
        payload = b"".join(_stream_events(request, answer))
        return _sse_response(payload, keep_alive=keep_alive, extra=extra), 200
    body = _completion_body(request, answer)
    return _json_response(200, body, keep_alive=keep_alive, extra=extra), 200


def _render_cut(request: ReceivedRequest, cut: Cut) -> tuple[bytes, bytes]:
    """Return the bytes sent before a cut, and those that end the response (``then="end"``)."""
    extra = [("x-request-id", f"req_loopback_{request.index}")]
    answer = _answer(request, cut.reply)
    keep = max(0, cut.keep)
    if request.stream:
        head = _http_head(200, [*_SSE_HEADERS, *extra], keep_alive=False)
        part = b"".join(_stream_events(request, answer)[:keep])
        framed = b"%x\r\n%s\r\n" % (len(part), part) if part else b""
        return head + framed, b"0\r\n\r\n"
    body = _completion_body(request, answer)
    # The head announces the whole body; only its start follows.
    whole = _json_response(200, body, keep_alive=False, extra=extra)
    return whole[: len(whole) - len(body) + keep], b""


# --- HTTP connections ---------------------------------------------------------------------------


class _BadRequest(Exception):
    """The bytes on the wire are not a request this server understands."""


@dataclass
class _HttpRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


class _Connection:
    """One client socket: request parsing, replies and disconnect-aware sleeping."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        # A byte read while watching for disconnects (a pipelined request's first).
        self.pushback = b""

    async def read_request(self) -> _HttpRequest | None:
        """Read the next request; None when the client closed the connection."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        except asyncio.LimitOverrunError as exc:
            raise _BadRequest("request head too large") from exc
        head, self.pushback = self.pushback + head, b""
        lines = head.decode("latin-1").lstrip("\r\n").split("\r\n")
        try:
            method, target, version = lines[0].split(" ", 2)
        except ValueError as exc:
            raise _BadRequest(f"bad request line {lines[0]!r}") from exc
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name:
                headers[name.strip().lower()] = value.strip()
        body = await self._read_body(headers)
        connection = headers.get("connection", "").lower()
        keep_alive = "close" not in connection and (
            version != "HTTP/1.0" or "keep-alive" in connection
        )
        return _HttpRequest(method, target.split("?", 1)[0], headers, body, keep_alive)

    async def _read_body(self, headers: dict[str, str]) -> bytes:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return await self._read_chunked()
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError as exc:
            raise _BadRequest("bad content-length") from exc
        return await self.reader.readexactly(length) if length > 0 else b""

    async def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            size_line = await self.reader.readuntil(b"\r\n")
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError as exc:
                raise _BadRequest("bad chunk size") from exc
            if size == 0:
                # Skip trailers up to the blank line that ends the body.
                while await self.reader.readuntil(b"\r\n") != b"\r\n":
                    pass
                return b"".join(parts)
            parts.append(await self.reader.readexactly(size))
            await self.reader.readexactly(2)

    async def sleep(self, delay: float) -> bool:
        """Sleep ``delay`` seconds; return False early if the client disconnects."""
        if delay <= 0:
            return True
        if self.pushback:
            await asyncio.sleep(delay)  # Already holding a pipelined byte: cannot watch.
            return True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + delay
        # Waiting for a byte is how EOF (the client hanging up) becomes visible.
        watch = asyncio.ensure_future(self.reader.read(1))
        try:
            done, _ = await asyncio.wait((watch,), timeout=delay)
        finally:
            if not watch.done():
                watch.cancel()
                # Let the cancellation land: the reader allows one waiter at a time, and the
                # next request's read follows at once on a kept-alive connection.
                await asyncio.wait((watch,))
        if not done:
            if not watch.cancelled() and watch.exception() is None and watch.result():
                self.pushback = watch.result()  # a byte arrived as the wait ended
            return True
        try:
            data = watch.result()
        except OSError:
            return False
        if not data:
            return False
        self.pushback = data
        await asyncio.sleep(max(0.0, deadline - loop.time()))
        return True

    async def send(self, data: bytes) -> bool:
        """Write a response; return False if the client is gone."""
        try:
            self.writer.write(data)
            await self.writer.drain()
        except OSError:
            return False
        return True

    def reset(self) -> None:
        """Abort the connection so that the client sees a reset (a TCP RST), not an orderly end."""
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        self.writer.transport.abort()

    async def close(self) -> None:
        """Close the socket and wait until the transport is released."""
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


# --- the server -----------------------------------------------------------------------------------


class OpenAIServer:
    """A loopback OpenAI chat-completions server for tests and benchmarks.

    Use it in the current event loop (``async with OpenAIServer() as server``) or
    in a daemon thread with its own loop (``with OpenAIServer().in_thread()``).
    Replies come, in order of precedence, from :meth:`enqueue_for` queues, the
    :meth:`enqueue` queue, the ``responder`` and finally the default reply.

    Attributes:
        latency: Seconds every chat request waits server-side before its reply.
        requests: Every chat-completions request received since the last reset.
        in_flight: Requests whose body has been read and whose reply is not done.
        max_in_flight: The highest ``in_flight`` seen since the last reset.
        disconnects: Clients that went away while their request was being handled.
        connections: TCP connections accepted since the last reset (a client that keeps its
            connections alive opens one per concurrent request, once).
    """

    def __init__(
        self,
        *,
        latency: float = 0.0,
        responder: Responder | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        """Configure the server; it listens only once started.

        Args:
            latency: Server-side delay before every chat reply, in seconds.
            responder: Computes replies not taken from the scripted queues; may be
                async; returning None falls back to the default reply.
            host: Interface to bind (loopback by default).
            port: Port to bind; 0 picks a free one.
        """
        self.latency = latency
        self.requests: list[ReceivedRequest] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.disconnects = 0
        self.connections = 0
        self._responder = responder
        self._host = host
        self._port = port
        # Guards counters and queues: the thread mode mutates them from another thread.
        self._lock = threading.Lock()
        self._next_index = 0
        self._queue: deque[Reply] = deque()
        self._keyed: dict[str, deque[Reply]] = {}
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[Any]] = set()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None
        self._thread_stop: asyncio.Event | None = None

    # --- scripting and inspection ---

    def enqueue(self, *replies: Reply) -> None:
        """Queue replies for the next requests, consumed in order."""
        with self._lock:
            self._queue.extend(replies)

    def enqueue_for(self, key: str, *replies: Reply) -> None:
        """Queue replies for requests whose last user message contains ``key``.

        These queues are checked (in the order keys were first added) before the
        global queue; once a key's queue is empty its requests fall through.
        """
        with self._lock:
            self._keyed.setdefault(key, deque()).extend(replies)

    @property
    def count(self) -> int:
        """The number of chat requests received since the last reset."""
        return len(self.requests)

    def count_for(self, key: str) -> int:
        """Return how many requests had ``key`` in their last user message."""
        return sum(1 for request in list(self.requests) if key in request.last_user_message)

    def reset_counters(self) -> None:
        """Forget recorded requests, connections, disconnects and the in-flight peak.

        Queued replies are kept; request indexes start again from 0.
        """
        with self._lock:
            self.requests.clear()
            self.disconnects = 0
            self.connections = 0
            self.max_in_flight = self.in_flight
            self._next_index = 0

    @property
    def open_connections(self) -> int:
        """The connections open now (closed ones leave once the server has seen them close)."""
        return len(self._handlers)

    @property
    def port(self) -> int:
        """The bound port (valid once started)."""
        if self._server is None:
            raise RuntimeError("OpenAIServer is not running; use `async with` or in_thread()")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def base_url(self) -> str:
        """The OpenAI base URL, ``http://HOST:PORT/v1`` (valid once started)."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}/v1"

    # --- lifecycle in the current loop ---

    async def start(self) -> OpenAIServer:
        """Start listening in the running event loop."""
        if self._server is not None:
            raise RuntimeError("OpenAIServer is already running")
        self._closing = False
        self._server = await asyncio.start_server(
            self._on_connection, self._host, self._port, limit=_MAX_HEAD_BYTES
        )
        return self

    async def stop(self) -> None:
        """Stop listening, close every connection and wait for the handlers."""
        server, self._server = self._server, None
        if server is None:
            return
        self._closing = True
        server.close()
        # Let connections accepted just before close() start, so they get cancelled too.
        await asyncio.sleep(0)
        while self._handlers:
            handlers = list(self._handlers)
            for task in handlers:
                task.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()

    async def __aenter__(self) -> OpenAIServer:
        """Start the server in the running loop."""
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        """Stop the server (see :meth:`stop`)."""
        await self.stop()

    # --- lifecycle in a thread ---

    def start_in_thread(self) -> OpenAIServer:
        """Run the server on its own event loop in a daemon thread.

        Returns:
            The server itself, listening once this returns.

        Raises:
            RuntimeError: If it already runs in a thread or did not start in time.
        """
        if self._thread is not None:
            raise RuntimeError("OpenAIServer already runs in a thread")
        ready = threading.Event()
        failure: list[BaseException] = []
        thread = threading.Thread(
            target=self._thread_main, args=(ready, failure), name="crewflow-openai-server"
        )
        thread.daemon = True
        thread.start()
        if not ready.wait(_THREAD_START_TIMEOUT):
            raise RuntimeError("OpenAIServer thread did not start in time")
        if failure:
            thread.join()
            raise failure[0]
        self._thread = thread
        return self

    def stop_thread(self) -> None:
        """Stop a server started with :meth:`start_in_thread` and join its thread."""
        thread, loop, stop = self._thread, self._thread_loop, self._thread_stop
        if thread is None:
            return
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # The loop already ended.
                loop.call_soon_threadsafe(stop.set)
        thread.join()
        self._thread = self._thread_loop = self._thread_stop = None

    @contextlib.contextmanager
    def in_thread(self) -> Iterator[OpenAIServer]:
        """Context manager form of :meth:`start_in_thread` / :meth:`stop_thread`."""
        self.start_in_thread()
        try:
            yield self
        finally:
            self.stop_thread()

    def _thread_main(self, ready: threading.Event, failure: list[BaseException]) -> None:
        try:
            asyncio.run(self._serve_in_thread(ready))
        except BaseException as exc:  # Handed to the starting thread.
            failure.append(exc)
            if ready.is_set():
                _log.exception("loopback OpenAI server thread failed")
            ready.set()

    async def _serve_in_thread(self, ready: threading.Event) -> None:
        self._thread_loop = asyncio.get_running_loop()
        self._thread_stop = asyncio.Event()
        async with self:
            ready.set()
            await self._thread_stop.wait()

    # --- request handling ---

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        with self._lock:
            self.connections += 1
        connection = _Connection(reader, writer)
        try:
            if not self._closing:
                await self._serve(connection)
        except (OSError, asyncio.IncompleteReadError):
            pass  # The client went away mid-request; nothing to answer.
        except asyncio.CancelledError:
            # This is the outermost task of the connection and only stop() or loop
            # shutdown cancel it; Python 3.11's asyncio logs a cancelled one as an error.
            pass
        except Exception:
            _log.exception("loopback OpenAI server: connection handler failed")
        finally:
            try:
                await connection.close()
            finally:
                # Only now: stop() waits for the handlers it finds, closing included.
                if task is not None:
                    self._handlers.discard(task)

    async def _serve(self, connection: _Connection) -> None:
        while True:
            try:
                request = await connection.read_request()
            except _BadRequest as exc:
                body = _error_body(400, str(exc))
                await connection.send(_json_response(400, body, keep_alive=False))
                return
            if request is None:
                return
            keep = await self._dispatch(connection, request)
            if not (keep and request.keep_alive):
                return

    async def _dispatch(self, connection: _Connection, request: _HttpRequest) -> bool:
        path = request.path.rstrip("/") or "/"
        keep_alive = request.keep_alive
        if path in _CHAT_PATHS and request.method == "POST":
            return await self._chat(connection, request, path)
        if path in _MODEL_PATHS and request.method == "GET":
            models = [
                {"id": name, "object": "model", "created": 0, "owned_by": "crewflow"}
                for name in _MODEL_IDS
            ]
            body = json.dumps({"object": "list", "data": models}).encode()
            return await connection.send(_json_response(200, body, keep_alive=keep_alive))
        status = 405 if path in _CHAT_PATHS | _MODEL_PATHS else 404
        body = _error_body(status, f"{request.method} {request.path} is not served here")
        return await connection.send(_json_response(status, body, keep_alive=keep_alive))

    async def _chat(self, connection: _Connection, request: _HttpRequest, path: str) -> bool:
        try:
            body = json.loads(request.body)
        except (ValueError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict):
            error = _error_body(400, "request body must be a JSON object")
            return await connection.send(_json_response(400, error, keep_alive=request.keep_alive))
        received = self._record(path, body, request.headers)
        try:
            reply = await self._choose(received)
            if not await connection.sleep(self.latency):
                self._mark_disconnected(received)
                return False
            return await self._deliver(connection, received, reply, request.keep_alive)
        finally:
            self._done(received)

    def _done(self, received: ReceivedRequest) -> None:
        """The request is no longer in flight (once: its reply is handed over, or it ended
        without one)."""
        with self._lock:
            if received.finished_at is None:
                received.finished_at = time.monotonic()
                self.in_flight -= 1

    def _record(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> ReceivedRequest:
        messages = body.get("messages")
        tools = body.get("tools")
        response_format = body.get("response_format")
        with self._lock:
            received = ReceivedRequest(
                index=self._next_index,
                path=path,
                model=str(body.get("model") or "test-model"),
                body=body,
                messages=messages if isinstance(messages, list) else [],
                stream=bool(body.get("stream")),
                tools=tools if isinstance(tools, list) and tools else None,
                response_format=response_format if isinstance(response_format, dict) else None,
                headers={k: v for k, v in headers.items() if k not in _SECRET_HEADERS},
                has_auth=any(headers.get(name) for name in _AUTH_HEADERS),
                received_at=time.monotonic(),
            )
            self._next_index += 1
            self.requests.append(received)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        return received

    def _mark_disconnected(self, received: ReceivedRequest) -> None:
        received.disconnected = True
        with self._lock:
            self.disconnects += 1

    def _pop_scripted(self, received: ReceivedRequest) -> Reply | None:
        with self._lock:
            if self._keyed:
                text = received.last_user_message
                for key, queue in self._keyed.items():
                    if queue and key in text:
                        return queue.popleft()
            return self._queue.popleft() if self._queue else None

    async def _choose(self, received: ReceivedRequest) -> Reply:
        # Chosen on arrival, before any latency, so scripts follow arrival order.
        reply = self._pop_scripted(received)
        if reply is None and self._responder is not None:
            try:
                result = self._responder(received)
                reply = await result if inspect.isawaitable(result) else result
            except Exception as exc:
                _log.exception("loopback OpenAI server: responder failed")
                reply = Error(500, f"responder raised {exc!r}")
        return reply if reply is not None else _default_reply(received)

    async def _deliver(
        self, connection: _Connection, received: ReceivedRequest, reply: Reply, keep_alive: bool
    ) -> bool:
        while isinstance(reply, Slow):
            if not await connection.sleep(reply.delay):
                self._mark_disconnected(received)
                return False
            reply = reply.reply
        if isinstance(reply, Disconnect):
            return False
        if isinstance(reply, Cut):
            await self._cut(connection, received, reply)
            return False
        data, status = _render(received, reply, keep_alive=keep_alive)
        # Done before the bytes go out: a client holding its reply never sees it in flight.
        self._done(received)
        if not await connection.send(data):
            self._mark_disconnected(received)
            return False
        received.status = status
        return keep_alive

    async def _cut(self, connection: _Connection, received: ReceivedRequest, cut: Cut) -> None:
        start, end = _render_cut(received, cut)
        if not await connection.send(start):
            self._mark_disconnected(received)
            return
        received.status = 200
        if cut.then == "reset":
            connection.reset()
        elif cut.then == "stall":
            if not await connection.sleep(math.inf):
                self._mark_disconnected(received)
        elif not await connection.send(end):
            self._mark_disconnected(received)


# --- command line -------------------------------------------------------------------------------


def _stdin_is_watchable() -> bool:
    """Whether stdin is a pipe, socket or terminal whose closing should stop us.

    ``/dev/null``, regular files and a closed descriptor are not: a server started
    without a usable stdin (as in CI) would otherwise stop immediately.
    """
    try:
        mode = os.fstat(0).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or os.isatty(0)


def _watch_stdin(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    with contextlib.suppress(OSError):
        while os.read(0, 65536):
            pass
    with contextlib.suppress(RuntimeError):  # The loop already ended.
        loop.call_soon_threadsafe(stop.set)


async def _serve_cli(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):  # Windows event loops.
            loop.add_signal_handler(signum, stop.set)
    if args.stdin == "watch" or (args.stdin == "auto" and _stdin_is_watchable()):
        threading.Thread(target=_watch_stdin, args=(loop, stop), daemon=True).start()
    async with OpenAIServer(latency=args.latency, host=args.host, port=args.port) as server:
        sys.stdout.write(server.base_url + "\n")
        sys.stdout.flush()
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> None:
    """Run the loopback server from the command line.

    The base URL is written as the first stdout line (flushed); the server runs
    until SIGTERM, SIGINT or (when stdin is a pipe or terminal) stdin closes.

    Args:
        argv: Arguments without the program name; ``sys.argv[1:]`` when None.
    """
    parser = argparse.ArgumentParser(
        prog="python -m crewflow.testing.server",
        description="Loopback OpenAI chat-completions server for tests and benchmarks.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind")
    parser.add_argument("--port", type=int, default=0, help="port (0 picks a free one)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each reply")
    parser.add_argument(
        "--stdin",
        choices=("auto", "watch", "ignore"),
        default="auto",
        help="stop when stdin closes: auto = only if stdin is a pipe, socket or terminal",
    )
    asyncio.run(_serve_cli(parser.parse_args(argv)))
