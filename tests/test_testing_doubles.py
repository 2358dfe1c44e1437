"""Tests for the public test doubles in `crewflow.testing`."""

from __future__ import annotations

import asyncio
import json

import anyio
import pytest
from pydantic import BaseModel

from crewflow import Agent, Crew, Task
from crewflow._runtime.clock import SystemClock, current_clock
from crewflow.events import LLMCallFinished, TaskStarted
from crewflow.exceptions import ConfigurationError, LLMError
from crewflow.llm import LLMRequest, LLMResponse, Message, Usage
from crewflow.llm._guard import check_allowed
from crewflow.testing import (
    Disconnect,
    Error,
    FakeClock,
    FunctionLLM,
    Malformed,
    ScriptedLLM,
    ScriptExhausted,
    Slow,
    Text,
    ToolCall,
    ToolCalls,
    capture_events,
    forbid_real_llm_calls,
    run_virtual,
    use_clock,
)


class Point(BaseModel):
    x: int
    y: int


def request(text: str = "hello", **options: object) -> LLMRequest:
    return LLMRequest([Message("user", text)], **options)  # type: ignore[arg-type]


# --- ScriptedLLM ------------------------------------------------------------------------------


async def test_scripted_llm_answers_in_order_and_records_each_request() -> None:
    llm = ScriptedLLM(["one", "two"])
    first, second = request("a"), request("b")

    assert (await llm.complete(first)).content == "one"
    assert (await llm.complete(second)).content == "two"
    assert llm.requests == [first, second]


async def test_remaining_counts_down_and_stops_at_zero() -> None:
    llm = ScriptedLLM(["one"])
    assert llm.remaining == 1

    await llm.complete(request())
    with pytest.raises(ScriptExhausted):
        await llm.complete(request())

    assert llm.remaining == 0


async def test_an_exhausted_script_raises_a_clear_assertion_error() -> None:
    llm = ScriptedLLM(["only"], model="my-script")
    await llm.complete(request())

    with pytest.raises(ScriptExhausted) as caught:
        await llm.complete(request("what now?"))

    message = str(caught.value)
    assert isinstance(caught.value, AssertionError)
    assert "ScriptedLLM 'my-script' was called 2 times but has only 1 replies" in message
    assert "user: 'what now?'" in message


async def test_text_answers_report_the_model_and_estimated_usage() -> None:
    response = await ScriptedLLM(["x" * 40], model="scripted-a").complete(request("y" * 8))

    assert response.model == "scripted-a"
    assert response.finish_reason == "stop"
    assert response.usage == Usage(requests=1, prompt_tokens=2, completion_tokens=10)


async def test_text_with_fixed_usage_reports_it() -> None:
    response = await ScriptedLLM([Text("hi", usage=(120, 7))]).complete(request())

    assert response.content == "hi"
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (120, 7)


async def test_dicts_and_models_answer_as_json() -> None:
    llm = ScriptedLLM([{"x": 1, "y": 2}, Point(x=3, y=4)])

    first = await llm.complete(request())
    second = await llm.complete(request())

    assert first.content is not None
    assert json.loads(first.content) == {"x": 1, "y": 2}
    assert second.content is not None
    assert Point.model_validate_json(second.content) == Point(x=3, y=4)


async def test_an_llm_response_is_returned_as_is() -> None:
    canned = LLMResponse(content="canned", model="elsewhere")

    assert await ScriptedLLM([canned]).complete(request()) is canned


async def test_tool_calls_get_default_ids_and_json_arguments() -> None:
    llm = ScriptedLLM(
        [
            "first",
            ToolCalls(
                [
                    ToolCall("search", {"query": "x"}),
                    ToolCall("raw", '{"broken":', id="mine"),
                ],
                content="Looking.",
            ),
        ]
    )
    await llm.complete(request())

    response = await llm.complete(request())

    assert response.content == "Looking."
    assert response.finish_reason == "tool_calls"
    assert [(c.id, c.name, c.arguments) for c in response.tool_calls] == [
        ("call_1_0", "search", '{"query": "x"}'),
        ("mine", "raw", '{"broken":'),
    ]
    assert response.usage.completion_tokens > 0


