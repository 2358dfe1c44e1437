"""Sync tools inside runs: a task's timeout or a cancelled run ends the attempt at once, even
while a tool's thread blocks; the thread is abandoned, and the attempt is not retried while it
runs unless the tool is idempotent.

The tools block on a `threading.Event` (`tests.held.Held`). The runs are in virtual time: the
clock stands still while a worker thread is at work, so nothing times out before the tool is
entered; the test then moves the clock past the timeout itself.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import pytest

from crewflow import Agent, Crew, RetryPolicy, Task, TaskStatus
from crewflow.events import RunStarted, TaskFinished, ToolCalled
from crewflow.exceptions import CrewPartialFailure, RunCancelled, TaskFailed, TaskTimeout
from crewflow.store import MemoryStore
from crewflow.testing import (
    ScriptedLLM,
    Slow,
    Text,
    ToolCall,
    ToolCalls,
    VirtualTimeLoop,
    capture_events,
    run_virtual,
)
from crewflow.tools import MAX_ABANDONED
from tests.held import Held, captured_logs

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator
    from pathlib import Path

    from crewflow._records import AttemptRecord
    from crewflow.llm import LLM
    from crewflow.testing import FakeClock

TIMEOUT = 30.0  # virtual seconds: reached only when the test moves the clock past it


@pytest.fixture
def held() -> Iterator[Held]:
    """A sync tool ``fetch`` that blocks until released; released (and its threads waited for)
    after the test, so no thread outlives it."""
    tool = Held()
    yield tool
    tool.settle()


def fetching(*replies: Any) -> ScriptedLLM:
    """A model that calls ``fetch`` once, then gives ``replies``."""
    return ScriptedLLM([ToolCalls([ToolCall("fetch", {"url": "https://example.org"})]), *replies])


def fetch_task(held: Held, llm: str | LLM, **task: Any) -> Task:
    agent = Agent(role="Fetcher", goal="Fetch pages", llm=llm, tools=[held.tool])
    return Task("Fetch the page", agent=agent, name="fetch", **task)


async def time_out_when_entered(held: Held, calls: int = 1) -> None:
    """Once ``calls`` calls are inside the tool, move the virtual clock past the timeout."""
    await held.wait_started(calls)
    loop = asyncio.get_running_loop()
    assert isinstance(loop, VirtualTimeLoop)
    loop.advance(TIMEOUT)


def kickoff_timing_out(crew: Crew, held: Held, calls: int = 1) -> Callable[[], Awaitable[Any]]:
    """A main for `run_virtual`: the crew's kickoff, timed out once ``calls`` calls blocked."""

    async def main() -> Any:
        handle = crew.start()
        await time_out_when_entered(held, calls)
        return await handle.result()

    return main


async def recorded_attempts(store: MemoryStore, run_id: str) -> list[AttemptRecord]:
    return await store.attempts(run_id)


# -- (a) the attempt ends at its timeout ---------------------------------------------------------


@pytest.mark.parametrize(
    "llm",
    [pytest.param("offline", id="offline model"), pytest.param("awaiting", id="awaiting model")],
)
def test_a_timeout_ends_the_attempt_while_the_sync_tool_still_blocks(held: Held, llm: str) -> None:
    # The offline model never awaits after the tool returns; the scripted one does (Slow(0)).
    model: str | LLM = "offline" if llm == "offline" else fetching(Slow(0, Text("fetched")))
    store = MemoryStore()
    crew = Crew(tasks=[fetch_task(held, model, timeout=TIMEOUT)], store=store)

    with capture_events() as events, captured_logs() as logs, pytest.raises(TaskFailed) as caught:
        run_virtual(kickoff_timing_out(crew, held))

    assert held.returned == 0  # the run ended while the tool's thread still blocked
    assert held.tool.abandoned == 1
    timeout = caught.value.cause
    assert isinstance(timeout, TaskTimeout)
    assert timeout.running_tools == ("fetch",)
    assert "Tool 'fetch' was still running" in str(timeout)
    run_id = events.of_type(RunStarted)[0].run_id
    (attempt,) = run_virtual(recorded_attempts, store, run_id)
    assert (attempt.status, attempt.error_type) == (TaskStatus.FAILED, "TaskTimeout")
    assert attempt.duration == TIMEOUT  # it ended at its timeout, not when the tool returned
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    assert [(w["tool"], w["task"], w["attempt"], w["running"]) for w in warnings] == [
        ("fetch", "fetch", 1, 1)
    ]


