"""A Ray worker killed in the middle of a kickoff: Ray runs the kickoff again on another worker,
which resumes the same run from its checkpoints; nothing finished is lost or sent again, as
counted at the loopback server. And a driver that stops waiting cancels the kickoffs' tasks.
"""

from __future__ import annotations

import os
import signal
import time
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from crewflow import Agent, Crew, Task
from crewflow.events import Event, TaskStarted
from crewflow.store import RunStatus, resolve_store
from crewflow.testing import FunctionLLM, OpenAIServer

if TYPE_CHECKING:
    from pathlib import Path

    from crewflow.llm._types import LLMRequest

pytestmark = pytest.mark.slow

MARK_WAIT = 60.0
"""The most a test waits for a marker file a Ray worker writes (a bound, not a timing)."""


def executor() -> Any:
    from crewflow.executors import RayExecutor

    return RayExecutor(workers=2)


def chain(db: Path, killed: Path) -> Crew:
    """Three tasks in a row; the worker running the second is killed once (``killed`` marks
    it), after the first was checkpointed and before the second sent anything."""
    agent = Agent(role="W", goal="G", llm="openai/test-model")
    first = Task("step one of {topic}", agent=agent, name="first")
    second = Task("step two", agent=agent, context=[first], name="second")
    third = Task("step three", agent=agent, context=[second], name="third")

    def kill_once(event: Event) -> None:
        if isinstance(event, TaskStarted) and event.task == "second" and not killed.exists():
            killed.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)

    return Crew(tasks=[first, second, third], store=db, on_event=kill_once)


def sent(requests: list[Any], step: str) -> int:
    """How many requests asked for ``step`` (a task's description opens its user message)."""
    return sum(str(request.messages[1].get("content")).startswith(step) for request in requests)


def test_a_killed_worker_s_kickoff_resumes_its_run_and_sends_nothing_again(
    ray_cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db, killed = tmp_path / "runs.db", tmp_path / "killed"
    with OpenAIServer().in_thread() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-ray-test-worker-death")
        crew = chain(db, killed)
        [result] = anyio.run(
            lambda: crew.kickoff_for_each([{"topic": "kills"}], executor=executor())
        )
        requests = list(server.requests)

    assert killed.exists()  # the first worker did die, in the middle
    assert [sent(requests, step) for step in ("step one", "step two", "step three")] == [1, 1, 1]
    assert result.restored == ["first"]
    assert [o.task for o in result.outputs] == ["first", "second", "third"]
    runs = anyio.run(resolve_store(db).list_runs)  # type: ignore[union-attr]
    assert [r.run_id for r in runs] == [result.run_id]  # resumed, not started over
    assert runs[0].status == RunStatus.COMPLETED


def test_cancelling_the_driver_cancels_the_kickoffs_on_the_workers(
    ray_cluster: Any, tmp_path: Path
) -> None:
    async def hang(request: LLMRequest) -> str:
        index = str(request.messages[1].content).split()[-1]
        (tmp_path / f"started-{index}").touch()
        try:
            await anyio.sleep_forever()
        finally:
            (tmp_path / f"stopped-{index}").touch()
        return "never"

    agent = Agent(role="W", goal="G", llm=FunctionLLM(hang))
    db = tmp_path / "runs.db"
    crew = Crew(tasks=[Task("hang {n}", agent=agent)], store=db)

    async def main() -> None:
        async with anyio.create_task_group() as group:
            inputs = [{"n": i} for i in range(2)]
            group.start_soon(lambda: crew.kickoff_for_each(inputs, executor=executor()))
            for i in range(2):
                await anyio.to_thread.run_sync(wait_for_file, tmp_path / f"started-{i}")
            group.cancel_scope.cancel()

    anyio.run(main)
    # The driver's cancellation waits for the workers: both runs are recorded as cancelled,
    # their model calls interrupted, once it is through.
    runs = anyio.run(resolve_store(db).list_runs)  # type: ignore[union-attr]
    assert sorted(r.status for r in runs) == [RunStatus.CANCELLED] * 2
    assert all((tmp_path / f"stopped-{i}").exists() for i in range(2))


def wait_for_file(path: Path) -> None:
    deadline = time.monotonic() + MARK_WAIT
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {path.name} marker after {MARK_WAIT} s")
        time.sleep(0.05)


def test_a_retry_waits_for_a_lease_held_elsewhere_to_expire_then_resumes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The dead worker was on another machine: its lease holds until it expires, and the retry
    # resumes the run then (here, a lease that expires at once), never running it alongside.
    from datetime import UTC, datetime

    from crewflow.exceptions import RunInProgress
    from crewflow.executors._ray import _kickoff_or_resume
    from crewflow.store import LeaseOwner, MemoryStore

    crew = Crew(tasks=[Task("one", agent=Agent(role="W", goal="G", llm="offline"))])
    crew = crew.model_copy(update={"store": MemoryStore()})
    first = anyio.run(_kickoff_or_resume, crew, "run-1", {}, None)
    resume, tries = Crew.resume, []

    async def busy_once(self: Crew, run_id: str, **options: Any) -> Any:
        tries.append(run_id)
        if len(tries) == 1:
            owner = LeaseOwner(host="elsewhere", pid=1)
            raise RunInProgress(run_id, owner, datetime.now(UTC))
        return await resume(self, run_id, **options)

    monkeypatch.setattr(Crew, "resume", busy_once)
    again = anyio.run(_kickoff_or_resume, crew, "run-1", {}, None)

    assert first.run_id == again.run_id == "run-1"
    assert tries == ["run-1", "run-1"]
    assert again.restored == [first.outputs[0].task]


def test_a_worker_that_died_on_every_try_leaves_an_error_naming_its_run() -> None:
    from crewflow.exceptions import CrewRunError
    from crewflow.executors._ray import _died

    error = _died("run-9", RuntimeError("worker 123 died\nSIGKILL"))
    assert isinstance(error, CrewRunError)
    assert error.run_id == "run-9"
    assert "crewflow resume run-9" in str(error)
    assert "RuntimeError: SIGKILL" in str(error)
