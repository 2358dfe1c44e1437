"""Maps: a task run once per item of an upstream list, on sequential and parallel."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import pytest
from pydantic import BaseModel

from crewflow import Agent, Crew, Task
from crewflow.exceptions import ConfigurationError, CrewPartialFailure, TaskFailed, WorkflowError
from crewflow.store import MemoryStore
from crewflow.testing import Error, FunctionLLM, run_virtual

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

    from crewflow.llm._types import LLMRequest
    from crewflow.task import TaskOutput

PROCESSES = ["sequential", "parallel"]


class Docs(BaseModel):
    items: list[str]


class Library:
    """Lists ``docs`` when asked to list; summarises "doc N" as "summary of doc N"; fails the
    docs in ``fail``; counts requests by first line; tracks how many summaries run at once."""

    def __init__(self, docs: list[str], fail: frozenset[str] = frozenset()) -> None:
        self.docs = docs
        self.fail = fail
        self.prompts: list[str] = []
        self.running = 0
        self.peak = 0

    async def answer(self, request: LLMRequest) -> object:
        prompt = request.messages[1].content or ""
        self.prompts.append(prompt)
        if prompt.startswith("list"):
            return Docs(items=self.docs)
        if prompt.startswith("combine"):
            return "combined"
        doc = prompt.split("Summarise ", 1)[1].split("\n", 1)[0].strip()
        self.running += 1
        self.peak = max(self.peak, self.running)
        await anyio.sleep(0.01)  # virtual time: no real waiting
        self.running -= 1
        if doc in self.fail:
            return Error(400, f"{doc} is unreadable")
        return f"summary of {doc}"


def map_crew(
    library: Library,
    process: str,
    *,
    store: MemoryStore | None = None,
    on_failure: str = "stop",
    **map_options: object,
) -> Crew:
    agent = Agent(role="Reader", goal="Read", llm=FunctionLLM(library.answer))
    listing = Task("list the documents", name="docs", output_model=Docs, context=[])
    summarise = Task(
        "Summarise {item}",
        name="summarise",
        context=[listing],
        map_over="docs.items",
        **map_options,  # type: ignore[arg-type]
    )
    combine = Task("combine the summaries", name="combine", context=[summarise])
    return Crew(
        tasks=[listing, summarise, combine],
        agents=[agent],
        process=process,
        store=store,
        on_failure=on_failure,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("process", PROCESSES)
def test_a_map_runs_a_task_per_item_and_gives_every_result_in_item_order(process: str) -> None:
    docs = [f"doc {n}" for n in range(5)]
    library = Library(docs)

    result = run_virtual(map_crew(library, process, max_concurrency=3).kickoff)

    summaries = result["summarise"]
    assert summaries.data == [f"summary of doc {n}" for n in range(5)]
    assert [result[f"summarise[{n}]"].text for n in range(5)] == summaries.data
    assert [o.task for o in result.internal] == [f"summarise[{n}]" for n in range(5)]
    combine = next(p for p in library.prompts if p.startswith("combine"))
    assert [combine.index(f"summary of doc {n}") for n in range(5)] == sorted(
        combine.index(f"summary of doc {n}") for n in range(5)
    )
    # Under sequential the items run one at a time; under parallel up to max_concurrency.
    assert library.peak == (1 if process == "sequential" else 3)
    assert result.output.text == "combined"


@pytest.mark.parametrize("process", PROCESSES)
def test_a_map_over_an_empty_list_runs_nothing_and_gives_an_empty_result(process: str) -> None:
    library = Library([])

    result = run_virtual(map_crew(library, process).kickoff)

    assert result["summarise"].data == []
    assert result.internal == []
    assert result.output.text == "combined"
    assert len(library.prompts) == 2  # the listing and the combination


@pytest.mark.parametrize("process", PROCESSES)
def test_a_map_over_a_thousand_items(process: str) -> None:
    docs = [f"doc {n}" for n in range(1000)]
    library = Library(docs)
    store = MemoryStore()

    result = run_virtual(map_crew(library, process, store=store, max_concurrency=50).kickoff)

    assert result["summarise"].data == [f"summary of doc {n}" for n in range(1000)]
    assert library.peak == (1 if process == "sequential" else 50)
    [run] = anyio.run(store.list_runs)
    decisions = anyio.run(store.decisions, run.run_id)
    [items] = [d for d in decisions if d.kind == "map"]
    assert items.value == docs


def test_max_items_cuts_the_list_and_says_so() -> None:
    library = Library([f"doc {n}" for n in range(10)])
    store = MemoryStore()

    result = run_virtual(map_crew(library, "parallel", store=store, max_items=4).kickoff)

    assert len(result["summarise"].data) == 4
    [run] = anyio.run(store.list_runs)
    [items] = [d for d in anyio.run(store.decisions, run.run_id) if d.kind == "map"]
    assert items.reason == "cut from 10 items to max_items=4"


@pytest.mark.parametrize("process", PROCESSES)
def test_a_failed_item_follows_on_failure(process: str) -> None:
    library = Library(["doc 0", "doc 1", "doc 2"], fail=frozenset({"doc 1"}))

    with pytest.raises(TaskFailed) as stopped:
        run_virtual(map_crew(library, process).kickoff)
    assert stopped.value.task == "summarise[1]"

    library = Library(["doc 0", "doc 1", "doc 2"], fail=frozenset({"doc 1"}))
    with pytest.raises(CrewPartialFailure) as partial:
        run_virtual(map_crew(library, process, on_failure="continue").kickoff)
    failures = partial.value.failures
    assert set(failures) == {"summarise[1]", "summarise"}
    cause = failures["summarise"].cause
    assert isinstance(cause, WorkflowError)
    assert "1 of the 3 items of map 'summarise' failed: 'summarise[1]'" in str(cause)
    assert partial.value.skipped == ["combine"]
    # The other items ran, and are kept.
    assert {"summarise[0]", "summarise[2]"} <= set(partial.value.outputs)


def test_the_item_goes_below_the_description_without_a_placeholder_and_braces_stay() -> None:
    library = Library(['{"a": 1} {topic}'])
    agent = Agent(role="Reader", goal="Read", llm=FunctionLLM(library.answer))
    listing = Task("list the documents", name="docs", output_model=Docs, context=[])
    summarise = Task(
        "Summarise {topic}", name="summarise", context=[listing], map_over="docs.items"
    )
    crew = Crew(tasks=[listing, summarise], agents=[agent], process="parallel")

    result = run_virtual(crew.kickoff, {"topic": "rivers"})

    assert result["summarise"].data == ["summary of rivers"]
    [item_prompt] = [p for p in library.prompts if p.startswith("Summarise")]
    assert 'Item:\n{"a": 1} {topic}' in item_prompt  # the item's own braces are data


async def test_a_function_map_over_reads_the_outputs() -> None:
    def words(outputs: Mapping[str, TaskOutput]) -> list[str]:
        return outputs["docs"].text.split()

    library = Library([])
    agent = Agent(role="Reader", goal="Read", llm=FunctionLLM(lambda r: "alpha beta"))
    listing = Task("list", name="docs", context=[])
    echo = Task("Say {item}", name="echo", context=[listing], map_over=words)
    crew = Crew(tasks=[listing, echo], agents=[agent], process="parallel")
    del library

    result = await crew.kickoff()

    assert result["echo"].data == ["alpha beta", "alpha beta"]
    assert [o.task for o in result.internal] == ["echo[0]", "echo[1]"]


async def test_a_list_that_is_not_there_is_a_clear_error() -> None:
    agent = Agent(role="Reader", goal="Read", llm=FunctionLLM(lambda r: "not json"))
    listing = Task("list", name="docs", context=[])
    each = Task("Say {item}", name="each", context=[listing], map_over="docs")
    crew = Crew(tasks=[listing, each], agents=[agent], process="parallel")

    with pytest.raises(TaskFailed, match="'docs' has no structured output and its text is not"):
        await crew.kickoff()


def test_maps_are_checked_when_the_crew_is_made() -> None:
    agent = Agent(role="Reader", goal="Read", llm="offline")
    listing = Task("list", name="docs", output_model=Docs, context=[])
    with pytest.raises(ConfigurationError, match=r"maps over 'elsewhere\.items', but its context"):
        Crew(
            tasks=[listing, Task("x {item}", context=[listing], map_over="elsewhere.items")],
            agents=[agent],
        )
    with pytest.raises(ConfigurationError, match="max_items is for a map"):
        Task("x", max_items=3)
    with pytest.raises(ConfigurationError, match="names no list"):
        Task("x", map_over="docs..items")
    with pytest.raises(ConfigurationError, match="a map cannot have a router"):
        Task("x", map_over="docs", router=lambda output: None)
    # {item} is the map's own: the kickoff does not ask for it as an input.
    crew = Crew(
        tasks=[listing, Task("Summarise {item}", context=[listing], map_over="docs.items")],
        agents=[agent],
    )
    assert "item" not in crew.graph.placeholders


@pytest.mark.parametrize("process", PROCESSES)
def test_a_map_stopped_halfway_resumes_without_redoing_its_finished_items(process: str) -> None:
    store = MemoryStore()
    docs = [f"doc {n}" for n in range(4)]
    library = Library(docs, fail=frozenset({"doc 2"}))
    with pytest.raises(TaskFailed):
        run_virtual(map_crew(library, process, store=store, max_concurrency=1).kickoff)
    [run] = anyio.run(store.list_runs)

    library.fail = frozenset()
    library.docs = ["another list"]  # the list is recorded: a resume maps over the same one
    library.prompts.clear()
    crew = map_crew(library, process, store=store, max_concurrency=1)
    result = run_virtual(crew.resume, run.run_id)

    assert result["summarise"].data == [f"summary of doc {n}" for n in range(4)]
    asked = [p.split("\n", 1)[0] for p in library.prompts]
    assert "Summarise doc 0" not in asked
    assert "Summarise doc 2" in asked
    assert not any(p.startswith("list") for p in asked)


class Note(BaseModel):
    doc: str


async def test_a_finished_map_with_structured_items_is_restored_whole_on_resume() -> None:
    store = MemoryStore()
    fail = {"combine": True}

    def answer(request: LLMRequest) -> object:
        prompt = request.messages[1].content or ""
        if prompt.startswith("list"):
            return Docs(items=["a", "b"])
        if prompt.startswith("combine"):
            if fail["combine"]:
                return Error(400, "not now")
            return "combined"
        return Note(doc=prompt.split()[1])

    def crew_of() -> Crew:
        agent = Agent(role="Reader", goal="Read", llm=FunctionLLM(answer))
        listing = Task("list them", name="docs", output_model=Docs, context=[])
        each = Task(
            "note {item}", name="each", context=[listing], map_over="docs.items", output_model=Note
        )
        combine = Task("combine them", name="combine", context=[each])
        return Crew(tasks=[listing, each, combine], agents=[agent], process="parallel", store=store)

    with pytest.raises(TaskFailed):
        await crew_of().kickoff()
    [run] = await store.list_runs()
    fail["combine"] = False

    result = await crew_of().resume(run.run_id)

    assert "each" in result.restored
    assert result["each"].data == [Note(doc="a"), Note(doc="b")]
    assert result.output.text == "combined"


async def test_items_a_model_wrote_are_data_whatever_they_hold(tmp_path: Path) -> None:
    from crewflow.store import SQLiteStore

    listed = (
        '["\\ud800 lone", "nul \\u0000 here", "' + "é" * 100_000 + '", 1e999, NaN, '
        '{"k": "\\udfff", "{topic}": "{{x}}"}]'
    )

    def answer(request: LLMRequest) -> str:
        prompt = request.messages[1].content or ""
        return listed if prompt.startswith("list") else prompt.split("\n", 1)[0]

    agent = Agent(role="Reader", goal="Read", llm=FunctionLLM(answer))
    listing = Task("list them", name="docs", context=[])
    each = Task("read {item}", name="each", context=[listing], map_over="docs")
    async with SQLiteStore(tmp_path / "runs.db") as store:
        crew = Crew(tasks=[listing, each], agents=[agent], process="parallel", store=store)
        result = await crew.kickoff()
        [items] = [d for d in await store.decisions(result.run_id) if d.kind == "map"]

    assert result["each"].data == [
        "read \ufffd lone",
        "read nul \ufffd here",
        "read " + "é" * 100_000,
        "read inf",
        "read nan",
        'read {"k": "\ufffd", "{topic}": "{{x}}"}',
    ]
    assert items.value[3:5] == ["inf", "nan"]
