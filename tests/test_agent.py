"""Tests for `crewflow.agent`: the Agent spec, YAML loading, and the LLM ⇄ tools loop."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any, Literal

import anyio
import pytest
from pydantic import BaseModel, Field

from crewflow import Agent, tool
from crewflow.agent import AgentAnswer
from crewflow.exceptions import (
    ConfigurationError,
    LLMError,
    MaxIterationsExceeded,
    OutputValidationError,
)
from crewflow.llm import LLMResponse, OutputSchema
from crewflow.llm.offline import OfflineLLM
from crewflow.testing import Error, FunctionLLM, ScriptedLLM, Text, ToolCall, ToolCalls

REPO_AGENTS = Path(__file__).resolve().parent.parent / "agents"


@tool
def add(a: int, b: int) -> int:
    """Add two numbers.

    Args:
        a: The first.
        b: The second.
    """
    return a + b


@tool
async def shout(text: str) -> str:
    """Upper-case TEXT."""
    return text.upper()


class Verdict(BaseModel):
    label: Literal["good", "bad"]
    score: int = Field(ge=0, le=10)


def make_agent(**fields: object) -> Agent:
    return Agent(**{"role": "Researcher", "goal": "Find facts", **fields})  # type: ignore[arg-type]


class ToolLog:
    """An `on_tool` observer that records its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bool, float, str | None]] = []
        self.errors: list[BaseException | None] = []

    def __call__(self, tool: str, *, duration: float, error: BaseException | None) -> None:
        self.calls.append((tool, error is None, duration, None if error is None else str(error)))
        self.errors.append(error)


# --- construction -----------------------------------------------------------------------------


def test_defaults() -> None:
    agent = make_agent()

    assert agent.backstory == ""
    assert agent.llm is None
    assert agent.tools == ()
    assert agent.max_iterations == 10
    assert agent.output_retries == 2


@pytest.mark.parametrize("field", ["role", "goal"])
@pytest.mark.parametrize("value", ["", "   "])
def test_an_empty_role_or_goal_is_a_configuration_error_naming_the_field(
    field: str, value: str
) -> None:
    with pytest.raises(ConfigurationError, match=rf"^invalid Agent: {field}: "):
        make_agent(**{field: value})


def test_a_missing_goal_is_named() -> None:
    with pytest.raises(ConfigurationError, match="goal: Field required"):
        Agent(role="Researcher")  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("model", "suggestion"),
    [("gpt-4o", "openai/gpt-4o"), ("claude-sonnet-4", "anthropic/claude-sonnet-4")],
)
def test_a_model_without_provider_suggests_one(model: str, suggestion: str) -> None:
    with pytest.raises(ConfigurationError, match=rf"llm: .*did you mean '{suggestion}'\?"):
        make_agent(llm=model)


def test_an_unknown_provider_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="llm: unknown model provider 'acme'"):
        make_agent(llm="acme/model-1")


def test_a_valid_model_string_is_kept_stripped() -> None:
    assert make_agent(llm=" openai/gpt-4o-mini ").llm == "openai/gpt-4o-mini"
    assert make_agent(llm="offline").llm == "offline"


def test_an_llm_object_is_kept_as_is() -> None:
    llm = OfflineLLM()

    assert make_agent(llm=llm).llm is llm


def test_an_llm_that_is_neither_a_string_nor_an_llm_is_rejected() -> None:
    with pytest.raises(ConfigurationError, match="llm: llm must be a model string"):
        make_agent(llm=42)


@pytest.mark.parametrize(("field", "value"), [("max_iterations", 0), ("output_retries", -1)])
def test_limits_out_of_range_are_named(field: str, value: int) -> None:
    with pytest.raises(
        ConfigurationError, match=rf"{field}: Input should be greater.*\(got {value}\)"
    ):
        make_agent(**{field: value})


def test_duplicate_tool_names_are_rejected() -> None:
    @tool(name="add")
    def other_add(x: int) -> int:
        return x

    with pytest.raises(ConfigurationError, match=r"tools: two tools share the name\(s\) \['add'\]"):
        make_agent(tools=[add, other_add])


