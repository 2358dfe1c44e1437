"""OpenAIChat against the real loopback server: request shapes, streaming, errors, lifetime."""

from __future__ import annotations

import asyncio
import copy
import email.utils
import gc
import json
import sys
import time
import traceback
import warnings
from typing import TYPE_CHECKING

import anyio
import pytest
import pytest_asyncio

import crewflow
from crewflow import Agent
from crewflow.exceptions import ConfigurationError, CredentialsError, LLMError
from crewflow.llm import LLMRequest, Message, OutputSchema, ToolCall, ToolSpec
from crewflow.llm._errors import parse_retry_after
from crewflow.llm._guard import reset, set_forbidden
from crewflow.llm._redact import scrub
from crewflow.llm.openai import OpenAIChat
from crewflow.testing import (
    Cut,
    Disconnect,
    Error,
    Malformed,
    OpenAIServer,
    Slow,
    Text,
    ToolCalls,
)
from crewflow.testing import ToolCall as ScriptedCall
from tests import canary
from tests.waiting import wait_until

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

pytestmark = pytest.mark.asyncio

CANARY = canary.KEY  # the session's canary: every use of it is scanned (tests/canary.py)
HELLO = LLMRequest([Message("user", "hello")])
SEARCH = ToolSpec(
    "search",
    "Search the web.",
    {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
)
FETCH = ToolSpec(
    "fetch",
    "Fetch a page.",
    {"type": "object", "properties": {"url": {"type": "string"}}, "required": ["url"]},
)


@pytest_asyncio.fixture
async def llm(server: OpenAIServer) -> AsyncIterator[OpenAIChat]:
    """An opened client of the loopback server, as the runtime uses it."""
    client = OpenAIChat("test-model", base_url=server.base_url, api_key=CANARY, timeout=10)
    async with client:
        yield client


async def failure(llm: OpenAIChat, request: LLMRequest = HELLO) -> LLMError:
    with pytest.raises(LLMError) as info:
        await llm.complete(request)
    return info.value


# -- replies ----------------------------------------------------------------------------------


async def test_plain_reply_maps_content_usage_and_finish_reason(
    server: OpenAIServer, llm: OpenAIChat
) -> None:
    server.enqueue(Text("Sodium is cheap.", usage=(12, 4)))

    response = await llm.complete(HELLO)

    assert response.content == "Sodium is cheap."
    assert response.tool_calls == ()
    assert (response.usage.requests, response.usage.prompt_tokens) == (1, 12)
    assert response.usage.completion_tokens == 4
    assert response.usage.cost is None
    assert response.finish_reason == "stop"
    assert response.model == "openai/test-model"
    sent = server.requests[0]
    assert sent.model == "test-model"
    assert sent.messages == [{"role": "user", "content": "hello"}]
    assert not sent.stream
    assert sent.has_auth


async def test_multi_turn_with_tool_results_is_sent_in_openai_shape(
    server: OpenAIServer, llm: OpenAIChat
) -> None:
    call = ToolCall("call_1", "search", '{"query": "sodium"}')
    request = LLMRequest(
        [
            Message("system", "You research."),
            Message("user", "Find facts"),
            Message("assistant", None, tool_calls=(call,)),
            Message("tool", "sodium is abundant", tool_call_id="call_1", name="search"),
        ],
        tools=[SEARCH],
    )
    server.enqueue(Text("Done."))

    response = await llm.complete(request)

    assert response.content == "Done."
    assert server.requests[0].messages == [
        {"role": "system", "content": "You research."},
        {"role": "user", "content": "Find facts"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "search", "arguments": '{"query": "sodium"}'},
                }
            ],
        },
        {"role": "tool", "content": "sodium is abundant", "tool_call_id": "call_1"},
    ]


