"""Tests for the loopback OpenAI server, driven by real clients over the socket."""

from __future__ import annotations

import asyncio
import email.utils
import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import openai
import pytest
import pytest_asyncio
from pydantic import BaseModel, Field

import crewflow
from crewflow.testing._server import (
    Cut,
    Disconnect,
    Error,
    Malformed,
    OpenAIServer,
    ReceivedRequest,
    Reply,
    Slow,
    Storm,
    Text,
    ToolCall,
    ToolCalls,
    _Connection,
)
from tests.waiting import wait_until

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

USER = [{"role": "user", "content": "Summarise the quarterly report"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
            },
            "required": ["city", "days"],
            "additionalProperties": False,
        },
    },
}
REPO_ROOT = Path(crewflow.__file__).resolve().parent.parent


@pytest_asyncio.fixture
async def server() -> AsyncIterator[OpenAIServer]:
    async with OpenAIServer() as srv:
        yield srv


@pytest_asyncio.fixture
async def client(server: OpenAIServer) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=server.base_url, api_key="test", max_retries=0) as c:
        yield c


async def ask(client: openai.AsyncOpenAI, text: str = "hello", **kwargs: Any) -> Any:
    return await client.chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": text}], **kwargs
    )


async def read_stream(client: openai.AsyncOpenAI) -> list[Any]:
    stream = await ask(client, stream=True)
    return [chunk async for chunk in stream]


# --- plain replies -------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_default_reply_echoes_the_last_user_message(
    server: OpenAIServer, client: openai.AsyncOpenAI
) -> None:
    messages: Any = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": "x" * 100},
    ]
    reply = await client.chat.completions.create(model="my-model", messages=messages)
    assert reply.object == "chat.completion"
    assert reply.model == "my-model"
    choice = reply.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    assert choice.message.content == "loopback reply: " + "x" * 60
    assert choice.message.tool_calls is None
    chars = len("You are terse.") + len("first question") + len("first answer") + 100
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == chars // 4
    assert reply.usage.completion_tokens == len(choice.message.content) // 4
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    [request] = server.requests
    assert request.index == 0
    assert request.path == "/v1/chat/completions"
    assert request.model == "my-model"
    assert request.messages == messages
    assert request.stream is False
    assert request.status == 200
    assert request.finished_at is not None
    assert request.finished_at >= request.received_at
    assert request.disconnected is False


@pytest.mark.asyncio
async def test_scripted_text_with_explicit_usage(
    server: OpenAIServer, client: openai.AsyncOpenAI
) -> None:
    server.enqueue(Text("first", usage=(11, 7)), Text("second"))
    one = await ask(client)
    two = await ask(client)
    three = await ask(client, "third")
    assert one.choices[0].message.content == "first"
    assert (one.usage.prompt_tokens, one.usage.completion_tokens) == (11, 7)
    assert two.choices[0].message.content == "second"
    assert two.usage.completion_tokens == 1
    assert three.choices[0].message.content == "loopback reply: third"
    assert server.count == 3


@pytest.mark.asyncio
async def test_accepts_the_path_without_v1(server: OpenAIServer) -> None:
    base = server.base_url.removesuffix("/v1")
    async with openai.AsyncOpenAI(base_url=base, api_key="test", max_retries=0) as client:
        reply = await ask(client, "no prefix")
    assert reply.choices[0].message.content == "loopback reply: no prefix"
    assert server.requests[0].path == "/chat/completions"


# --- streaming ------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_streaming_text_with_usage(server: OpenAIServer, client: openai.AsyncOpenAI) -> None:
    server.enqueue(Text("the quick brown fox jumps", usage=(3, 5)))
    stream = await ask(client, stream=True, stream_options={"include_usage": True})
    pieces: list[str] = []
    finish: list[str] = []
    usage = None
    async for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        if chunk.usage is not None:
            assert chunk.choices == []
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            if choice.finish_reason:
                finish.append(choice.finish_reason)
    assert "".join(pieces) == "the quick brown fox jumps"
    assert len(pieces) == 5
    assert finish == ["stop"]
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (3, 5, 8)
    assert server.requests[0].stream is True