@pytest.mark.parametrize("value", [[42], 42, "add"])
def test_something_that_is_not_a_tool_is_rejected(value: object) -> None:
    with pytest.raises(ConfigurationError, match=r"^invalid Agent: tools: .*@crewflow\.tool"):
        make_agent(tools=value)


def test_plain_functions_are_wrapped_as_tools() -> None:
    def lookup(key: str) -> str:
        """Look KEY up."""
        return key

    agent = make_agent(tools=[lookup, add])

    assert [t.name for t in agent.tools] == ["lookup", "add"]
    assert agent.tools[1] is add


def test_a_single_tool_and_no_tools_are_accepted() -> None:
    assert make_agent(tools=add).tools == (add,)
    assert make_agent(tools=None).tools == ()


def test_system_prompt_comes_from_role_goal_and_backstory() -> None:
    agent = make_agent(backstory="A librarian.")

    assert agent.system_prompt == "You are Researcher. Your goal: Find facts\n\nA librarian."


# --- identity ---------------------------------------------------------------------------------


def test_equal_looking_agents_are_different_agents() -> None:
    first, second = make_agent(), make_agent()

    assert first != second
    assert first.id != second.id
    assert first == first


def test_agents_are_usable_as_dict_keys_by_identity() -> None:
    first, second = make_agent(), make_agent()

    table = {first: "one", second: "two"}

    assert table[first] == "one"
    assert table[second] == "two"


def test_model_copy_keeps_the_identity() -> None:
    agent = make_agent()
    copy = agent.model_copy(update={"max_iterations": 3})

    assert copy == agent
    assert hash(copy) == hash(agent)
    assert copy.max_iterations == 3


def test_agents_are_frozen() -> None:
    agent = make_agent()

    with pytest.raises(ValueError, match="frozen"):
        agent.role = "Writer"  # type: ignore[misc]


# --- from_yaml --------------------------------------------------------------------------------


def test_agents_folder_exists() -> None:
    assert REPO_AGENTS.is_dir()


@pytest.mark.parametrize("name", ["researcher", "writer", "critic", "analyst", "manager", "editor"])
def test_from_yaml_loads_each_catalogue_agent(name: str) -> None:
    agent = Agent.from_yaml(name)

    assert agent.role.lower() == name
    assert agent.goal.strip()
    assert agent.backstory.strip()


def test_from_yaml_applies_overrides() -> None:
    agent = Agent.from_yaml("researcher", llm="openai/gpt-4o", max_iterations=3)

    assert agent.llm == "openai/gpt-4o"
    assert agent.max_iterations == 3
    assert agent.role == "Researcher"


def test_from_yaml_loads_a_path(tmp_path: Path) -> None:
    file = tmp_path / "pilot.yaml"
    file.write_text(
        "role: Pilot\ngoal: Fly safely\nbackstory: Twenty years flying.\nllm: offline\n",
        encoding="utf-8",
    )

    agent = Agent.from_yaml(file)

    assert (agent.role, agent.goal, agent.backstory, agent.llm) == (
        "Pilot",
        "Fly safely",
        "Twenty years flying.",
        "offline",
    )


def test_from_yaml_makes_a_new_agent_each_time() -> None:
    assert Agent.from_yaml("writer") != Agent.from_yaml("writer")


def test_from_yaml_with_an_unknown_name_lists_the_available_names() -> None:
    with pytest.raises(ConfigurationError, match=r"no agent named 'astronaut'.*researcher"):
        Agent.from_yaml("astronaut")


def test_from_yaml_with_an_unknown_field_names_the_file_and_the_field(tmp_path: Path) -> None:
    file = tmp_path / "typo.yaml"
    file.write_text("role: Pilot\ngoal: Fly\nbakstory: oops\n", encoding="utf-8")

    with pytest.raises(ConfigurationError) as caught:
        Agent.from_yaml(file)

    message = str(caught.value)
    assert message.startswith(f"{file}: invalid Agent: bakstory: unknown field")
    assert "backstory" in message