async def test_several_tool_calls_in_one_turn_come_back_in_order(
    server: OpenAIServer, llm: OpenAIChat
) -> None:
    server.enqueue(
        ToolCalls(
            [
                ScriptedCall("search", {"query": "sodium"}, id="call_a"),
                ScriptedCall("fetch", {"url": "https://example.org"}, id="call_b"),
            ]
        )
    )

    response = await llm.complete(LLMRequest([Message("user", "go")], tools=[SEARCH, FETCH]))

    assert response.content is None
    assert response.finish_reason == "tool_calls"
    assert response.tool_calls == (
        ToolCall("call_a", "search", '{"query": "sodium"}'),
        ToolCall("call_b", "fetch", '{"url": "https://example.org"}'),
    )
    assert server.requests[0].tools == [SEARCH.to_openai(), FETCH.to_openai()]


async def test_structured_output_sends_a_json_schema_response_format(
    server: OpenAIServer, llm: OpenAIChat
) -> None:
    schema = {
        "type": "object",
        "properties": {"title": {"type": "string"}, "words": {"type": "integer"}},
        "required": ["title", "words"],
    }

    response = await llm.complete(
        LLMRequest([Message("user", "write")], output=OutputSchema("Post", schema))
    )

    assert server.requests[0].response_format == {
        "type": "json_schema",
        "json_schema": {"name": "Post", "schema": schema, "strict": False},
    }
    assert set(json.loads(response.content or "")) == {"title", "words"}
    assert llm.supports_output_schema


async def test_sampling_settings_and_extra_arguments_reach_the_body(server: OpenAIServer) -> None:
    llm = OpenAIChat("test-model", base_url=server.base_url, temperature=0.3)
    await llm.complete(HELLO)
    await llm.complete(
        LLMRequest(
            [Message("user", "x")], temperature=0.9, max_tokens=50, extra={"seed": 7, "top_k": 3}
        )
    )

    first, second = (request.body for request in server.requests)
    assert first["temperature"] == 0.3
    assert "max_tokens" not in first
    assert second["temperature"] == 0.9
    # Compatible servers know max_tokens; only api.openai.com gets max_completion_tokens.
    assert second["max_tokens"] == 50
    assert "max_completion_tokens" not in second
    # A known argument of the SDK, and one only the server knows (sent in the body).
    assert (second["seed"], second["top_k"]) == (7, 3)


async def test_the_body_sent_is_the_one_the_sdks_create_would_send(
    server: OpenAIServer, llm: OpenAIChat
) -> None:
    # crewflow posts its arguments as they are, without `create`'s walk through its typed
    # parameters: the server must see the same path and JSON body all the same.
    from openai import AsyncOpenAI

    from crewflow.llm._wire import request_kwargs
    from crewflow.llm.openai import _add_extra

    call = ToolCall("call_1", "search", '{"query": "sodium"}')
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    request = LLMRequest(
        [
            Message("system", "You research. \u00e9\u4e2d\U0001f600"),
            Message("user", 'Find facts\x00 and \\ quotes "'),
            Message("assistant", "Looking.", tool_calls=(call,)),
            Message("tool", "sodium is abundant", tool_call_id="call_1", name="search"),
        ],
        tools=[SEARCH, FETCH],
        output=OutputSchema("Count", schema),
        temperature=0.2,
        max_tokens=40,
        extra={
            "seed": 7,
            "top_k": 3,
            "user": "someone",
            "repetition_penalty": 1.1,
            # extra_body comes last on both paths: its value of a key wins.
            "extra_body": {"min_p": 0.1, "repetition_penalty": 1.2},
        },
    )
    await llm.complete(request)
    kwargs = request_kwargs("test-model", request, max_tokens_param="max_tokens")
    _add_extra(kwargs, request.extra)
    async with AsyncOpenAI(base_url=server.base_url, api_key="k", max_retries=0) as sdk:
        await sdk.chat.completions.create(**kwargs)

    ours, sdks = server.requests
    assert (ours.path, ours.body) == (sdks.path, sdks.body)
    assert (ours.body["top_k"], ours.body["min_p"], len(ours.body["tools"])) == (3, 0.1, 2)
    assert ours.body["repetition_penalty"] == 1.2


