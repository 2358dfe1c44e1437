"""Properties of the scheduler on random task graphs, in virtual time.

Every example builds a random DAG (edges only from earlier to later tasks), gives each task a
duration of 1..9 hundredths of a second (an LLM that sleeps that long), runs the crew on a
`VirtualTimeLoop` and checks the run's `TaskStarted` / `TaskFinished` events. Times are
compared in whole hundredths ("ticks"): every instant of such a run is a sum of durations, so
rounding removes only float noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crewflow import Agent, Crew, Limit, Limits, Task
from crewflow import events as ev
from crewflow.testing import FunctionLLM, run_virtual

if TYPE_CHECKING:
    from crewflow.crew import CrewResult
    from crewflow.llm._types import LLMRequest

TICK = 0.01
PROPERTY_SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@dataclass(frozen=True)
class Case:
    """A random crew: dependencies (indexes of earlier tasks), durations in ticks, priorities."""

    deps: tuple[tuple[int, ...], ...]
    durations: tuple[int, ...]
    priorities: tuple[int, ...] | None
    max_concurrency: int | None

    @property
    def size(self) -> int:
        return len(self.deps)


@st.composite
def cases(draw: st.DrawFn, *, max_tasks: int = 25, unbounded: bool = False) -> Case:
    size = draw(st.integers(1, max_tasks))
    deps = tuple(
        tuple(sorted(draw(st.sets(st.integers(0, i - 1), max_size=min(i, 4))))) if i else ()
        for i in range(size)
    )
    durations = tuple(draw(st.lists(st.integers(1, 9), min_size=size, max_size=size)))
    priorities = draw(
        st.none() | st.lists(st.integers(-2, 2), min_size=size, max_size=size).map(tuple)
    )
    cap = None if unbounded else draw(st.none() | st.integers(1, 5))
    return Case(deps, durations, priorities, cap)


@dataclass
class Observed:
    """What one run showed: the crew, its result and the task events in emission order."""

    crew: Crew
    result: CrewResult
    events: list[ev.Event]
    max_group_in_flight: int = 0

    def ticks(self, kind: type[ev.TaskStarted | ev.TaskFinished]) -> dict[str, list[int]]:
        found: dict[str, list[int]] = {}
        for event in self.events:
            if isinstance(event, kind):
                found.setdefault(event.task, []).append(round(event.time / TICK))
        return found

    @property
    def starts(self) -> dict[str, int]:
        return {name: ticks[0] for name, ticks in self.ticks(ev.TaskStarted).items()}

    @property
    def ends(self) -> dict[str, int]:
        return {name: ticks[0] for name, ticks in self.ticks(ev.TaskFinished).items()}


def first_line(request: LLMRequest) -> str:
    content = request.messages[1].content
    assert content is not None
    return content.splitlines()[0]


def run_case(
    case: Case,
    *,
    process: str = "parallel",
    grouped: tuple[bool, ...] | None = None,
    group_limit: int = 2,
) -> Observed:
    """Kick the case's crew off on a virtual-time loop and collect its events.

    With ``grouped``, task ``i`` is done by an agent in limit group ``"g"`` when
    ``grouped[i]``, and the crew limits that group to ``group_limit`` calls at once.
    """
    in_flight = 0
    most = 0

    async def answer(request: LLMRequest) -> str:
        description = first_line(request)
        await anyio.sleep(case.durations[int(description.split()[1])] * TICK)
        return f"output of {description}"

    async def grouped_answer(request: LLMRequest) -> str:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        try:
            return await answer(request)
        finally:
            in_flight -= 1

    async def main() -> Observed:
        free = Agent(role="Free", goal="Work", llm=FunctionLLM(answer))
        limited = Agent(role="Limited", goal="Work", llm=FunctionLLM(grouped_answer), group="g")
        tasks: list[Task] = []
        for i in range(case.size):
            extra: dict[str, Any] = {}
            if case.priorities is not None:
                extra["priority"] = case.priorities[i]
            agent = limited if grouped is not None and grouped[i] else free
            tasks.append(
                Task(
                    f"task {i}",
                    agent=agent,
                    name=f"t{i}",
                    context=[tasks[d] for d in case.deps[i]],
                    **extra,
                )
            )
        events: list[ev.Event] = []
        crew = Crew(
            tasks=tasks,
            process=process,
            max_concurrency=case.max_concurrency,
            on_event=events.append,
            limits=Limits(g=Limit(concurrency=group_limit)) if grouped is not None else None,
            # The properties are about scheduling with the durations given here: no store, so
            # no durations measured by earlier examples (the store's own tests cover that).
            store=None,
        )
        result = await crew.kickoff()
        return Observed(crew, result, events)

    observed = run_virtual(main)
    observed.max_group_in_flight = most
    return observed


def names(case: Case) -> list[str]:
    return [f"t{i}" for i in range(case.size)]


def ready_ticks(case: Case, ends: dict[str, int]) -> dict[str, int]:
    """When each task became ready: the instant its last dependency ended (0 for roots)."""
    return {
        f"t{i}": max((ends[f"t{d}"] for d in case.deps[i]), default=0) for i in range(case.size)
    }


def critical_path(case: Case) -> int:
    finish: list[int] = []
    for i in range(case.size):
        finish.append(case.durations[i] + max((finish[d] for d in case.deps[i]), default=0))
    return max(finish)


def check_each_task_ran_once(
    case: Case, observed: Observed, *, exact_durations: bool = True
) -> None:
    started, finished = observed.ticks(ev.TaskStarted), observed.ticks(ev.TaskFinished)
    assert sorted(started) == sorted(names(case))
    assert sorted(finished) == sorted(names(case))
    assert all(len(ticks) == 1 for ticks in started.values()), started
    assert all(len(ticks) == 1 for ticks in finished.values()), finished
    assert [o.task for o in observed.result.outputs] == names(case)
    for i, name in enumerate(names(case)):
        # Each task took exactly its own duration: nothing ran it twice or cut it short
        # (unless it waited for a limit first).
        took = observed.ends[name] - observed.starts[name]
        if not exact_durations:
            assert took >= case.durations[i]
            continue
        assert took == case.durations[i]


def check_dependencies_end_before_dependants_start(case: Case, observed: Observed) -> None:
    starts, ends = observed.starts, observed.ends
    for i in range(case.size):
        for d in case.deps[i]:
            assert ends[f"t{d}"] <= starts[f"t{i}"], (f"t{d}", f"t{i}")
    # And in emission order, not just in time: the dependant's start comes after the
    # dependency's finish event.
    position = {
        (type(event), event.task): index
        for index, event in enumerate(observed.events)
        if isinstance(event, ev.TaskStarted | ev.TaskFinished)
    }
    for i in range(case.size):
        for d in case.deps[i]:
            assert position[(ev.TaskFinished, f"t{d}")] < position[(ev.TaskStarted, f"t{i}")]


def max_running(observed: Observed) -> int:
    running = most = 0
    for event in observed.events:
        if isinstance(event, ev.TaskStarted):
            running += 1
            most = max(most, running)
        elif isinstance(event, ev.TaskFinished):
            running -= 1
    return most


def running_after(observed: Observed, tick: int) -> set[str]:
    """The tasks running just after everything that happened at ``tick``."""
    starts, ends = observed.starts, observed.ends
    return {name for name in starts if starts[name] <= tick < ends[name]}


def check_work_conserving(case: Case, observed: Observed) -> None:
    starts, ends = observed.starts, observed.ends
    ready = ready_ticks(case, ends)
    for tick in sorted({*starts.values(), *ends.values()}):
        waiting = [name for name in names(case) if ready[name] <= tick < starts[name]]
        if waiting:
            busy = running_after(observed, tick)
            assert case.max_concurrency is not None, (tick, waiting)
            assert len(busy) == case.max_concurrency, (tick, waiting, sorted(busy))


def priority_keys(case: Case, crew: Crew) -> dict[str, tuple[int, float, int]]:
    remaining = crew.graph.remaining_paths()
    return {
        f"t{i}": (
            case.priorities[i] if case.priorities is not None else 0,
            remaining[f"t{i}"],
            -i,
        )
        for i in range(case.size)
    }


def check_priority_order(case: Case, observed: Observed, *, same_instant: bool) -> None:
    """A task that starts while another, ready since strictly earlier (or, with
    ``same_instant``, at the same instant), still waits, has the higher key."""
    starts, ends = observed.starts, observed.ends
    ready = ready_ticks(case, ends)
    key = priority_keys(case, observed.crew)
    for started, tick in starts.items():
        for waiting in names(case):
            was_ready = ready[waiting] <= tick if same_instant else ready[waiting] < tick
            if waiting != started and was_ready and starts[waiting] > tick:
                assert key[started] > key[waiting], (started, waiting, tick)


# -- parallel -----------------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(cases())
def test_parallel_respects_dependencies_limits_and_priorities(case: Case) -> None:
    observed = run_case(case)

    check_each_task_ran_once(case, observed)
    check_dependencies_end_before_dependants_start(case, observed)
    assert max_running(observed) <= (case.max_concurrency or case.size)
    check_work_conserving(case, observed)
    check_priority_order(case, observed, same_instant=False)


@PROPERTY_SETTINGS
@given(cases())
def test_a_task_ready_at_the_instant_a_slot_frees_competes_for_it_on_priority(
    case: Case,
) -> None:
    observed = run_case(case)

    check_priority_order(case, observed, same_instant=True)


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(cases(unbounded=True))
def test_unbounded_parallel_takes_exactly_the_critical_path(case: Case) -> None:
    observed = run_case(case)

    check_each_task_ran_once(case, observed)
    ends = observed.ends
    ready = ready_ticks(case, ends)
    # Dependency-driven: each task starts the instant its own dependencies are done.
    assert observed.starts == ready
    assert round(observed.result.duration / TICK) == critical_path(case)
    assert max(ends.values()) == critical_path(case)


@st.composite
def grouped_cases(draw: st.DrawFn) -> tuple[Case, tuple[bool, ...]]:
    case = draw(cases(max_tasks=20))
    grouped = tuple(draw(st.lists(st.booleans(), min_size=case.size, max_size=case.size)))
    return case, grouped


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(grouped_cases())
def test_a_group_limit_caps_the_calls_in_flight_across_agents_of_the_group(
    drawn: tuple[Case, tuple[bool, ...]],
) -> None:
    case, grouped = drawn

    observed = run_case(case, grouped=grouped, group_limit=2)

    assert observed.max_group_in_flight <= 2
    check_each_task_ran_once(case, observed, exact_durations=False)
    check_dependencies_end_before_dependants_start(case, observed)
    assert max_running(observed) <= (case.max_concurrency or case.size)


# -- sequential ---------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(cases(max_tasks=15))
def test_sequential_runs_one_task_at_a_time_in_list_order(case: Case) -> None:
    observed = run_case(case, process="sequential")

    check_each_task_ran_once(case, observed)
    check_dependencies_end_before_dependants_start(case, observed)
    assert max_running(observed) == 1
    started = [e.task for e in observed.events if isinstance(e, ev.TaskStarted)]
    assert started == names(case)
    starts, ends = observed.starts, observed.ends
    for before, after in zip(names(case), names(case)[1:], strict=False):
        assert starts[after] == ends[before]  # back to back, never overlapping, never idle
    assert round(observed.result.duration / TICK) == sum(case.durations)