def test_from_yaml_with_an_invalid_value_names_the_file_and_the_field(tmp_path: Path) -> None:
    file = tmp_path / "bad_model.yaml"
    file.write_text("role: Pilot\ngoal: Fly\nllm: gpt-4o\n", encoding="utf-8")

    with pytest.raises(ConfigurationError, match=re.escape(f"{file}: invalid Agent: llm: ")):
        Agent.from_yaml(file)


def test_from_yaml_overrides_can_repair_a_files_field(tmp_path: Path) -> None:
    file = tmp_path / "bad_model.yaml"
    file.write_text("role: Pilot\ngoal: Fly\nllm: gpt-4o\n", encoding="utf-8")

    assert Agent.from_yaml(file, llm="offline").llm == "offline"


def test_from_yaml_with_bad_yaml_names_the_file(tmp_path: Path) -> None:
    file = tmp_path / "broken.yaml"
    file.write_text("role: [Pilot\n", encoding="utf-8")

    with pytest.raises(ConfigurationError, match=re.escape(f"{file}: invalid YAML")):
        Agent.from_yaml(file)


def test_from_yaml_with_a_non_mapping_names_the_file(tmp_path: Path) -> None:
    file = tmp_path / "list.yaml"
    file.write_text("- Pilot\n- Fly\n", encoding="utf-8")

    with pytest.raises(ConfigurationError, match=re.escape(f"{file}: an agent file must be")):
        Agent.from_yaml(file)


# --- the loop: answers and tools --------------------------------------------------------------


async def test_a_plain_answer_is_returned_after_one_call() -> None:
    llm = ScriptedLLM(["The answer."])

    answer = await make_agent().run("What is it?", llm=llm)

    assert answer == AgentAnswer("The answer.", None, iterations=1, tool_calls=0)
    [request] = llm.requests
    assert [(m.role, m.content) for m in request.messages] == [
        ("system", "You are Researcher. Your goal: Find facts"),
        ("user", "What is it?"),
    ]
    assert request.tools == []
    assert request.output is None


async def test_the_system_message_follows_a_copy_with_another_role() -> None:
    # The system message is made once per agent text and shared by every request.
    agent = make_agent()
    llm = ScriptedLLM(["one", "two", "three"])
    await agent.run("?", llm=llm)
    await agent.run("?", llm=llm)
    await agent.model_copy(update={"role": "Editor"}).run("?", llm=llm)

    first, again, copied = (request.messages[0] for request in llm.requests)
    assert again is first
    assert first.content == agent.system_prompt
    assert copied.content == "You are Editor. Your goal: Find facts"


async def test_an_answer_without_content_is_empty_text() -> None:
    answer = await make_agent().run("?", llm=ScriptedLLM([LLMResponse(content=None)]))

    assert answer.text == ""


async def test_tools_are_offered_with_their_specs() -> None:
    llm = ScriptedLLM(["ok"])

    await make_agent(tools=[add, shout]).run("?", llm=llm)

    assert llm.requests[0].tools == [add.spec, shout.spec]


async def test_a_tool_result_goes_back_as_a_tool_message_answering_its_call() -> None:
    llm = ScriptedLLM(
        [ToolCalls([ToolCall("add", {"a": 2, "b": 3}, id="call_7")], content="Adding."), "5"]
    )

    answer = await make_agent(tools=[add]).run("2+3?", llm=llm)

    assert answer == AgentAnswer("5", None, iterations=2, tool_calls=1)
    first, second = llm.requests
    assert len(first.messages) == 2  # each request keeps the messages it was sent with
    assistant, result = second.messages[2:]
    assert assistant.role == "assistant"
    assert assistant.content == "Adding."
    assert [(c.id, c.name) for c in assistant.tool_calls] == [("call_7", "add")]
    assert (result.role, result.content, result.tool_call_id, result.name) == (
        "tool",
        "5",
        "call_7",
        "add",
    )


