"""`Run`: the per-task layer (attempts, timeouts, records, events) and what processes rely on."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import anyio
import anyio.lowlevel
import pytest

from crewflow import Agent, Crew, RetryPolicy, Task, TaskStatus
from crewflow import events as ev
from crewflow._records import TaskKind
from crewflow._runtime.clock import SystemClock, current_clock, reset_clock, set_clock
from crewflow._runtime.run import Run
from crewflow.exceptions import (
    ConfigurationError,
    CrewRunError,
    InvalidPlan,
    LLMError,
    OutputValidationError,
    TaskFailed,
    TaskTimeout,
)
from crewflow.processes import ProblemKind, Process, ProcessContext
from crewflow.processes.sequential import Sequential
from crewflow.store import MemoryStore
from crewflow.testing import Error, FunctionLLM, ScriptedLLM, Slow, capture_events, run_virtual

if TYPE_CHECKING:
    from crewflow.events import Event
    from crewflow.llm._base import LLM
    from crewflow.llm._types import LLMRequest, LLMResponse
    from crewflow.task import TaskOutput
    from crewflow.testing import FakeClock


def prompt_of(request: LLMRequest) -> str:
    content = request.messages[1].content
    assert content is not None
    return content


def crew_of(llm: LLM, count: int, *, process: Any = "sequential", **crew: Any) -> Crew:
    agent = Agent(role="Worker", goal="Work", llm=llm)
    tasks = [Task(f"Step {i}", agent=agent, context=[]) for i in range(1, count + 1)]
    return Crew(tasks=tasks, process=process, **crew)


def make_run(crew: Crew, **kwargs: Any) -> Run:
    """A run of ``crew`` as kickoff builds it, to look at its state afterwards."""
    return Run(
        graph=crew.graph.copy(),
        process=Sequential(),
        crew_name=crew.name,
        inputs={},
        retry=crew.retry,
        **kwargs,
    )


# -- failures -----------------------------------------------------------------------------------


async def test_a_failure_in_task_3_of_4_keeps_the_outputs_of_1_and_2() -> None:
    llm = ScriptedLLM(["one", "two", Error(400), "four"])

    with pytest.raises(TaskFailed) as caught:
        await crew_of(llm, 4).kickoff()

    error = caught.value
    assert error.task == "task_3"
    assert list(error.outputs) == ["task_1", "task_2"]
    assert [o.text for o in error.outputs.values()] == ["one", "two"]
    assert len(llm.requests) == 3  # task 4 never ran


async def test_task_failed_carries_task_attempts_cause_and_chains_it() -> None:
    llm = ScriptedLLM([ValueError("model said nonsense")])

    with pytest.raises(TaskFailed) as caught:
        await crew_of(llm, 1).kickoff()

    error = caught.value
    assert (error.task, error.attempts) == ("task_1", 1)
    assert isinstance(error.cause, ValueError)
    assert error.__cause__ is error.cause
    assert error.outputs == {}
    assert "task 'task_1' failed after 1 attempt: ValueError: model said nonsense" in str(error)


def test_a_task_timeout_is_retried_and_recorded(fake_clock: FakeClock) -> None:
    llm = ScriptedLLM([Slow(60, "too late"), "on time"])
    agent = Agent(role="Worker", goal="Work", llm=llm)
    crew = Crew(
        tasks=[Task("Quick", agent=agent, timeout=0.25)],
        retry=RetryPolicy(initial=2.0, jitter=False),
    )

    # In virtual time the second answer is in time however slow the machine is.
    result = run_virtual(crew.kickoff)

    assert result.output.text == "on time"
    assert fake_clock.sleeps == [2.0]
    first, second = result.timeline[0].attempts
    assert first.status is TaskStatus.FAILED
    assert first.error_type == "TaskTimeout"
    assert first.error is not None
    assert "timeout of 0.25 s" in first.error
    assert second.status is TaskStatus.COMPLETED
    assert second.error_type is None


async def test_timeouts_on_every_attempt_fail_the_task_with_the_timeout_as_cause(
    fake_clock: FakeClock,
) -> None:
    llm = ScriptedLLM([Slow(60, "late"), Slow(60, "late")])
    agent = Agent(role="Worker", goal="Work", llm=llm)
    crew = Crew(
        tasks=[Task("Quick", agent=agent, timeout=0.01, name="quick")],
        retry=RetryPolicy(max_attempts=2, jitter=False),
    )

    with capture_events() as captured, anyio.fail_after(5), pytest.raises(TaskFailed) as caught:
        await crew.kickoff()

    error = caught.value
    assert error.attempts == 2
    assert isinstance(error.cause, TaskTimeout)
    assert isinstance(error.cause, TimeoutError)
    assert (error.cause.task, error.cause.timeout) == ("quick", 0.01)
    assert fake_clock.sleeps == [1.0]
    retrying = captured.of_type(ev.TaskRetrying)
    assert [(e.task, e.attempt, e.delay) for e in retrying] == [("quick", 1, 1.0)]
    assert retrying[0].error.startswith("TaskTimeout: ")
    failed = captured.of_type(ev.TaskFailed)
    assert [(e.task, e.attempts, e.error_type) for e in failed] == [("quick", 2, "TaskTimeout")]


async def test_errors_the_policy_does_not_retry_fail_on_the_first_attempt(
    fake_clock: FakeClock,
) -> None:
    llm = ScriptedLLM(["not json", "still not json"])
    agent = Agent(role="Worker", goal="Work", llm=llm, output_retries=1)
    from pydantic import BaseModel

    class Answer(BaseModel):
        value: int

    crew = Crew(tasks=[Task("Count", agent=agent, output_model=Answer)])

    with pytest.raises(TaskFailed) as caught:
        await crew.kickoff()

    assert caught.value.attempts == 1
    assert isinstance(caught.value.cause, OutputValidationError)
    assert fake_clock.sleeps == []


async def test_a_custom_retry_on_retries_whole_attempts(fake_clock: FakeClock) -> None:
    llm = ScriptedLLM([ValueError("flaky"), "fine"])
    crew = crew_of(llm, 1, retry=RetryPolicy(retry_on=(ValueError,), jitter=False))

    result = await crew.kickoff()

    assert result.output.text == "fine"
    attempts = result.timeline[0].attempts
    assert [(a.status, a.error_type) for a in attempts] == [
        (TaskStatus.FAILED, "ValueError"),
        (TaskStatus.COMPLETED, None),
    ]
    assert result.usage.requests == 2


async def test_the_timeline_shows_failed_and_unstarted_tasks() -> None:
    crew = crew_of(ScriptedLLM(["one", Error(400)]), 3)
    run = make_run(crew)

    with pytest.raises(TaskFailed):
        await run.drive()

    assert run.status == "failed"
    assert [(r.task, r.status) for r in run.timeline] == [
        ("task_1", TaskStatus.COMPLETED),
        ("task_2", TaskStatus.FAILED),
        ("task_3", TaskStatus.PENDING),
    ]
    failed = run.timeline[1]
    assert failed.attempts[0].error_type == "LLMError"
    assert failed.attempts[0].usage.requests == 1
    assert run.usage.requests == 2  # the failed request counts


# -- events -------------------------------------------------------------------------------------


async def test_events_come_in_order_to_capture_and_on_event_alike() -> None:
    seen: list[Event] = []
    crew = crew_of(ScriptedLLM(["one", "two"]), 2, on_event=seen.append, name="pair")

    with capture_events() as captured:
        result = await crew.kickoff()

    assert captured.events == seen
    assert captured.kinds == [
        "run_started",
        "task_started",
        "llm_call_started",
        "llm_call_finished",
        "task_finished",
        "task_started",
        "llm_call_started",
        "llm_call_finished",
        "task_finished",
        "run_finished",
    ]
    assert {e.run_id for e in seen} == {result.run_id}
    times = [e.time for e in seen]
    assert times == sorted(times)
    started = captured.of_type(ev.RunStarted)[0]
    assert (started.crew, started.process, started.tasks) == ("pair", "sequential", 2)
    task_started = captured.of_type(ev.TaskStarted)
    assert [(e.task, e.agent, e.attempt) for e in task_started] == [
        ("task_1", "Worker", 1),
        ("task_2", "Worker", 1),
    ]
    finished = captured.of_type(ev.TaskFinished)
    assert [(e.task, e.attempt) for e in finished] == [("task_1", 1), ("task_2", 1)]
    for event, output in zip(finished, result.outputs, strict=True):
        assert event.prompt_tokens == output.usage.prompt_tokens
        assert event.completion_tokens == output.usage.completion_tokens
        assert event.duration >= 0
    run_finished = captured.of_type(ev.RunFinished)[0]
    assert (run_finished.status, run_finished.error) == ("completed", None)


async def test_a_failed_run_ends_with_task_failed_then_run_finished() -> None:
    crew = crew_of(ScriptedLLM([Error(401)]), 2)

    with capture_events() as captured, pytest.raises(TaskFailed):
        await crew.kickoff()

    assert captured.kinds[-2:] == ["task_failed", "run_finished"]
    failed = captured.of_type(ev.TaskFailed)[0]
    assert (failed.task, failed.attempts, failed.error_type) == ("task_1", 1, "LLMError")
    finished = captured.of_type(ev.RunFinished)[0]
    assert finished.status == "failed"
    assert finished.error is not None
    assert "task_1" in finished.error
    assert "task_started" in captured.kinds
    assert captured.kinds.count("task_started") == 1


async def test_tool_calls_are_events_with_their_outcome() -> None:
    from crewflow import tool
    from crewflow.exceptions import ToolError
    from crewflow.testing import ToolCall, ToolCalls

    @tool
    def good(x: int) -> str:
        """Good."""
        return str(x)

    @tool
    def bad(x: int) -> str:
        """Bad."""
        raise ToolError("no way", tool="bad")

    llm = ScriptedLLM(
        [ToolCalls([ToolCall("good", {"x": 1})]), ToolCalls([ToolCall("bad", {"x": 2})]), "done"]
    )
    agent = Agent(role="Worker", goal="Work", llm=llm, tools=[good, bad])

    with capture_events() as captured:
        await Crew(tasks=[Task("Use tools", agent=agent)]).kickoff()

    calls = captured.of_type(ev.ToolCalled)
    assert [(c.task, c.tool, c.ok) for c in calls] == [
        ("task_1", "good", True),
        ("task_1", "bad", False),
    ]
    assert calls[0].error is None
    assert calls[1].error is not None
    assert "no way" in calls[1].error


@pytest.fixture
def events_that_explode(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every event class raises when built."""

    def explode(*args: object, **kwargs: object) -> None:
        raise AssertionError("an event was built")

    for name in ev.__all__:
        if name not in ("Event", "EventSink"):
            monkeypatch.setattr(ev, name, explode)