@pytest.mark.parametrize("status", [408, 409, 429, 500, 503])
async def test_retryable_http_errors_become_retryable_llm_errors(status: int) -> None:
    with pytest.raises(LLMError) as caught:
        await ScriptedLLM([Error(status, "try later", retry_after=1.5)]).complete(request())

    error = caught.value
    assert error.retryable
    assert error.status_code == status
    assert error.retry_after == 1.5
    assert error.model == "scripted"
    assert str(error) == f"scripted: HTTP {status}: try later"


@pytest.mark.parametrize("status", [400, 401, 404, 422])
async def test_client_errors_are_not_retryable(status: int) -> None:
    with pytest.raises(LLMError) as caught:
        await ScriptedLLM([Error(status)]).complete(request())

    assert not caught.value.retryable
    assert caught.value.retry_after is None


@pytest.mark.parametrize(
    ("item", "what"), [(Malformed(), "a malformed reply"), (Disconnect(), "a dropped connection")]
)
async def test_malformed_replies_and_disconnects_are_retryable(
    item: Malformed | Disconnect, what: str
) -> None:
    with pytest.raises(LLMError, match=what) as caught:
        await ScriptedLLM([item]).complete(request())

    assert caught.value.retryable
    assert caught.value.status_code is None


async def test_an_exception_item_is_raised_as_is() -> None:
    boom = KeyError("boom")

    with pytest.raises(KeyError) as caught:
        await ScriptedLLM([boom]).complete(request())

    assert caught.value is boom


async def test_slow_waits_then_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(anyio, "sleep", fake_sleep)

    response = await ScriptedLLM([Slow(3.0, Text("late"))]).complete(request())

    assert slept == [3.0]
    assert response.content == "late"


async def test_an_item_it_cannot_answer_with_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="cannot answer with int"):
        await ScriptedLLM([42]).complete(request())  # type: ignore[list-item]


async def test_streamed_requests_get_the_text_in_pieces() -> None:
    pieces: list[str] = []

    response = await ScriptedLLM(["one two  three\n"]).complete(
        request(stream=True, on_delta=pieces.append)
    )

    assert pieces == ["one ", "two  ", "three\n"]
    assert "".join(pieces) == response.content


async def test_an_async_delta_callback_is_awaited() -> None:
    pieces: list[str] = []

    async def collect(piece: str) -> None:
        await anyio.lowlevel.checkpoint()
        pieces.append(piece)

    await ScriptedLLM([Text("a b")]).complete(request(stream=True, on_delta=collect))

    assert pieces == ["a ", "b"]


async def test_exhaustion_on_a_request_without_messages_says_so() -> None:
    with pytest.raises(ScriptExhausted, match="no messages"):
        await ScriptedLLM([]).complete(LLMRequest([]))


async def test_exhaustion_shortens_a_long_last_message() -> None:
    with pytest.raises(ScriptExhausted) as caught:
        await ScriptedLLM([]).complete(request("word " * 50))

    assert str(caught.value).endswith("user: '" + "word " * 15 + "wo...')")


def test_native_structured_output_is_configurable() -> None:
    assert ScriptedLLM([]).supports_output_schema
    assert not ScriptedLLM([], supports_output_schema=False).supports_output_schema


# --- FunctionLLM ------------------------------------------------------------------------------


async def test_function_llm_answers_from_a_sync_function_of_the_request() -> None:
    llm = FunctionLLM(lambda req: (req.messages[-1].content or "").upper())

    response = await llm.complete(request("shout"))

    assert response.content == "SHOUT"
    assert response.model == "function"
    assert len(llm.requests) == 1


async def test_function_llm_awaits_an_async_function() -> None:
    async def answer(req: LLMRequest) -> ToolCalls:
        await anyio.lowlevel.checkpoint()
        return ToolCalls([ToolCall("search", {"q": len(req.messages)})])

    response = await FunctionLLM(answer).complete(request())

    assert [(c.id, c.arguments) for c in response.tool_calls] == [("call_0_0", '{"q": 1}')]


async def test_function_llm_takes_every_script_item_kind() -> None:
    llm = FunctionLLM(lambda req: Error(429, retry_after=2.0), model="fn")

    with pytest.raises(LLMError) as caught:
        await llm.complete(request())

    assert (caught.value.model, caught.value.retry_after) == ("fn", 2.0)


