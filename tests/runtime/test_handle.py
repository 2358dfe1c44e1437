"""`RunHandle` (``crew.start``): a background run to pause, resume, scale, cancel and watch.

Tasks here wait on anyio events the test controls (no timing), so every step is explicit.
"""

from __future__ import annotations

import gc
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import pytest

from crewflow import Agent, Crew, Task, TaskStatus
from crewflow import events as ev
from crewflow.crew import CrewResult
from crewflow.exceptions import ConfigurationError, RunCancelled, TaskFailed
from crewflow.testing import Error, FunctionLLM

if TYPE_CHECKING:
    from crewflow._runtime.handle import RunHandle
    from crewflow.llm._types import LLMRequest


def first_line(request: LLMRequest) -> str:
    content = request.messages[1].content
    assert content is not None
    return content.splitlines()[0]


class Gates:
    """An LLM whose call for task ``name`` waits until ``open(name)``; counts calls in flight."""

    def __init__(self) -> None:
        self.gates: defaultdict[str, anyio.Event] = defaultdict(anyio.Event)
        self.entered: defaultdict[str, anyio.Event] = defaultdict(anyio.Event)
        self.cancelled: list[str] = []
        self.in_flight = 0
        self.most = 0
        self.llm = FunctionLLM(self._answer)

    async def _answer(self, request: LLMRequest) -> str:
        name = first_line(request)
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        self.entered[name].set()
        try:
            await self.gates[name].wait()
        except BaseException:
            self.cancelled.append(name)
            raise
        finally:
            self.in_flight -= 1
        return f"output of {name}"

    def open(self, *names: str) -> None:
        for name in names:
            self.gates[name].set()

    async def entering(self, *names: str) -> None:
        for name in names:
            await self.entered[name].wait()

    def reset_most(self) -> None:
        self.most = self.in_flight


class Watcher:
    """An ``on_event`` sink that lets a test wait for a given event."""

    def __init__(self) -> None:
        self.events: list[ev.Event] = []
        self._arrived: defaultdict[tuple[str, str], anyio.Event] = defaultdict(anyio.Event)

    def __call__(self, event: ev.Event) -> None:
        self.events.append(event)
        self._arrived[(event.kind, getattr(event, "task", ""))].set()

    async def wait_for(self, kind: str, task: str = "") -> None:
        await self._arrived[(kind, task)].wait()

    def started(self) -> list[str]:
        return [e.task for e in self.events if isinstance(e, ev.TaskStarted)]


def status_of(handle: RunHandle) -> str:
    """The handle's status, read afresh (keeps type checkers from narrowing across calls)."""
    return handle.status


async def settle() -> None:
    """Let everything that can run, run (the runtime schedules without sleeping)."""
    await anyio.wait_all_tasks_blocked()
    for _ in range(10):
        await anyio.lowlevel.checkpoint()


def gated_crew(
    gates: Gates, names: list[str], *, watcher: Watcher | None = None, **crew: Any
) -> Crew:
    agent = Agent(role="W", goal="G", llm=gates.llm)
    crew.setdefault("process", "parallel")
    return Crew(
        tasks=[Task(name, agent=agent, name=name, context=[]) for name in names],
        on_event=watcher,
        **crew,
    )


# -- starting and results -----------------------------------------------------------------------


async def test_start_returns_at_once_and_the_run_goes_on_in_the_background() -> None:
    gates = Gates()
    handle = gated_crew(gates, ["a"]).start()

    assert not handle.done
    assert handle.status in ("pending", "running")
    with anyio.fail_after(5):
        await gates.entering("a")
    assert handle.status == "running"
    assert not handle.done
    gates.open("a")
    with anyio.fail_after(5):
        result = await handle.result()
    assert isinstance(result, CrewResult)
    assert result.text == "output of a"
    assert status_of(handle) == "completed"
    assert handle.done
    assert handle.run_id == result.run_id
    assert handle.run_id in repr(handle)


def test_start_outside_a_running_loop_is_a_configuration_error() -> None:
    crew = Crew(tasks=[Task("a", agent=Agent(role="W", goal="G", llm=FunctionLLM(lambda r: "x")))])

    with pytest.raises(ConfigurationError, match="running event loop"):
        crew.start()