@pytest.mark.usefixtures("events_that_explode")
async def test_no_event_is_built_when_nobody_listens(fake_clock: FakeClock) -> None:
    from crewflow import tool
    from crewflow.testing import ToolCall, ToolCalls

    @tool
    def lookup(q: str) -> str:
        """Look up."""
        return q

    llm = ScriptedLLM([ToolCalls([ToolCall("lookup", {"q": "x"})]), Error(500), "ok", "ok"])
    agent = Agent(role="Worker", goal="Work", llm=llm, tools=[lookup])

    result = await Crew(tasks=[Task("a", agent=agent), Task("b", agent=agent)]).kickoff()

    assert result.output.text == "ok"


@pytest.mark.usefixtures("events_that_explode")
async def test_events_are_built_as_soon_as_someone_listens() -> None:
    crew = crew_of(ScriptedLLM(["ok"]), 1, on_event=lambda event: None)

    with pytest.raises(AssertionError, match="an event was built"):
        await crew.kickoff()


# -- custom processes --------------------------------------------------------------------------


class Reversed(Process):
    name: ClassVar[str] = "reversed"

    async def run(self, run: ProcessContext) -> None:
        for task in reversed(run.graph.tasks):
            await run.execute(task)


async def test_a_custom_process_object_decides_the_order() -> None:
    llm = FunctionLLM(lambda request: prompt_of(request).upper())

    result = await crew_of(llm, 3, process=Reversed()).kickoff()

    assert [prompt_of(r) for r in llm.requests] == ["Step 3", "Step 2", "Step 1"]
    assert [o.text for o in result.outputs] == ["STEP 1", "STEP 2", "STEP 3"]
    assert result.process == "reversed"