@pytest.mark.asyncio
async def test_streaming_without_include_usage_sends_no_usage_chunk(
    client: openai.AsyncOpenAI,
) -> None:
    stream = await ask(client, "words here", stream=True)
    chunks = [chunk async for chunk in stream]
    assert all(chunk.usage is None for chunk in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


@pytest.mark.asyncio
async def test_streaming_tool_calls_accumulate(
    server: OpenAIServer, client: openai.AsyncOpenAI
) -> None:
    arguments = {"city": "Paris", "days": 3, "notes": "a fairly long argument value"}
    server.enqueue(
        ToolCalls([ToolCall("get_weather", arguments, id="call_a"), ToolCall("noop", "{}")])
    )
    stream = await ask(client, stream=True, tools=[WEATHER_TOOL])
    calls: dict[int, dict[str, str]] = {}
    argument_pieces = 0
    finish = None
    async for chunk in stream:
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                call["id"] += delta.id or ""
                assert delta.function is not None
                call["name"] += delta.function.name or ""
                call["arguments"] += delta.function.arguments or ""
                argument_pieces += bool(delta.function.arguments)
    assert finish == "tool_calls"
    assert calls[0]["id"] == "call_a"
    assert calls[0]["name"] == "get_weather"
    assert json.loads(calls[0]["arguments"]) == arguments
    assert calls[1] == {"id": "call_0_1", "name": "noop", "arguments": "{}"}
    assert argument_pieces > 2  # The long arguments arrived in several deltas.


# --- tool calls and structured output -------------------------------------------------------


@pytest.mark.asyncio
async def test_tool_calls_non_stream(server: OpenAIServer, client: openai.AsyncOpenAI) -> None:
    server.enqueue(ToolCalls([ToolCall("get_weather", {"city": "Oslo", "days": 2})], "checking"))
    reply = await ask(client, tools=[WEATHER_TOOL])
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "checking"
    [call] = choice.message.tool_calls
    assert call.id == "call_0_0"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Oslo", "days": 2}
    assert server.requests[0].tools == [WEATHER_TOOL]


@pytest.mark.asyncio
async def test_default_calls_each_offered_tool_then_answers(
    server: OpenAIServer, client: openai.AsyncOpenAI
) -> None:
    search_tool = {"type": "function", "function": {"name": "search"}}
    first = await ask(client, "weather in Rome", tools=[WEATHER_TOOL, search_tool])
    calls = first.choices[0].message.tool_calls
    assert [c.function.name for c in calls] == ["get_weather", "search"]
    weather = json.loads(calls[0].function.arguments)
    assert set(weather) == {"city", "days"}
    assert 1 <= weather["days"] <= 7
    assert json.loads(calls[1].function.arguments) == {}

    conversation: Any = [
        {"role": "user", "content": "weather in Rome"},
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": calls[0].id, "content": "sunny"},
        {"role": "tool", "tool_call_id": calls[1].id, "content": "nothing"},
    ]
    second = await client.chat.completions.create(
        model="test-model", messages=conversation, tools=[WEATHER_TOOL, search_tool]
    )
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == "loopback reply: weather in Rome"


class Citation(BaseModel):
    source: str
    page: int = Field(ge=1, le=500)


class Report(BaseModel):
    title: str = Field(min_length=3, max_length=40)
    score: float = Field(gt=0, lt=1)
    tags: list[str]
    citations: list[Citation]


@pytest.mark.asyncio
async def test_json_schema_default_reply_validates(
    server: OpenAIServer, client: openai.AsyncOpenAI
) -> None:
    response_format: Any = {
        "type": "json_schema",
        "json_schema": {"name": "Report", "schema": Report.model_json_schema()},
    }
    raw = await ask(client, "write the report", response_format=response_format)
    report = Report.model_validate_json(raw.choices[0].message.content)
    assert report.citations
    # The SDK's own structured-output path (strict schema) parses it too.
    parsed = await client.chat.completions.parse(
        model="test-model", messages=USER, response_format=Report
    )
    assert isinstance(parsed.choices[0].message.parsed, Report)
    assert server.requests[1].response_format is not None
    again = await ask(client, "write the report", response_format=response_format)
    assert again.choices[0].message.content == raw.choices[0].message.content


@pytest.mark.asyncio
async def test_json_object_default_reply(client: openai.AsyncOpenAI) -> None:
    reply = await ask(client, "json please", response_format={"type": "json_object"})
    assert json.loads(reply.choices[0].message.content) == {"reply": "loopback reply: json please"}


# --- errors and failures --------------------------------------------------------------------


@pytest.mark.asyncio
async def test_rate_limit_with_retry_after(
    server: OpenAIServer, client: openai.AsyncOpenAI
) -> None:
    server.enqueue(Error(429, "slow down", retry_after=2), Error(429, retry_after=0.25))
    with pytest.raises(openai.RateLimitError) as whole:
        await ask(client)
    assert whole.value.status_code == 429
    assert whole.value.response.headers["retry-after"] == "2"
    assert "retry-after-ms" not in whole.value.response.headers
    assert whole.value.body == {
        "message": "slow down",
        "type": "requests",
        "param": None,
        "code": "rate_limit_exceeded",
    }
    with pytest.raises(openai.RateLimitError) as fractional:
        await ask(client)
    assert fractional.value.response.headers["retry-after"] == "0.25"
    assert fractional.value.response.headers["retry-after-ms"] == "250"
    assert [r.status for r in server.requests] == [429, 429]


@pytest.mark.asyncio
async def test_retry_after_as_an_http_date_or_milliseconds_alone(
    server: OpenAIServer, client: openai.AsyncOpenAI
) -> None:
    moment = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    server.enqueue(Error(429, retry_after=moment), Error(429, retry_after_ms=150))
    with pytest.raises(openai.RateLimitError) as dated:
        await ask(client)
    header = dated.value.response.headers["retry-after"]
    assert header == "Wed, 02 Jan 2030 03:04:05 GMT"
    assert email.utils.parsedate_to_datetime(header) == moment
    with pytest.raises(openai.RateLimitError) as millis:
        await ask(client)
    assert millis.value.response.headers["retry-after-ms"] == "150"
    assert "retry-after" not in millis.value.response.headers


@pytest.mark.asyncio
async def test_finish_reason_and_refusal_are_sent_as_scripted(
    server: OpenAIServer, client: openai.AsyncOpenAI
) -> None:
    server.enqueue(
        Text('{"label": "go', finish_reason="length"),
        Text("", refusal="I cannot help with that."),
        Text("", refusal="I cannot help with that."),
    )
    cut = (await ask(client)).choices[0]
    assert (cut.finish_reason, cut.message.content) == ("length", '{"label": "go')
    refused = (await ask(client)).choices[0].message
    assert (refused.content, refused.refusal) == (None, "I cannot help with that.")
    stream = await ask(client, stream=True)
    pieces = [c.choices[0].delta.refusal async for c in stream if c.choices]
    assert "".join(p for p in pieces if p) == "I cannot help with that."


@pytest.mark.asyncio
async def test_a_cut_stream_resets_ends_early_or_stalls(
    server: OpenAIServer, client: openai.AsyncOpenAI
) -> None:
    reply = Text("one two three four five")
    server.enqueue(Cut(reply, keep=3, then="end"), Cut(reply, keep=3, then="reset"))
    # "end": a clean end of the HTTP body, but no finish reason and no [DONE].
    stream = await ask(client, stream=True)
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "one two "
    assert all(c.choices[0].finish_reason is None for c in chunks)
    # "reset": the client sees the connection break.
    with pytest.raises((openai.APIConnectionError, httpx.HTTPError)):
        await read_stream(client)
    server.enqueue(Cut(reply, keep=2, then="stall"))
    stream = await ask(client, stream=True, timeout=0.2)
    with pytest.raises((openai.APITimeoutError, httpx.ReadTimeout)):
        async for _ in stream:
            pass
    await wait_until(lambda: server.disconnects == 1)
    assert server.requests[2].disconnected is True
    await wait_until(lambda: server.in_flight == 0)
    assert (await ask(client, "after")).choices[0].message.content == "loopback reply: after"


@pytest.mark.asyncio
@pytest.mark.parametrize("then", ["reset", "end"])
async def test_a_cut_plain_reply_breaks_the_connection(
    server: OpenAIServer, client: openai.AsyncOpenAI, then: Any
) -> None:
    server.enqueue(Cut(Text("a whole reply"), keep=20, then=then))
    with pytest.raises(openai.APIConnectionError):
        await ask(client)
    assert server.requests[0].status == 200


@pytest.mark.asyncio
async def test_a_plain_reply_that_stalls_times_the_client_out(
    server: OpenAIServer, client: openai.AsyncOpenAI
) -> None:
    server.enqueue(Cut(Text("a whole reply"), keep=10, then="stall"))
    with pytest.raises(openai.APITimeoutError):
        await ask(client, timeout=0.2)
    await wait_until(lambda: server.disconnects == 1)


@pytest.mark.asyncio
@pytest.mark.parametrize("status", [500, 502, 503])
async def test_server_errors(server: OpenAIServer, client: openai.AsyncOpenAI, status: int) -> None:
    server.enqueue(Error(status, "boom", retry_after=1))
    with pytest.raises(openai.InternalServerError) as caught:
        await ask(client)
    assert isinstance(caught.value, openai.APIStatusError)
    assert caught.value.status_code == status
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["type"] == "server_error"
    assert caught.value.response.headers["retry-after"] == "1"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (400, openai.BadRequestError),
        (401, openai.AuthenticationError),
        (404, openai.NotFoundError),
    ],
)
async def test_client_errors(
    server: OpenAIServer, client: openai.AsyncOpenAI, status: int, error_type: type[Exception]
) -> None:
    server.enqueue(Error(status))
    with pytest.raises(error_type):
        await ask(client)


