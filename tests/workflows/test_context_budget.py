"""The context budget: a task's context outputs cut to fit its agent's model, largest first,
marked in the prompt, recorded on the attempt and announced; once more when the provider still
refuses the request as too long."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from typer.testing import CliRunner

from crewflow import Agent, Crew, Task, cli, events
from crewflow._prompts import cut_context, cut_note, task_prompt
from crewflow._runtime import budget
from crewflow.exceptions import ConfigurationError, ContextLengthExceeded, LLMError, TaskFailed
from crewflow.llm import LLMRequest, Message
from crewflow.llm._windows import context_window
from crewflow.llm.litellm import LiteLLM
from crewflow.llm.openai import OpenAIChat
from crewflow.store import ContextCutRecord, MemoryStore, SQLiteStore
from crewflow.testing import Error, FunctionLLM, ScriptedLLM, capture_events
from tests import canary
from tests.stores import STORE_KINDS, made_store

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from crewflow.crew import CrewResult
    from crewflow.store import AttemptRecord
    from crewflow.testing import OpenAIServer, ReceivedRequest

LONG = "L" * 3000
MIDDLE = "M" * 1200
SHORT = "S" * 200


def writer(text: str, role: str) -> Agent:
    """An agent that answers ``text`` to every request."""
    return Agent(role=role, goal="write", llm=FunctionLLM(lambda _: text, model="writer"))


def three_outputs() -> tuple[Task, Task, Task]:
    return (
        Task("Write the short one", agent=writer(SHORT, "Short"), name="short"),
        Task("Write the long one", agent=writer(LONG, "Long"), name="long"),
        Task("Write the middle one", agent=writer(MIDDLE, "Middle"), name="middle"),
    )


def sent_prompt(result: CrewResult, task: str, attempt: int = 1) -> str:
    """The user message the attempt's first LLM call sent, as recorded."""
    row = attempts(result, task)[attempt - 1]
    (user,) = [m.content for m in row.prompts[0].messages if m.role == "user"]
    assert user is not None
    return user


def cut_of(result: CrewResult) -> ContextCutRecord:
    cut = attempts(result, "combine")[0].context_cut
    assert cut is not None
    return cut


def attempts(result: CrewResult, task: str) -> list[AttemptRecord]:
    return [row for record in result.timeline if record.task == task for row in record.attempts]


# -- the policy -------------------------------------------------------------------------------


def test_largest_first_keeps_the_short_output_whole_and_cuts_the_others_to_one_length() -> None:
    context = [("short", SHORT), ("long", LONG), ("middle", MIDDLE)]

    pairs, cut = cut_context(context, 2000)

    assert list(cut) == ["long", "middle"]  # dependency order, not size order
    (_, long_after), (_, middle_after) = cut["long"], cut["middle"]
    assert long_after == middle_after  # cut to one common length
    assert cut == {"long": (3000, long_after), "middle": (1200, middle_after)}
    assert pairs[0] == ("short", SHORT)
    assert pairs[1] == ("long", LONG[:long_after] + "\n" + cut_note(3000 - long_after, 3000))
    assert pairs[2] == (
        "middle",
        MIDDLE[:middle_after] + "\n" + cut_note(1200 - middle_after, 1200),
    )
    assert sum(len(text) for _, text in pairs) <= 2000
    assert 2000 - sum(len(text) for _, text in pairs) < 10  # and uses the room it has
    assert cut_context(context, 2000) == (pairs, cut)  # deterministic


def test_the_largest_output_alone_is_cut_while_that_is_enough() -> None:
    context = [("short", SHORT), ("long", LONG), ("middle", MIDDLE)]

    pairs, cut = cut_context(context, 4000)

    assert list(cut) == ["long"]
    assert pairs[0] == ("short", SHORT)
    assert pairs[2] == ("middle", MIDDLE)
    assert sum(len(text) for _, text in pairs) <= 4000


def test_an_output_of_which_nothing_fits_keeps_only_its_note() -> None:
    pairs, cut = cut_context([("a", "x" * 500), ("b", "y" * 700)], 10)

    assert cut == {"a": (500, 0), "b": (700, 0)}
    assert pairs == [("a", cut_note(500, 500)), ("b", cut_note(700, 700))]


def test_outputs_that_fit_are_returned_as_they_are() -> None:
    context = [("a", "x" * 50), ("b", "y" * 50)]

    assert cut_context(context, 100) == (context, {})


