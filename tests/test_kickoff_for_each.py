"""`Crew.kickoff_for_each`: many kickoffs, bounded, results in input order, failures collected."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import pytest

from crewflow import Agent, Crew, Task
from crewflow.crew import CrewResult
from crewflow.exceptions import ConfigurationError, KickoffsFailed, LLMError, TaskFailed
from crewflow.testing import Error, FunctionLLM, run_virtual

if TYPE_CHECKING:
    from crewflow.llm._types import LLMRequest


def first_line(request: LLMRequest) -> str:
    content = request.messages[1].content
    assert content is not None
    return content.splitlines()[0]


def topic_crew(llm: FunctionLLM) -> Crew:
    agent = Agent(role="W", goal="G", llm=llm)
    return Crew(tasks=[Task("about {topic}", agent=agent, name="about")])


def test_results_come_in_input_order_even_when_later_inputs_finish_first() -> None:
    finished: list[str] = []

    async def answer(request: LLMRequest) -> str:
        topic = first_line(request).removeprefix("about ")
        await anyio.sleep(1.0 / (1 + int(topic)))  # input 0 is the slowest
        finished.append(topic)
        return f"on {topic}"

    crew = topic_crew(FunctionLLM(answer))
    inputs = [{"topic": i} for i in range(5)]

    async def main() -> tuple[list[Any], float]:
        results = await crew.kickoff_for_each(inputs)
        return results, asyncio.get_running_loop().time()

    results, took = run_virtual(main)

    assert finished == ["4", "3", "2", "1", "0"]
    assert [r.text for r in results] == [f"on {i}" for i in range(5)]
    assert all(isinstance(r, CrewResult) for r in results)
    assert len({r.run_id for r in results}) == 5  # one run per input
    assert took == pytest.approx(1.0)  # all at once by default


async def test_concurrency_bounds_the_kickoffs_in_flight() -> None:
    gates: defaultdict[str, anyio.Event] = defaultdict(anyio.Event)
    entered: list[str] = []
    in_flight = most = 0
    three_in = anyio.Event()

    async def answer(request: LLMRequest) -> str:
        nonlocal in_flight, most
        topic = first_line(request).removeprefix("about ")
        in_flight += 1
        most = max(most, in_flight)
        entered.append(topic)
        if in_flight == 3:
            three_in.set()
        try:
            await gates[topic].wait()
        finally:
            in_flight -= 1
        return f"on {topic}"

    crew = topic_crew(FunctionLLM(answer))
    results: list[Any] = []

    async def run_all() -> None:
        results.extend(
            await crew.kickoff_for_each([{"topic": str(i)} for i in range(7)], concurrency=3)
        )

    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            group.start_soon(run_all)
            # Each kickoff records its run (in the store's thread) before its call: wait for
            # the calls themselves, not for the tasks to look idle.
            await three_in.wait()
            await anyio.wait_all_tasks_blocked()
            assert in_flight == 3
            for i in range(7):
                gates[str(i)].set()
                await anyio.wait_all_tasks_blocked()
                assert in_flight <= 3

    assert most == 3
    assert sorted(entered) == [str(i) for i in range(7)]
    assert [r.text for r in results] == [f"on {i}" for i in range(7)]


def test_concurrency_paces_the_kickoffs_in_virtual_time() -> None:
    async def answer(request: LLMRequest) -> str:
        await anyio.sleep(0.5)
        return "done"

    crew = topic_crew(FunctionLLM(answer))

    async def main() -> float:
        await crew.kickoff_for_each([{"topic": i} for i in range(7)], concurrency=2)
        return asyncio.get_running_loop().time()

    assert run_virtual(main) == pytest.approx(2.0)  # ceil(7 / 2) rounds of 0.5 s


async def test_every_input_is_checked_before_anything_runs() -> None:
    llm = FunctionLLM(lambda request: "x")
    crew = topic_crew(llm)

    with pytest.raises(ConfigurationError, match=r"inputs\[2\]") as caught:
        await crew.kickoff_for_each([{"topic": "a"}, {"topic": "b"}, {"subject": "c"}])

    assert "topic" in str(caught.value)
    assert llm.requests == []


async def test_a_non_mapping_or_unserialisable_input_is_named_by_index() -> None:
    llm = FunctionLLM(lambda request: "x")
    crew = topic_crew(llm)

    with pytest.raises(ConfigurationError, match=r"inputs\[1\].*mapping"):
        await crew.kickoff_for_each([{"topic": "a"}, "topic=b"])  # type: ignore[list-item]
    with pytest.raises(ConfigurationError, match=r"inputs\[0\].*JSON"):
        await crew.kickoff_for_each([{"topic": object()}])
    assert llm.requests == []


@pytest.mark.parametrize("concurrency", [0, -1])
async def test_concurrency_below_one_is_rejected(concurrency: int) -> None:
    llm = FunctionLLM(lambda request: "x")

    with pytest.raises(ConfigurationError, match="concurrency"):
        await topic_crew(llm).kickoff_for_each([{"topic": "a"}], concurrency=concurrency)
    assert llm.requests == []


async def test_no_inputs_means_no_results() -> None:
    assert await topic_crew(FunctionLLM(lambda request: "x")).kickoff_for_each([]) == []


def failing_for(bad: set[str]) -> tuple[FunctionLLM, list[str]]:
    """Input topics in ``bad`` fail at once (HTTP 400); the others take 1 s (virtual)."""
    finished: list[str] = []

    async def answer(request: LLMRequest) -> Any:
        topic = first_line(request).removeprefix("about ")
        if topic in bad:
            return Error(400, f"cannot do {topic}")
        await anyio.sleep(1)
        finished.append(topic)
        return f"on {topic}"

    return FunctionLLM(answer), finished


def test_failures_raise_kickoffs_failed_after_every_kickoff_ended() -> None:
    llm, finished = failing_for({"1", "3"})
    crew = topic_crew(llm)

    async def main() -> tuple[KickoffsFailed, float]:
        with pytest.raises(KickoffsFailed) as caught:
            await crew.kickoff_for_each([{"topic": str(i)} for i in range(5)])
        return caught.value, asyncio.get_running_loop().time()

    error, ended_at = run_virtual(main)

    assert ended_at == pytest.approx(1.0)  # the failures at 0 s did not cut the others short
    assert sorted(finished) == ["0", "2", "4"]
    assert sorted(error.failures) == [1, 3]
    assert all(isinstance(error.failures[i], TaskFailed) for i in (1, 3))
    failure = error.failures[1]
    assert isinstance(failure, TaskFailed)
    assert isinstance(failure.cause, LLMError)
    assert "cannot do 1" in str(failure.cause)
    assert len(error.results) == 5
    for i in (0, 2, 4):
        result = error.results[i]
        assert isinstance(result, CrewResult)
        assert result.text == f"on {i}"
    assert error.results[1] is error.failures[1]
    assert error.results[3] is error.failures[3]
    assert "2 of 5" in str(error)
    assert "inputs[1]" in str(error)


def test_return_exceptions_puts_errors_in_place() -> None:
    llm, _ = failing_for({"2"})
    crew = topic_crew(llm)

    async def main() -> list[Any]:
        return await crew.kickoff_for_each(
            [{"topic": str(i)} for i in range(4)], return_exceptions=True, concurrency=2
        )

    results = run_virtual(main)

    assert [type(r).__name__ for r in results] == [
        "CrewResult",
        "CrewResult",
        "TaskFailed",
        "CrewResult",
    ]
    assert results[3].text == "on 3"


async def test_concurrent_runs_keep_their_own_context() -> None:
    prompts: dict[str, str] = {}

    async def answer(request: LLMRequest) -> str:
        line = first_line(request)
        await anyio.lowlevel.checkpoint()  # interleave the runs
        content = request.messages[1].content
        assert content is not None
        prompts[line] = content
        return f"answer to {line}"

    agent = Agent(role="W", goal="G", llm=FunctionLLM(answer))
    first = Task("about {topic}", agent=agent, name="first")
    second = Task("more on {topic}", agent=agent, name="second", context=[first])
    crew = Crew(tasks=[first, second], process="parallel")

    results = await crew.kickoff_for_each([{"topic": "x"}, {"topic": "y"}])

    assert [r["second"].text for r in results] == ["answer to more on x", "answer to more on y"]
    assert "answer to about x" in prompts["more on x"]
    assert "answer to about y" not in prompts["more on x"]
    assert "answer to about y" in prompts["more on y"]