@pytest.mark.asyncio
async def test_malformed_json_raises_a_decode_error(
    server: OpenAIServer, client: openai.AsyncOpenAI
) -> None:
    # The openai SDK does not wrap this: json.loads fails inside response parsing.
    server.enqueue(Malformed(), Malformed("not even close"))
    with pytest.raises(json.JSONDecodeError):
        await ask(client)
    stream = await ask(client, stream=True)
    async with stream:
        with pytest.raises(json.JSONDecodeError):
            await anext(stream)
    assert [r.status for r in server.requests] == [200, 200]
    # The connection is still usable afterwards.
    assert (await ask(client, "ok")).choices[0].message.content == "loopback reply: ok"


@pytest.mark.asyncio
async def test_disconnect_raises_connection_error(
    server: OpenAIServer, client: openai.AsyncOpenAI
) -> None:
    server.enqueue(Disconnect())
    with pytest.raises(openai.APIConnectionError):
        await ask(client)
    [request] = server.requests
    assert request.status is None
    assert request.finished_at is not None
    assert (await ask(client, "after")).choices[0].message.content == "loopback reply: after"


@pytest.mark.asyncio
async def test_slow_reply_and_client_timeout_records_disconnect(
    server: OpenAIServer, client: openai.AsyncOpenAI
) -> None:
    server.enqueue(Slow(0.05, Text("late but fine")), Slow(30, Text("never sent")))
    assert (await ask(client)).choices[0].message.content == "late but fine"
    with pytest.raises(openai.APITimeoutError):
        await ask(client, timeout=0.2)
    await wait_until(lambda: server.disconnects == 1)
    slow = server.requests[1]
    assert slow.disconnected is True
    assert slow.status is None
    await wait_until(lambda: server.in_flight == 0)