async def test_awaiting_the_handle_gives_the_result_as_often_as_asked() -> None:
    crew = Crew(tasks=[Task("a", agent=Agent(role="W", goal="G", llm=FunctionLLM(lambda r: "x")))])
    handle = crew.start()

    with anyio.fail_after(5):
        awaited = await handle
        again = await handle.result()

    assert awaited.text == "x"
    assert again is awaited


async def test_start_checks_inputs_before_anything_runs() -> None:
    llm = FunctionLLM(lambda r: "x")
    crew = Crew(tasks=[Task("about {topic}", agent=Agent(role="W", goal="G", llm=llm))])

    with pytest.raises(ConfigurationError, match="topic"):
        crew.start({})
    assert llm.requests == []


async def test_a_failed_run_raises_from_result() -> None:
    crew = Crew(
        tasks=[Task("a", agent=Agent(role="W", goal="G", llm=FunctionLLM(lambda r: Error(400))))]
    )
    handle = crew.start()

    with anyio.fail_after(5), pytest.raises(TaskFailed):
        await handle.result()
    assert handle.status == "failed"


# -- pause and resume ---------------------------------------------------------------------------


async def test_pause_lets_in_flight_tasks_finish_and_starts_nothing_until_resume() -> None:
    gates, watcher = Gates(), Watcher()
    crew = gated_crew(gates, ["a", "b", "c"], watcher=watcher, max_concurrency=2)

    with anyio.fail_after(5):
        async with crew.start() as handle:
            await gates.entering("a", "b")
            handle.pause()
            assert handle.status == "paused"

            gates.open("a", "c")
            await watcher.wait_for("task_finished", "a")  # in flight: it finishes
            await settle()
            assert watcher.started() == ["a", "b"]  # a slot is free, but nothing starts
            gates.open("b")
            await watcher.wait_for("task_finished", "b")
            await settle()
            assert watcher.started() == ["a", "b"]

            handle.resume()
            assert status_of(handle) == "running"
            result = await handle.result()

    assert watcher.started() == ["a", "b", "c"]
    assert [o.text for o in result.outputs] == ["output of a", "output of b", "output of c"]
    kinds = [e.kind for e in watcher.events]
    assert kinds.index("run_paused") < kinds.index("run_resumed")
    resumed = kinds.index("run_resumed")
    c_started = next(i for i, e in enumerate(watcher.events) if getattr(e, "task", "") == "c")
    assert c_started > resumed


async def test_pause_and_resume_work_in_a_sequential_run() -> None:
    gates, watcher = Gates(), Watcher()
    crew = gated_crew(gates, ["a", "b"], watcher=watcher, process="sequential")

    with anyio.fail_after(5):
        async with crew.start() as handle:
            await gates.entering("a")
            handle.pause()
            gates.open("a", "b")
            await watcher.wait_for("task_finished", "a")
            await settle()
            assert watcher.started() == ["a"]
            handle.resume()
            await handle.result()

    assert watcher.started() == ["a", "b"]


async def test_pause_right_after_start_holds_back_every_task() -> None:
    gates, watcher = Gates(), Watcher()
    crew = gated_crew(gates, ["a"], watcher=watcher)
    gates.open("a")

    with anyio.fail_after(5):
        async with crew.start() as handle:
            handle.pause()
            await settle()
            assert watcher.started() == []
            assert handle.status == "paused"
            handle.resume()
            await handle.result()


# -- scaling ------------------------------------------------------------------------------------


async def test_set_concurrency_scales_up_and_down_while_running() -> None:
    gates, watcher = Gates(), Watcher()
    names = [f"t{i}" for i in range(6)]
    crew = gated_crew(gates, names, watcher=watcher, max_concurrency=1)

    with anyio.fail_after(5):
        async with crew.start() as handle:
            await gates.entering("t0")
            await settle()
            assert gates.in_flight == 1

            handle.set_concurrency(3)  # up: two more start at once
            await gates.entering("t1", "t2")
            await settle()
            assert gates.in_flight == 3
            assert watcher.started() == ["t0", "t1", "t2"]

            handle.set_concurrency(1)  # down: nothing new until fewer than one run
            gates.open("t0")
            await watcher.wait_for("task_finished", "t0")
            gates.open("t1")
            await watcher.wait_for("task_finished", "t1")
            await settle()
            assert watcher.started() == ["t0", "t1", "t2"]
            assert gates.in_flight == 1
            gates.open("t2")
            await gates.entering("t3")
            await settle()
            assert gates.in_flight == 1
            gates.reset_most()
            gates.open("t3", "t4", "t5")
            await handle.result()

    assert gates.most == 1  # after scaling down, one at a time
    assert watcher.started() == names


