"""Tests for `crewflow.llm.offline`: the deterministic local model."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import math
import uuid
from enum import Enum, IntEnum
from typing import Annotated, Any, Literal

import anyio
import pytest
from pydantic import BaseModel, Field, HttpUrl

from crewflow import Agent, tool
from crewflow._prompts import system_prompt, task_prompt
from crewflow.exceptions import ConfigurationError, LLMError
from crewflow.llm import LLMRequest, Message, OutputSchema, ToolCall, ToolSpec
from crewflow.llm.offline import OfflineLLM
from crewflow.testing import run_virtual


def request_for(
    task: str = "Summarise sodium batteries",
    *,
    role: str = "Researcher",
    **options: Any,
) -> LLMRequest:
    return LLMRequest(
        [Message("system", system_prompt(role, "Find facts", "")), Message("user", task)],
        **options,
    )


def output_for(model: type[BaseModel]) -> OutputSchema:
    return OutputSchema(model.__name__, model.model_json_schema())


# --- text answers -----------------------------------------------------------------------------


async def test_the_same_request_gets_the_same_answer() -> None:
    first = await OfflineLLM().complete(request_for())
    second = await OfflineLLM().complete(request_for())

    assert first == second


async def test_a_different_task_gets_a_different_answer() -> None:
    first = await OfflineLLM().complete(request_for("Summarise sodium batteries"))
    second = await OfflineLLM().complete(request_for("Summarise lithium batteries"))

    assert first.content != second.content


async def test_the_answer_says_it_comes_from_the_offline_model_and_names_role_and_task() -> None:
    response = await OfflineLLM().complete(request_for(role="Dr. Who"))

    assert response.content is not None
    first_line = response.content.splitlines()[0]
    assert first_line == "[offline model] Dr. Who on: Summarise sodium batteries"
    assert "offline model" in response.content.splitlines()[1]
    assert response.model == "offline"
    assert response.finish_reason == "stop"
    assert response.tool_calls == ()


async def test_the_task_line_is_the_first_line_of_the_prompt_shortened() -> None:
    prompt = "x" * 150 + "\nsecond line"

    response = await OfflineLLM().complete(request_for(prompt))

    assert response.content is not None
    assert response.content.splitlines()[0].endswith(": " + "x" * 99 + "…")


async def test_without_a_system_message_it_answers_as_an_assistant() -> None:
    response = await OfflineLLM().complete(LLMRequest([Message("user", "")]))

    assert response.content is not None
    assert response.content.startswith("[offline model] an assistant on: (no task)")


async def test_the_answer_mentions_the_context_it_was_given() -> None:
    prompt = task_prompt("Write a post", "", [("facts", "- one"), ("style", "brief")])

    response = await OfflineLLM().complete(request_for(prompt))

    assert response.content is not None
    assert "- Built on the output of: facts, style." in response.content


async def test_usage_counts_one_request_and_some_tokens() -> None:
    response = await OfflineLLM().complete(request_for())

    assert response.usage.requests == 1
    assert response.usage.prompt_tokens > 0
    assert response.usage.completion_tokens > 0


async def test_a_longer_prompt_costs_more_prompt_tokens() -> None:
    short = await OfflineLLM().complete(request_for("Hi"))
    long = await OfflineLLM().complete(request_for("Hi " * 200))

    assert long.usage.prompt_tokens > short.usage.prompt_tokens


def test_it_follows_output_schemas_natively() -> None:
    assert OfflineLLM().supports_output_schema is True


def test_repr_shows_the_latency() -> None:
    assert repr(OfflineLLM(latency=0.5)) == "OfflineLLM(latency=0.5)"


# --- tools ------------------------------------------------------------------------------------


async def test_it_calls_each_offered_tool_once_across_turns_then_answers() -> None:
    calls: list[str] = []

    @tool
    def lookup(term: str, limit: int = 3) -> str:
        """Look TERM up."""
        calls.append(f"lookup {term} {limit}")
        return f"found {term}"

    @tool
    async def weather(city: str, unit: Literal["C", "F"]) -> dict[str, Any]:
        """The weather in CITY."""
        calls.append(f"weather {unit}")
        return {"city": city, "degrees": 21}

    agent = Agent(role="Researcher", goal="Find facts", tools=[lookup, weather])

    answer = await agent.run("Plan a trip", llm=OfflineLLM())

    assert sorted(call.split()[0] for call in calls) == ["lookup", "weather"]
    assert answer.tool_calls == 2
    assert answer.iterations == 2
    assert "- Tool lookup returned: found " in answer.text
    assert '- Tool weather returned: {"city": ' in answer.text


async def test_tool_arguments_follow_each_tools_schema() -> None:
    spec = ToolSpec(
        "book",
        "Book a seat.",
        {
            "type": "object",
            "properties": {
                "seats": {"type": "integer", "minimum": 2},
                "cabin": {"enum": ["economy", "business"]},
            },
            "required": ["seats", "cabin"],
        },
    )

    response = await OfflineLLM().complete(request_for(tools=[spec]))

    [call] = response.tool_calls
    arguments = json.loads(call.arguments)
    assert arguments["seats"] >= 2
    assert arguments["cabin"] in {"economy", "business"}
    assert response.content is None
    assert response.finish_reason == "tool_calls"
    assert response.usage.completion_tokens > 0


async def test_only_tools_not_called_yet_are_called() -> None:
    specs = [ToolSpec(name, "", {"type": "object", "properties": {}}) for name in ("a", "b")]
    request = request_for(tools=specs)
    request.messages += [
        Message("assistant", None, (ToolCall("call_1", "a", "{}"),)),
        Message("tool", "done", tool_call_id="call_1", name="a"),
    ]

    response = await OfflineLLM().complete(request)

    assert [call.name for call in response.tool_calls] == ["b"]


async def test_tool_call_ids_are_distinct_and_deterministic() -> None:
    specs = [ToolSpec(name, "", {"type": "object", "properties": {}}) for name in ("a", "b")]

    first = await OfflineLLM().complete(request_for(tools=specs))
    second = await OfflineLLM().complete(request_for(tools=specs))

    assert first.tool_calls == second.tool_calls
    assert len({call.id for call in first.tool_calls}) == 2


# --- structured output ------------------------------------------------------------------------


class Colour(Enum):
    RED = "red"
    GREEN = "green"


class Level(IntEnum):
    LOW = 1
    HIGH = 5


class Address(BaseModel):
    street: str
    city: str
    postcode: str = Field(pattern=r"^\d{5}$")


class Person(BaseModel):
    name: str = Field(min_length=2, max_length=40)
    age: int = Field(ge=18, le=99)
    address: Address
    previous: list[Address] = []


class Tree(BaseModel):
    label: str
    children: list[Tree] = []


class Everything(BaseModel):
    colour: Colour
    level: Level
    mode: Literal["fast", "slow"]
    code: Literal[3, 7]
    ratio: float = Field(gt=0, lt=1, multiple_of=0.25)
    count: Annotated[int, Field(ge=10, le=12)]
    tags: list[str] = Field(min_length=2, max_length=3)
    ids: set[int]
    scores: dict[str, float]
    pair: tuple[int, str]
    flag: bool
    maybe: int | None
    when: dt.datetime
    day: dt.date
    key: uuid.UUID
    site: HttpUrl
    people: list[Person] = Field(min_length=1)
    tree: Tree


class Empty(BaseModel):
    pass


@pytest.mark.parametrize("model", [Address, Person, Tree, Everything, Empty])
async def test_structured_answers_validate_against_the_model(model: type[BaseModel]) -> None:
    response = await OfflineLLM().complete(request_for(output=output_for(model)))

    assert response.content is not None
    model.model_validate_json(response.content)
    assert response.tool_calls == ()


async def test_structured_answers_respect_enums_literals_and_bounds() -> None:
    response = await OfflineLLM().complete(request_for(output=output_for(Everything)))

    assert response.content is not None
    data = Everything.model_validate_json(response.content)
    raw = json.loads(response.content)
    assert raw["colour"] in {"red", "green"}
    assert raw["level"] in {1, 5}
    assert raw["mode"] in {"fast", "slow"}
    assert raw["code"] in {3, 7}
    assert 0 < data.ratio < 1
    assert data.ratio % 0.25 == 0
    assert 10 <= data.count <= 12
    assert 2 <= len(data.tags) <= 3
    assert 18 <= data.people[0].age <= 99
    assert len(data.people[0].address.postcode) == 5


async def test_structured_answers_are_deterministic_and_depend_on_the_task() -> None:
    output = output_for(Address)

    first = await OfflineLLM().complete(request_for("Task one", output=output))
    again = await OfflineLLM().complete(request_for("Task one", output=output))
    other = await OfflineLLM().complete(request_for("Task two", output=output))

    assert first.content == again.content
    assert first.content != other.content


async def test_tools_are_called_before_a_structured_answer() -> None:
    spec = ToolSpec("a", "", {"type": "object", "properties": {}})

    response = await OfflineLLM().complete(request_for(tools=[spec], output=output_for(Address)))

    assert [call.name for call in response.tool_calls] == ["a"]
    assert response.content is None


async def test_an_unsatisfiable_schema_is_an_llm_error() -> None:
    output = OutputSchema("Impossible", {"type": "integer", "minimum": 5, "maximum": 4})

    with pytest.raises(LLMError, match="cannot answer with Impossible") as caught:
        await OfflineLLM().complete(request_for(output=output))

    assert caught.value.model == "offline"
    assert not caught.value.retryable


# --- streaming --------------------------------------------------------------------------------


async def test_streamed_pieces_join_to_the_content() -> None:
    pieces: list[str] = []

    response = await OfflineLLM().complete(request_for(stream=True, on_delta=pieces.append))

    assert len(pieces) > 5
    assert "".join(pieces) == response.content


async def test_an_async_delta_callback_is_awaited() -> None:
    pieces: list[str] = []

    async def collect(piece: str) -> None:
        await anyio.lowlevel.checkpoint()
        pieces.append(piece)

    response = await OfflineLLM().complete(
        request_for(output=output_for(Address), stream=True, on_delta=collect)
    )

    assert "".join(pieces) == response.content


async def test_nothing_is_streamed_unless_asked() -> None:
    pieces: list[str] = []

    await OfflineLLM().complete(request_for(stream=False, on_delta=pieces.append))

    assert pieces == []


# --- latency ----------------------------------------------------------------------------------


async def test_latency_sleeps_before_answering(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(anyio, "sleep", fake_sleep)

    await OfflineLLM(latency=2.5).complete(request_for())

    assert slept == [2.5]


async def test_no_latency_means_no_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(anyio, "sleep", fake_sleep)

    await OfflineLLM().complete(request_for())

    assert slept == []


def test_a_call_takes_its_latency_on_the_loops_clock() -> None:
    async def call() -> float:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await OfflineLLM(latency=0.05).complete(request_for())
        return loop.time() - started

    # Virtual time: exactly the latency, without waiting for it or measuring the machine.
    assert run_virtual(call) == 0.05


@pytest.mark.parametrize("latency", [-0.1, math.nan, math.inf])
def test_a_negative_or_non_finite_latency_is_rejected(latency: float) -> None:
    with pytest.raises(ConfigurationError, match="latency must be a finite number"):
        OfflineLLM(latency=latency)


async def test_a_text_answer_is_exactly_the_one_recorded_runs_and_examples_hold() -> None:
    # Byte for byte: the answer id hashes every message; the role comes from the first system
    # message, the task line from the first user message, the context from the last one.
    messages = [
        Message("system", "You are Researcher. Your goal: find facts"),
        Message("user", '  Collect facts\nin detail\n\n<context task="a">\nx\n</context>'),
        Message("tool", "  many   spaced\nwords ", name="search", tool_call_id="c1"),
        Message("user", 'Again <context task="b">'),
    ]

    response = await OfflineLLM().complete(LLMRequest(messages))

    assert response.content == (
        "[offline model] Researcher on: Collect facts\n"
        "- Written by crewflow's offline model: deterministic, no network, no real reasoning.\n"
        "- Set a real model with --model or CREWFLOW_MODEL (e.g. openai/gpt-4o-mini) for real "
        "answers.\n"
        "- Built on the output of: b.\n"
        "- Tool search returned: many spaced words\n"
        "- Answer id: 69acbd8c3737"
    )