@pytest.mark.asyncio
async def test_cancelling_a_request_aborts_it_on_the_server(
    server: OpenAIServer, client: openai.AsyncOpenAI
) -> None:
    server.enqueue(Slow(30, Text("never sent")))
    async with anyio.create_task_group() as group:
        group.start_soon(ask, client)
        await wait_until(lambda: server.in_flight == 1)
        group.cancel_scope.cancel()
    await wait_until(lambda: server.disconnects == 1)
    assert server.requests[0].disconnected is True
    await wait_until(lambda: server.in_flight == 0)


@pytest.mark.asyncio
async def test_global_latency_is_watched_for_disconnects() -> None:
    async with (
        OpenAIServer(latency=30) as server,
        openai.AsyncOpenAI(base_url=server.base_url, api_key="t", max_retries=0) as client,
    ):
        with pytest.raises(openai.APITimeoutError):
            await ask(client, timeout=0.1)
        await wait_until(lambda: server.disconnects == 1)


@pytest.mark.asyncio
async def test_latency_holds_replies_without_serialising_them() -> None:
    # A latency no test outlives: whatever the machine's speed, no reply is due yet.
    async with (
        OpenAIServer(latency=3600) as server,
        openai.AsyncOpenAI(base_url=server.base_url, api_key="t", max_retries=0) as client,
    ):
        async with anyio.create_task_group() as group:
            for n in range(4):
                group.start_soon(ask, client, f"q{n}")
            # All four wait at once: one request's latency does not hold up the others.
            await wait_until(lambda: server.in_flight == 4)
            assert [request.status for request in server.requests] == [None] * 4
            group.cancel_scope.cancel()
        await wait_until(lambda: server.disconnects == 4)