async def test_request_options_in_extra_still_reach_the_request(
    server: OpenAIServer, llm: OpenAIChat
) -> None:
    await llm.complete(
        LLMRequest(
            [Message("user", "x")],
            extra={"extra_headers": {"X-Trace": "t-1"}, "extra_query": {"v": "2"}, "top_k": 3},
        )
    )

    [sent] = server.requests
    assert sent.headers["x-trace"] == "t-1"
    assert sent.body["top_k"] == 3
    assert not {"extra_headers", "extra_query"} & set(sent.body)


# -- streaming --------------------------------------------------------------------------------


async def test_streaming_text_reports_each_piece_and_the_usage(
    server: OpenAIServer, llm: OpenAIChat
) -> None:
    server.enqueue(Text("Sodium batteries are cheap and safe.", usage=(9, 7)))
    pieces: list[str] = []

    response = await llm.complete(
        LLMRequest([Message("user", "hello")], stream=True, on_delta=pieces.append)
    )

    assert len(pieces) > 1
    assert "".join(pieces) == response.content == "Sodium batteries are cheap and safe."
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (9, 7)
    assert response.finish_reason == "stop"
    sent = server.requests[0]
    assert sent.stream
    assert sent.body["stream_options"] == {"include_usage": True}


async def test_streaming_awaits_an_async_callback(server: OpenAIServer, llm: OpenAIChat) -> None:
    server.enqueue(Text("one two three"))
    pieces: list[str] = []

    async def on_delta(text: str) -> None:
        await anyio.lowlevel.checkpoint()
        pieces.append(text)

    response = await llm.complete(
        LLMRequest([Message("user", "x")], stream=True, on_delta=on_delta)
    )

    assert "".join(pieces) == response.content == "one two three"


async def test_streaming_tool_calls_are_assembled_by_index(
    server: OpenAIServer, llm: OpenAIChat
) -> None:
    long_query = "sodium ion batteries for grid storage in cold climates"
    server.enqueue(
        ToolCalls(
            [
                ScriptedCall("search", {"query": long_query}, id="call_a"),
                ScriptedCall("fetch", {"url": "https://example.org/a/long/path"}, id="call_b"),
            ]
        )
    )

    response = await llm.complete(
        LLMRequest([Message("user", "go")], tools=[SEARCH, FETCH], stream=True)
    )

    assert [(c.id, c.name) for c in response.tool_calls] == [
        ("call_a", "search"),
        ("call_b", "fetch"),
    ]
    assert json.loads(response.tool_calls[0].arguments) == {"query": long_query}
    assert json.loads(response.tool_calls[1].arguments) == {
        "url": "https://example.org/a/long/path"
    }
    assert response.finish_reason == "tool_calls"
    assert response.usage.completion_tokens > 0


async def test_an_error_in_the_callback_is_the_callers_not_an_llm_error(
    server: OpenAIServer, llm: OpenAIChat
) -> None:
    server.enqueue(Text("one two three"))

    def on_delta(text: str) -> None:
        raise ValueError("callback bug")

    with pytest.raises(ValueError, match="callback bug"):
        await llm.complete(LLMRequest([Message("user", "x")], stream=True, on_delta=on_delta))


# -- errors -----------------------------------------------------------------------------------


async def test_429_is_retryable_with_the_servers_retry_after(
    server: OpenAIServer, llm: OpenAIChat
) -> None:
    server.enqueue(Error(429, retry_after=0.05), Error(429, retry_after=2))

    first = await failure(llm)
    second = await failure(llm)

    assert (first.status_code, first.retryable) == (429, True)
    assert first.retry_after == pytest.approx(0.05)  # from retry-after-ms
    assert second.retry_after == pytest.approx(2.0)  # from retry-after, in seconds
    assert first.model == "openai/test-model"
    assert "429" in str(first)
    assert "openai/test-model" in str(first)


