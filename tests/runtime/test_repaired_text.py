"""A reply holding text no store can keep (a lone UTF-16 surrogate, a NUL) is data: the task
completes with it repaired (U+FFFD), its dependants and its record get the same text, the
attempt says it was repaired, and the store stays usable for every later run."""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

import pytest

from crewflow import Agent, Crew, Task, tool
from crewflow.exceptions import TaskFailed
from crewflow.store import MemoryStore, RunStatus, SQLiteStore, Store
from crewflow.testing import Error, FunctionLLM, ScriptedLLM, ToolCall, ToolCalls
from tests.stores import STORE_KINDS, made_store

if TYPE_CHECKING:
    from pathlib import Path

    from crewflow.llm._types import LLMRequest

BROKEN = "caf\udce9 \ud800 and a NUL\x00 end"
REPAIRED = "caf\ufffd \ufffd and a NUL\ufffd end"


def prompt_of(llm: FunctionLLM) -> str:
    return llm.requests[-1].messages[-1].content or ""


def crew_of(store: Store, *, fail_last: bool = False) -> tuple[Crew, FunctionLLM, FunctionLLM]:
    """Four independent tasks in parallel, one answered with broken text, and a last task
    that reads it (failing when ``fail_last``); with the broken task's LLM and the last's."""
    writer_llm = FunctionLLM(lambda r: BROKEN)
    writer = Agent(role="Writer", goal="Write", llm=writer_llm)
    others = Agent(role="Other", goal="Work", llm=FunctionLLM(lambda r: "fine"))

    def read(request: LLMRequest) -> object:
        return Error(400, "the reader is out") if fail_last else "read"

    reader_llm = FunctionLLM(read)
    reader = Agent(role="Reader", goal="Read", llm=reader_llm)
    broken = Task("broken", agent=writer, name="broken", context=[])
    tasks = [Task(f"t{i}", agent=others, name=f"t{i}", context=[]) for i in range(3)]
    last = Task("last", agent=reader, name="last", context=[broken])
    crew = Crew(tasks=[broken, *tasks, last], process="parallel", store=store)
    return crew, writer_llm, reader_llm


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    return made_store(request.param, request, tmp_path)


async def test_a_reply_no_store_can_keep_completes_its_task_with_the_text_repaired(
    store: Store,
) -> None:
    crew, _, reader = crew_of(store)

    result = await crew.kickoff()

    assert result["broken"].text == REPAIRED
    assert REPAIRED in prompt_of(reader)  # the dependant got the same text
    run = await store.get_run(result.run_id)
    assert run is not None
    assert run.status is RunStatus.COMPLETED
    assert (await store.outputs(result.run_id))["broken"].text == REPAIRED
    repaired = {a.task: a.details.get("repaired", False) for a in await store.attempts(run.run_id)}
    assert repaired == {"broken": True, "t0": False, "t1": False, "t2": False, "last": False}
    await store.close()


async def test_after_such_a_reply_later_runs_and_other_connections_use_the_store(
    tmp_path: Path,
) -> None:
    path = tmp_path / "runs.db"
    store = SQLiteStore(path)
    await crew_of(store)[0].kickoff()

    again = await crew_of(store)[0].kickoff()  # a later kickoff in the process

    assert again["last"].text == "read"
    other = sqlite3.connect(path, timeout=0, isolation_level=None)  # another process's view
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
        statuses = {status for (status,) in other.execute("SELECT status FROM runs")}
    finally:
        other.close()
    assert statuses == {"completed"}
    await store.close()


async def test_a_resumed_run_gives_dependants_the_text_the_live_run_recorded(
    store: Store,
) -> None:
    crew, _, _ = crew_of(store, fail_last=True)
    with pytest.raises(TaskFailed) as failed:
        await crew.kickoff()
    assert failed.value.outputs["broken"].text == REPAIRED
    run_id = (await store.list_runs())[0].run_id

    resumed, writer, reader = crew_of(store)
    result = await resumed.resume(run_id)

    assert writer.requests == []  # its output came back from the store
    assert result["broken"].text == REPAIRED
    assert REPAIRED in prompt_of(reader)
    await store.close()


async def test_a_tool_result_recorded_with_its_text_repaired_marks_the_attempt() -> None:
    @tool
    def odd() -> str:
        """Returns odd text."""
        return "half a pair \udfff and a NUL \x00"

    llm = ScriptedLLM([ToolCalls([ToolCall("odd", {})]), "done"])
    agent = Agent(role="Researcher", goal="Find", llm=llm, tools=[odd])
    store = MemoryStore()

    result = await Crew(tasks=[Task("find", agent=agent, name="find")], store=store).kickoff()

    (attempt,) = await store.attempts(result.run_id)
    assert attempt.details == {"repaired": True}
    _, second = (await store.prompts(result.run_id))[("find", 1)]
    assert second.messages[0].content == "half a pair \ufffd and a NUL \ufffd"