def test_function_llm_native_structured_output_is_configurable() -> None:
    assert not FunctionLLM(str, supports_output_schema=False).supports_output_schema


# --- capture_events ---------------------------------------------------------------------------


def small_crew(llm: ScriptedLLM) -> Crew:
    agent = Agent(role="Writer", goal="Write", llm=llm)
    return Crew(tasks=[Task("Write a haiku", agent=agent, name="haiku")])


async def test_capture_events_records_a_runs_events_in_order() -> None:
    crew = small_crew(ScriptedLLM(["an old pond"]))

    with capture_events() as captured:
        result = await crew.kickoff()

    assert captured.kinds == [
        "run_started",
        "task_started",
        "llm_call_started",
        "llm_call_finished",
        "task_finished",
        "run_finished",
    ]
    assert len(captured) == 6
    assert {event.run_id for event in captured} == {result.run_id}
    [started] = captured.of_type(TaskStarted)
    assert (started.task, started.agent, started.attempt) == ("haiku", "Writer", 1)
    assert captured.of_type(LLMCallFinished)[0].completion_tokens > 0


async def test_capture_events_stops_at_the_end_of_its_block() -> None:
    crew = small_crew(ScriptedLLM(["one", "two"]))
    with capture_events() as captured:
        await crew.kickoff()

    await crew.kickoff()

    assert captured.kinds.count("run_started") == 1


async def test_nested_captures_both_receive_events() -> None:
    crew = small_crew(ScriptedLLM(["one"]))

    with capture_events() as outer, capture_events() as inner:
        await crew.kickoff()

    assert outer.kinds == inner.kinds
    assert outer.kinds


# --- FakeClock and use_clock ------------------------------------------------------------------


def test_fake_clock_sleeps_return_at_once_and_move_time() -> None:
    clock = FakeClock(start=100.0)

    async def sleep() -> float:
        await clock.sleep(3600)
        await clock.sleep(-5)
        return asyncio.get_running_loop().time()

    # On a virtual-time loop a real sleep would show as time passed: none did.
    assert run_virtual(sleep) == 0.0
    clock.advance(0.5)

    assert clock.sleeps == [3600, -5]
    assert clock.now() == 3700.5


def test_use_clock_swaps_the_runtime_clock_for_its_block() -> None:
    clock = FakeClock()

    with use_clock(clock) as used:
        assert used is clock
        assert current_clock() is clock

    assert isinstance(current_clock(), SystemClock)


async def test_retry_after_pauses_go_through_the_fake_clock(fake_clock: FakeClock) -> None:
    crew = small_crew(ScriptedLLM([Error(429, retry_after=2.5), "done"]))

    result = await crew.kickoff()

    assert result.text == "done"
    assert fake_clock.sleeps == [2.5]


# --- forbid_real_llm_calls --------------------------------------------------------------------


def test_forbid_real_llm_calls_blocks_remote_calls_inside_its_block(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CREWFLOW_FORBID_REAL_LLM_CALLS")
    check_allowed("openai/gpt-4o", "https://api.openai.com/v1")

    with forbid_real_llm_calls(), pytest.raises(ConfigurationError, match="was blocked"):
        check_allowed("openai/gpt-4o", "https://api.openai.com/v1")

    check_allowed("openai/gpt-4o", "https://api.openai.com/v1")


def test_forbid_real_llm_calls_allows_loopback_unless_told_not_to() -> None:
    with forbid_real_llm_calls():
        check_allowed("openai/m", "http://127.0.0.1:8000/v1")

    with (
        forbid_real_llm_calls(allow_loopback=False),
        pytest.raises(ConfigurationError, match="was blocked"),
    ):
        check_allowed("openai/m", "http://127.0.0.1:8000/v1")


def test_reset_limits_forgets_declarations_and_pauses() -> None:
    from crewflow import Limit, Limits, set_limits
    from crewflow._runtime.limiter import registry
    from crewflow.testing import reset_limits

    set_limits(Limits({"openai/m": Limit(concurrency=1)}))
    registry().pause("openai|x|m", 60)

    reset_limits()

    assert registry().state("openai/m")["limit"] is None
    assert registry().state("openai|x|m")["paused_until"] is None
