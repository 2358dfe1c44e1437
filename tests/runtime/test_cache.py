"""The reply cache: what its key covers, how replies are stored, and how a lookup behaves."""

from __future__ import annotations

import hashlib
import json
from dataclasses import fields, replace
from typing import TYPE_CHECKING, Any

import pytest

from crewflow._runtime.cache import (
    ReplyCache,
    as_cached,
    cache_key,
    cacheable,
    decode_response,
    encode_response,
    replay_deltas,
    tokens_saved,
)
from crewflow.exceptions import StoreError
from crewflow.llm._types import (
    LLMRequest,
    LLMResponse,
    Message,
    OutputSchema,
    ToolCall,
    ToolSpec,
    Usage,
)
from crewflow.store import MemoryStore, SQLiteStore, Store
from tests.stores import STORE_KINDS, made_store

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

MODEL = "openai/gpt-4o-mini"


def weather_tool(**parameters: Any) -> ToolSpec:
    schema = parameters or {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city"],
    }
    return ToolSpec("weather", "The forecast for CITY.", schema)


def base_request(**changes: Any) -> LLMRequest:
    """A request using every field, so that each can be changed on its own."""
    request = LLMRequest(
        messages=[
            Message("system", "You are a researcher."),
            Message("user", "Weather in Oslo?"),
            Message("assistant", None, (ToolCall("call_1", "weather", '{"city": "Oslo"}'),)),
            Message("tool", "rain", tool_call_id="call_1", name="weather"),
        ],
        tools=[weather_tool()],
        output=OutputSchema("Forecast", {"type": "object", "properties": {"sky": {}}}),
        temperature=0.2,
        max_tokens=500,
        extra={"top_p": 0.9, "seed": 7},
    )
    return replace(request, **changes)


def reply(**changes: Any) -> LLMResponse:
    response = LLMResponse(
        content='{"sky": "grey"}',
        usage=Usage(requests=1, prompt_tokens=120, completion_tokens=30, cost=0.002),
        model="gpt-4o-mini-2024-07-18",
        finish_reason="stop",
    )
    return replace(response, **changes)


# -- the key -------------------------------------------------------------------------------------


def test_identical_requests_have_the_same_versioned_key() -> None:
    first = cache_key(MODEL, base_request())
    second = cache_key(MODEL, base_request())

    assert first == second
    assert first.startswith("v1:")
    assert len(first) == len("v1:") + 64
    int(first.removeprefix("v1:"), 16)  # hex


def test_the_key_is_the_sha256_of_a_canonical_json_of_the_request() -> None:
    # Spelled out so that a change of format shows here: it must come with a new version tag,
    # or entries stored by older versions would be read under the new meaning.
    canonical = (
        '{"extra":{},"max_tokens":null,"messages":[{"content":"Hi","name":null,"role":"user",'
        '"tool_call_id":null,"tool_calls":[]}],"model":"m","output":null,"temperature":null,'
        '"tools":[]}'
    )

    key = cache_key("m", LLMRequest(messages=[Message("user", "Hi")]))

    assert key == "v1:" + hashlib.sha256(canonical.encode()).hexdigest()
    assert key == "v1:df43d6df14a2e8f7aa6e0d71324a6999af80de766c8e74bf4c36c844645d627b"