@pytest.mark.asyncio
async def test_concurrency_counters(client: openai.AsyncOpenAI) -> None:
    arrived = 0
    all_in = asyncio.Event()

    async def gate(request: ReceivedRequest) -> Reply | None:
        nonlocal arrived
        arrived += 1
        if arrived == 5:
            all_in.set()
        await all_in.wait()  # Hold every reply until all five are in flight.
        return None

    async with (
        OpenAIServer(responder=gate) as server,
        openai.AsyncOpenAI(base_url=server.base_url, api_key="t", max_retries=0) as client,
    ):
        with anyio.fail_after(10):
            async with anyio.create_task_group() as group:
                for n in range(5):
                    group.start_soon(ask, client, f"q{n}")
        assert server.max_in_flight == 5
        assert server.in_flight == 0
        assert server.count == 5
        server.reset_counters()
        assert (server.count, server.max_in_flight, server.disconnects) == (0, 0, 0)
        await ask(client, "after reset")
        assert server.requests[0].index == 0


# --- routing and responders -----------------------------------------------------------------


@pytest.mark.asyncio
async def test_enqueue_for_routes_by_last_user_message(
    server: OpenAIServer, client: openai.AsyncOpenAI
) -> None:
    server.enqueue_for("researcher", Text("research notes"), Text("more notes"))
    server.enqueue_for("writer", Text("draft"))
    server.enqueue(Text("global one"))
    assert (await ask(client, "you are the writer")).choices[0].message.content == "draft"
    assert (await ask(client, "anyone")).choices[0].message.content == "global one"
    assert (await ask(client, "the researcher")).choices[0].message.content == "research notes"
    assert (await ask(client, "researcher again")).choices[0].message.content == "more notes"
    # Exhausted keyed queue falls through to the default.
    assert (await ask(client, "writer")).choices[0].message.content == "loopback reply: writer"
    assert server.count_for("researcher") == 2
    assert server.count_for("writer") == 2
    assert server.count_for("nobody") == 0


@pytest.mark.asyncio
async def test_enqueue_for_matches_only_the_last_user_message(
    server: OpenAIServer, client: openai.AsyncOpenAI
) -> None:
    server.enqueue_for("alpha", Text("keyed"))
    messages: Any = [
        {"role": "user", "content": "alpha"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "now beta"}]},
    ]
    reply = await client.chat.completions.create(model="m", messages=messages)
    assert reply.choices[0].message.content == "loopback reply: now beta"
    assert server.requests[0].last_user_message == "now beta"


@pytest.mark.asyncio
async def test_responders_sync_async_and_failing() -> None:
    def sync_responder(request: ReceivedRequest) -> Reply | None:
        if "fail" in request.last_user_message:
            raise RuntimeError("responder bug")
        if "default" in request.last_user_message:
            return None
        return Text(f"sync saw {len(request.messages)} message(s)")

    async def async_responder(request: ReceivedRequest) -> Reply:
        await asyncio.sleep(0)
        return Text("async " + request.model)

    async with OpenAIServer(responder=sync_responder) as server:
        server.enqueue(Text("queued first"))
        async with openai.AsyncOpenAI(base_url=server.base_url, api_key="t", max_retries=0) as c:
            assert (await ask(c)).choices[0].message.content == "queued first"
            assert (await ask(c)).choices[0].message.content == "sync saw 1 message(s)"
            assert (await ask(c, "default")).choices[0].message.content.startswith("loopback")
            with pytest.raises(openai.InternalServerError, match="responder bug"):
                await ask(c, "fail")
    async with (
        OpenAIServer(responder=async_responder) as server,
        openai.AsyncOpenAI(base_url=server.base_url, api_key="t", max_retries=0) as c,
    ):
        assert (await ask(c)).choices[0].message.content == "async test-model"


async def outcomes_of(storm: Storm, requests: int) -> list[float | str]:
    """What each of ``requests`` requests got through ``storm``: a 429's Retry-After, or the
    reply text."""
    seen: list[float | str] = []
    async with (
        OpenAIServer(responder=storm) as server,
        openai.AsyncOpenAI(base_url=server.base_url, api_key="t", max_retries=0) as c,
    ):
        for number in range(requests):
            try:
                seen.append((await ask(c, f"request {number}")).choices[0].message.content)
            except openai.RateLimitError as limited:
                seen.append(float(limited.response.headers["retry-after"]))
    return seen