@pytest.mark.parametrize("status", [408, 409, 500, 502, 503])
async def test_server_errors_are_retryable(
    server: OpenAIServer, llm: OpenAIChat, status: int
) -> None:
    server.enqueue(Error(status))

    error = await failure(llm)

    assert (error.status_code, error.retryable) == (status, True)
    assert f"HTTP {status}" in str(error)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
async def test_client_errors_are_not_retryable(
    server: OpenAIServer, llm: OpenAIChat, status: int
) -> None:
    server.enqueue(Error(status, "bad things"))

    error = await failure(llm)

    assert (error.status_code, error.retryable) == (status, False)
    assert "bad things" in str(error)


async def test_401_says_to_check_the_api_key(server: OpenAIServer, llm: OpenAIChat) -> None:
    server.enqueue(Error(401, "invalid key"))

    error = await failure(llm)

    assert "OPENAI_API_KEY" in str(error)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_malformed_body_is_a_retryable_error(
    server: OpenAIServer, llm: OpenAIChat, stream: bool
) -> None:
    server.enqueue(Malformed())

    error = await failure(llm, LLMRequest([Message("user", "x")], stream=stream))

    assert error.retryable
    assert "invalid JSON" in str(error)


async def test_a_stream_cut_short_fails_instead_of_passing_its_start_off_as_the_answer(
    server: OpenAIServer, llm: OpenAIChat
) -> None:
    # The HTTP body ends cleanly, but the stream never sent its finish reason (nor [DONE]).
    server.enqueue(Cut(Text("the whole answer is longer"), keep=3, then="end"))
    pieces: list[str] = []

    error = await failure(
        llm, LLMRequest([Message("user", "x")], stream=True, on_delta=pieces.append)
    )

    assert pieces == ["the ", "whole "]
    assert error.retryable
    assert "without a finish reason" in str(error)


async def test_a_dropped_connection_is_a_retryable_connection_error(
    server: OpenAIServer, llm: OpenAIChat
) -> None:
    server.enqueue(Disconnect())

    error = await failure(llm)

    assert (error.status_code, error.retryable) == (None, True)
    assert "connection" in str(error)
    assert error.sent is True  # the server got the request before it hung up


async def test_a_slow_server_times_out_as_a_retryable_error(server: OpenAIServer) -> None:
    llm = OpenAIChat("test-model", base_url=server.base_url, timeout=0.2)
    server.enqueue(Slow(30, Text("too late")))

    error = await failure(llm)

    assert (error.status_code, error.retryable) == (None, True)
    assert "did not answer within 0.2s" in str(error)
    assert error.sent is True
    await wait_until(lambda: server.disconnects == 1)


async def test_an_unreachable_server_is_a_retryable_connection_error() -> None:
    # Port 9 (discard) is closed on loopback: the connection is refused at once.
    llm = OpenAIChat("test-model", base_url="http://127.0.0.1:9/v1")

    error = await failure(llm)

    assert (error.status_code, error.retryable) == (None, True)
    assert "127.0.0.1:9" in str(error)
    assert error.sent is False  # refused: nothing was sent, nothing is charged


@pytest.mark.parametrize(
    ("transport_error", "sent"),
    [
        ("ConnectError", False),
        ("ConnectTimeout", False),
        ("PoolTimeout", False),
        ("ReadError", True),
        ("ReadTimeout", True),
        ("RemoteProtocolError", True),
        ("WriteError", True),
    ],
)
async def test_only_errors_before_the_request_was_written_count_as_not_sent(
    transport_error: str, sent: bool
) -> None:
    import httpx
    import openai

    request = httpx.Request("POST", "http://127.0.0.1:9/v1/chat/completions")
    error_class = (
        openai.APITimeoutError if "Timeout" in transport_error else openai.APIConnectionError
    )
    try:
        try:
            raise getattr(httpx, transport_error)("boom", request=request)
        except httpx.TransportError as exc:
            raise error_class(request=request) from exc
    except openai.APIError as exc:
        mapped = OpenAIChat("test-model", base_url="http://127.0.0.1:9/v1")._map_error(exc)

    assert mapped.sent is sent
    assert mapped.retryable is True