CHANGES: dict[str, dict[str, Any]] = {
    "user text": {"messages": [*base_request().messages[:1], Message("user", "Weather in Rome?")]},
    "role": {"messages": [Message("user", "You are a researcher."), *base_request().messages[1:]]},
    "tool call id": {
        "messages": [
            *base_request().messages[:2],
            Message("assistant", None, (ToolCall("call_2", "weather", '{"city": "Oslo"}'),)),
            Message("tool", "rain", tool_call_id="call_1", name="weather"),
        ]
    },
    "tool call arguments": {
        "messages": [
            *base_request().messages[:2],
            Message("assistant", None, (ToolCall("call_1", "weather", '{"city": "Rome"}'),)),
            Message("tool", "rain", tool_call_id="call_1", name="weather"),
        ]
    },
    "tool result": {
        "messages": [
            *base_request().messages[:3],
            Message("tool", "sun", tool_call_id="call_1", name="weather"),
        ]
    },
    "tool message name": {
        "messages": [
            *base_request().messages[:3],
            Message("tool", "rain", tool_call_id="call_1", name="forecast"),
        ]
    },
    "one more message": {"messages": [*base_request().messages, Message("user", "And Bergen?")]},
    "no tools": {"tools": []},
    "tool description": {"tools": [replace(weather_tool(), description="Tomorrow in CITY.")]},
    "tool schema": {"tools": [weather_tool(type="object", properties={})]},
    "output schema": {"output": OutputSchema("Forecast", {"type": "object"})},
    "output schema name": {
        "output": OutputSchema("Weather", {"type": "object", "properties": {"sky": {}}})
    },
    "no output schema": {"output": None},
    "temperature": {"temperature": 0.7},
    "default temperature": {"temperature": None},
    "max_tokens": {"max_tokens": 501},
    "extra value": {"extra": {"top_p": 0.9, "seed": 8}},
    "extra key": {"extra": {"top_p": 0.9, "seed": 7, "presence_penalty": 0.1}},
    "no extra": {"extra": {}},
}


@pytest.mark.parametrize("change", CHANGES.values(), ids=CHANGES.keys())
def test_the_key_changes_with_anything_that_changes_the_reply(change: dict[str, Any]) -> None:
    assert cache_key(MODEL, base_request(**change)) != cache_key(MODEL, base_request())


def test_the_key_changes_with_the_model() -> None:
    request = base_request()

    assert cache_key("openai/gpt-4o", request) != cache_key(MODEL, request)


def test_streaming_does_not_change_the_key() -> None:
    async def on_delta(text: str) -> None:
        pass

    streamed = base_request(stream=True, on_delta=on_delta)

    assert cache_key(MODEL, streamed) == cache_key(MODEL, base_request())


def test_every_request_field_but_stream_and_on_delta_is_in_the_key() -> None:
    # A field added to LLMRequest later must make a deliberate choice here.
    assert {spec.name for spec in fields(LLMRequest)} == {
        "messages",
        "tools",
        "output",
        "temperature",
        "max_tokens",
        "stream",
        "on_delta",
        "extra",
    }


def test_dict_key_order_in_schemas_and_extra_does_not_matter() -> None:
    reordered_tool = weather_tool(
        required=["city"],
        properties={"days": {"type": "integer"}, "city": {"type": "string"}},
        type="object",
    )
    reordered = base_request(tools=[reordered_tool], extra={"seed": 7, "top_p": 0.9})

    assert cache_key(MODEL, reordered) == cache_key(MODEL, base_request())


def test_list_order_in_schemas_does_matter() -> None:
    tool = weather_tool(type="object", properties={}, required=["days", "city"])
    other = weather_tool(type="object", properties={}, required=["city", "days"])

    assert cache_key(MODEL, base_request(tools=[tool])) != cache_key(
        MODEL, base_request(tools=[other])
    )


def test_extra_values_json_cannot_hold_fall_back_to_their_repr() -> None:
    class Mode:
        def __repr__(self) -> str:
            return "Mode.FAST"

    with_object = base_request(extra={"mode": Mode(), 3: {1, 2}, None: b"raw"})
    same = base_request(extra={"mode": Mode(), 3: {1, 2}, None: b"raw"})
    plain_string = base_request(extra={"mode": "Mode.FAST", 3: {1, 2}, None: b"raw"})

    assert cache_key(MODEL, with_object) == cache_key(MODEL, same)
    # repr("Mode.FAST") is quoted, so a string and an object never collide
    assert cache_key(MODEL, with_object) != cache_key(MODEL, plain_string)


def test_unicode_and_lone_surrogates_are_hashed_without_error() -> None:
    first = cache_key(MODEL, base_request(messages=[Message("user", "Ærøskøbing ☔ \ud800")]))
    second = cache_key(MODEL, base_request(messages=[Message("user", "Ærøskøbing ☔ \ud801")]))

    assert first != second


def test_the_key_holds_no_readable_text_of_the_request() -> None:
    key = cache_key(MODEL, base_request(messages=[Message("user", "sk-secret-looking-text")]))

    assert "secret" not in key
    assert MODEL not in key


