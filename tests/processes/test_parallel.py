"""The parallel process: dependency-driven, most urgent first, within the slots; in virtual time."""

from __future__ import annotations

import asyncio
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from crewflow import Agent, Crew, CrewflowWarning, Limit, Limits, RetryPolicy, Task, TaskStatus
from crewflow import events as ev
from crewflow._runtime.run import Run
from crewflow.exceptions import TaskFailed
from crewflow.processes import get_process
from crewflow.processes.parallel import Parallel
from crewflow.testing import Error, FunctionLLM, capture_events, run_virtual

if TYPE_CHECKING:
    from collections.abc import Mapping

    from crewflow.crew import CrewResult
    from crewflow.llm._types import LLMRequest


def first_line(request: LLMRequest) -> str:
    content = request.messages[1].content
    assert content is not None
    return content.splitlines()[0]


def prompt_of(request: LLMRequest) -> str:
    content = request.messages[1].content
    assert content is not None
    return content


def timed_llm(durations: Mapping[str, float], *, fail: Mapping[str, Any] | None = None) -> Any:
    """An LLM that takes ``durations[description]`` seconds (virtual) and answers with text;
    for descriptions in ``fail``, answers that reply instead (e.g. an `Error`)."""
    failing = dict(fail or {})

    async def answer(request: LLMRequest) -> Any:
        description = first_line(request)
        await anyio.sleep(durations[description])
        if description in failing:
            return failing[description]
        return f"output of {description}"

    return FunctionLLM(answer)


def kickoff_virtual(crew: Crew) -> tuple[CrewResult, list[ev.Event]]:
    async def main() -> tuple[CrewResult, list[ev.Event]]:
        with capture_events() as captured:
            result = await crew.kickoff()
        return result, captured.events

    return run_virtual(main)


def starts_of(events: list[ev.Event]) -> dict[str, float]:
    return {e.task: e.time for e in events if isinstance(e, ev.TaskStarted)}


def ends_of(events: list[ev.Event]) -> dict[str, float]:
    return {e.task: e.time for e in events if isinstance(e, ev.TaskFinished)}


def start_order(events: list[ev.Event]) -> list[str]:
    return [e.task for e in events if isinstance(e, ev.TaskStarted)]


# -- timing -------------------------------------------------------------------------------------


