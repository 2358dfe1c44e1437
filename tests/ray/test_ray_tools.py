"""`@tool(executor=RayExecutor())`: a tool's calls run as Ray tasks while the agent loop stays
here; results and raises come back as a local call's would; cancelling a call cancels its task.

The tools are defined in this file, which no worker can import: they travel by value.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from crewflow import Agent, Crew, Task
from crewflow.events import ToolCalled
from crewflow.exceptions import RunCancelled, ToolError
from crewflow.testing import ScriptedLLM, Text, ToolCall, ToolCalls
from crewflow.tools import Tool, tool

pytestmark = pytest.mark.slow

MARK_WAIT = 60.0
"""The most a test waits for a marker file a Ray worker writes (a bound, not a timing)."""


def ray_tool(fn: Any) -> Tool:
    from crewflow.executors import RayExecutor

    return tool(executor=RayExecutor(tool_cpus=0.5))(fn)


def where() -> int:
    """The process the tool runs in."""
    return os.getpid()


async def where_async(offset: int) -> int:
    """The process the tool runs in, plus OFFSET, from an async function.

    Args:
        offset: Added to the pid.
    """
    await anyio.lowlevel.checkpoint()
    return os.getpid() + offset


class Unpicklable(Exception):
    def __init__(self, code: int, why: str) -> None:
        super().__init__(f"code {code}: {why}")


def fails(kind: str) -> str:
    """Raise what KIND names."""
    if kind == "value":
        raise ValueError("bad value \u00e9\ud800\x00")
    raise Unpicklable(7, "no pickle")


WEIRD = "caf\u00e9 \ud800 lone, NUL \x00, \U0001f600 " + "x" * 3_000_000


def weird() -> str:
    """Text no codec likes, megabytes of it."""
    return WEIRD


def raw_bytes() -> bytes:
    """Bytes that are not all UTF-8."""
    return b"ok \xff\xfe end"


def blocks(marks: str) -> str:
    """Block until cancelled, leaving a marker when entered and when left.

    Args:
        marks: The directory of the markers.
    """
    folder = Path(marks)
    (folder / "started").touch()
    try:
        while True:
            time.sleep(0.05)
    finally:
        (folder / "stopped").touch()


async def marked(path: Path) -> None:
    """Wait for a worker to write ``path`` (in a thread: the loop stays free)."""
    await anyio.to_thread.run_sync(wait_for_file, path)


def wait_for_file(path: Path) -> None:
    deadline = time.monotonic() + MARK_WAIT
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {path.name} marker after {MARK_WAIT} s")
        time.sleep(0.05)


def test_a_tool_runs_on_a_worker_by_value(ray_cluster: Any) -> None:
    sync, asynchronous = ray_tool(where), ray_tool(where_async)

    first = anyio.run(sync.run, "{}")
    again = anyio.run(sync.run, {})
    shifted = anyio.run(asynchronous.run, '{"offset": 1000000}')

    assert int(first) != os.getpid()
    assert int(again) != os.getpid()
    assert int(shifted) >= 1_000_000
    assert int(shifted) - 1_000_000 != os.getpid()


def test_a_raise_on_the_worker_reads_as_a_local_raise(ray_cluster: Any) -> None:
    remote, local = ray_tool(fails), Tool(fails)
    for kind in ("value", "unpicklable"):
        with pytest.raises(ToolError) as there:
            anyio.run(remote.run, {"kind": kind})
        with pytest.raises(ToolError) as here:
            anyio.run(local.run, {"kind": kind})
        assert str(there.value) == str(here.value)
        assert there.value.tool == "fails"
        assert type(there.value.__cause__).__name__ == type(here.value.__cause__).__name__


def test_invalid_arguments_are_refused_before_anything_is_sent(ray_cluster: Any) -> None:
    remote = ray_tool(where_async)
    with pytest.raises(ToolError, match="invalid arguments for tool 'where_async'"):
        anyio.run(remote.run, {"offset": "not a number"})
    assert remote.executor is not None
    assert remote.executor._tools == {}  # type: ignore[attr-defined]


def test_any_text_a_remote_tool_returns_is_data(ray_cluster: Any) -> None:
    assert anyio.run(ray_tool(weird).run, {}) == anyio.run(Tool(weird).run, {}) == WEIRD
    assert anyio.run(ray_tool(raw_bytes).run, {}) == "ok \ufffd\ufffd end"


def test_cancelling_a_call_cancels_its_ray_task(ray_cluster: Any, tmp_path: Path) -> None:
    remote = ray_tool(blocks)

    async def main() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(remote.run, {"marks": str(tmp_path)})
            await marked(tmp_path / "started")
            group.cancel_scope.cancel()
        await marked(tmp_path / "stopped")  # the function was interrupted in its worker

    anyio.run(main)


def test_an_agent_uses_a_remote_tool_and_a_cancelled_run_cancels_it(
    ray_cluster: Any, tmp_path: Path
) -> None:
    seen: list[ToolCalled] = []
    llm = ScriptedLLM([ToolCalls([ToolCall("where", {})]), Text("done")])
    agent = Agent(role="W", goal="G", llm=llm, tools=[ray_tool(where)])
    crew = Crew(
        tasks=[Task("find the worker", agent=agent)],
        store=None,
        on_event=lambda e: seen.append(e) if isinstance(e, ToolCalled) else None,
    )

    result = anyio.run(crew.kickoff)

    assert result.text == "done"
    reply = llm.requests[1].messages[-1].content
    assert reply is not None
    assert reply.isdigit()
    assert int(reply) != os.getpid()
    assert [(e.tool, e.ok) for e in seen] == [("where", True)]

    stuck = ScriptedLLM([ToolCalls([ToolCall("blocks", {"marks": str(tmp_path)})])])
    blocked = Agent(role="W", goal="G", llm=stuck, tools=[ray_tool(blocks)])
    crew = Crew(tasks=[Task("block", agent=blocked)], store=None)

    async def cancelled() -> None:
        handle = crew.start()
        await marked(tmp_path / "started")
        handle.cancel()
        with pytest.raises(RunCancelled):
            await handle.result()
        await marked(tmp_path / "stopped")

    anyio.run(cancelled)


def test_a_crew_holding_a_remote_tool_runs_on_ray_too(ray_cluster: Any, tmp_path: Path) -> None:
    from crewflow.executors import RayExecutor

    llm = ScriptedLLM([ToolCalls([ToolCall("where", {})]), Text("done")])
    agent = Agent(role="W", goal="G", llm=llm, tools=[ray_tool(where)])
    crew = Crew(tasks=[Task("find the worker", agent=agent)], store=tmp_path / "runs.db")

    [result] = anyio.run(lambda: crew.kickoff_for_each([{}], executor=RayExecutor(workers=2)))

    assert result.text == "done"  # the kickoff's worker called the tool as a Ray task