def test_the_count_of_abandoned_calls_drops_when_the_thread_returns(held: Held) -> None:
    crew = Crew(tasks=[fetch_task(held, "offline", timeout=TIMEOUT)])
    with pytest.raises(TaskFailed):
        run_virtual(kickoff_timing_out(crew, held))
    assert held.tool.abandoned == 1

    held.settle()  # the thread returns

    assert held.tool.abandoned == 0


# -- (b) other tasks go on -----------------------------------------------------------------------


def test_a_parallel_crew_runs_its_other_tasks_while_a_sync_tool_blocks(held: Held) -> None:
    writer = Agent(role="Writer", goal="Write", llm=ScriptedLLM(["a written", "b written"]))
    crew = Crew(
        tasks=[
            fetch_task(held, fetching("fetched"), context=[]),
            Task("Write A", agent=writer, name="a", context=[]),
            Task("Write B", agent=writer, name="b", context=[]),
        ],
        process="parallel",
        max_concurrency=3,
    )

    async def main() -> Any:
        handle = crew.start()
        events = handle.events()
        await held.wait_started()
        finished: set[str] = set()
        async for event in events:
            if isinstance(event, TaskFinished):
                finished.add(event.task)
            if {"a", "b"} <= finished:
                break
        assert "fetch" not in finished
        assert held.returned == 0  # a and b finished while fetch's tool blocked
        held.release.set()
        return await handle.result()

    result = run_virtual(main)

    assert {name: result[name].text for name in ("fetch", "a", "b")} == {
        "fetch": "fetched",
        "a": "a written",
        "b": "b written",
    }


def test_a_timed_out_task_frees_its_slot_while_its_tool_thread_still_blocks(held: Held) -> None:
    other = Agent(role="Writer", goal="Write", llm=ScriptedLLM(["written"]))
    crew = Crew(
        tasks=[
            fetch_task(held, fetching("fetched"), timeout=TIMEOUT, priority=1, context=[]),
            Task("Write", agent=other, name="write", context=[]),
        ],
        process="parallel",
        max_concurrency=1,
        on_failure="continue",
    )

    with pytest.raises(CrewPartialFailure) as caught:
        run_virtual(kickoff_timing_out(crew, held))

    assert held.returned == 0
    assert list(caught.value.failures) == ["fetch"]
    assert caught.value.outputs["write"].text == "written"


# -- (c) a hung tool cannot take thread after thread ---------------------------------------------


def test_after_three_abandoned_calls_the_next_call_fails_at_once_and_the_model_is_told(
    held: Held,
) -> None:
    for _ in range(MAX_ABANDONED):
        crew = Crew(tasks=[fetch_task(held, fetching("fetched"), timeout=TIMEOUT)])
        with pytest.raises(TaskFailed):
            run_virtual(kickoff_timing_out(crew, held, held.started + 1))
    assert held.tool.abandoned == MAX_ABANDONED
    llm = fetching("could not fetch")
    crew = Crew(tasks=[fetch_task(held, llm, timeout=TIMEOUT)])

    with capture_events() as events:
        result = run_virtual(crew.kickoff)  # no clock to move: the call never blocks

    assert held.started == MAX_ABANDONED  # the fourth call never reached the function
    assert result.text == "could not fetch"
    (called,) = events.of_type(ToolCalled)
    assert (called.tool, called.ok) == ("fetch", False)
    told = llm.requests[1].messages[-1].content
    assert told is not None
    assert told.startswith("Error: tool 'fetch' is not called: 3 earlier calls")


# -- (d) retries ---------------------------------------------------------------------------------


def test_an_attempt_whose_tool_thread_still_runs_is_not_retried(
    held: Held, fake_clock: FakeClock
) -> None:
    llm = fetching("fetched", "fetched again")
    crew = Crew(
        tasks=[fetch_task(held, llm, timeout=TIMEOUT)],
        retry=RetryPolicy(max_attempts=3, jitter=False),
    )

    with pytest.raises(TaskFailed) as caught:
        run_virtual(kickoff_timing_out(crew, held))

    assert caught.value.attempts == 1
    assert isinstance(caught.value.cause, TaskTimeout)
    assert "no other attempt that could call it is made" in str(caught.value)
    assert len(llm.requests) == 1
    assert held.started == 1
    assert fake_clock.sleeps == []