# -- the windows ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "window"),
    [
        ("openai/gpt-4o-mini", 128_000),
        ("gpt-4o", 128_000),
        ("openai/gpt-4.1-nano", 1_047_576),
        ("openai/gpt-4", 8_192),
        ("openrouter/openai/gpt-4o", 128_000),
        ("anthropic/claude-sonnet-4-20250514", 200_000),
        ("gemini/gemini-2.5-flash", 1_048_576),
        ("mistral/mistral-large-latest", 131_072),
        ("groq/llama-3.3-70b-versatile", 131_072),
        ("ollama/llama3.1:8b", 131_072),
        ("offline", None),
        ("openai/test-model", None),
    ],
)
def test_known_models_have_their_window_by_prefix_without_the_provider(
    model: str, window: int | None
) -> None:
    assert context_window(model) == window


@pytest.mark.parametrize("value", [0, -5, True, "many", 1.5])
def test_max_context_tokens_must_be_a_positive_int(value: object) -> None:
    with pytest.raises(ConfigurationError, match="max_context_tokens"):
        Agent(role="R", goal="G", max_context_tokens=value)


# -- a context that gets cut ------------------------------------------------------------------


async def test_a_context_over_the_budget_is_cut_marked_recorded_and_announced() -> None:
    short, long, middle = three_outputs()
    reader = Agent(role="Reader", goal="read", llm="offline", max_context_tokens=1000)
    combine = Task("Combine them", agent=reader, context=[short, long, middle], name="combine")
    crew = Crew(tasks=[short, long, middle, combine], store=MemoryStore())

    with capture_events() as captured:
        result = await crew.kickoff()

    (row,) = attempts(result, "combine")
    cut = row.context_cut
    assert cut is not None
    room = (800 * 4) - len(reader.system_prompt)
    room -= len(task_prompt("Combine them", "", [("short", ""), ("long", ""), ("middle", "")]))
    assert cut == ContextCutRecord(
        window=1000, budget=room // 4, outputs={"long": cut.outputs["long"]}
    )
    after = cut.outputs["long"][1]
    assert cut.outputs["long"] == (3000, after)
    assert 0 < after < 3000 - len(MIDDLE) - len(SHORT)
    pairs = [
        ("short", SHORT),
        ("long", LONG[:after] + "\n" + cut_note(3000 - after, 3000)),
        ("middle", MIDDLE),
    ]
    assert sent_prompt(result, "combine") == task_prompt("Combine them", "", pairs)
    assert "[crewflow: " in sent_prompt(result, "combine")
    (event,) = captured.of_type(events.ContextCut)
    assert (event.task, event.agent, event.attempt, event.reason) == (
        "combine",
        "Reader",
        1,
        "budget",
    )
    assert (event.window, event.budget, event.outputs) == (1000, cut.budget, cut.outputs)
    assert result["long"].text == LONG  # the output itself is whole; only the prompt is cut


