"""A refused resume says which task changed and what changed in it (`CrewChanged.changes`), in a
message that stays short however many tasks changed; runs recorded without aspect digests get
the coarser account their record allows."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from pydantic import BaseModel

from crewflow import Agent, Crew, RetryPolicy, Task, tool
from crewflow.exceptions import CrewChange, CrewChanged, TaskFailed
from crewflow.store import MemoryStore
from crewflow.testing import FunctionLLM
from tests.stores import STORE_KINDS, store_name

if TYPE_CHECKING:
    from pathlib import Path

    from crewflow.llm._types import LLMRequest

pytestmark = pytest.mark.asyncio

NAMES = ("facts", "notes", "draft")


class Post(BaseModel):
    title: str


class Article(BaseModel):
    title: str
    body: str


@tool
def search(query: str) -> str:
    """Search the web for QUERY."""
    return query


@tool
def browse(url: str) -> str:
    """Open URL."""
    return url


def failing_on(name: str, model: str = "fn/a") -> FunctionLLM:
    def answer(request: LLMRequest) -> Any:
        content = request.messages[-1].content or ""
        return ValueError(f"{name} broke") if f"do {name}" in content else "done"

    return FunctionLLM(answer, model=model)


def crew_of(store: MemoryStore | str, **change: Any) -> Crew:
    """Three tasks, ``draft`` failing; ``change`` alters ``draft`` (or the crew)."""
    agent = Agent(
        role="Writer",
        goal=change.get("goal", "Write"),
        llm=failing_on("draft", change.get("model", "fn/a")),
        tools=change.get("tools", [search]),
    )
    facts = Task("do facts", agent=agent, name="facts")
    notes = Task("do notes", agent=agent, name="notes", context=[facts])
    draft = Task(
        change.get("description", "do draft"),
        expected_output=change.get("expected_output", "a post"),
        agent=agent,
        name="draft",
        context=change.get("context", [notes]),
        output_model=change.get("output_model", Post),
        fallback_agent=change.get("fallback"),
    )
    return Crew(
        tasks=[facts, notes, draft],
        name="post",
        store=store,
        retry=RetryPolicy(max_attempts=1),
        process=change.get("process", "sequential"),
    )


async def refused(
    store: MemoryStore | str | None = None, recorded: str = "sequential", **change: Any
) -> CrewChanged:
    """Record a run of the crew (under the process ``recorded``) that fails at ``draft``, then
    resume it with ``change``."""
    store = store if store is not None else MemoryStore()
    with pytest.raises(TaskFailed) as failed:
        await crew_of(store, process=recorded).kickoff()
    run_id = failed.value.run_id
    assert run_id is not None
    with pytest.raises(CrewChanged) as caught:
        await crew_of(store, **change).resume(run_id)
    return caught.value


@pytest.mark.parametrize(
    ("change", "aspect"),
    [
        ({"description": "do draft, shorter"}, "description"),
        ({"expected_output": "a short post"}, "expected output"),
        ({"output_model": Article}, "output model"),
        ({"fallback": Agent(role="Backup", goal="Write")}, "fallback agent"),
    ],
)
async def test_each_aspect_of_a_changed_task_is_named(change: dict[str, Any], aspect: str) -> None:
    error = await refused(**change)

    assert error.changes == [CrewChange("changed", "draft", (aspect,))]
    assert f"(task 'draft': {aspect} changed), so its saved outputs" in str(error)


@pytest.mark.parametrize(
    ("change", "aspect"),
    [
        ({"goal": "Write well"}, "agent"),
        ({"model": "fn/b"}, "model"),
        ({"tools": [search, browse]}, "tools"),
    ],
)
async def test_a_change_to_the_agent_is_named_on_each_of_its_tasks(
    change: dict[str, Any], aspect: str
) -> None:
    error = await refused(**change)

    assert error.changes == [CrewChange("changed", name, (aspect,)) for name in NAMES]


async def test_every_aspect_that_changed_is_named_in_order() -> None:
    error = await refused(goal="Write well", model="fn/b", description="do draft, shorter")

    assert [str(change) for change in error.changes] == [
        "task 'facts': agent, model changed",
        "task 'notes': agent, model changed",
        "task 'draft': description, agent, model changed",
    ]


async def test_changed_dependencies_say_what_they_were_and_are() -> None:
    error = await refused(context=[], description="do draft alone")

    assert [str(change) for change in error.changes] == [
        "task 'draft': description, dependencies changed (it depends on [] instead of ['notes'])"
    ]
    assert error.changes[0].aspects == ("description", "dependencies")


async def test_the_process_is_named_beside_the_tasks() -> None:
    error = await refused(process="parallel", description="do draft again")

    assert [change.kind for change in error.changes] == ["changed", "process"]
    assert str(error.changes[1]) == "the process changed from 'sequential' to 'parallel'"


async def test_thousands_of_changed_tasks_give_a_short_message_with_a_count() -> None:
    store = MemoryStore()

    def chain(goal: str) -> Crew:
        agent = Agent(role="W", goal=goal, llm=failing_on("t0"))
        tasks = [Task(f"do t{n}", agent=agent, name=f"t{n}") for n in range(5_000)]
        return Crew(tasks=tasks, store=store, retry=RetryPolicy(max_attempts=1))

    with pytest.raises(TaskFailed) as failed:
        await chain("Work").kickoff()
    assert failed.value.run_id is not None
    with pytest.raises(CrewChanged) as caught:
        await chain("Work harder").resume(failed.value.run_id)

    error = caught.value
    assert len(error.changes) == 5_000
    assert "task 't0': agent changed; task 't1': agent changed" in str(error)
    assert "; and 4,995 more), so its saved outputs" in str(error)
    assert len(str(error)) < 400


async def test_a_run_recorded_without_aspect_digests_says_only_which_task_changed() -> None:
    store = MemoryStore()
    with pytest.raises(TaskFailed) as failed:
        await crew_of(store).kickoff()
    run_id = failed.value.run_id
    assert run_id is not None
    # As crewflow recorded runs before it kept aspect digests: task hashes, no details.
    recorded = await store.get_run(run_id)
    assert recorded is not None
    assert recorded.details["task_aspects"]
    older = MemoryStore()
    await older.start_run(recorded.model_copy(update={"details": {}}))

    with pytest.raises(CrewChanged) as caught:
        await crew_of(older, description="do draft, shorter").resume(run_id)

    assert caught.value.changes == [
        CrewChange(
            "changed",
            "draft",
            (),
            "its description, expected output, output model, dependencies, agent, model or tools",
        )
    ]


@pytest.mark.parametrize("kind", STORE_KINDS)
async def test_every_store_keeps_the_digests_beside_a_recorded_choice(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    store = MemoryStore() if kind == "memory" else store_name(kind, request, tmp_path)

    # The adaptive process records its choice into the same details: the digests stay.
    error = await refused(
        store, recorded="adaptive", process="adaptive", description="do draft, shorter"
    )

    assert [str(change) for change in error.changes] == ["task 'draft': description changed"]
    recorded = await crew_of(store).resolved_store().get_run(error.run_id)  # type: ignore[union-attr]
    assert recorded is not None
    assert set(recorded.details) == {"choice", "task_aspects"}
