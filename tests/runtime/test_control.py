"""Control edge cases: pausing before anything started, cancelling before the run began, and
timeline times that agree with the run's clock."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from crewflow import Agent, Crew, Task
from crewflow.exceptions import RunCancelled
from crewflow.llm import OfflineLLM
from crewflow.testing import capture_events, run_virtual


def fanout(count: int, **crew: object) -> Crew:
    agent = Agent(role="Worker", goal="Work", llm=OfflineLLM(latency=0.01))
    tasks = [Task(f"Task {i}", agent=agent, name=f"t{i}", context=[]) for i in range(count)]
    return Crew(tasks=tasks, process="parallel", **crew)  # type: ignore[arg-type]


async def test_a_pause_right_after_start_holds_every_task_even_without_a_concurrency_cap() -> None:
    crew = fanout(5)
    with capture_events() as captured:
        handle = crew.start()
        handle.pause()
        for _ in range(20):  # let the dispatcher hand out every slot
            await anyio.lowlevel.checkpoint()
        assert "task_started" not in captured.kinds
        assert handle.status == "paused"
        handle.resume()
        with anyio.fail_after(10):
            result = await handle.result()
    assert len(result.outputs) == 5
    assert captured.kinds.index("run_resumed") < captured.kinds.index("task_started")


async def test_cancelling_before_the_run_began_reports_cancelled() -> None:
    handle = fanout(2).start()
    handle.cancel()

    with pytest.raises(RunCancelled):
        await handle.result()
    assert handle.status == "cancelled"


def test_timeline_times_agree_with_the_runs_clock() -> None:
    crew = fanout(4, max_concurrency=2)

    result = run_virtual(crew.kickoff)

    assert result.duration == pytest.approx(0.02)
    for record in result.timeline:
        assert record.start is not None
        assert record.end is not None
        assert (record.end - record.start).total_seconds() == pytest.approx(record.duration)
        assert result.start <= record.start <= record.end <= result.end
    second_wave = [r for r in result.timeline if r.task in ("t2", "t3")]
    assert all((r.start - result.start).total_seconds() == pytest.approx(0.01) for r in second_wave)