# -- cancellation -----------------------------------------------------------------------------


@pytest.mark.parametrize("opened", [True, False])
async def test_cancelling_a_call_aborts_its_http_request(
    server: OpenAIServer, opened: bool
) -> None:
    llm = OpenAIChat("test-model", base_url=server.base_url)
    server.enqueue(Slow(30, Text("never sent")))
    escaped: list[type[BaseException]] = []

    async def call() -> None:
        try:
            await llm.complete(HELLO)
        except BaseException as exc:
            escaped.append(type(exc))
            raise

    if opened:
        await llm.open()
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(call)
            await wait_until(lambda: server.count == 1)
            group.cancel_scope.cancel()
        await wait_until(lambda: server.disconnects == 1)
    finally:
        if opened:
            await llm.aclose()

    assert server.requests[0].disconnected
    assert escaped == [asyncio.CancelledError]


# -- client lifetime --------------------------------------------------------------------------


async def test_open_and_aclose_share_the_loops_client_and_leave_it_open(
    server: OpenAIServer,
) -> None:
    llm = OpenAIChat("test-model", base_url=server.base_url)

    await llm.open()
    await llm.open()
    await llm.complete(HELLO)
    await llm.aclose()
    await llm.aclose()
    await llm.aclose()  # An extra aclose is harmless.
    await llm.complete(HELLO)  # not opened: the same shared client

    # One connection, kept alive from the first call to the last: one client served them.
    assert server.count == 2
    assert server.connections == 1
    assert server.open_connections == 1
    await crewflow.aclose()
    await wait_until(lambda: server.open_connections == 0)


async def test_clients_leave_no_resource_warning(server: OpenAIServer) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        llm = OpenAIChat("test-model", base_url=server.base_url)
        async with llm:
            await llm.complete(HELLO)
            await llm.complete(LLMRequest([Message("user", "x")], stream=True))
        await llm.complete(HELLO)  # not opened: the loop's shared client all the same
        del llm
        gc.collect()

    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []


async def test_copies_are_the_same_object_and_share_its_open_client(
    server: OpenAIServer, llm: OpenAIChat
) -> None:
    agent = Agent(role="Researcher", goal="Find facts", llm=llm)

    # A deep copy of an agent must not try to copy the live client (it holds locks and sockets).
    copied = agent.model_copy(deep=True)

    assert copied.llm is llm
    assert copy.copy(llm) is llm
    assert copy.deepcopy(llm) is llm
    await llm.complete(HELLO)
    assert server.count == 1


async def test_importing_and_constructing_does_not_import_the_sdk() -> None:
    code = (
        "import sys; from crewflow.llm.openai import OpenAIChat; OpenAIChat('gpt-4o'); "
        "assert 'openai' not in sys.modules and 'httpx' not in sys.modules"
    )
    result = await anyio.run_process([sys.executable, "-c", code], check=False)
    assert result.returncode == 0, result.stderr.decode()


# -- configuration ----------------------------------------------------------------------------