async def test_a_process_that_skips_tasks_raises_naming_them() -> None:
    class Lazy(Process):
        name: ClassVar[str] = "lazy"

        async def run(self, run: ProcessContext) -> None:
            await run.execute(run.graph.tasks[0])

    with pytest.raises(CrewRunError) as caught:
        await crew_of(ScriptedLLM(["one"]), 3, process=Lazy()).kickoff()

    assert type(caught.value) is CrewRunError
    assert "'lazy' returned without running ['task_2', 'task_3']" in str(caught.value)
    assert list(caught.value.outputs) == ["task_1"]


async def test_a_bare_exception_from_a_process_becomes_a_crew_run_error() -> None:
    class Broken(Process):
        name: ClassVar[str] = "broken"

        async def run(self, run: ProcessContext) -> None:
            await run.execute(run.graph.tasks[0])
            raise KeyError("oops")

    with pytest.raises(CrewRunError) as caught:
        await crew_of(ScriptedLLM(["one"]), 2, process=Broken()).kickoff()

    error = caught.value
    assert "process 'broken' failed: KeyError" in str(error)
    assert list(error.outputs) == ["task_1"]
    assert isinstance(error.__cause__, KeyError)


class InParallel(Process):
    """Every task at once, in a task group (so failures come out as an ExceptionGroup)."""

    name: ClassVar[str] = "all-at-once"

    async def run(self, run: ProcessContext) -> None:
        async with anyio.create_task_group() as group:
            for task in run.ready():
                group.start_soon(run.execute, task)