def test_a_fan_out_of_60_with_10_slots_and_an_aggregator_takes_exactly_1_4_s() -> None:
    durations = {f"leaf {i}": 0.2 for i in range(60)} | {"aggregate": 0.2}
    agent = Agent(role="W", goal="G", llm=timed_llm(durations))
    leaves = [Task(f"leaf {i}", agent=agent) for i in range(60)]
    aggregate = Task("aggregate", agent=agent, context=leaves, name="aggregate")
    crew = Crew(tasks=[*leaves, aggregate], process="parallel", max_concurrency=10)

    result, events = kickoff_virtual(crew)

    # Six waves of ten leaves, then the aggregator: 7 x 0.2 s.
    assert result.duration == pytest.approx(1.4, abs=1e-9)
    assert starts_of(events)["aggregate"] == pytest.approx(1.2, abs=1e-9)
    wave_starts = sorted(
        round(t, 6) for name, t in starts_of(events).items() if name != "aggregate"
    )
    assert wave_starts == [round(0.2 * (i // 10), 6) for i in range(60)]


def test_one_slow_branch_does_not_hold_back_an_unrelated_one() -> None:
    durations = {"slow": 1.0, "after slow": 0.1, "quick": 0.1, "then": 0.1, "last": 0.1}
    agent = Agent(role="W", goal="G", llm=timed_llm(durations))
    slow = Task("slow", agent=agent, name="slow")
    after_slow = Task("after slow", agent=agent, context=[slow], name="after_slow")
    quick = Task("quick", agent=agent, name="quick")
    then = Task("then", agent=agent, context=[quick], name="then")
    last = Task("last", agent=agent, context=[then], name="last")
    crew = Crew(tasks=[slow, after_slow, quick, then, last], process="parallel")

    result, events = kickoff_virtual(crew)
    starts, ends = starts_of(events), ends_of(events)

    # Level by level, "then" would wait for "slow" (level 1) and "last" for "after slow".
    assert starts["then"] == pytest.approx(0.1)
    assert starts["last"] == pytest.approx(0.2)
    assert ends["last"] == pytest.approx(0.3)
    assert starts["after_slow"] == pytest.approx(1.0)
    assert result.duration == pytest.approx(1.1)


def test_ties_keep_declaration_order() -> None:
    names = ["e", "c", "a", "d", "b"]
    agent = Agent(role="W", goal="G", llm=timed_llm({n: 0.1 for n in names}))
    crew = Crew(
        tasks=[Task(n, agent=agent, name=n, context=[]) for n in names],
        process="parallel",
        max_concurrency=1,
    )

    _, events = kickoff_virtual(crew)

    assert start_order(events) == names


def test_the_longest_remaining_path_goes_first_when_slots_are_scarce() -> None:
    names = ["lone", "head", "middle", "tail"]
    agent = Agent(role="W", goal="G", llm=timed_llm({n: 0.1 for n in names}))
    lone = Task("lone", agent=agent, name="lone")
    head = Task("head", agent=agent, name="head")
    middle = Task("middle", agent=agent, context=[head], name="middle")
    tail = Task("tail", agent=agent, context=[middle], name="tail")
    crew = Crew(tasks=[lone, head, middle, tail], process="parallel", max_concurrency=1)

    result, events = kickoff_virtual(crew)

    # "head" starts a chain of three: it goes before "lone", declared first but alone; then
    # "middle" (two left) beats "lone" (one left) too.
    assert start_order(events) == ["head", "middle", "lone", "tail"]
    assert result.duration == pytest.approx(0.4)


def test_task_priority_beats_path_length() -> None:
    names = ["head", "middle", "tail", "urgent", "whenever"]
    agent = Agent(role="W", goal="G", llm=timed_llm({n: 0.1 for n in names}))
    head = Task("head", agent=agent, name="head")
    middle = Task("middle", agent=agent, context=[head], name="middle")
    tail = Task("tail", agent=agent, context=[middle], name="tail")
    urgent = Task("urgent", agent=agent, name="urgent", priority=1)
    whenever = Task("whenever", agent=agent, name="whenever", priority=-1)
    crew = Crew(tasks=[head, middle, tail, urgent, whenever], process="parallel", max_concurrency=1)

    _, events = kickoff_virtual(crew)

    assert start_order(events) == ["urgent", "head", "middle", "tail", "whenever"]


def test_a_task_ready_at_the_instant_a_slot_frees_competes_for_it() -> None:
    # "gate" (0.1 s) finishes together with "blocker" (0.1 s); "gate" releases "critical"
    # (priority 5) at that very instant, and it must win the freed slot over "waiting"
    # (ready since 0 s, priority 0).
    durations = {"gate": 0.1, "blocker": 0.1, "waiting": 0.1, "critical": 0.1}
    agent = Agent(role="W", goal="G", llm=timed_llm(durations))
    gate = Task("gate", agent=agent, name="gate", priority=9)
    blocker = Task("blocker", agent=agent, name="blocker", priority=9)
    waiting = Task("waiting", agent=agent, name="waiting")
    critical = Task("critical", agent=agent, name="critical", context=[gate], priority=5)
    crew = Crew(tasks=[gate, blocker, waiting, critical], process="parallel", max_concurrency=2)

    _, events = kickoff_virtual(crew)
    starts = starts_of(events)

    assert starts["critical"] == pytest.approx(0.1)
    assert starts["waiting"] == pytest.approx(0.1)  # the other freed slot
    assert start_order(events) == ["gate", "blocker", "critical", "waiting"]


def test_max_concurrency_is_a_ceiling_and_work_conserving() -> None:
    durations = {f"t{i}": 0.1 * (1 + i % 3) for i in range(9)}
    agent = Agent(role="W", goal="G", llm=timed_llm(durations))
    crew = Crew(
        tasks=[Task(f"t{i}", agent=agent, name=f"t{i}", context=[]) for i in range(9)],
        process="parallel",
        max_concurrency=3,
    )

    result, events = kickoff_virtual(crew)

    running = most = 0
    for event in events:
        if isinstance(event, ev.TaskStarted):
            running += 1
            most = max(most, running)
        elif isinstance(event, ev.TaskFinished):
            running -= 1
    assert most == 3
    # Total work 1.8 s on 3 slots, kept busy: list-scheduling finishes in 0.7 s here.
    assert result.duration == pytest.approx(0.7)


@dataclass
class InFlight:
    now: int = 0
    most: int = 0


def counting_llm() -> tuple[FunctionLLM, InFlight]:
    """An LLM whose calls each take 0.1 s, counting how many are in flight at once."""
    calls = InFlight()

    async def answer(request: LLMRequest) -> str:
        calls.now += 1
        calls.most = max(calls.most, calls.now)
        try:
            await anyio.sleep(0.1)
        finally:
            calls.now -= 1
        return "done"

    return FunctionLLM(answer), calls


def test_a_group_limit_is_shared_by_the_agents_of_the_group() -> None:
    llm, calls = counting_llm()
    one = Agent(role="One", goal="G", llm=llm, group="g")
    two = Agent(role="Two", goal="G", llm=llm, group="g")
    tasks = [Task(f"t{i}", agent=one if i % 2 else two, context=[]) for i in range(5)]
    crew = Crew(tasks=tasks, process="parallel", limits=Limits(g=Limit(concurrency=2)))

    result, _ = kickoff_virtual(crew)

    assert calls.most == 2
    assert result.duration == pytest.approx(0.3)  # 5 calls, 2 at a time


def test_a_task_group_limits_like_an_agent_group() -> None:
    llm, calls = counting_llm()
    agent = Agent(role="W", goal="G", llm=llm)
    tasks = [Task(f"t{i}", agent=agent, group="search", context=[]) for i in range(4)]
    crew = Crew(tasks=tasks, process="parallel", limits=Limits(search=Limit(concurrency=1)))

    result, _ = kickoff_virtual(crew)

    assert calls.most == 1
    assert result.duration == pytest.approx(0.4)


# -- naming and context -------------------------------------------------------------------------


def test_parallel_is_chosen_by_name() -> None:
    agent = Agent(role="W", goal="G", llm=timed_llm({"a": 0.1}))
    crew = Crew(tasks=[Task("a", agent=agent)], process="parallel")

    result, _ = kickoff_virtual(crew)

    assert isinstance(get_process("parallel"), Parallel)
    assert Parallel.name == "parallel"
    assert crew.process_name == "parallel"
    assert result.process == "parallel"


def test_parallel_does_not_chain_undeclared_context_and_warns_when_none_is_declared() -> None:
    agent = Agent(role="W", goal="G", llm=timed_llm({"a": 0.1, "b": 0.1}))

    with pytest.warns(CrewflowWarning, match="parallel crew: none of its 2 tasks declares") as seen:
        crew = Crew(tasks=[Task("a", agent=agent), Task("b", agent=agent)], process="parallel")

    assert len(seen) == 1
    assert seen[0].filename == __file__  # it points at the Crew(...) line, not at crewflow
    message = str(seen[0].message)
    assert "context=['task_1'] on 'task_2'" in message  # how to declare it, in this crew's names
    assert "context=[] on a task that needs nothing" in message
    result, events = kickoff_virtual(crew)

    assert crew.graph.dependency_names("task_2") == ()
    assert starts_of(events) == {"task_1": 0.0, "task_2": 0.0}
    assert result.duration == pytest.approx(0.1)


@pytest.mark.parametrize("context", [[], ["a"], "the task a"], ids=["none", "a name", "a task"])
def test_any_declared_context_silences_the_warning(context: list[str] | str) -> None:
    agent = Agent(role="W", goal="G", llm="offline")
    a = Task("a", agent=agent, name="a")
    declared = [a] if context == "the task a" else context
    tasks = [a, Task("b", agent=agent, context=declared), Task("c", agent=agent)]

    with warnings.catch_warnings():
        warnings.simplefilter("error", CrewflowWarning)
        Crew(tasks=tasks, process="parallel")


def test_a_single_task_or_another_process_does_not_warn() -> None:
    agent = Agent(role="W", goal="G", llm="offline")

    with warnings.catch_warnings():
        warnings.simplefilter("error", CrewflowWarning)
        Crew(tasks=[Task("a", agent=agent)], process="parallel")
        Crew(tasks=[Task("a", agent=agent), Task("b", agent=agent)], process="sequential")


def test_the_aggregator_gets_every_leaf_output_in_declaration_order() -> None:
    # Leaves finish in reverse declaration order; the context keeps declaration order.
    durations = {f"leaf {i}": 0.1 * (6 - i) for i in range(6)} | {"aggregate": 0.1}
    llm = timed_llm(durations)
    agent = Agent(role="W", goal="G", llm=llm)
    leaves = [Task(f"leaf {i}", agent=agent, name=f"leaf_{i}") for i in range(6)]
    aggregate = Task("aggregate", agent=agent, context=leaves, name="aggregate")
    crew = Crew(tasks=[*leaves, aggregate], process="parallel")

    result, events = kickoff_virtual(crew)

    finished = [e.task for e in events if isinstance(e, ev.TaskFinished)]
    assert finished[:6] == [f"leaf_{i}" for i in reversed(range(6))]
    prompt = next(prompt_of(r) for r in llm.requests if first_line(r) == "aggregate")
    positions = [prompt.index(f'<context task="leaf_{i}">\noutput of leaf {i}\n') for i in range(6)]
    assert positions == sorted(positions)
    assert result["aggregate"].text == "output of aggregate"
    assert [o.task for o in result.outputs] == [*(f"leaf_{i}" for i in range(6)), "aggregate"]


def test_a_dependant_gets_only_its_own_dependencies_outputs() -> None:
    durations = {"a": 0.1, "b": 0.1, "c": 0.1}
    llm = timed_llm(durations)
    agent = Agent(role="W", goal="G", llm=llm)
    a = Task("a", agent=agent, name="a")
    b = Task("b", agent=agent, name="b")
    c = Task("c", agent=agent, name="c", context=[b])
    crew = Crew(tasks=[a, b, c], process="parallel")

    kickoff_virtual(crew)

    prompt = next(prompt_of(r) for r in llm.requests if first_line(r) == "c")
    assert "output of b" in prompt
    assert "output of a" not in prompt


# -- failure: stop ------------------------------------------------------------------------------


def stopping_crew(cancelled: list[str]) -> Crew:
    """``done`` finishes at 0.05 s, ``broken`` fails (HTTP 400) at 0.1 s while ``long`` (1 s)
    and ``also_long`` (1 s) are in flight; ``after_done`` (waits on ``done`` and ``long``)
    never starts."""
    durations = {"done": 0.05, "broken": 0.1, "long": 1.0, "also long": 1.0, "after done": 0.1}

    async def answer(request: LLMRequest) -> Any:
        description = first_line(request)
        try:
            await anyio.sleep(durations[description])
        except BaseException:
            cancelled.append(description)
            raise
        if description == "broken":
            return Error(400, "bad request")
        return f"output of {description}"

    agent = Agent(role="W", goal="G", llm=FunctionLLM(answer))
    done = Task("done", agent=agent, name="done")
    broken = Task("broken", agent=agent, name="broken")
    long = Task("long", agent=agent, name="long")
    also_long = Task("also long", agent=agent, name="also_long")
    after = Task("after done", agent=agent, name="after_done", context=[done, long])
    return Crew(tasks=[done, broken, long, also_long, after], process="parallel", on_failure="stop")


def test_on_failure_stop_raises_task_failed_with_the_finished_outputs() -> None:
    cancelled: list[str] = []
    crew = stopping_crew(cancelled)

    async def main() -> tuple[TaskFailed, float, list[ev.Event]]:
        loop = asyncio.get_running_loop()
        with capture_events() as captured, pytest.raises(TaskFailed) as caught:
            await crew.kickoff()
        return caught.value, loop.time(), captured.events

    error, ended_at, events = run_virtual(main)

    assert error.task == "broken"
    assert isinstance(error.cause, Exception)
    assert getattr(error.cause, "status_code", None) == 400
    assert list(error.outputs) == ["done"]
    assert error.outputs["done"].text == "output of done"
    assert ended_at == pytest.approx(0.1)  # the in-flight tasks did not run to their end
    assert sorted(cancelled) == ["also long", "long"]  # their LLM calls were cancelled
    assert "after_done" not in starts_of(events)
    finished = next(e for e in events if isinstance(e, ev.RunFinished))
    assert finished.status == "failed"


def test_stop_records_in_flight_tasks_cancelled_and_keeps_them_out_of_outputs() -> None:
    cancelled: list[str] = []
    crew = stopping_crew(cancelled)

    async def main() -> tuple[Run, TaskFailed]:
        run = Run(
            graph=crew.graph.copy(),
            process=Parallel(),
            crew_name=crew.name,
            inputs={},
            retry=RetryPolicy(),
            on_failure="stop",
        )
        with pytest.raises(TaskFailed) as caught:
            await run.drive()
        return run, caught.value

    run, error = run_virtual(main)
    status = {record.task: record.status for record in run.timeline}

    assert status == {
        "done": TaskStatus.COMPLETED,
        "broken": TaskStatus.FAILED,
        "long": TaskStatus.CANCELLED,
        "also_long": TaskStatus.CANCELLED,
        "after_done": TaskStatus.PENDING,
    }
    assert "long" not in run.outputs
    assert "long" not in error.outputs
    assert "also_long" not in error.outputs
    long_record = next(r for r in run.timeline if r.task == "long")
    assert [a.status for a in long_record.attempts] == [TaskStatus.CANCELLED]
    assert run.status == "failed"


def test_a_retryable_failure_in_one_branch_stops_the_others_only_after_its_retries() -> None:
    # The failing task is retried (500) with backoff before the run stops; meanwhile a quick
    # sibling finishes and its output is kept.
    calls: list[float] = []

    async def answer(request: LLMRequest) -> Any:
        description = first_line(request)
        if description == "flaky":
            calls.append(asyncio.get_running_loop().time())
            return Error(500, "server error")
        await anyio.sleep(0.2 if description == "quick" else 100.0)
        return f"output of {description}"

    agent = Agent(role="W", goal="G", llm=FunctionLLM(answer))
    crew = Crew(
        tasks=[
            Task("flaky", agent=agent, name="flaky", context=[]),
            Task("quick", agent=agent, name="quick", context=[]),
            Task("forever", agent=agent, name="forever", context=[]),
        ],
        process="parallel",
        retry=RetryPolicy(max_attempts=3, initial=1.0, jitter=False),
    )

    async def main() -> tuple[TaskFailed, float]:
        with pytest.raises(TaskFailed) as caught:
            await crew.kickoff()
        return caught.value, asyncio.get_running_loop().time()

    error, ended_at = run_virtual(main)

    assert calls == [0.0, 1.0, 3.0]  # backoff 1 s then 2 s, in virtual time
    assert ended_at == pytest.approx(3.0)
    assert list(error.outputs) == ["quick"]
