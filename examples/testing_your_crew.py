"""Testing your crew: scripted models, captured events and a fake clock, no network.

What it shows: how to test your own crews with ``crewflow.testing``. `ScriptedLLM` answers from
a script (texts, tool calls, JSON, provider errors) and records every request; `capture_events`
collects the typed events of every run started in its block; `FakeClock` makes retry waits
instant; `forbid_real_llm_calls` makes sure nothing reaches a real provider (in a test suite,
set ``CREWFLOW_FORBID_REAL_LLM_CALLS=1`` in an autouse fixture instead). Each crew records into a
`MemoryStore` of its own, so test runs never land in your real ``runs.db``.

The file is a pytest module (``pytest examples/testing_your_crew.py``, with pytest-asyncio in
auto mode, as in this repository), and also runs as a script:

    python examples/testing_your_crew.py
"""

from __future__ import annotations

import sys

from pydantic import BaseModel

from crewflow import Agent, Crew, Task, tool
from crewflow.events import LLMCallRetrying, TaskFinished, ToolCalled
from crewflow.store import MemoryStore
from crewflow.testing import (
    Error,
    FakeClock,
    ScriptedLLM,
    ToolCall,
    ToolCalls,
    capture_events,
    forbid_real_llm_calls,
    use_clock,
)


@tool
def search(query: str) -> str:
    """Search the team wiki.

    Args:
        query: What to look for.
    """
    return f"3 wiki pages mention {query!r}"


def make_crew(llm: ScriptedLLM) -> Crew:
    """The crew under test: the same crew you would run for real, with the model swapped."""
    researcher = Agent(role="Researcher", goal="Find facts", llm=llm, tools=[search])
    writer = Agent(role="Writer", goal="Write clearly", llm=llm)
    facts = Task("Collect facts about {topic}", agent=researcher, name="facts")
    post = Task("Write a post about {topic}", agent=writer, name="post")
    # A store of the test's own: test runs never land in the user's runs.db.
    return Crew(tasks=[facts, post], store=MemoryStore())


async def test_each_task_gets_the_previous_output_as_context() -> None:
    llm = ScriptedLLM(["fact one; fact two", "A post built on two facts."])
    crew = make_crew(llm)
    # make_crew gave the researcher a tool, but this script never calls it.
    result = await crew.kickoff(inputs={"topic": "tides"})

    assert result["facts"].text == "fact one; fact two"
    assert result.text == "A post built on two facts."
    second_prompt = llm.requests[1].messages[-1].content or ""
    assert "Write a post about tides" in second_prompt
    assert '<context task="facts">' in second_prompt
    assert "fact one; fact two" in second_prompt
    assert llm.remaining == 0


async def test_tool_calls_run_the_tool_and_are_reported_as_events() -> None:
    llm = ScriptedLLM(
        [
            ToolCalls([ToolCall("search", {"query": "tides"})]),
            "Tides are mentioned on 3 pages.",
            "A post about tides.",
        ]
    )
    with capture_events() as captured:
        result = await make_crew(llm).kickoff(inputs={"topic": "tides"})

    assert result["facts"].text == "Tides are mentioned on 3 pages."
    # The tool's result went back to the model as a tool message.
    tool_message = llm.requests[1].messages[-1]
    assert tool_message.role == "tool"
    assert tool_message.content == "3 wiki pages mention 'tides'"
    [called] = captured.of_type(ToolCalled)
    assert (called.task, called.tool, called.ok) == ("facts", "search", True)
    assert [e.task for e in captured.of_type(TaskFinished)] == ["facts", "post"]
    assert captured.kinds[0] == "run_started"
    assert captured.kinds[-1] == "run_finished"


async def test_a_rate_limit_is_retried_after_retry_after_without_waiting() -> None:
    llm = ScriptedLLM([Error(429, "slow down", retry_after=7), "facts", "post"])
    with use_clock(FakeClock()) as clock, capture_events() as captured:
        result = await make_crew(llm).kickoff(inputs={"topic": "tides"})

    assert result.text == "post"
    assert clock.sleeps == [7.0]  # Retry-After honoured, on the fake clock: no real wait
    [retry] = captured.of_type(LLMCallRetrying)
    assert retry.status_code == 429
    assert result.timeline[0].attempts[0].llm_retries == 1
    assert result.usage.requests == 3  # the failed call counts as a request


class Summary(BaseModel):
    title: str
    bullet_points: list[str]


async def test_structured_output_is_parsed_into_the_output_model() -> None:
    llm = ScriptedLLM([{"title": "Tides", "bullet_points": ["twice a day", "moon"]}])
    writer = Agent(role="Writer", goal="Summarise", llm=llm)
    crew = Crew(
        tasks=[Task("Summarise {topic}", agent=writer, output_model=Summary)], store=MemoryStore()
    )
    result = await crew.kickoff(inputs={"topic": "tides"})

    assert result.output.data == Summary(title="Tides", bullet_points=["twice a day", "moon"])
    assert llm.requests[0].output is not None  # the schema was sent to the model


TESTS = [
    test_each_task_gets_the_previous_output_as_context,
    test_tool_calls_run_the_tool_and_are_reported_as_events,
    test_a_rate_limit_is_retried_after_retry_after_without_waiting,
    test_structured_output_is_parsed_into_the_output_model,
]


def main() -> int:
    """Run every test of this file without pytest and report."""
    import anyio

    for test in TESTS:
        # Belt and braces: a test that accidentally used a real model would fail, not spend.
        with forbid_real_llm_calls():
            anyio.run(test)
        print(f"passed: {test.__name__}")
    print(f"{len(TESTS)} tests passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