async def test_an_exception_group_from_a_process_is_unwrapped() -> None:
    release = anyio.Event()

    async def answer(request: LLMRequest) -> Any:
        if prompt_of(request) == "Step 2":
            await release.wait()
            return Error(400)
        release.set()
        return "fine"

    with anyio.fail_after(5), pytest.raises(TaskFailed) as caught:
        await crew_of(FunctionLLM(answer), 2, process=InParallel()).kickoff()

    error = caught.value
    assert error.task == "task_2"
    assert isinstance(error.__cause__, LLMError)  # its own cause, not the group
    assert list(error.outputs) == ["task_1"]  # finished while task 2 was running


async def test_an_invalid_plan_fails_the_run_with_its_problems_and_the_outputs() -> None:
    class Planner(Process):
        name: ClassVar[str] = "planner"

        async def run(self, run: ProcessContext) -> None:
            await run.execute(run.graph.tasks[0])
            plan = [Task("extra", name="extra", context=["nothing"])]
            assert [p.kind for p in run.check_plan(plan)] == [ProblemKind.UNKNOWN_DEPENDENCY]
            await run.add_tasks(plan)

    with pytest.raises(InvalidPlan, match="'nothing', which is neither a task") as caught:
        await crew_of(ScriptedLLM(["one"]), 1, process=Planner()).kickoff()

    error = caught.value
    assert not isinstance(error, ConfigurationError)  # the crew was valid; the plan was not
    assert [p.kind for p in error.problems] == [ProblemKind.UNKNOWN_DEPENDENCY]
    assert [t.name for t in error.plan] == ["extra"]
    assert error.outputs["task_1"].text == "one"  # nothing finished is lost


