"""The sequential process: list order, one at a time, the previous output as implicit context."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel
import pytest

from crewflow import Agent, Crew, Task, TaskStatus
from crewflow.exceptions import ConfigurationError, TaskFailed
from crewflow.graph import TaskGraph
from crewflow.processes.sequential import Sequential
from crewflow.testing import Error, FunctionLLM, ScriptedLLM

if TYPE_CHECKING:
    from crewflow.llm._types import LLMRequest


def prompt_of(request: LLMRequest) -> str:
    content = request.messages[1].content
    assert content is not None
    return content


def test_sequential_chains_undeclared_context_when_the_crew_is_built() -> None:
    agent = Agent(role="W", goal="G")
    tasks = [Task("a", agent=agent), Task("b", agent=agent), Task("c", agent=agent, context=[])]

    crew = Crew(tasks=tasks, process="sequential")

    assert Sequential.name == "sequential"
    # A real edge before any kickoff: in the graph, the fingerprint and the recorded graph.
    assert crew.graph.dependency_names("task_2") == ("task_1",)
    assert crew.graph.dependency_names("task_3") == ()
    parallel = Crew(tasks=tasks, process="parallel")
    assert crew.fingerprint().tasks["task_2"] != parallel.fingerprint().tasks["task_2"]
    assert crew.fingerprint().tasks["task_3"] == parallel.fingerprint().tasks["task_3"]


async def test_tasks_run_in_list_order_one_at_a_time() -> None:
    running = 0
    most = 0

    async def answer(request: LLMRequest) -> str:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await anyio.lowlevel.checkpoint()  # let anything else that could run, run
        running -= 1
        return prompt_of(request).splitlines()[0]

    llm = FunctionLLM(answer)
    agent = Agent(role="W", goal="G", llm=llm)
    # No dependencies at all: order comes from the list alone.
    tasks = [Task(f"step {n}", agent=agent, context=[]) for n in ("c", "a", "b")]

    result = await Crew(tasks=tasks, process="sequential").kickoff()

    assert [prompt_of(r).splitlines()[0] for r in llm.requests] == ["step c", "step a", "step b"]
    assert most == 1
    starts = [record.start for record in result.timeline]
    assert starts == sorted(starts)  # type: ignore[type-var]


async def test_the_first_failure_stops_the_run() -> None:
    llm = ScriptedLLM(["one", Error(400), "three"])
    agent = Agent(role="W", goal="G", llm=llm)
    crew = Crew(
        tasks=[
            Task("1", agent=agent),
            Task("2", agent=agent, context=[]),
            Task("3", agent=agent, context=[]),
        ]
    )

    with pytest.raises(TaskFailed) as caught:
        await crew.kickoff()

    assert caught.value.task == "task_2"
    assert len(llm.requests) == 2
    assert list(caught.value.outputs) == ["task_1"]


async def test_a_task_with_declared_context_gets_only_that_context() -> None:
    llm = ScriptedLLM(["A-OUT", "B-OUT", "C-OUT"])
    agent = Agent(role="W", goal="G", llm=llm)
    a = Task("a", agent=agent, name="a")
    crew = Crew(tasks=[a, Task("b", agent=agent), Task("c", agent=agent, context=[a])])

    result = await crew.kickoff()

    third = prompt_of(llm.requests[2])
    assert "A-OUT" in third
    assert "B-OUT" not in third
    assert all(r.status is TaskStatus.COMPLETED for r in result.timeline)


def test_validate_rejects_context_on_a_later_task() -> None:
    agent = Agent(role="W", goal="G")
    graph = TaskGraph(
        [
            Task("x", agent=agent, name="intro"),
            Task("a", agent=agent, name="draft", context=["facts"]),
            Task("b", agent=agent, name="facts", context=[]),
        ]
    )

    with pytest.raises(ConfigurationError, match="move 'facts' before 'draft'"):
        Sequential().validate(graph)


def test_validate_accepts_context_on_earlier_tasks() -> None:
    agent = Agent(role="W", goal="G")
    first = Task("a", agent=agent)
    graph = TaskGraph([first, Task("b", agent=agent), Task("c", agent=agent, context=[first])])

    Sequential().validate(graph)  # no error

    assert graph.dependency_names("task_3") == ("task_1",)


def test_a_later_context_with_undeclared_context_is_an_ordering_error_not_a_cycle() -> None:
    agent = Agent(role="W", goal="G")
    tasks = [
        Task("a", agent=agent, name="draft", context=["facts"]),
        Task("b", agent=agent, name="facts"),
    ]

    with pytest.raises(ConfigurationError) as caught:
        Crew(tasks=tasks, process="sequential")

    assert "cycle" not in str(caught.value)
    assert "move 'facts' before 'draft'" in str(caught.value)