# -- encoding ------------------------------------------------------------------------------------


def test_a_reply_with_tool_calls_and_unicode_survives_the_round_trip() -> None:
    original = LLMResponse(
        content="Vær: regn ☔ — 東京 \U0001f600",
        tool_calls=(
            ToolCall("call_a", "weather", '{"city": "Tromsø"}'),
            ToolCall("call_b", "lookup", "not json {"),
        ),
        usage=Usage(requests=1, prompt_tokens=11, completion_tokens=22, cost=None),
        model="anthropic/claude-sonnet-4",
        finish_reason="tool_calls",
    )

    decoded = decode_response(encode_response(original))

    assert decoded == original
    assert decoded.tool_calls[0] == ToolCall("call_a", "weather", '{"city": "Tromsø"}')
    assert decoded.usage.total_tokens == 33
    assert decoded.usage.cost is None


def test_a_tools_only_reply_round_trips_with_none_content() -> None:
    original = LLMResponse(None, (ToolCall("c", "t", "{}"),), Usage(1, 5, 6, 0.25), "m", None)

    assert decode_response(encode_response(original)) == original


def test_the_encoding_is_plain_json() -> None:
    data = json.loads(encode_response(reply()))

    assert data == {
        "format": "v1",
        "content": '{"sky": "grey"}',
        "tool_calls": [],
        "usage": {"requests": 1, "prompt_tokens": 120, "completion_tokens": 30, "cost": 0.002},
        "model": "gpt-4o-mini-2024-07-18",
        "finish_reason": "stop",
    }


CORRUPT = {
    "not json": "{not json",
    "truncated": encode_response(reply())[:-5],
    "a list": "[]",
    "another format": encode_response(reply()).replace('"format":"v1"', '"format":"v0"'),
    "missing usage": json.dumps({"format": "v1", "content": "x", "tool_calls": []}),
    "tokens as text": encode_response(reply()).replace(
        '"prompt_tokens":120', '"prompt_tokens":"1"'
    ),
    "tokens as bool": encode_response(reply()).replace('"requests":1', '"requests":true'),
    "tool call not an object": encode_response(reply()).replace(
        '"tool_calls":[]', '"tool_calls":[1]'
    ),
    "content a number": encode_response(reply()).replace(
        '"content":"{\\"sky\\": \\"grey\\"}"', '"content":3'
    ),
}


@pytest.mark.parametrize("text", CORRUPT.values(), ids=CORRUPT.keys())
def test_decoding_a_corrupt_value_raises_value_error(text: str) -> None:
    with pytest.raises(ValueError, match=r".+"):
        decode_response(text)


# -- what is served and kept -----------------------------------------------------------------------


def test_a_served_reply_costs_nothing_but_remembers_what_it_saved() -> None:
    original = reply()

    served = as_cached(original)

    assert served.usage == Usage(requests=0, prompt_tokens=0, completion_tokens=0, cost=0.0)
    assert (served.content, served.model, served.finish_reason) == (
        original.content,
        original.model,
        original.finish_reason,
    )
    assert tokens_saved(original) == 150
    assert original.usage.requests == 1  # not mutated


def test_a_served_reply_of_unknown_cost_keeps_the_cost_unknown() -> None:
    assert as_cached(reply(usage=Usage(1, 3, 4, None))).usage.cost is None


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (reply(), True),
        (reply(finish_reason=None), True),
        (
            reply(content=None, tool_calls=(ToolCall("c", "t", "{}"),), finish_reason="tool_calls"),
            True,
        ),
        (reply(finish_reason="length"), False),
        (reply(finish_reason="max_tokens"), False),
        (reply(finish_reason="content_filter"), False),
        (reply(content=None), False),
        (reply(content="  \n"), False),
    ],
    ids=["stop", "no reason", "tool calls", "length", "max_tokens", "filtered", "none", "blank"],
)
def test_only_finished_non_empty_replies_are_cacheable(
    response: LLMResponse, expected: bool
) -> None:
    assert cacheable(response) is expected


def test_a_structured_output_reply_must_be_json_to_be_cacheable() -> None:
    request = base_request()

    assert cacheable(reply(content='{"sky": "grey"}'), request) is True
    assert cacheable(reply(content="The sky is grey."), request) is False
    assert cacheable(reply(content="The sky is grey."), base_request(output=None)) is True