async def test_a_configuration_error_from_a_process_is_raised_as_is() -> None:
    class Misnamed(Process):
        name: ClassVar[str] = "misnamed"

        async def run(self, run: ProcessContext) -> None:
            raise ConfigurationError("this process needs a manager: pass manager=...")

    with pytest.raises(ConfigurationError, match="needs a manager"):
        await crew_of(ScriptedLLM([]), 1, process=Misnamed()).kickoff()


async def test_executing_a_task_before_its_dependencies_is_a_process_bug() -> None:
    class Hasty(Process):
        name: ClassVar[str] = "hasty"

        async def run(self, run: ProcessContext) -> None:
            await run.execute(run.graph.tasks[-1])

    agent = Agent(role="Worker", goal="Work", llm=ScriptedLLM([]))
    first = Task("a", agent=agent)
    crew = Crew(tasks=[first, Task("b", agent=agent, context=[first])], process=Hasty())

    with pytest.raises(CrewRunError, match="started task 'task_2' before its dependencies"):
        await crew.kickoff()


# -- what processes use: ready, execute, add_task ---------------------------------------------


class Stepwise(Process):
    """Runs whatever is ready, one at a time, noting what was ready each time."""

    name: ClassVar[str] = "stepwise"
    seen: ClassVar[list[list[str]]] = []

    async def run(self, run: ProcessContext) -> None:
        while ready := run.ready():
            type(self).seen.append([run.graph.name_of(t) for t in ready])
            await run.execute(ready[0])


@pytest.fixture
def stepwise() -> type[Stepwise]:
    Stepwise.seen = []
    return Stepwise


async def test_ready_lists_tasks_whose_dependencies_finished(stepwise: type[Stepwise]) -> None:
    agent = Agent(role="W", goal="G", llm=FunctionLLM(lambda r: "ok"))
    a = Task("a", agent=agent, name="a")
    b = Task("b", agent=agent, name="b", context=[a])
    c = Task("c", agent=agent, name="c", context=[])
    d = Task("d", agent=agent, name="d", context=[b, c])

    await Crew(tasks=[a, b, c, d], process=stepwise()).kickoff()

    assert stepwise.seen == [["a", "c"], ["b", "c"], ["c"], ["d"]]


async def test_execute_returns_a_finished_output_without_running_again() -> None:
    outputs: list[TaskOutput] = []

    class Twice(Process):
        name: ClassVar[str] = "twice"

        async def run(self, run: ProcessContext) -> None:
            task = run.graph.tasks[0]
            outputs.append(await run.execute(task))
            outputs.append(await run.execute(task))

    llm = ScriptedLLM(["once"])
    await crew_of(llm, 1, process=Twice()).kickoff()

    assert outputs[0] is outputs[1]
    assert len(llm.requests) == 1


async def test_execute_with_explicit_context_uses_it_instead_of_dependencies() -> None:
    class Briefed(Process):
        name: ClassVar[str] = "briefed"

        async def run(self, run: ProcessContext) -> None:
            first, second = run.graph.tasks
            brief = await run.execute(first)
            await run.execute(second, context=[brief, brief.model_copy(update={"task": "note"})])

    llm = ScriptedLLM(["BRIEF", "done"])
    await crew_of(llm, 2, process=Briefed()).kickoff()

    prompt = prompt_of(llm.requests[1])
    assert '<context task="task_1">\nBRIEF\n</context>' in prompt
    assert '<context task="note">\nBRIEF\n</context>' in prompt


async def test_executing_a_running_task_again_is_refused() -> None:
    class Doubled(Process):
        name: ClassVar[str] = "doubled"

        async def run(self, run: ProcessContext) -> None:
            task = run.graph.tasks[0]
            async with anyio.create_task_group() as group:
                group.start_soon(run.execute, task)
                await anyio.lowlevel.checkpoint()
                await run.execute(task)

    llm = ScriptedLLM([Slow(60, "never")])

    with anyio.fail_after(5), pytest.raises(CrewRunError, match="already running"):
        await crew_of(llm, 1, process=Doubled()).kickoff()