async def test_a_storm_limits_a_seeded_share_and_hands_the_rest_on() -> None:
    def then(request: ReceivedRequest) -> Reply:
        return Text("through: " + request.last_user_message)

    storm = Storm(rate=0.5, retry_after=(0.2, 1.0), duration=3600, seed=3, then=then)
    seen = await outcomes_of(storm, 40)

    limited = [o for o in seen if isinstance(o, float)]
    assert storm.limited == len(limited)
    assert storm.passed == 40 - len(limited)
    assert 0 < len(limited) < 40
    assert all(0.2 <= retry_after <= 1.0 for retry_after in limited)
    assert [o for o in seen if isinstance(o, str)] == [
        f"through: request {n}" for n, o in enumerate(seen) if isinstance(o, str)
    ]
    # The same seed, the same arrivals: the same storm.
    assert await outcomes_of(Storm(rate=0.5, duration=3600, seed=3, then=then), 40) == seen


async def test_a_storm_ends_after_its_duration() -> None:
    storm = Storm(rate=1.0, duration=0)
    seen = await outcomes_of(storm, 3)
    assert storm.limited == 0
    assert all(isinstance(o, str) and o.startswith("loopback reply") for o in seen)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rate": 1.5}, "rate is a share"),
        ({"duration": -1}, "durations are seconds"),
        ({"retry_after": (1.0, 0.5)}, "low <= high"),
    ],
)
def test_a_storm_refuses_impossible_settings(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Storm(**kwargs)


# --- secrets, HTTP details ------------------------------------------------------------------


@pytest.mark.asyncio
async def test_credentials_are_never_stored(server: OpenAIServer) -> None:
    canary = "sk-canary-6b1f0d1e9a"
    async with openai.AsyncOpenAI(
        base_url=server.base_url,
        api_key=canary,
        max_retries=0,
        default_headers={"api-key": canary, "x-api-key": canary},
    ) as client:
        await ask(client)
    [request] = server.requests
    assert request.has_auth is True
    assert canary not in repr(server.requests)
    assert not {"authorization", "api-key", "x-api-key"} & request.headers.keys()
    assert request.headers["content-type"] == "application/json"
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        await http.post("/chat/completions", json={"model": "m", "messages": USER})
    assert server.requests[1].has_auth is False


@pytest.mark.asyncio
async def test_http_routes_and_connection_handling(server: OpenAIServer) -> None:
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        models = await http.get("/models")
        assert models.status_code == 200
        assert "test-model" in [m["id"] for m in models.json()["data"]]
        missing = await http.post("/embeddings", json={})
        assert missing.status_code == 404
        assert missing.json()["error"]["type"] == "invalid_request_error"
        wrong_method = await http.get("/chat/completions")
        assert wrong_method.status_code == 405
        bad_json = await http.post("/chat/completions", content=b"[1, 2")
        assert bad_json.status_code == 400
        closing = await http.post(
            "/chat/completions", json={"messages": USER}, headers={"connection": "close"}
        )
        assert closing.headers["connection"] == "close"
        assert closing.json()["model"] == "test-model"

        async def chunked_body() -> AsyncIterator[bytes]:
            yield b'{"model": "m", '
            yield b'"messages": [{"role": "user", "content": "chunked"}]}'

        chunked = await http.post("/chat/completions", content=chunked_body())
        assert chunked.json()["choices"][0]["message"]["content"] == "loopback reply: chunked"
    assert server.count == 2  # Only chat completions with a valid body are recorded.


@pytest.mark.asyncio
async def test_keep_alive_serves_several_requests_per_connection(server: OpenAIServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        for text in ("one", "two"):
            body = json.dumps({"model": "m", "messages": [{"role": "user", "content": text}]})
            writer.write(
                (
                    "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                    f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n{body}"
                ).encode()
            )
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 OK")
            length = int(head.split(b"content-length: ")[1].split(b"\r\n")[0])
            reply = json.loads(await reader.readexactly(length))
            assert reply["choices"][0]["message"]["content"] == f"loopback reply: {text}"
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.mark.asyncio
async def test_stop_closes_idle_and_busy_connections() -> None:
    server = OpenAIServer()
    async with (
        server,
        openai.AsyncOpenAI(base_url=server.base_url, api_key="t", max_retries=0) as client,
    ):
        await ask(client)  # Leaves an idle keep-alive connection.
        server.enqueue(Slow(30, Text("never")))
        async with anyio.create_task_group() as group:

            async def doomed() -> None:
                with pytest.raises(openai.APIConnectionError):
                    await ask(client)

            group.start_soon(doomed)
            await wait_until(lambda: server.in_flight == 1)
            with anyio.fail_after(5):
                await server.stop()
    with pytest.raises(RuntimeError):
        _ = server.base_url


@pytest.mark.asyncio
@pytest.mark.asyncio
async def test_stop_waits_for_a_connection_still_closing_after_its_client_left(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A client that hangs up just before stop(): its handler is still closing the socket, and
    # stop() returns only once it has (no handler task outlives the server).
    closing, release = anyio.Event(), anyio.Event()
    real_close = _Connection.close

    async def slow_close(self: _Connection) -> None:
        closing.set()
        try:
            await release.wait()  # stop() may cancel it here
        finally:
            await real_close(self)

    monkeypatch.setattr(_Connection, "close", slow_close)
    before = asyncio.all_tasks()
    server = OpenAIServer()
    await server.start()
    host, port = server.base_url.split("//")[1].split("/")[0].split(":")
    _, writer = await asyncio.open_connection(host, int(port))
    writer.close()
    await writer.wait_closed()
    await closing.wait()
    async with anyio.create_task_group() as group:
        group.start_soon(server.stop)
        await anyio.wait_all_tasks_blocked()  # stop() has done all it does without the handler
        release.set()
    assert [t for t in asyncio.all_tasks() - before if "_on_connection" in repr(t)] == []


# --- thread and process modes ---------------------------------------------------------------


def test_thread_mode_with_sync_client() -> None:
    server = OpenAIServer()
    with server.in_thread():
        server.enqueue(Text("from the queue"))
        with openai.OpenAI(base_url=server.base_url, api_key="t", max_retries=0) as client:
            first = client.chat.completions.create(model="m", messages=USER)
            second = client.chat.completions.create(model="m", messages=USER)
        assert first.choices[0].message.content == "from the queue"
        assert second.choices[0].message.content.startswith("loopback reply: Summarise")
        assert server.count == 2
        assert server.count_for("quarterly") == 2
        assert server.in_flight == 0
    with pytest.raises(RuntimeError):
        _ = server.base_url
    # Restartable after a stop.
    with server.in_thread(), httpx.Client(base_url=server.base_url) as http:
        assert http.get("/models").status_code == 200


def _start_cli(*args: str) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "crewflow.testing.server", "--port", "0", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO_ROOT,
    )
    assert process.stdout is not None
    return process, process.stdout.readline().strip()


def _finish(process: subprocess.Popen[str]) -> int:
    try:
        return process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()


@pytest.mark.slow
def test_cli_prints_base_url_and_stops_on_sigterm() -> None:
    process, base_url = _start_cli("--latency", "0.01")
    try:
        assert base_url.startswith("http://127.0.0.1:")
        assert base_url.endswith("/v1")
        with openai.OpenAI(base_url=base_url, api_key="t", max_retries=0) as client:
            reply = client.chat.completions.create(model="m", messages=USER)
        assert reply.choices[0].message.content.startswith("loopback reply:")
    finally:
        process.send_signal(signal.SIGTERM)
        code = _finish(process)
    assert code == 0


@pytest.mark.slow
def test_cli_stops_when_stdin_closes() -> None:
    process, base_url = _start_cli()
    assert base_url.startswith("http://")
    assert process.stdin is not None
    process.stdin.close()
    assert _finish(process) == 0


# --- litellm --------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.asyncio
async def test_litellm_acompletion(server: OpenAIServer) -> None:
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    os.environ["LITELLM_MODE"] = "PRODUCTION"
    import litellm

    reply = await litellm.acompletion(
        model="openai/test-model",
        api_base=server.base_url,
        api_key="x",
        messages=[{"role": "user", "content": "through litellm"}],
        num_retries=0,
    )
    assert reply.choices[0].message.content == "loopback reply: through litellm"
    assert server.requests[0].model == "test-model"