async def test_a_streaming_caller_gets_the_cached_text_as_one_delta() -> None:
    pieces: list[str] = []

    async def on_delta(text: str) -> None:
        pieces.append(text)

    await replay_deltas(base_request(stream=True, on_delta=pieces.append), reply(content="abc"))
    await replay_deltas(base_request(stream=True, on_delta=on_delta), reply(content="def"))
    await replay_deltas(base_request(stream=False, on_delta=on_delta), reply(content="ghi"))

    assert pieces == ["abc", "def"]


# -- the cache -----------------------------------------------------------------------------------


@pytest.fixture(params=STORE_KINDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async with made_store(request.param, request, tmp_path) as made:
        yield made


async def test_a_reply_put_by_one_run_is_found_by_the_next(store: Store) -> None:
    key = cache_key(MODEL, base_request())
    first = ReplyCache(store)
    await first.put(key, reply())

    found = await ReplyCache(store).get(key)

    assert found == reply()
    assert json.loads(await store.cache_get(key) or "null")["model"] == "gpt-4o-mini-2024-07-18"


async def test_a_reply_survives_reopening_the_sqlite_file(tmp_path: Path) -> None:
    key = cache_key(MODEL, base_request())
    async with SQLiteStore(tmp_path / "runs.db") as store:
        await ReplyCache(store).put(key, reply())

    async with SQLiteStore(tmp_path / "runs.db") as store:
        assert await ReplyCache(store).get(key) == reply()
        assert await store.cache_clear() == 1
        assert await ReplyCache(store).get(key) is None


async def test_hits_and_misses_are_counted(store: Store) -> None:
    cache = ReplyCache(store)
    key = cache_key(MODEL, base_request())

    assert await cache.get(key) is None
    await cache.put(key, reply())
    assert await cache.get(key) == reply()
    assert await cache.get(key) == reply()
    assert await cache.get(cache_key("other", base_request())) is None

    assert (cache.hits, cache.misses) == (2, 2)


async def test_without_a_store_replies_stay_in_one_cache() -> None:
    key = cache_key(MODEL, base_request())
    first, second = ReplyCache(None), ReplyCache(None)

    await first.put(key, reply())

    assert await first.get(key) == reply()
    assert await second.get(key) is None
    assert (first.hits, first.misses, second.hits, second.misses) == (1, 0, 0, 1)


async def test_a_corrupt_stored_value_is_a_miss_and_is_overwritten(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    key = cache_key(MODEL, base_request())
    await store.cache_put(key, '{"format": "v1", "content": "sk-should-not-be-logged"')
    cache = ReplyCache(store)

    assert await cache.get(key) is None
    await cache.put(key, reply(content="fresh"))
    assert await cache.get(key) == reply(content="fresh")

    assert (cache.hits, cache.misses) == (1, 1)
    logged = capsys.readouterr().err
    assert "cached reply unreadable" in logged
    assert "sk-should-not-be-logged" not in logged


async def test_the_latest_put_of_a_key_wins() -> None:
    cache = ReplyCache(MemoryStore())
    key = cache_key(MODEL, base_request())

    await cache.put(key, reply(content="first"))
    await cache.put(key, reply(content="second"))

    assert await cache.get(key) == reply(content="second")


class BrokenStore(MemoryStore):
    async def cache_get(self, key: str) -> str | None:
        raise StoreError("the run database runs.db failed: database is locked")

    async def cache_put(self, key: str, value: str) -> None:
        raise StoreError("the run database runs.db failed: database is locked")


async def test_a_failing_store_never_fails_the_call(capsys: pytest.CaptureFixture[str]) -> None:
    cache = ReplyCache(BrokenStore())
    key = cache_key(MODEL, base_request())

    await cache.put(key, reply(content="sk-should-not-be-logged"))
    assert await cache.get(key) is None

    assert (cache.hits, cache.misses) == (0, 1)
    logged = capsys.readouterr().err
    assert "reply cache write failed" in logged
    assert "reply cache read failed" in logged
    assert "sk-should-not-be-logged" not in logged