class CountingLLM(ScriptedLLM):
    """Counts open/aclose."""

    def __init__(self, script: list[Any]) -> None:
        super().__init__(script)
        self.opened = 0
        self.closed = 0

    async def open(self) -> None:
        self.opened += 1

    async def aclose(self) -> None:
        self.closed += 1

    async def complete(self, request: LLMRequest) -> LLMResponse:
        assert self.opened > self.closed, "called while not open"
        return await super().complete(request)


async def test_added_tasks_are_internal_steps_of_this_run_only() -> None:
    planner_llm = CountingLLM(["plan", "plan again"])
    helper_llm = CountingLLM(["helped"])
    helper = Agent(role="Helper", goal="Help", llm=helper_llm)

    class Planning(Process):
        name: ClassVar[str] = "planning"

        async def run(self, run: ProcessContext) -> None:
            first = run.graph.tasks[0]
            await run.execute(first)
            if len(run.outputs) == 1 and run.outputs[run.graph.name_of(first)].text == "plan":
                names = await run.add_tasks([Task("help", agent=helper, name="step.1")])
                assert [run.graph.name_of(t) for t in run.ready()] == names
                await run.execute(run.graph.task(names[0]))

    agent = Agent(role="Planner", goal="Plan", llm=planner_llm)
    crew = Crew(tasks=[Task("Plan", agent=agent, name="plan")], process=Planning())

    first = await crew.kickoff()
    second = await crew.kickoff()

    # The crew's task is the deliverable, and the final output; the step is internal.
    assert [o.task for o in first.outputs] == ["plan"]
    assert [o.task for o in first.internal] == ["step.1"]
    assert first.output.task == "plan"
    assert first["step.1"].text == "helped"
    assert first["step.1"].agent == "Helper"
    assert [(r.task, r.kind) for r in first.timeline] == [
        ("plan", TaskKind.DELIVERABLE),
        ("step.1", TaskKind.INTERNAL),
    ]
    # The step was added to that run's graph, not to the crew's.
    assert [o.task for o in second.outputs] == ["plan"]
    assert second.internal == []
    assert crew.graph.names == ["plan"]
    # The added agent's LLM was opened for its call and closed with the run.
    assert (helper_llm.opened, helper_llm.closed) == (1, 1)
    assert (planner_llm.opened, planner_llm.closed) == (2, 2)


async def test_one_llm_shared_by_agents_is_opened_once_and_closed_after_failure() -> None:
    llm = CountingLLM(["one", Error(400)])
    a = Agent(role="A", goal="G", llm=llm)
    b = Agent(role="B", goal="G", llm=llm)

    with pytest.raises(TaskFailed):
        await Crew(tasks=[Task("x", agent=a), Task("y", agent=b)]).kickoff()

    assert (llm.opened, llm.closed) == (1, 1)


# -- cancellation ------------------------------------------------------------------------------


async def test_cancelling_a_kickoff_propagates_as_cancellation() -> None:
    started = anyio.Event()

    async def answer(request: LLMRequest) -> str:
        started.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    crew = crew_of(FunctionLLM(answer), 2)

    with capture_events() as captured, anyio.fail_after(5):
        async with anyio.create_task_group() as group:

            async def kickoff() -> None:
                await crew.kickoff()
                raise AssertionError("the kickoff should have been cancelled")

            group.start_soon(kickoff)
            await started.wait()
            group.cancel_scope.cancel()

    finished = captured.of_type(ev.RunFinished)
    assert [(e.status, e.error) for e in finished] == [("cancelled", None)]
    assert "task_failed" not in captured.kinds