def test_an_attempt_is_retried_when_the_tool_still_running_is_idempotent(
    fake_clock: FakeClock,
) -> None:
    held = Held(idempotent=True)
    try:
        # The first attempt times out in the tool; the second answers without calling it.
        crew = Crew(
            tasks=[fetch_task(held, fetching("from memory"), timeout=TIMEOUT)],
            retry=RetryPolicy(max_attempts=2, jitter=False),
        )

        result = run_virtual(kickoff_timing_out(crew, held))

        assert held.returned == 0
        assert result.text == "from memory"
        first, second = result.timeline[0].attempts
        assert (first.status, first.error_type) == (TaskStatus.FAILED, "TaskTimeout")
        assert second.status is TaskStatus.COMPLETED
        assert fake_clock.sleeps == [1.0]
    finally:
        held.settle()


def test_a_fallback_agent_without_the_running_tool_takes_over(held: Held) -> None:
    backup = Agent(role="Backup", goal="Answer", llm=ScriptedLLM(["from the backup"]))
    crew = Crew(
        tasks=[fetch_task(held, fetching("fetched"), timeout=TIMEOUT, fallback_agent=backup)]
    )

    result = run_virtual(kickoff_timing_out(crew, held))

    assert held.returned == 0
    assert (result.text, result.output.agent) == ("from the backup", "Backup")


def test_a_fallback_agent_with_the_running_tool_does_not_take_over(held: Held) -> None:
    backup_llm = ScriptedLLM(["from the backup"])
    backup = Agent(role="Backup", goal="Answer", llm=backup_llm, tools=[held.tool])
    crew = Crew(
        tasks=[fetch_task(held, fetching("fetched"), timeout=TIMEOUT, fallback_agent=backup)]
    )

    with pytest.raises(TaskFailed) as caught:
        run_virtual(kickoff_timing_out(crew, held))

    assert caught.value.attempts == 1
    assert backup_llm.requests == []


# -- (e) cancelling the run ----------------------------------------------------------------------


def test_cancelling_a_run_during_a_sync_tool_ends_it_at_once_and_abandons_the_thread(
    held: Held,
) -> None:
    store = MemoryStore()
    crew = Crew(tasks=[fetch_task(held, fetching("fetched"))], store=store)

    async def main() -> str:
        handle = crew.start()
        await held.wait_started()
        handle.cancel()
        with pytest.raises(RunCancelled):
            await handle.result()
        return handle.run_id

    with captured_logs() as logs:
        run_id = run_virtual(main)

    assert held.returned == 0  # the run ended while the tool's thread still blocked
    assert held.tool.abandoned == 1
    (attempt,) = run_virtual(recorded_attempts, store, run_id)
    assert attempt.status is TaskStatus.CANCELLED
    assert [entry["tool"] for entry in logs if entry["log_level"] == "warning"] == ["fetch"]


HUNG_CREW = """
import threading

from crewflow import Agent, Crew, Task, tool

never = threading.Event()


@tool
def stuck(query: str) -> str:
    '''Never returns.'''
    never.wait()
    return "unreachable"


agent = Agent(role="R", goal="G", llm="offline", tools=[stuck])
crew = Crew(tasks=[Task("Do it", agent=agent, timeout=0.2)], store=None)

if __name__ == "__main__":
    import asyncio

    try:
        asyncio.run(crew.kickoff())
    except Exception as error:
        print("ended:", type(error).__name__)
"""


@pytest.mark.parametrize("how", ["python", "crewflow run"])
def test_a_process_whose_tool_thread_never_returns_still_exits(tmp_path: Path, how: str) -> None:
    # The interpreter waits at exit for every thread that is not a daemon: an abandoned tool
    # thread in anyio's worker pool kept `python crew.py` and `crewflow run` from ever exiting.
    script = tmp_path / "hung.py"
    script.write_text(HUNG_CREW)
    args = [str(script)] if how == "python" else ["-m", "crewflow", "run", str(script)]

    # The guard only turns the bug (a process that never exits) into a failure.
    done = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=120, check=False
    )

    if how == "python":
        assert (done.returncode, done.stdout) == (0, "ended: TaskFailed\n")
    else:
        assert done.returncode == 1
        assert "TaskTimeout" in done.stderr
        assert "Tool 'stuck' was still running" in done.stderr
