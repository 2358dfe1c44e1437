"""`ProcessContext.run_ready()`: the shared dispatcher, with a graph that grows while it runs."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any, ClassVar

import anyio
import pytest

from crewflow import Agent, Crew, Task
from crewflow import events as ev
from crewflow.exceptions import CrewRunError, RunCancelled
from crewflow.processes import Process, ProcessContext
from crewflow.store import MemoryStore
from crewflow.testing import FunctionLLM, capture_events, run_virtual

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from crewflow.crew import CrewResult
    from crewflow.llm._types import LLMRequest
    from crewflow.store import OutputRow


def first_word(request: LLMRequest) -> str:
    content = request.messages[1].content
    assert content is not None
    return content.split()[0]


class Calls:
    """An LLM whose every task takes one virtual second, counting the calls per task; a task
    named in ``hold`` waits for its event first."""

    def __init__(self) -> None:
        self.count: dict[str, int] = {}
        self.hold: dict[str, anyio.Event] = {}
        self.running = 0
        self.most = 0

    async def answer(self, request: LLMRequest) -> str:
        name = first_word(request)
        self.count[name] = self.count.get(name, 0) + 1
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            if name in self.hold:
                await self.hold[name].wait()
            await anyio.sleep(1)
        finally:
            self.running -= 1
        return f"output of {name}"


def crew_with(
    calls: Calls,
    names: list[str],
    body: Callable[[ProcessContext, Agent], Awaitable[None]],
    **options: object,
) -> Crew:
    agent = Agent(role="Worker", goal="Work", llm=FunctionLLM(calls.answer))

    class Custom(Process):
        name: ClassVar[str] = "custom"

        async def run(self, ctx: ProcessContext) -> None:
            await body(ctx, agent)

    tasks = [Task(f"{name} task", agent=agent, name=name, context=[]) for name in names]
    return Crew(tasks=tasks, process=Custom(), store=None, **options)  # type: ignore[arg-type]


def kickoff(crew: Crew) -> tuple[CrewResult, list[ev.Event]]:
    async def main() -> tuple[CrewResult, list[ev.Event]]:
        with capture_events() as captured:
            result = await crew.kickoff()
        return result, captured.events

    return run_virtual(main)


def start_order(events: list[ev.Event]) -> list[str]:
    return [e.task for e in events if isinstance(e, ev.TaskStarted)]


def test_tasks_added_while_it_runs_are_dispatched_before_it_returns() -> None:
    calls = Calls()
    calls.hold["held"] = anyio.Event()
    after: list[str] = []

    async def body(ctx: ProcessContext, agent: Agent) -> None:
        async with anyio.create_task_group() as group:

            async def dispatch() -> None:
                await ctx.run_ready()
                after.extend(sorted(ctx.outputs))  # what had ended when it returned

            group.start_soon(dispatch)
            await anyio.sleep(0.5)  # "free" is running; "held" waits for the plan
            await ctx.add_tasks([Task("step.1 task", name="step.1", agent=agent, context=["free"])])
            calls.hold["held"].set()

    result, events = kickoff(crew_with(calls, ["free", "held"], body))

    assert after == ["free", "held", "step.1"]
    assert [o.task for o in result.internal] == ["step.1"]
    assert calls.count == {"free": 1, "held": 1, "step.1": 1}
    added = [e for e in events if isinstance(e, ev.TaskAdded)]
    assert [(e.task, e.step, e.depends_on) for e in added] == [("step.1", "task", ["free"])]


def test_it_may_be_called_again_after_more_tasks_are_added() -> None:
    calls = Calls()

    async def body(ctx: ProcessContext, agent: Agent) -> None:
        await ctx.run_ready()
        assert sorted(ctx.outputs) == ["a", "b"]
        await ctx.add_tasks([Task("more task", name="more", agent=agent, context=["a", "b"])])
        assert [ctx.graph.name_of(task) for task in ctx.ready()] == ["more"]
        await ctx.run_ready()

    result, _ = kickoff(crew_with(calls, ["a", "b"], body))

    assert result["more"].text == "output of more"
    assert calls.count == {"a": 1, "b": 1, "more": 1}
    assert result.duration == 2.0  # a and b together, then more


def test_a_task_started_directly_is_never_dispatched_twice() -> None:
    calls = Calls()

    async def body(ctx: ProcessContext, agent: Agent) -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(ctx.execute, ctx.graph.task("b"))
            group.start_soon(ctx.run_ready)

    result, events = kickoff(crew_with(calls, ["a", "b", "c"], body))

    assert calls.count == {"a": 1, "b": 1, "c": 1}
    assert sorted(start_order(events)) == ["a", "b", "c"]
    assert len(result.outputs) == 3


def test_priorities_are_recomputed_when_tasks_are_added() -> None:
    # One slot. x goes first (declaration order); while it runs, a plan hangs a chain of two
    # steps after z, so z's remaining path is now the longest and z goes before y.
    calls = Calls()

    async def body(ctx: ProcessContext, agent: Agent) -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(ctx.run_ready)
            await anyio.sleep(0.5)
            await ctx.add_tasks(
                [
                    Task("p1 task", name="p.1", agent=agent, context=["z"]),
                    Task("p2 task", name="p.2", agent=agent, context=["p.1"]),
                ]
            )

    _, events = kickoff(crew_with(calls, ["x", "y", "z"], body, max_concurrency=1))

    assert start_order(events) == ["x", "z", "p.1", "y", "p.2"]
    assert calls.most == 1  # the slots hold for added tasks too


def test_without_a_plan_the_declaration_order_breaks_ties() -> None:
    calls = Calls()

    async def body(ctx: ProcessContext, agent: Agent) -> None:
        await ctx.run_ready()

    _, events = kickoff(crew_with(calls, ["x", "y", "z"], body, max_concurrency=1))

    assert start_order(events) == ["x", "y", "z"]


def test_two_dispatches_at_once_are_a_process_bug() -> None:
    calls = Calls()

    async def body(ctx: ProcessContext, agent: Agent) -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(ctx.run_ready)
            group.start_soon(ctx.run_ready)

    with pytest.raises(CrewRunError, match="run_ready\\(\\) is already running"):
        kickoff(crew_with(calls, ["a"], body))


def test_a_cancelled_kickoff_starts_none_of_the_dependants_of_its_cancelled_tasks() -> None:
    # A kickoff cancelled while "a" runs records "a" cancelled. "b" needs it, and must never
    # start: here the dispatcher is still running when the cancellation reaches "a" ("d" and
    # "c" ended in the same loop turn as the cancellation, which anyio then delivers to the
    # dispatcher one turn later), and it started "b", which failed the run with "started task
    # 'b' before its dependencies ['a'] finished" instead of the kickoff being cancelled.
    scopes: list[anyio.CancelScope] = []
    asked: list[str] = []

    async def answer(request: LLMRequest) -> str:
        name = first_word(request)
        asked.append(name)
        if name == "a":
            await anyio.Event().wait()  # still running when the kickoff is cancelled
        await anyio.sleep(1)
        if name == "c":
            scopes[0].cancel()
        return f"output of {name}"

    agent = Agent(role="Worker", goal="Work", llm=FunctionLLM(answer))
    a = Task("a task", agent=agent, name="a", context=[])
    b = Task("b task", agent=agent, name="b", context=[a])
    d = Task("d task", agent=agent, name="d", context=[])
    c = Task("c task", agent=agent, name="c", context=[])
    crew = Crew(tasks=[a, d, c, b], process="parallel", store=None)

    async def main() -> list[ev.Event]:
        with capture_events() as captured, anyio.CancelScope() as scope:
            scopes.append(scope)
            await crew.kickoff()
        return captured.events

    events = run_virtual(main)

    assert scopes[0].cancelled_caught
    assert sorted(asked) == ["a", "c", "d"]
    # Nor is "a" given up as cancelled by the process, "b" skipped as needing it.
    assert [e for e in events if isinstance(e, ev.TaskSkipped)] == []


async def test_a_task_is_not_ready_while_its_dependency_s_output_is_checkpointed() -> None:
    # "a" has finished, and its checkpoint is being written: "b" cannot read a's output yet,
    # so it is not ready (it was, and executing it then failed the run).
    writing, written = anyio.Event(), anyio.Event()
    seen: dict[str, list[str]] = {}

    class Slow(MemoryStore):
        async def save_task(
            self, output: OutputRow, attempts: Any = (), *, lease: str | None = None
        ) -> None:
            if output.task == "a":
                writing.set()
                await written.wait()
            await super().save_task(output, attempts, lease=lease)

    async def body(ctx: ProcessContext, agent: Agent) -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(ctx.execute, ctx.graph.task("a"))
            await writing.wait()
            seen["while written"] = [ctx.graph.name_of(task) for task in ctx.ready()]
            written.set()
        seen["once written"] = [ctx.graph.name_of(task) for task in ctx.ready()]
        await ctx.run_ready()

    agent = Agent(role="Worker", goal="Work", llm=FunctionLLM(lambda request: "done"))

    class Custom(Process):
        name: ClassVar[str] = "custom"

        async def run(self, ctx: ProcessContext) -> None:
            await body(ctx, agent)

    a = Task("a task", agent=agent, name="a", context=[])
    b = Task("b task", agent=agent, name="b", context=[a])
    crew = Crew(tasks=[a, b], process=Custom(), store=Slow())
    result = await crew.kickoff()

    assert seen == {"while written": [], "once written": ["b"]}
    assert [o.task for o in result.outputs] == ["a", "b"]


# -- a task whose execution the process cancels, while the run goes on ------------------------


def deadline_crew(
    calls: Calls, body: Callable[[ProcessContext], Awaitable[None]], **options: object
) -> Crew:
    """a <- b <- c, and d on its own; "a" never answers (``calls.hold``)."""
    calls.hold["a"] = anyio.Event()
    agent = Agent(role="Worker", goal="Work", llm=FunctionLLM(calls.answer))

    class Deadline(Process):
        name: ClassVar[str] = "deadline"

        async def run(self, ctx: ProcessContext) -> None:
            await body(ctx)

    a = Task("a task", agent=agent, name="a", context=[])
    b = Task("b task", agent=agent, name="b", context=[a])
    c = Task("c task", agent=agent, name="c", context=[b])
    d = Task("d task", agent=agent, name="d", context=[])
    return Crew(tasks=[a, b, c, d], process=Deadline(), **options)  # type: ignore[arg-type]


async def execute_within(
    ctx: ProcessContext, name: str, seconds: float, how: str = "anyio"
) -> None:
    if how == "anyio":
        with anyio.move_on_after(seconds):
            await ctx.execute(ctx.graph.task(name))
    else:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await ctx.execute(ctx.graph.task(name))


@pytest.mark.parametrize("how", ["anyio", "asyncio"])
def test_the_dependants_of_a_task_the_process_cancelled_are_skipped_by_the_dispatcher(
    how: str,
) -> None:
    # A deadline of the process's own cancels "a"; the run goes on. Its dispatcher found
    # nothing ready and raised "run_ready() found nothing ready ... ['b', 'c']".
    calls = Calls()

    async def body(ctx: ProcessContext) -> None:
        await execute_within(ctx, "a", 5, how)
        await ctx.run_ready()

    result, events = kickoff(deadline_crew(calls, body, store=None))

    assert [output.task for output in result.outputs] == ["d"]
    assert result.skipped == {
        "a": "cancelled by process 'deadline' while the run went on",
        "b": "needs 'a', which was cancelled",
        "c": "needs 'b', which was skipped",
    }
    statuses = {record.task: record.status.value for record in result.timeline}
    assert statuses == {"a": "cancelled", "b": "skipped", "c": "skipped", "d": "completed"}
    assert [len(record.attempts) for record in result.timeline if record.task == "a"] == [1]
    assert calls.count == {"a": 1, "d": 1}
    skips = [e for e in events if isinstance(e, ev.TaskSkipped)]
    assert [(e.task, e.because) for e in skips] == [("a", []), ("b", ["a"]), ("c", ["b"])]
    assert result.output.task == "d"


def test_a_dependant_the_process_executes_itself_is_skipped_and_ready_lists_it() -> None:
    # Executing "b" failed the run with "started task 'b' before its dependencies ['a']
    # finished"; ready() never listed it.
    calls = Calls()
    seen: dict[str, object] = {}

    async def body(ctx: ProcessContext) -> None:
        await execute_within(ctx, "a", 5)
        seen["ready"] = [ctx.graph.name_of(task) for task in ctx.ready()]
        seen["b"] = await ctx.execute(ctx.graph.task("b"))
        seen["a again"] = await ctx.execute(ctx.graph.task("a"))
        for task in ctx.ready():
            await ctx.execute(task)

    result, _ = kickoff(deadline_crew(calls, body, store=None))

    assert seen == {"ready": ["b", "d"], "b": None, "a again": None}
    assert result.skipped["b"] == "needs 'a', which was cancelled"
    assert list(result.skipped) == ["a", "b", "c"]
    assert calls.count == {"a": 1, "d": 1}


def test_a_task_the_process_cancelled_is_recorded_as_skipped_with_its_attempt() -> None:
    store = MemoryStore()
    calls = Calls()

    async def body(ctx: ProcessContext) -> None:
        await execute_within(ctx, "a", 5)
        await ctx.run_ready()

    result, _ = kickoff(deadline_crew(calls, body, store=store))

    async def read() -> tuple[dict[str, str], dict[str, str]]:
        decisions = await store.decisions(result.run_id)
        attempts = await store.attempts(result.run_id)
        return (
            {d.task: d.reason for d in decisions if d.kind == "skip"},
            {row.task: row.status.value for row in attempts},
        )

    skips, attempts = run_virtual(read)
    assert skips == result.skipped
    assert attempts == {"a": "cancelled", "d": "completed"}


def test_a_task_cancelled_while_it_waited_for_a_slot_may_be_executed_again() -> None:
    # "d" holds the only slot; "x", waiting for it, is cancelled before it started: it has
    # not ended, so the process can run it later.
    calls = Calls()
    calls.hold["d"] = anyio.Event()
    seen: dict[str, object] = {}

    async def body(ctx: ProcessContext, agent: Agent) -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(ctx.execute, ctx.graph.task("d"))
            await anyio.sleep(0.5)
            with anyio.move_on_after(1):
                await ctx.execute(ctx.graph.task("x"))
            seen["after the deadline"] = [ctx.graph.name_of(task) for task in ctx.ready()]
            calls.hold["d"].set()
        seen["x"] = await ctx.execute(ctx.graph.task("x"))

    result, _ = kickoff(crew_with(calls, ["d", "x"], body, max_concurrency=1))

    assert seen["after the deadline"] == ["x"]
    assert [output.task for output in result.outputs] == ["d", "x"]
    assert result.skipped == {}
    assert calls.count == {"d": 1, "x": 1}


def test_run_ready_may_be_called_again_after_a_deadline_of_the_process_cancelled_it() -> None:
    # The second call waited for ever: the first one's cancelled workers still counted as in
    # flight.
    calls = Calls()
    calls.hold["x2"] = anyio.Event()

    async def body(ctx: ProcessContext, agent: Agent) -> None:
        with anyio.move_on_after(1.5):
            await ctx.run_ready()
        with anyio.fail_after(100):
            await ctx.run_ready()

    result, _ = kickoff(crew_with(calls, ["x1", "x2", "x3", "x4"], body, max_concurrency=1))

    assert [output.task for output in result.outputs] == ["x1", "x3", "x4"]
    assert result.skipped == {"x2": "cancelled by process 'custom' while the run went on"}
    assert calls.count == {"x1": 1, "x2": 1, "x3": 1, "x4": 1}
    assert calls.most == 1


@pytest.mark.parametrize("how", ["cancel scope", "handle.cancel()"])
def test_a_task_cancelled_because_the_kickoff_is_cancelled_is_never_given_up(how: str) -> None:
    # The process asks for what is ready while the kickoff's cancellation unwinds it: "a" was
    # cancelled by that, not by the process, so "b" is not ready and nothing is skipped. The
    # handle cancels its task (asyncio's own cancellation, as asyncio.timeout does), which no
    # cancel scope shows until it reaches one.
    stop: list[Callable[[], object]] = []
    seen: dict[str, list[str]] = {}

    async def answer(request: LLMRequest) -> str:
        stop[0]()
        await anyio.Event().wait()
        return "never"

    agent = Agent(role="Worker", goal="Work", llm=FunctionLLM(answer))

    class Unwinding(Process):
        name: ClassVar[str] = "unwinding"

        async def run(self, ctx: ProcessContext) -> None:
            try:
                await ctx.execute(ctx.graph.task("a"))
            finally:
                seen["ready"] = [ctx.graph.name_of(task) for task in ctx.ready()]

    a = Task("a task", agent=agent, name="a", context=[])
    b = Task("b task", agent=agent, name="b", context=[a])
    crew = Crew(tasks=[a, b], process=Unwinding(), store=None)

    async def main() -> list[ev.Event]:
        with capture_events() as captured, anyio.CancelScope() as scope:
            if how == "cancel scope":
                stop.append(scope.cancel)
                await crew.kickoff()
            else:
                handle = crew.start()
                stop.append(handle.cancel)
                with pytest.raises(RunCancelled):
                    await handle.result()
        assert how != "cancel scope" or scope.cancelled_caught
        return captured.events

    events = run_virtual(main)

    assert seen == {"ready": []}
    assert [e for e in events if isinstance(e, ev.TaskSkipped)] == []