async def test_a_cancelled_attempt_is_recorded_as_cancelled() -> None:
    started = anyio.Event()

    async def answer(request: LLMRequest) -> str:
        started.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    run = make_run(crew_of(FunctionLLM(answer), 2))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            group.start_soon(run.drive)
            await started.wait()
            group.cancel_scope.cancel()

    assert run.status == "cancelled"
    record = run.timeline[0]
    assert record.status is TaskStatus.CANCELLED
    assert [a.status for a in record.attempts] == [TaskStatus.CANCELLED]
    assert record.attempts[0].error_type == "CancelledError"
    assert run.timeline[1].status is TaskStatus.PENDING


class BlockingClock:
    """A clock whose sleeps never end (until cancelled)."""

    def __init__(self) -> None:
        self.sleeping = anyio.Event()

    def now(self) -> float:
        return 0.0

    async def sleep(self, seconds: float) -> None:
        self.sleeping.set()
        await anyio.sleep_forever()


async def test_cancelling_during_a_retry_wait_records_the_task_as_cancelled() -> None:
    clock = BlockingClock()
    token = set_clock(clock)
    try:
        crew = crew_of(
            ScriptedLLM([ValueError("flaky")]), 1, retry=RetryPolicy(retry_on=(ValueError,))
        )
        run = make_run(crew)
    finally:
        reset_clock(token)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            group.start_soon(run.drive)
            await clock.sleeping.wait()
            group.cancel_scope.cancel()

    record = run.timeline[0]
    assert record.status is TaskStatus.CANCELLED
    assert [a.status for a in record.attempts] == [TaskStatus.FAILED]


async def test_an_added_task_without_agent_goes_to_the_single_crew_agent() -> None:
    llm = CountingLLM(["first", "extra"])

    class Extend(Process):
        name: ClassVar[str] = "extend"

        async def run(self, run: ProcessContext) -> None:
            first = run.graph.tasks[0]
            await run.execute(first)
            (name,) = await run.add_tasks([Task("Extra", name="extra", context=[first])])
            await run.execute(run.graph.task(name))

    result = await crew_of(llm, 1, process=Extend()).kickoff()

    assert [o.text for o in (*result.outputs, *result.internal)] == ["first", "extra"]
    assert result["extra"].agent == "Worker"
    assert (llm.opened, llm.closed) == (1, 1)


async def test_the_system_clock_is_monotonic_and_sleeps() -> None:
    clock = SystemClock()
    before = clock.now()

    await clock.sleep(0)

    assert clock.now() >= before
    assert isinstance(current_clock(), SystemClock)


async def test_a_failing_event_listener_is_logged_and_the_run_goes_on(
    capsys: pytest.CaptureFixture[str],
) -> None:
    seen: list[str] = []

    def broken(event: Event) -> None:
        seen.append(event.kind)
        raise RuntimeError("listener bug")

    crew = crew_of(ScriptedLLM(["one", "two"]), 2, on_event=broken)

    result = await crew.kickoff()

    assert [o.text for o in result.outputs] == ["one", "two"]
    assert seen[0] == "run_started"
    assert seen[-1] == "run_finished"
    assert "event listener failed" in capsys.readouterr().err


@pytest.mark.parametrize("process", ["sequential", "parallel"])
async def test_a_finished_run_is_freed_without_the_garbage_collector(process: str) -> None:
    # A run that held a reference cycle (its process context, its dispatcher) would keep every
    # output of every run alive until the collector ran: memory that grows with each kickoff.
    import gc

    agent = Agent(role="Worker", goal="Work", llm=ScriptedLLM(["a", "b", "c"]))
    first = Task("a", agent=agent)
    tasks = [first, Task("b", agent=agent), Task("c", agent=agent, context=[first])]
    crew = Crew(tasks=tasks, process=process, store=MemoryStore())
    gc.collect()
    gc.disable()
    try:
        await crew.kickoff()
        alive = [obj for obj in gc.get_objects() if isinstance(obj, Run)]
    finally:
        gc.enable()

    assert alive == []
