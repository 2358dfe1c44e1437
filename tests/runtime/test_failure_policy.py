"""Failure policy: ``on_failure="continue"``, fallback agents, per-task retry, the breaker."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import pytest

from crewflow import Agent, Breaker, Crew, Limits, RetryPolicy, Task, TaskStatus
from crewflow import events as ev
from crewflow._runtime.limiter import registry
from crewflow._runtime.run import Run
from crewflow.exceptions import CrewPartialFailure, CrewRunError, LLMError, TaskFailed
from crewflow.processes import get_process
from crewflow.testing import Error, FunctionLLM, capture_events, run_virtual

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from crewflow.crew import CrewResult
    from crewflow.llm._types import LLMRequest
    from crewflow.testing import FakeClock


def first_line(request: LLMRequest) -> str:
    content = request.messages[1].content
    assert content is not None
    return content.splitlines()[0]


def failing_on(failures: Mapping[str, Any], *, model: str = "function") -> FunctionLLM:
    """Answers ``output of <description>``, or ``failures[description]`` (an `Error`...)."""

    def answer(request: LLMRequest) -> Any:
        description = first_line(request)
        return failures.get(description, f"output of {description}")

    return FunctionLLM(answer, model=model)


def always(reply: Any, *, model: str) -> FunctionLLM:
    return FunctionLLM(lambda request: reply, model=model)


def run_of(crew: Crew) -> Run:
    """A run of ``crew`` as kickoff builds it, to look at its records afterwards."""
    return Run(
        graph=crew.graph.copy(),
        process=get_process(crew.process),
        crew_name=crew.name,
        inputs={},
        retry=crew.retry,
        on_failure=crew.on_failure,
        max_concurrency=crew.max_concurrency,
    )


def statuses(run: Run) -> dict[str, TaskStatus]:
    return {record.task: record.status for record in run.timeline}


# -- on_failure="continue" ----------------------------------------------------------------------


def branching_crew(process: str) -> Crew:
    """``broken`` fails (HTTP 400); ``child`` and ``grandchild`` depend on it (transitively),
    ``joined`` on it and on a healthy task; ``solo`` -> ``solo_child`` is an unrelated branch."""
    agent = Agent(role="W", goal="G", llm=failing_on({"broken": Error(400, "bad request")}))
    solo = Task("solo", agent=agent, name="solo", context=[])
    broken = Task("broken", agent=agent, name="broken", context=[])
    child = Task("child", agent=agent, name="child", context=[broken])
    grandchild = Task("grandchild", agent=agent, name="grandchild", context=[child])
    joined = Task("joined", agent=agent, name="joined", context=[solo, broken])
    solo_child = Task("solo child", agent=agent, name="solo_child", context=[solo])
    return Crew(
        tasks=[solo, broken, child, grandchild, joined, solo_child],
        process=process,
        on_failure="continue",
    )


@pytest.mark.parametrize("process", ["parallel", "sequential"])
async def test_continue_runs_independent_branches_and_raises_partial_failure(
    process: str,
) -> None:
    crew = branching_crew(process)

    with capture_events() as captured, pytest.raises(CrewPartialFailure) as caught:
        await crew.kickoff()

    error = caught.value
    assert isinstance(error, CrewRunError)
    assert sorted(error.outputs) == ["solo", "solo_child"]
    assert error.outputs["solo_child"].text == "output of solo child"
    assert list(error.failures) == ["broken"]
    failure = error.failures["broken"]
    assert isinstance(failure, TaskFailed)
    assert failure.task == "broken"
    assert isinstance(failure.cause, LLMError)
    assert failure.cause.status_code == 400
    assert sorted(error.skipped) == ["child", "grandchild", "joined"]
    assert "broken" in str(error)

    skipped = {e.task: e.because for e in captured.of_type(ev.TaskSkipped)}
    assert skipped == {"child": ["broken"], "grandchild": ["child"], "joined": ["broken"]}
    assert [e.task for e in captured.of_type(ev.TaskFailed)] == ["broken"]
    started = {e.task for e in captured.of_type(ev.TaskStarted)}
    assert started == {"solo", "broken", "solo_child"}  # skipped tasks never start
    assert captured.of_type(ev.RunFinished)[0].status == "failed"


@pytest.mark.parametrize("process", ["parallel", "sequential"])
async def test_continue_records_failed_and_skipped_tasks(process: str) -> None:
    run = run_of(branching_crew(process))

    with pytest.raises(CrewPartialFailure):
        await run.drive()

    assert statuses(run) == {
        "solo": TaskStatus.COMPLETED,
        "broken": TaskStatus.FAILED,
        "child": TaskStatus.SKIPPED,
        "grandchild": TaskStatus.SKIPPED,
        "joined": TaskStatus.SKIPPED,
        "solo_child": TaskStatus.COMPLETED,
    }
    skipped = next(r for r in run.timeline if r.task == "grandchild")
    assert skipped.attempts == ()
    assert skipped.start is None


async def test_continue_in_sequential_skips_the_task_chained_by_undeclared_context() -> None:
    agent = Agent(role="W", goal="G", llm=failing_on({"second": Error(400)}))
    first = Task("first", agent=agent, name="first")
    second = Task("second", agent=agent, name="second", context=[])
    chained = Task("chained", agent=agent, name="chained")  # implicitly after "second"
    own = Task("own", agent=agent, name="own", context=[first])
    after_own = Task("after own", agent=agent, name="after_own")  # implicitly after "own"
    crew = Crew(tasks=[first, second, chained, own, after_own], on_failure="continue")

    with pytest.raises(CrewPartialFailure) as caught:
        await crew.kickoff()

    assert list(caught.value.outputs) == ["first", "own", "after_own"]
    assert caught.value.skipped == ["chained"]


async def test_continue_in_parallel_lets_slow_independent_work_finish_after_the_failure() -> None:
    finished_after_failure: list[str] = []
    failed = anyio.Event()

    async def answer(request: LLMRequest) -> Any:
        description = first_line(request)
        if description == "broken":
            failed.set()
            return Error(400)
        if description == "slow":
            await failed.wait()
            finished_after_failure.append(description)
        return f"output of {description}"

    agent = Agent(role="W", goal="G", llm=FunctionLLM(answer))
    crew = Crew(
        tasks=[
            Task("slow", agent=agent, name="slow", context=[]),
            Task("broken", agent=agent, name="broken", context=[]),
        ],
        process="parallel",
        on_failure="continue",
    )

    with anyio.fail_after(5), pytest.raises(CrewPartialFailure) as caught:
        await crew.kickoff()

    assert finished_after_failure == ["slow"]
    assert list(caught.value.outputs) == ["slow"]


async def test_every_failure_is_reported_by_name() -> None:
    agent = Agent(role="W", goal="G", llm=failing_on({"a": Error(400), "c": ValueError("nope")}))
    crew = Crew(
        tasks=[Task(n, agent=agent, name=n, context=[]) for n in "abcd"],
        process="parallel",
        on_failure="continue",
    )

    with pytest.raises(CrewPartialFailure) as caught:
        await crew.kickoff()

    assert sorted(caught.value.failures) == ["a", "c"]
    assert isinstance(caught.value.failures["c"].cause, ValueError)
    assert sorted(caught.value.outputs) == ["b", "d"]
    assert caught.value.skipped == []


async def test_stop_is_the_default_and_raises_the_first_failure() -> None:
    agent = Agent(role="W", goal="G", llm=failing_on({"a": Error(400)}))
    crew = Crew(tasks=[Task("a", agent=agent, name="a"), Task("b", agent=agent, name="b")])

    with pytest.raises(TaskFailed) as caught:
        await crew.kickoff()

    assert crew.on_failure == "stop"
    assert caught.value.task == "a"
    assert not isinstance(caught.value, CrewPartialFailure)


# -- fallback agents ----------------------------------------------------------------------------


async def test_the_fallback_agent_takes_over_when_the_agents_attempts_are_used_up(
    fake_clock: FakeClock,
) -> None:
    primary_llm = always(Error(500, "down"), model="primary-model")
    backup_llm = always("saved by the backup", model="backup-model")
    primary = Agent(role="Primary", goal="G", llm=primary_llm)
    backup = Agent(role="Backup", goal="G", llm=backup_llm)
    task = Task("answer", agent=primary, fallback_agent=backup, name="answer")
    crew = Crew(tasks=[task], retry=RetryPolicy(max_attempts=3))

    with capture_events() as captured:
        result = await crew.kickoff()

    assert len(primary_llm.requests) == 3  # the crew's attempts, per provider call
    assert len(backup_llm.requests) == 1
    assert len(fake_clock.sleeps) == 2
    output = result["answer"]
    assert output.text == "saved by the backup"
    assert output.agent == "Backup"
    assert output.model == "backup-model"
    record = result.timeline[0]
    assert record.status is TaskStatus.COMPLETED
    assert record.agent == "Backup"
    assert [(a.model, a.status) for a in record.attempts] == [
        ("primary-model", TaskStatus.FAILED),
        ("backup-model", TaskStatus.COMPLETED),
    ]
    assert record.attempts[0].llm_retries == 2
    assert record.attempts[0].error_type == "LLMError"
    fallback = captured.of_type(ev.TaskFallback)
    assert len(fallback) == 1
    assert (fallback[0].task, fallback[0].agent, fallback[0].fallback) == (
        "answer",
        "Primary",
        "Backup",
    )
    assert "down" in fallback[0].error
    started = captured.of_type(ev.TaskStarted)
    assert [(e.agent, e.attempt) for e in started] == [("Primary", 1), ("Backup", 2)]


def test_the_fallback_takes_over_after_every_timed_out_attempt() -> None:
    async def slow(request: LLMRequest) -> str:
        await anyio.sleep(10)
        return "too late"

    primary = Agent(role="Primary", goal="G", llm=FunctionLLM(slow, model="slow-model"))
    backup = Agent(role="Backup", goal="G", llm=always("in time", model="quick-model"))
    task = Task(
        "answer",
        agent=primary,
        fallback_agent=backup,
        timeout=1,
        retry=RetryPolicy(max_attempts=2, initial=0.5, jitter=False),
    )
    crew = Crew(tasks=[task])

    async def main() -> tuple[CrewResult, list[ev.Event]]:
        with capture_events() as captured:
            result = await crew.kickoff()
        return result, captured.events

    result, events = run_virtual(main)

    record = result.timeline[0]
    assert [(a.model, a.status, a.error_type) for a in record.attempts] == [
        ("slow-model", TaskStatus.FAILED, "TaskTimeout"),
        ("slow-model", TaskStatus.FAILED, "TaskTimeout"),
        ("quick-model", TaskStatus.COMPLETED, None),
    ]
    fallback = next(e for e in events if isinstance(e, ev.TaskFallback))
    assert fallback.time == pytest.approx(2.5)  # 1 s, 0.5 s backoff, 1 s
    assert result.output.agent == "Backup"
    assert result.duration == pytest.approx(2.5)


async def test_a_failing_fallback_fails_the_task_with_the_fallbacks_error(
    fake_clock: FakeClock,
) -> None:
    primary = Agent(role="Primary", goal="G", llm=always(Error(500), model="one"))
    backup = Agent(role="Backup", goal="G", llm=always(Error(400, "rejected"), model="two"))
    crew = Crew(tasks=[Task("answer", agent=primary, fallback_agent=backup, name="answer")])

    with pytest.raises(TaskFailed) as caught:
        await crew.kickoff()

    error = caught.value
    assert isinstance(error.cause, LLMError)
    assert error.cause.model == "two"
    assert error.cause.status_code == 400
    assert error.attempts == 2


# -- retry policy -------------------------------------------------------------------------------


async def test_a_task_retry_policy_overrides_the_crews(fake_clock: FakeClock) -> None:
    once_llm = always(Error(500), model="once-model")
    default_llm = always(Error(500), model="default-model")
    more_llm = always(Error(500), model="more-model")
    crew = Crew(
        tasks=[
            Task(
                "once",
                agent=Agent(role="A", goal="G", llm=once_llm),
                retry=RetryPolicy(max_attempts=1),
                context=[],
            ),
            Task("default", agent=Agent(role="B", goal="G", llm=default_llm), context=[]),
            Task(
                "more",
                agent=Agent(role="C", goal="G", llm=more_llm),
                retry=RetryPolicy(max_attempts=4),
                context=[],
            ),
        ],
        retry=RetryPolicy(max_attempts=2),
        on_failure="continue",
        limits=Limits(breaker=None),
    )

    with pytest.raises(CrewPartialFailure) as caught:
        await crew.kickoff()

    assert len(once_llm.requests) == 1
    assert len(default_llm.requests) == 2
    assert len(more_llm.requests) == 4
    assert sorted(caught.value.failures) == ["task_1", "task_2", "task_3"]


async def test_a_non_retryable_error_fails_at_once(fake_clock: FakeClock) -> None:
    llm = always(Error(400, "invalid request"), model="strict")
    crew = Crew(tasks=[Task("x", agent=Agent(role="A", goal="G", llm=llm))])

    with capture_events() as captured, pytest.raises(TaskFailed) as caught:
        await crew.kickoff()

    assert len(llm.requests) == 1
    assert fake_clock.sleeps == []
    assert caught.value.attempts == 1
    cause = caught.value.cause
    assert isinstance(cause, LLMError)
    assert (cause.status_code, cause.retryable) == (400, False)
    assert captured.of_type(ev.TaskRetrying) == []
    assert captured.of_type(ev.LLMCallRetrying) == []


async def test_a_retryable_error_that_recovers_is_retried_with_backoff(
    fake_clock: FakeClock,
) -> None:
    replies: list[Any] = [Error(503), Error(500), "finally"]
    llm = FunctionLLM(lambda request: replies.pop(0), model="wobbly")
    crew = Crew(
        tasks=[Task("x", agent=Agent(role="A", goal="G", llm=llm))],
        retry=RetryPolicy(max_attempts=3, initial=1.0, jitter=False),
    )

    result = await crew.kickoff()

    assert result.text == "finally"
    assert fake_clock.sleeps == [1.0, 2.0]
    assert result.timeline[0].attempts[0].llm_retries == 2


# -- circuit breaker ----------------------------------------------------------------------------


def counting(reply: Callable[[], Any], *, model: str) -> FunctionLLM:
    return FunctionLLM(lambda request: reply(), model=model)


async def test_an_open_circuit_fails_fast_and_the_fallback_on_another_model_takes_over(
    fake_clock: FakeClock,
) -> None:
    flaky_llm = always(Error(500, "overloaded"), model="flaky")
    steady_llm = always("steady answer", model="steady")
    flaky = Agent(role="Flaky", goal="G", llm=flaky_llm)
    steady = Agent(role="Steady", goal="G", llm=steady_llm)
    crew = Crew(
        tasks=[
            Task("first", agent=flaky, name="first", context=[]),
            Task("second", agent=flaky, fallback_agent=steady, name="second", context=[]),
            Task("third", agent=flaky, name="third", context=[]),
        ],
        retry=RetryPolicy(max_attempts=3),
        on_failure="continue",
        limits=Limits(breaker=Breaker(failures=2, cooldown=30, wait=False)),
    )

    with pytest.raises(CrewPartialFailure) as caught:
        await crew.kickoff()

    # "first" failed 3 times, but as one request: the circuit stayed closed. The failure of
    # "second", another request, opened it: nothing after that reached the provider.
    assert [r.messages[-1].content for r in flaky_llm.requests] == ["first"] * 3 + ["second"]
    error = caught.value
    first_cause = error.failures["first"].cause
    assert isinstance(first_cause, LLMError)
    assert first_cause.status_code == 500
    assert "circuit open" not in str(first_cause)
    third_cause = error.failures["third"].cause
    assert isinstance(third_cause, LLMError)
    assert "circuit open" in str(third_cause)
    assert error.outputs["second"].text == "steady answer"
    assert error.outputs["second"].agent == "Steady"
    assert len(steady_llm.requests) == 1
    assert registry().state("flaky")["breaker"] == "open"
    assert registry().state("steady")["breaker"] == "closed"


async def test_client_errors_do_not_open_the_circuit(fake_clock: FakeClock) -> None:
    llm = always(Error(400), model="picky")
    agent = Agent(role="A", goal="G", llm=llm)
    crew = Crew(
        tasks=[Task(f"t{i}", agent=agent, context=[]) for i in range(4)],
        on_failure="continue",
        limits=Limits(breaker=Breaker(failures=2, cooldown=30)),
    )

    with pytest.raises(CrewPartialFailure) as caught:
        await crew.kickoff()

    assert len(llm.requests) == 4
    assert all("circuit" not in str(f.cause) for f in caught.value.failures.values())
    assert registry().state("picky")["breaker"] == "closed"


async def test_after_the_cooldown_a_trial_call_closes_the_circuit(fake_clock: FakeClock) -> None:
    healthy = False

    def reply() -> Any:
        return "back" if healthy else Error(500)

    llm = counting(reply, model="recovering")
    agent = Agent(role="A", goal="G", llm=llm)
    crew = Crew(
        tasks=[Task("x", agent=agent, context=[]), Task("y", agent=agent, context=[])],
        retry=RetryPolicy(max_attempts=3),
        limits=Limits(breaker=Breaker(failures=2, cooldown=30, wait=False)),
        on_failure="continue",
    )

    with pytest.raises(CrewPartialFailure):
        await crew.kickoff()
    assert len(llm.requests) == 4  # x: 3 calls, one request; y: the second request opens it
    with pytest.raises(CrewPartialFailure) as caught:
        await crew.kickoff()  # still cooling down: fails fast
    assert all("circuit open" in str(f.cause) for f in caught.value.failures.values())
    assert len(llm.requests) == 4

    fake_clock.advance(31)
    healthy = True
    result = await crew.kickoff()

    assert result.text == "back"
    assert len(llm.requests) == 6
    assert registry().state("recovering")["breaker"] == "closed"