async def test_several_tool_calls_in_one_turn_answer_in_call_order() -> None:
    llm = ScriptedLLM(
        [
            ToolCalls(
                [ToolCall("shout", {"text": "hi"}), ToolCall("add", {"a": 1, "b": 1})],
            ),
            "done",
        ]
    )

    answer = await make_agent(tools=[add, shout]).run("?", llm=llm)

    results = [m for m in llm.requests[1].messages if m.role == "tool"]
    assert [(m.name, m.content, m.tool_call_id) for m in results] == [
        ("shout", "HI", "call_0_0"),
        ("add", "2", "call_0_1"),
    ]
    assert answer.tool_calls == 2


async def test_several_tool_calls_in_one_turn_run_concurrently() -> None:
    ping_started, pong_started = anyio.Event(), anyio.Event()

    @tool
    async def ping() -> str:
        ping_started.set()
        await pong_started.wait()  # run one at a time, this waits forever
        return "ping"

    @tool
    async def pong() -> str:
        pong_started.set()
        await ping_started.wait()
        return "pong"

    llm = ScriptedLLM([ToolCalls([ToolCall("ping", {}), ToolCall("pong", {})]), "done"])

    with anyio.fail_after(5):
        answer = await make_agent(tools=[ping, pong]).run("?", llm=llm)

    assert answer.text == "done"
    assert [m.content for m in llm.requests[1].messages if m.role == "tool"] == ["ping", "pong"]


async def test_a_sync_tool_runs_in_a_worker_thread() -> None:
    threads: list[threading.Thread] = []

    @tool
    def where() -> str:
        threads.append(threading.current_thread())
        return "somewhere"

    llm = ScriptedLLM([ToolCalls([ToolCall("where", {})]), "done"])

    await make_agent(tools=[where]).run("?", llm=llm)

    assert len(threads) == 1
    assert threads[0] is not threading.current_thread()


async def test_a_raising_tool_sends_the_error_to_the_model_and_the_loop_goes_on() -> None:
    @tool
    def fragile() -> str:
        raise RuntimeError("disk full")

    llm = ScriptedLLM([ToolCalls([ToolCall("fragile", {})]), "recovered"])
    log = ToolLog()

    answer = await make_agent(tools=[fragile]).run("?", llm=llm, on_tool=log)

    assert answer.text == "recovered"
    result = llm.requests[1].messages[-1]
    assert result.role == "tool"
    assert result.content == "Error: tool 'fragile' raised RuntimeError: disk full"
    [(name, ok, _, error)] = log.calls
    assert (name, ok, error) == ("fragile", False, "tool 'fragile' raised RuntimeError: disk full")


async def test_a_tool_result_that_cannot_become_text_goes_back_to_the_model() -> None:
    @tool
    def blob() -> Any:
        return [b"\xff\xfe"]

    llm = ScriptedLLM([ToolCalls([ToolCall("blob", {})]), "recovered"])

    answer = await make_agent(tools=[blob]).run("?", llm=llm)

    assert answer.text == "recovered"
    result = llm.requests[1].messages[-1]
    assert result.role == "tool"
    assert result.content.startswith("Error: tool 'blob' returned a list that cannot be sent")


@pytest.mark.parametrize(
    ("arguments", "detail"),
    [
        ({"a": 1}, "b: Field required"),
        ({"a": 1, "b": "two"}, "b: Input should be a valid integer"),
        ('{"a": 1, "b":', "invalid arguments for tool 'add'"),
    ],
)
async def test_invalid_tool_arguments_are_fed_back(
    arguments: dict[str, object] | str, detail: str
) -> None:
    llm = ScriptedLLM([ToolCalls([ToolCall("add", arguments)]), "sorry"])

    answer = await make_agent(tools=[add]).run("?", llm=llm)

    result = llm.requests[1].messages[-1]
    assert result.content is not None
    assert result.content.startswith("Error: invalid arguments for tool 'add': ")
    assert detail in result.content
    assert answer.text == "sorry"


async def test_an_unknown_tool_is_fed_back_with_the_available_tools() -> None:
    llm = ScriptedLLM([ToolCalls([ToolCall("subtract", {"a": 1})]), "ok"])
    log = ToolLog()

    await make_agent(tools=[add, shout]).run("?", llm=llm, on_tool=log)

    result = llm.requests[1].messages[-1]
    assert result.content == "Error: unknown tool 'subtract'; available tools: ['add', 'shout']"
    assert result.name == "subtract"
    assert log.calls[0][:2] == ("subtract", False)


