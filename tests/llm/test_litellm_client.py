"""LiteLLM through litellm's openai route, over a real socket to the loopback server."""

from __future__ import annotations

import copy
import json
import socket
import sys
import traceback
from typing import TYPE_CHECKING

import pytest
import pytest_asyncio

from crewflow import Agent
from crewflow.exceptions import ConfigurationError, LLMError
from crewflow.llm import LLMRequest, Message, ToolCall, ToolSpec
from crewflow.llm._guard import reset, set_forbidden
from crewflow.llm.litellm import LiteLLM, _import_litellm
from crewflow.testing import Error, OpenAIServer, Slow, Text, ToolCalls
from crewflow.testing import ToolCall as ScriptedCall

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

pytestmark = pytest.mark.asyncio

CANARY = "sk-canary-litellm-5e8d2a7c9b1f"
HELLO = LLMRequest([Message("user", "hello")])
SEARCH = ToolSpec(
    "search",
    "Search the web.",
    {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
)


@pytest_asyncio.fixture
async def llm(server: OpenAIServer) -> AsyncIterator[LiteLLM]:
    """An opened LiteLLM client of the loopback server (litellm's openai route)."""
    client = LiteLLM("openai/test-model", api_base=server.base_url, api_key=CANARY, timeout=10)
    async with client:
        yield client


def loop_clients() -> list[str]:
    """Keys of the HTTP clients litellm has cached for the running event loop."""
    cache = _import_litellm().in_memory_llm_clients_cache
    suffix = cache.update_cache_key_with_event_loop("")
    return [key for key in cache.cache_dict if str(key).endswith(suffix)]


async def test_plain_reply_maps_content_and_usage(server: OpenAIServer, llm: LiteLLM) -> None:
    server.enqueue(Text("Sodium is cheap.", usage=(12, 4)))

    response = await llm.complete(HELLO)

    assert response.content == "Sodium is cheap."
    assert (response.usage.requests, response.usage.prompt_tokens) == (1, 12)
    assert response.usage.completion_tokens == 4
    assert response.usage.cost is None  # LiteLLM has no price for "test-model"
    assert response.finish_reason == "stop"
    assert response.model == "openai/test-model"
    sent = server.requests[0]
    assert sent.model == "test-model"
    assert sent.messages == [{"role": "user", "content": "hello"}]
    assert sent.has_auth


async def test_cost_comes_from_litellms_price_table(server: OpenAIServer) -> None:
    llm = LiteLLM("openai/gpt-4o-mini", api_base=server.base_url, api_key="x")
    server.enqueue(Text("priced", usage=(1000, 100)), Text("priced too", usage=(1000, 100)))

    plain = await llm.complete(HELLO)
    streamed = await llm.complete(LLMRequest([Message("user", "x")], stream=True))

    assert plain.usage.cost is not None
    assert plain.usage.cost > 0
    assert streamed.usage.cost == pytest.approx(plain.usage.cost)


async def test_a_tool_call_comes_back(server: OpenAIServer, llm: LiteLLM) -> None:
    server.enqueue(ToolCalls([ScriptedCall("search", {"query": "sodium"}, id="call_a")]))

    response = await llm.complete(LLMRequest([Message("user", "go")], tools=[SEARCH]))

    assert response.tool_calls == (ToolCall("call_a", "search", '{"query": "sodium"}'),)
    assert response.finish_reason == "tool_calls"
    assert server.requests[0].tools == [SEARCH.to_openai()]


async def test_streaming_reports_pieces_and_usage(server: OpenAIServer, llm: LiteLLM) -> None:
    server.enqueue(Text("Sodium batteries are cheap.", usage=(9, 6)))
    pieces: list[str] = []

    response = await llm.complete(
        LLMRequest([Message("user", "x")], stream=True, on_delta=pieces.append)
    )

    assert len(pieces) > 1
    assert "".join(pieces) == response.content == "Sodium batteries are cheap."
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (9, 6)
    assert server.requests[0].body["stream_options"] == {"include_usage": True}


async def test_streaming_tool_calls_are_assembled(server: OpenAIServer, llm: LiteLLM) -> None:
    query = "sodium ion batteries for grid storage"
    server.enqueue(ToolCalls([ScriptedCall("search", {"query": query}, id="call_a")]))

    response = await llm.complete(LLMRequest([Message("user", "go")], tools=[SEARCH], stream=True))

    assert [(c.id, c.name) for c in response.tool_calls] == [("call_a", "search")]
    assert json.loads(response.tool_calls[0].arguments) == {"query": query}


async def test_429_is_retryable_with_retry_after(server: OpenAIServer, llm: LiteLLM) -> None:
    server.enqueue(Error(429, retry_after=0.05))

    with pytest.raises(LLMError) as info:
        await llm.complete(HELLO)

    error = info.value
    assert (error.status_code, error.retryable) == (429, True)
    assert error.retry_after == pytest.approx(0.05)
    assert error.model == "openai/test-model"
    assert server.count == 1  # litellm's own retries are off


@pytest.mark.parametrize(("status", "retryable"), [(503, True), (500, True), (400, False)])
async def test_status_errors_map_by_status(
    server: OpenAIServer, llm: LiteLLM, status: int, retryable: bool
) -> None:
    server.enqueue(Error(status))

    with pytest.raises(LLMError) as info:
        await llm.complete(HELLO)

    assert (info.value.status_code, info.value.retryable) == (status, retryable)


async def test_a_slow_server_times_out_as_a_retryable_error(server: OpenAIServer) -> None:
    llm = LiteLLM("openai/test-model", api_base=server.base_url, api_key="x", timeout=0.2)
    server.enqueue(Slow(30, Text("too late")))

    async with llm:
        with pytest.raises(LLMError) as info:
            await llm.complete(HELLO)

    assert (info.value.status_code, info.value.retryable) == (None, True)


async def test_the_api_key_never_shows(server: OpenAIServer, llm: LiteLLM) -> None:
    server.enqueue(Error(401, f"Incorrect API key provided: {CANARY}."))

    with pytest.raises(LLMError) as info:
        await llm.complete(HELLO)

    error = info.value
    assert (error.status_code, error.retryable) == (401, False)
    shown = [repr(llm), str(error), "".join(traceback.format_exception(error))]
    assert all(CANARY not in text for text in shown)


async def test_aclose_closes_litellms_clients_of_the_loop(server: OpenAIServer) -> None:
    llm = LiteLLM("openai/test-model", api_base=server.base_url, api_key="x")

    await llm.open()
    await llm.complete(HELLO)
    assert loop_clients()
    await llm.aclose()
    assert loop_clients() == []

    await llm.complete(HELLO)  # not opened: its clients go when the call ends
    assert loop_clients() == []


async def test_copies_are_the_same_object(server: OpenAIServer, llm: LiteLLM) -> None:
    agent = Agent(role="Researcher", goal="Find facts", llm=llm)

    # An opened LiteLLM's loop registrations must stay with the object that made them.
    copied = agent.model_copy(deep=True)

    assert copied.llm is llm
    assert copy.copy(llm) is llm
    assert copy.deepcopy(llm) is llm
    await llm.complete(HELLO)
    assert server.count == 1


async def test_real_calls_are_blocked_when_forbidden() -> None:
    token = set_forbidden(True)
    try:
        with pytest.raises(ConfigurationError, match="blocked"):
            await LiteLLM("anthropic/claude-sonnet-4-20250514", api_key="x").complete(HELLO)
    finally:
        reset(token)


async def test_a_missing_litellm_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes ``import litellm`` raise ImportError.
    monkeypatch.setitem(sys.modules, "litellm", None)
    monkeypatch.delenv("CREWFLOW_FORBID_REAL_LLM_CALLS")  # nothing is sent: open() fails first

    with pytest.raises(ConfigurationError, match=r"crewflow\[litellm\]"):
        await LiteLLM("anthropic/claude-sonnet-4-20250514").open()


async def test_properties_describe_the_endpoint() -> None:
    llm = LiteLLM("openai/gpt-4o-mini", api_base="http://127.0.0.1:4000", api_key=CANARY)

    assert llm.limit_key == "litellm|http://127.0.0.1:4000|openai/gpt-4o-mini"
    assert LiteLLM("anthropic/claude-x").limit_key == "litellm||anthropic/claude-x"
    assert llm.is_remote
    assert llm.supports_output_schema
    assert not LiteLLM("openai/test-model").supports_output_schema
    assert CANARY not in repr(llm)


async def test_a_model_without_provider_is_rejected() -> None:
    with pytest.raises(ConfigurationError, match="provider"):
        LiteLLM("claude-sonnet")


async def test_a_refused_connection_is_a_connection_error_not_litellms_made_up_500() -> None:
    with socket.socket() as probe:  # Bound, then closed: nothing listens on the port.
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    llm = LiteLLM("openai/test-model", api_base=f"http://127.0.0.1:{port}/v1", api_key=CANARY)

    with pytest.raises(LLMError) as info:
        await llm.complete(LLMRequest([Message("user", "x")]))

    assert info.value.status_code is None
    assert info.value.retryable
    assert info.value.sent is False