async def test_set_concurrency_below_one_is_refused() -> None:
    gates = Gates()
    crew = gated_crew(gates, ["a"])

    with anyio.fail_after(5):
        async with crew.start() as handle:
            with pytest.raises(ConfigurationError):
                handle.set_concurrency(0)
            gates.open("a")
            await handle.result()


async def test_set_concurrency_none_removes_the_limit() -> None:
    gates = Gates()
    names = [f"t{i}" for i in range(5)]
    crew = gated_crew(gates, names, max_concurrency=1)

    with anyio.fail_after(5):
        async with crew.start() as handle:
            await gates.entering("t0")
            handle.set_concurrency(None)
            await gates.entering(*names)
            assert gates.in_flight == 5
            gates.open(*names)
            await handle.result()


# -- cancelling ---------------------------------------------------------------------------------


async def test_cancel_raises_run_cancelled_with_the_finished_outputs() -> None:
    gates, watcher = Gates(), Watcher()
    crew = gated_crew(gates, ["done", "stuck", "never"], watcher=watcher, max_concurrency=2)
    handle = crew.start()

    with anyio.fail_after(5):
        await gates.entering("done", "stuck")
        gates.open("done")
        await watcher.wait_for("task_finished", "done")
        handle.pause()  # keep "never" from starting in the freed slot
        handle.cancel()
        with pytest.raises(RunCancelled) as caught:
            await handle.result()

    assert list(caught.value.outputs) == ["done"]
    assert gates.cancelled == ["stuck"]  # its LLM call was cancelled
    assert handle.status == "cancelled"
    assert handle.done
    timeline = {record.task: record for record in handle._run.timeline}
    assert timeline["done"].status is TaskStatus.COMPLETED
    assert timeline["stuck"].status is TaskStatus.CANCELLED
    assert [a.status for a in timeline["stuck"].attempts] == [TaskStatus.CANCELLED]
    assert timeline["never"].status is TaskStatus.PENDING
    finished = [e for e in watcher.events if isinstance(e, ev.RunFinished)]
    assert [f.status for f in finished] == ["cancelled"]


async def test_leaving_the_async_with_block_early_cancels_the_run() -> None:
    gates = Gates()
    crew = gated_crew(gates, ["a", "b"])

    with anyio.fail_after(5):
        async with crew.start() as handle:
            await gates.entering("a", "b")
            gates.open("a")

        assert handle.done
        assert handle.status == "cancelled"
        assert gates.cancelled == ["b"]
        with pytest.raises(RunCancelled):
            await handle.result()


async def test_an_error_in_the_async_with_block_cancels_the_run_and_propagates() -> None:
    gates = Gates()
    crew = gated_crew(gates, ["a"])

    handle = crew.start()

    async def use_and_fail() -> None:
        async with handle:
            await gates.entering("a")
            raise KeyError("caller failed")

    with anyio.fail_after(5), pytest.raises(KeyError):
        await use_and_fail()

    assert handle.status == "cancelled"
    assert gates.cancelled == ["a"]


async def test_the_async_with_block_leaves_a_finished_run_as_it_is() -> None:
    crew = Crew(tasks=[Task("a", agent=Agent(role="W", goal="G", llm=FunctionLLM(lambda r: "x")))])

    with anyio.fail_after(5):
        async with crew.start() as handle:
            result = await handle.result()

    assert handle.status == "completed"
    assert result.text == "x"


async def test_cancelling_the_caller_of_result_does_not_cancel_the_run() -> None:
    gates = Gates()
    crew = gated_crew(gates, ["a"])

    with anyio.fail_after(5):
        async with crew.start() as handle:
            await gates.entering("a")
            with anyio.move_on_after(0.01):
                await handle.result()
            assert not handle.done
            gates.open("a")
            result = await handle.result()

    assert result.text == "output of a"


async def test_cancel_right_after_start_ends_the_event_streams() -> None:
    gates = Gates()
    handle = gated_crew(gates, ["a"]).start()
    events = handle.events()

    handle.cancel()
    seen: list[str] = []
    with anyio.fail_after(5):
        async for event in events:
            seen.append(event.kind)

    assert handle.status == "cancelled"
    assert not handle._streams