async def test_an_unknown_tool_with_no_tools_at_all_says_so() -> None:
    llm = ScriptedLLM([ToolCalls([ToolCall("anything", {})]), "ok"])

    await make_agent().run("?", llm=llm)

    assert llm.requests[1].messages[-1].content == (
        "Error: unknown tool 'anything'; available tools: none"
    )


async def test_on_tool_is_told_about_each_successful_call() -> None:
    llm = ScriptedLLM([ToolCalls([ToolCall("add", {"a": 1, "b": 2})]), "ok"])
    log = ToolLog()

    await make_agent(tools=[add]).run("?", llm=llm, on_tool=log)

    [(name, ok, duration, error)] = log.calls
    assert (name, ok, error) == ("add", True, None)
    assert duration >= 0


async def test_max_iterations_without_a_final_answer_raises() -> None:
    llm = ScriptedLLM([ToolCalls([ToolCall("add", {"a": 1, "b": 1})])] * 3)

    with pytest.raises(MaxIterationsExceeded, match="made 3 LLM calls without a final") as caught:
        await make_agent(tools=[add], max_iterations=3).run("?", llm=llm)

    assert caught.value.max_iterations == 3
    assert len(llm.requests) == 3


async def test_provider_errors_propagate() -> None:
    with pytest.raises(LLMError) as caught:
        await make_agent().run("?", llm=ScriptedLLM([Error(400, "bad request")]))

    assert caught.value.status_code == 400


# --- the loop: structured output --------------------------------------------------------------


async def test_native_structured_output_sends_the_schema_and_parses_the_answer() -> None:
    llm = ScriptedLLM([{"label": "good", "score": 7}])

    answer = await make_agent().run("Judge it", llm=llm, output_model=Verdict)

    assert answer.data == Verdict(label="good", score=7)
    assert json.loads(answer.text) == {"label": "good", "score": 7}
    [request] = llm.requests
    assert request.output == OutputSchema("Verdict", Verdict.model_json_schema())
    assert request.messages[-1].content == "Judge it"


async def test_without_native_support_the_prompt_asks_for_json_and_no_schema_is_sent() -> None:
    llm = ScriptedLLM([{"label": "bad", "score": 1}], supports_output_schema=False)

    answer = await make_agent().run("Judge it", llm=llm, output_model=Verdict)

    assert answer.data == Verdict(label="bad", score=1)
    [request] = llm.requests
    assert request.output is None
    prompt = request.messages[-1].content
    assert prompt is not None
    assert prompt.startswith("Judge it\n\nAnswer with one JSON object")
    assert json.loads(prompt.rsplit("\n", 1)[1]) == Verdict.model_json_schema()


@pytest.mark.parametrize(
    "reply",
    [
        '```json\n{"label": "good", "score": 3}\n```',
        'Here is my verdict: {"label": "good", "score": 3}. Hope it helps.',
        'Sure!\n```\n{"label": "good", "score": 3}\n```\nAnything else?',
    ],
)
async def test_json_inside_fences_or_prose_is_parsed(reply: str) -> None:
    llm = ScriptedLLM([reply], supports_output_schema=False)

    answer = await make_agent().run("Judge it", llm=llm, output_model=Verdict)

    assert answer.data == Verdict(label="good", score=3)
    assert answer.text == '{"label":"good","score":3}'


async def test_an_invalid_answer_is_re_asked_with_the_validation_errors() -> None:
    llm = ScriptedLLM(
        [{"label": "great", "score": 11}, {"label": "good", "score": 9}],
        supports_output_schema=False,
    )

    answer = await make_agent().run("Judge it", llm=llm, output_model=Verdict)

    assert answer.data == Verdict(label="good", score=9)
    assert answer.iterations == 2
    bad, feedback = llm.requests[1].messages[-2:]
    assert (bad.role, bad.content) == ("assistant", '{"label": "great", "score": 11}')
    assert feedback.role == "user"
    assert feedback.content is not None
    assert "- label: Input should be 'good' or 'bad'" in feedback.content
    assert "- score: Input should be less than or equal to 10" in feedback.content