async def test_environment_variables_give_base_url_and_key(
    server: OpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", CANARY)
    llm = OpenAIChat("test-model")

    async with llm:
        response = await llm.complete(HELLO)

    assert response.content
    assert server.requests[0].has_auth
    assert llm.limit_key == f"openai|{server.base_url}|test-model"


async def test_a_compatible_server_needs_no_key(server: OpenAIServer) -> None:
    llm = OpenAIChat("test-model", base_url=server.base_url)

    async with llm:
        await llm.complete(HELLO)

    assert server.count == 1


async def test_openai_without_a_key_fails_at_open_with_a_fix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CREWFLOW_FORBID_REAL_LLM_CALLS")  # nothing is sent: open() fails first
    llm = OpenAIChat("gpt-4o-mini")

    with pytest.raises(CredentialsError) as info:
        await llm.open()

    error = info.value
    assert isinstance(error, ConfigurationError)
    assert str(error).startswith(
        "no API key for 'openai/gpt-4o-mini': set OPENAI_API_KEY, or pass "
        "OpenAIChat(..., api_key=...)."
    )
    assert (error.variables, error.status_code) == (("OPENAI_API_KEY",), None)


async def test_a_refused_key_is_a_credentials_error_without_the_key(
    server: OpenAIServer, llm: OpenAIChat
) -> None:
    server.enqueue(Error(401, f"Incorrect API key provided: {CANARY}."))

    error = await failure(llm)

    assert isinstance(error, CredentialsError)
    assert isinstance(error, ConfigurationError)
    assert (error.status_code, error.retryable, error.variables) == (
        401,
        False,
        ("OPENAI_API_KEY",),
    )
    assert str(error) == (
        f"the API key for 'openai/test-model' was refused (HTTP 401 at {server.base_url}: "
        "Incorrect API key provided: ***): check OPENAI_API_KEY, or pass "
        "OpenAIChat(..., api_key=...)."
    )


async def test_a_403_is_not_a_credentials_problem(server: OpenAIServer, llm: OpenAIChat) -> None:
    # Forbidden is about what the key may do (a model, a region), not about the key.
    server.enqueue(Error(403, "model not allowed"))

    error = await failure(llm)

    assert not isinstance(error, CredentialsError)
    assert error.status_code == 403


async def test_limit_key_names_provider_base_url_and_model() -> None:
    assert OpenAIChat("gpt-4o").limit_key == "openai|https://api.openai.com/v1|gpt-4o"
    local = OpenAIChat("qwen", base_url="http://127.0.0.1:8000/v1/")
    assert local.limit_key == "openai|http://127.0.0.1:8000/v1|qwen"
    assert local.model == "openai/qwen"
    assert local.name == "qwen"
    assert local.is_remote


async def test_real_calls_are_blocked_when_forbidden(server: OpenAIServer) -> None:
    remote = OpenAIChat("gpt-4o", base_url="https://api.example.com/v1", api_key="x")
    local = OpenAIChat("test-model", base_url=server.base_url)
    token = set_forbidden(True)
    try:
        with pytest.raises(ConfigurationError, match="blocked"):
            await remote.complete(HELLO)
        await local.complete(HELLO)  # loopback stays allowed
        strict = set_forbidden(True, allow_loopback=False)
        try:
            with pytest.raises(ConfigurationError, match="blocked"):
                await local.complete(HELLO)
            # Checked at open too, so a run fails before any task starts.
            with pytest.raises(ConfigurationError, match="blocked"):
                await local.open()
        finally:
            reset(strict)
    finally:
        reset(token)
    assert server.count == 1


# -- secrets ----------------------------------------------------------------------------------


async def test_the_api_key_never_shows(server: OpenAIServer) -> None:
    llm = OpenAIChat("test-model", base_url=server.base_url, api_key=CANARY)
    # OpenAI's 401 body echoes the key; so does this one, in full.
    server.enqueue(Error(401, f"Incorrect API key provided: {CANARY}."))

    error = await failure(llm)

    shown = [
        repr(llm),
        str(llm),
        str(error),
        repr(error),
        "".join(traceback.format_exception(error)),
        repr(server.requests),
    ]
    assert all(CANARY not in text for text in shown)
    assert server.requests[0].has_auth


async def test_a_key_that_is_not_key_shaped_is_scrubbed_too(server: OpenAIServer) -> None:
    secret = "plain-secret-value-123"
    llm = OpenAIChat("test-model", base_url=server.base_url, api_key=secret)
    server.enqueue(Error(403, f"key {secret} has no access"))

    error = await failure(llm)

    assert secret not in "".join(traceback.format_exception(error))


async def test_scrub_removes_key_shaped_tokens() -> None:
    text = "Incorrect API key provided: sk-proj-********abcd; Bearer abc.def; AIza" + "x" * 30
    cleaned = scrub(text, ())
    assert "sk-proj" not in cleaned
    assert "abc.def" not in cleaned
    assert "AIza" not in cleaned


# -- Retry-After parsing ----------------------------------------------------------------------


async def test_retry_after_accepts_milliseconds_seconds_and_http_dates() -> None:
    assert parse_retry_after({"retry-after-ms": "250"}) == pytest.approx(0.25)
    assert parse_retry_after({"retry-after": "3"}) == pytest.approx(3.0)
    assert parse_retry_after({"retry-after": "1.5"}) == pytest.approx(1.5)
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= (parse_retry_after({"retry-after": later}) or 0) <= 31
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


# -- the body, read without the SDK's models --------------------------------------------------

_CALL = {"id": "call_9", "type": "function", "function": {"name": "search", "arguments": "{}"}}
_BODIES = {
    "no usage": {"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}]},
    "null usage": {
        "choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}],
        "usage": None,
    },
    "usage without completion tokens": {
        "choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 7},
    },
    "calls without ids, and a call of another kind": {
        "choices": [
            {
                "message": {
                    "content": None,
                    "tool_calls": [
                        {"type": "custom", "custom": {"name": "grep", "input": "x"}},
                        {**_CALL, "id": None},
                        {"type": "function", "function": {"name": "fetch", "arguments": None}},
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ]
    },
    "no finish reason": {"choices": [{"message": {"content": "hi"}}]},
}


@pytest.mark.parametrize(
    "reply",
    [
        Text("Sodium is cheap. \u00e9\u6f22 \ud800 \x00", usage=(12, 4)),
        Text("", refusal="I can't help with that."),
        Text("Cut at the limit", finish_reason="length"),
        ToolCalls(
            [ScriptedCall("search", {"query": "ions"}, id="a"), ScriptedCall("f", "{", id="b")]
        ),
        ToolCalls([ScriptedCall("search", {"query": "ions"}, id="call_x")], content="Looking."),
        *(Malformed(json.dumps(body)) for body in _BODIES.values()),
    ],
    ids=["text", "refusal", "length", "calls", "calls with text", *_BODIES],
)
async def test_the_body_is_read_as_the_sdks_typed_answer_would_be(
    server: OpenAIServer, llm: OpenAIChat, reply: Text | ToolCalls | Malformed
) -> None:
    from openai import AsyncOpenAI

    from crewflow.llm._wire import response_from_completion

    server.enqueue(reply, reply)
    read = await llm.complete(HELLO)

    sdk = AsyncOpenAI(base_url=server.base_url, api_key="k", max_retries=0)
    async with sdk:
        typed = await sdk.chat.completions.create(model="test-model", messages=[])
    assert read == response_from_completion(typed, HELLO, "openai/test-model")


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"choices": []}, "not a chat completion"),
        ([1, 2], "not a chat completion"),
        ({"choices": [{"message": {"content": 5}}]}, "the content is int, not text"),
        (
            {"choices": [{"message": {"tool_calls": [{"function": {"name": ["x"]}}]}}]},
            "the tool name is list, not text",
        ),
        ({"choices": [{"message": {"content": "x"}, "finish_reason": 1}]}, "finish_reason"),
    ],
)
async def test_a_json_body_that_is_not_a_chat_completion_is_a_retryable_error(
    server: OpenAIServer, llm: OpenAIChat, body: object, says: str
) -> None:
    server.enqueue(Malformed(json.dumps(body)))

    error = await failure(llm)

    assert error.retryable
    assert says in str(error)