# -- events -------------------------------------------------------------------------------------


async def test_events_yields_everything_up_to_run_finished_then_ends() -> None:
    gates = Gates()
    handle = gated_crew(gates, ["a", "b"]).start()
    gates.open("a", "b")
    kinds: list[str] = []

    with anyio.fail_after(5):
        async for event in handle.events():
            kinds.append(event.kind)
        result = await handle.result()

    assert kinds[0] == "run_started"
    assert kinds[-1] == "run_finished"
    assert kinds.count("task_started") == 2
    assert kinds.count("task_finished") == 2
    assert result.run_id == handle.run_id


async def test_events_start_from_the_moment_of_subscription() -> None:
    gates, watcher = Gates(), Watcher()
    crew = gated_crew(gates, ["a", "b"], watcher=watcher, max_concurrency=1)
    handle = crew.start()
    seen: list[ev.Event] = []

    with anyio.fail_after(5):
        await gates.entering("a")  # "a" started; nothing else can happen until its gate opens
        stream = handle.events()
        gates.open("a", "b")
        async for event in stream:
            seen.append(event)
        await handle.result()

    kinds = [(e.kind, getattr(e, "task", None)) for e in seen]
    assert ("run_started", None) not in kinds
    assert ("task_started", "a") not in kinds
    assert [k for k in kinds if k[0] in ("task_started", "task_finished")] == [
        ("task_finished", "a"),
        ("task_started", "b"),
        ("task_finished", "b"),
    ]
    assert kinds[-1] == ("run_finished", None)
    # Exactly the tail of what the on_event sink saw.
    assert seen == watcher.events[len(watcher.events) - len(seen) :]


async def test_two_consumers_each_get_every_event() -> None:
    gates = Gates()
    handle = gated_crew(gates, ["a", "b", "c"]).start()
    received: dict[str, list[ev.Event]] = {"one": [], "two": []}

    streams = {"one": handle.events(), "two": handle.events()}

    async def consume(label: str) -> None:
        async for event in streams[label]:
            received[label].append(event)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            group.start_soon(consume, "one")
            group.start_soon(consume, "two")
            await anyio.lowlevel.checkpoint()
            gates.open("a", "b", "c")

    assert received["one"] == received["two"]
    assert received["one"][0].kind == "run_started"
    assert received["one"][-1].kind == "run_finished"


async def test_events_after_the_run_ended_is_empty() -> None:
    crew = Crew(tasks=[Task("a", agent=Agent(role="W", goal="G", llm=FunctionLLM(lambda r: "x")))])
    handle = crew.start()
    with anyio.fail_after(5):
        await handle.result()
        assert [event async for event in handle.events()] == []


async def test_a_consumer_that_breaks_out_unsubscribes() -> None:
    gates = Gates()
    handle = gated_crew(gates, ["a", "b"], max_concurrency=1).start()
    other: list[str] = []

    async def keep_consuming() -> None:
        async for event in handle.events():
            other.append(event.kind)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            group.start_soon(keep_consuming)
            async for event in handle.events():
                if event.kind == "task_started":
                    break
            gc.collect()  # the abandoned generator is closed when collected
            while len(handle._streams) > 1:
                await anyio.lowlevel.checkpoint()
            assert len(handle._streams) == 1  # only the other consumer's
            gates.open("a", "b")
            await handle.result()

    assert other[-1] == "run_finished"
    assert not handle._streams


async def test_with_no_consumer_nothing_is_buffered() -> None:
    gates = Gates()
    handle: RunHandle = gated_crew(gates, ["a", "b"]).start()

    with anyio.fail_after(5):
        await gates.entering("a", "b")
        assert handle._streams == []
        gates.open("a", "b")
        await handle.result()

    assert handle._streams == []


async def test_events_of_a_failed_run_end_with_its_run_finished() -> None:
    crew = Crew(
        tasks=[Task("a", agent=Agent(role="W", goal="G", llm=FunctionLLM(lambda r: Error(400))))]
    )
    handle = crew.start()
    stream = handle.events()

    with anyio.fail_after(5):
        seen = [event async for event in stream]
        with pytest.raises(TaskFailed):
            await handle.result()

    assert [e.kind for e in seen][-2:] == ["task_failed", "run_finished"]
    finished = seen[-1]
    assert isinstance(finished, ev.RunFinished)
    assert finished.status == "failed"