@pytest.mark.parametrize("kind", STORE_KINDS)
async def test_the_cut_is_kept_by_the_store_and_read_back_as_the_field(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    store = made_store(kind, request, tmp_path)
    short, long, middle = three_outputs()
    reader = Agent(role="Reader", goal="read", llm="offline", max_context_tokens=600)
    combine = Task("Combine them", agent=reader, context=[short, long, middle], name="combine")
    async with store:
        result = await Crew(tasks=[short, long, middle, combine], store=store).kickoff()
        stored = {row.task: row for row in await store.attempts(result.run_id)}

    assert stored["combine"].context_cut == attempts(result, "combine")[0].context_cut
    assert stored["combine"].context_cut is not None
    assert stored["combine"].details["context_cut"] == cut_of(result).model_dump(mode="json")
    assert stored["long"].context_cut is None


def test_crewflow_show_prints_the_cut_in_one_line_at_each_width(tmp_path: Path) -> None:
    import anyio

    database = tmp_path / "runs.db"

    async def run() -> str:
        short, long, middle = three_outputs()
        reader = Agent(role="Reader", goal="read", llm="offline", max_context_tokens=600)
        combine = Task("Combine them", agent=reader, context=[short, long, middle], name="combine")
        async with SQLiteStore(database) as store:
            result = await Crew(tasks=[short, long, middle, combine], store=store).kickoff()
        return result.run_id

    run_id = anyio.run(run)
    for width in (60, 80, 120):
        env = {"COLUMNS": str(width), "TTY_COMPATIBLE": "1", "TERM": "xterm-256color"}
        shown = CliRunner().invoke(cli.app, ["show", run_id, "--db", str(database)], env=env)

        assert shown.exit_code == 0, shown.output
        text = " ".join(shown.stdout.split())
        assert "combine: attempt 1 context cut to " in text
        assert "long 3,000 → " in text


async def test_a_fallback_agent_with_a_larger_window_gets_less_cut() -> None:
    short, long, middle = three_outputs()
    refuses = FunctionLLM(lambda _: Error(400, "no"), model="refuses")
    primary = Agent(role="Primary", goal="read", llm=refuses, max_context_tokens=600)
    larger = Agent(role="Larger", goal="read", llm="offline", max_context_tokens=1000)
    combine = Task(
        "Combine them",
        agent=primary,
        fallback_agent=larger,
        context=[short, long, middle],
        name="combine",
    )

    with capture_events() as captured:
        result = await Crew(tasks=[short, long, middle, combine]).kickoff()

    first, second = attempts(result, "combine")
    assert (first.agent, second.agent) == ("Primary", "Larger")
    assert first.context_cut is not None
    assert second.context_cut is not None
    assert first.context_cut.budget < second.context_cut.budget
    assert list(first.context_cut.outputs) == ["long", "middle"]
    assert list(second.context_cut.outputs) == ["long"]
    assert first.context_cut.outputs["long"][1] < second.context_cut.outputs["long"][1]
    assert len(sent_prompt(result, "combine", 1)) < len(sent_prompt(result, "combine", 2))
    assert [(e.agent, e.attempt) for e in captured.of_type(events.ContextCut)] == [
        ("Primary", 1),
        ("Larger", 2),
    ]


# -- a crew that fits pays nothing ------------------------------------------------------------


@pytest.mark.parametrize("limit", [None, 100_000])
async def test_a_context_that_fits_is_sent_byte_for_byte_as_before(limit: int | None) -> None:
    short, long, middle = three_outputs()
    reader = Agent(role="Reader", goal="read", llm="offline", max_context_tokens=limit)
    combine = Task(
        "Combine {topic}",
        expected_output="one line",
        agent=reader,
        context=[short, long, middle],
        name="combine",
    )

    with capture_events() as captured:
        result = await Crew(tasks=[short, long, middle, combine]).kickoff({"topic": "them"})

    pairs = [("short", SHORT), ("long", LONG), ("middle", MIDDLE)]
    assert sent_prompt(result, "combine") == task_prompt("Combine them", "one line", pairs)
    assert attempts(result, "combine")[0].context_cut is None
    assert captured.of_type(events.ContextCut) == []


# -- the provider refuses the request as too long ---------------------------------------------


def refuse_over(limit: int) -> Callable[[ReceivedRequest], Error | None]:
    """A responder that refuses, as OpenAI does, every request whose prompt is over ``limit``
    characters."""

    def respond(request: ReceivedRequest) -> Error | None:
        if len(request.last_user_message) <= limit:
            return None
        message = (
            f"This model's maximum context length is {limit // 4} tokens. However, your "
            "messages resulted in more tokens. Please reduce the length of the messages."
        )
        return Error(400, message, code="context_length_exceeded")

    return respond


def remote(server: OpenAIServer, client: str) -> OpenAIChat | LiteLLM:
    if client == "openai":
        return OpenAIChat("test-model", base_url=server.base_url, api_key=canary.KEY)
    return LiteLLM("openai/test-model", api_base=server.base_url, api_key=canary.KEY)


@pytest.mark.parametrize("client", ["openai", "litellm"])
async def test_a_refusal_for_context_length_maps_to_its_own_error(
    server: OpenAIServer, client: str
) -> None:
    server.enqueue(Error(400, "too long", code="context_length_exceeded"), Error(400, "bad"))
    llm = remote(server, client)
    request = LLMRequest([Message("user", "hello")])

    async with llm:
        with pytest.raises(ContextLengthExceeded) as refused:
            await llm.complete(request)
        with pytest.raises(LLMError) as other:
            await llm.complete(request)

    assert (refused.value.status_code, refused.value.retryable) == (400, False)
    assert "max_context_tokens" in str(refused.value)
    assert not isinstance(other.value, ContextLengthExceeded)


@pytest.mark.parametrize("client", ["openai", "litellm"])
async def test_a_refused_request_is_cut_to_half_and_sent_once_more(
    server: OpenAIServer, client: str
) -> None:
    server._responder = refuse_over(3000)
    short, long, middle = three_outputs()
    reader = Agent(role="Reader", goal="read", llm=remote(server, client))
    combine = Task("Combine them", agent=reader, context=[short, long, middle], name="combine")

    with capture_events() as captured:
        result = await Crew(tasks=[short, long, middle, combine]).kickoff()

    first, second = attempts(result, "combine")
    assert (first.status, first.error_type) == ("failed", "ContextLengthExceeded")
    assert first.context_cut is None  # it fitted no known window: sent whole
    assert second.status == "completed"
    cut = second.context_cut
    assert cut is not None
    assert (cut.reason, cut.window) == ("refused", None)
    assert cut.budget == (len(SHORT) + len(LONG) + len(MIDDLE)) // 2 // 4
    assert [request.status for request in server.requests] == [400, 200]
    assert len(server.requests[1].last_user_message) <= 3000
    assert cut_note(3000 - cut.outputs["long"][1], 3000) in server.requests[1].last_user_message
    assert [e.reason for e in captured.of_type(events.ContextCut)] == ["refused"]
    assert [e.attempt for e in captured.of_type(events.TaskRetrying)] == [1]


async def test_a_second_refusal_fails_the_attempt_as_usual(server: OpenAIServer) -> None:
    server._responder = refuse_over(100)
    short, long, middle = three_outputs()
    reader = Agent(role="Reader", goal="read", llm=remote(server, "openai"))
    combine = Task("Combine them", agent=reader, context=[short, long, middle], name="combine")

    with pytest.raises(TaskFailed) as failed:
        await Crew(tasks=[short, long, middle, combine]).kickoff()

    assert isinstance(failed.value.cause, ContextLengthExceeded)
    assert failed.value.attempts == 2
    assert [request.status for request in server.requests] == [400, 400]
    assert set(failed.value.outputs) == {"short", "long", "middle"}


async def test_a_refusal_without_context_to_cut_fails_at_once() -> None:
    refused = ContextLengthExceeded("too long", model="scripted", status_code=400)
    agent = Agent(role="R", goal="G", llm=ScriptedLLM([refused]), max_context_tokens=50)

    with pytest.raises(TaskFailed) as failed:
        await Crew(tasks=[Task("Do it", agent=agent, name="only")]).kickoff()

    assert failed.value.attempts == 1


def test_a_client_cap_on_the_answer_is_taken_out_of_the_budget() -> None:
    reader = Agent(role="Reader", goal="read", max_context_tokens=1000)
    task = Task("Combine them", name="combine")
    context = [("long", LONG)]
    prompt = task_prompt("Combine them", "", context)

    def budget_with(llm: LiteLLM) -> int:
        fitted = budget.fit_budget(800, reader, llm, task, prompt, "Combine them", "", context)
        assert fitted is not None
        return fitted.cut.budget

    uncapped = LiteLLM("openai/gpt-4o", api_key="unused")
    capped = LiteLLM("openai/gpt-4o", api_key="unused", max_tokens=300)

    assert budget_with(uncapped) - budget_with(capped) == 300


async def test_a_megabyte_of_any_text_is_cut_to_fit_like_any_other() -> None:
    huge = "é😀\ufffd\n" * 250_000  # a megabyte of characters outside ASCII, and newlines
    source = Task("Dump it", agent=writer(huge, "Dumper"), name="dump")
    reader = Agent(role="Reader", goal="read", llm="offline", max_context_tokens=2000)
    summary = Task("Summarise", agent=reader, context=[source], name="summary")

    result = await Crew(tasks=[source, summary]).kickoff()

    sent = sent_prompt(result, "summary")
    cut = attempts(result, "summary")[0].context_cut
    assert cut is not None
    before, after = cut.outputs["dump"]
    assert before == len(huge)
    assert "é😀\ufffd\n" * 10 in sent  # its beginning, kept as it was
    assert len(sent) + len(reader.system_prompt) <= 1600 * 4
    assert sent.endswith(f"{cut_note(before - after, before)}\n</context>")
    assert result["dump"].text == huge


async def test_the_doubles_refuse_for_length_as_a_real_client_does() -> None:
    refused = Error(
        400, "this model's maximum context length is 10 tokens", code="context_length_exceeded"
    )
    agent = Agent(role="R", goal="G", llm=ScriptedLLM([refused]))

    with pytest.raises(TaskFailed) as failed:
        await Crew(tasks=[Task("Do it", agent=agent, name="only")]).kickoff()

    assert isinstance(failed.value.cause, ContextLengthExceeded)
    assert failed.value.cause.status_code == 400