async def test_an_answer_that_is_not_json_is_re_asked() -> None:
    llm = ScriptedLLM(["I think it is good.", {"label": "good", "score": 5}])

    answer = await make_agent().run("Judge it", llm=llm, output_model=Verdict)

    assert answer.data == Verdict(label="good", score=5)
    feedback = llm.requests[1].messages[-1].content
    assert feedback is not None
    assert "Invalid JSON" in feedback


class Reading(BaseModel):
    value: float


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400"])
async def test_an_answer_with_a_number_json_cannot_hold_is_re_asked(number: str) -> None:
    # Python's JSON reader and pydantic take NaN and Infinity; no record can hold them.
    llm = ScriptedLLM([f'{{"value": {number}}}', '{"value": 2.5}'], supports_output_schema=False)

    answer = await make_agent().run("Measure it", llm=llm, output_model=Reading)

    assert answer.data == Reading(value=2.5)
    feedback = llm.requests[1].messages[-1].content
    assert feedback is not None
    assert f"- {number} is not a JSON number; every number must be finite" in feedback


async def test_an_answer_that_never_validates_raises_after_the_re_asks() -> None:
    llm = ScriptedLLM(
        [{"label": "meh", "score": 1}, {"label": "meh", "score": 2}, {"label": "meh", "score": 3}]
    )

    with pytest.raises(OutputValidationError, match=r"after 3 tries \(2 re-asks\)") as caught:
        await make_agent(output_retries=2).run("Judge it", llm=llm, output_model=Verdict)

    assert len(llm.requests) == 3
    assert caught.value.text == '{"label": "meh", "score": 3}'
    assert [error["loc"] for error in caught.value.errors] == [("label",)]
    assert caught.value.errors[0]["input"] == "meh"


async def test_an_answer_nested_too_deep_is_asked_again_not_a_crash() -> None:
    # Found by tests/test_fuzz.py: Python's JSON reader raised RecursionError, failing the task.
    llm = ScriptedLLM(["[" * 100_000, '{"label": "good", "score": 1}'])

    answer = await make_agent().run("Judge it", llm=llm, output_model=Verdict)

    assert answer.data == Verdict(label="good", score=1)
    assert len(llm.requests) == 2


async def test_no_re_asks_when_output_retries_is_zero() -> None:
    llm = ScriptedLLM(["not json"])

    with pytest.raises(OutputValidationError, match=r"after 1 tries \(0 re-asks\)") as caught:
        await make_agent(output_retries=0).run("Judge it", llm=llm, output_model=Verdict)

    assert caught.value.text == "not json"
    assert caught.value.errors[0]["type"] == "json_invalid"


async def test_a_failed_answer_on_the_last_iteration_is_a_validation_error() -> None:
    llm = ScriptedLLM([ToolCalls([ToolCall("add", {"a": 1, "b": 1})]), "nope"])

    with pytest.raises(OutputValidationError):
        await make_agent(tools=[add], max_iterations=2).run(
            "Judge it", llm=llm, output_model=Verdict
        )


async def test_tools_and_structured_output_combine() -> None:
    llm = ScriptedLLM(
        [ToolCalls([ToolCall("add", {"a": 4, "b": 4})]), Text('{"label": "good", "score": 8}')]
    )

    answer = await make_agent(tools=[add]).run("Judge it", llm=llm, output_model=Verdict)

    assert answer == AgentAnswer(answer.text, Verdict(label="good", score=8), 2, 1)
    assert all(request.output is not None for request in llm.requests)


async def test_the_loop_works_with_a_function_llm() -> None:
    def respond(request: object) -> str:
        return "pong"

    answer = await make_agent().run("ping", llm=FunctionLLM(respond))

    assert answer.text == "pong"


async def test_the_loop_runs_end_to_end_on_the_offline_model() -> None:
    answer = await make_agent(tools=[add]).run("Sum things", llm=OfflineLLM(), output_model=Verdict)

    assert isinstance(answer.data, Verdict)
    assert answer.tool_calls == 1
    assert answer.iterations == 2
