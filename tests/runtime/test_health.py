"""A run's health from its events: stalls, error rates, breakers, retries, and alert hooks."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import pytest

from crewflow import Agent, Crew, HealthPolicy, Task
from crewflow.events import RunHealthChanged
from crewflow.exceptions import ConfigurationError, TaskFailed
from crewflow.limits import Breaker, Limits
from crewflow.retry import RetryPolicy
from crewflow.store import MemoryStore
from crewflow.testing import Error, FunctionLLM, capture_events, run_virtual

if TYPE_CHECKING:
    from crewflow.health import RunHealth
    from crewflow.llm import LLMRequest
    from crewflow.testing import FakeClock


def crew_of(llm: FunctionLLM, *names: str, **fields: Any) -> Crew:
    agent = Agent(role="Worker", goal="Work", llm=llm)
    tasks = [Task(f"Do {name}", agent=agent, name=name) for name in names]
    return Crew(tasks=tasks, process="parallel", store=None, **fields)


def changes(captured: Any) -> list[RunHealthChanged]:
    return [event for event in captured.events if isinstance(event, RunHealthChanged)]


def raised(change: RunHealthChanged) -> list[tuple[str, str]]:
    return [(issue.kind, issue.subject) for issue in change.raised]


def cleared(change: RunHealthChanged) -> list[tuple[str, str]]:
    return [(issue.kind, issue.subject) for issue in change.cleared]


@pytest.mark.parametrize(
    ("field", "value"),
    [("stall_after", 0), ("error_rate", 1.5), ("min_calls", 0), ("alert_timeout", -1)],
)
def test_impossible_thresholds_are_configuration_errors(field: str, value: float) -> None:
    with pytest.raises(ConfigurationError, match=field):
        HealthPolicy(**{field: value})


def test_an_alert_hook_must_be_callable() -> None:
    with pytest.raises(ConfigurationError, match="on_alert"):
        crew_of(FunctionLLM(lambda request: "ok"), "a", on_alert="https://example.com/hook")


def test_a_task_without_progress_is_stalled_at_the_threshold_and_recovers() -> None:
    async def slow(request: LLMRequest) -> str:
        await anyio.sleep(150)  # virtual seconds: no event of the task meanwhile
        return "done"

    crew = crew_of(FunctionLLM(slow), "slow", health=HealthPolicy(stall_after=100))

    async def main() -> list[RunHealthChanged]:
        with capture_events() as captured:
            await crew.kickoff()
        return changes(captured)

    stalled, moving = run_virtual(main)

    assert raised(stalled) == [("stalled", "slow")]
    assert stalled.health.status == "stalled"
    assert stalled.time - stalled.health.issues[0].since == 0
    assert cleared(moving) == [("stalled", "slow")]
    assert moving.health.status == "ok"
    assert moving.time - stalled.time == pytest.approx(50)


def test_a_run_without_health_or_alerts_is_not_watched() -> None:
    crew = crew_of(FunctionLLM(lambda request: "ok"), "a")

    async def main() -> None:
        with capture_events() as captured:
            await crew.kickoff()
        assert changes(captured) == []

    run_virtual(main)


def test_scripted_5xx_replies_push_a_models_error_rate_over_the_threshold() -> None:
    replies = iter([Error(503), Error(503), Error(503), "ok", "ok", "ok", "ok", "ok"])
    crew = crew_of(
        FunctionLLM(lambda request: next(replies), model="flaky"),
        "a",
        health=HealthPolicy(error_rate=0.5, min_calls=3, error_window=60),
        retry=RetryPolicy(max_attempts=4, initial=1, jitter=False),
        limits=Limits(breaker=None),
    )

    async def main() -> list[RunHealthChanged]:
        with capture_events() as captured:
            await crew.kickoff()
        return changes(captured)

    failing, *_ = run_virtual(main)

    assert raised(failing) == [("error_rate", "flaky")]
    assert failing.health.status == "degraded"
    assert failing.health.error_rates == {"flaky": 1.0}
    assert "3 of the last 3 calls to flaky failed" in failing.raised[0].detail


def test_an_open_breaker_is_an_issue_until_a_trial_call_closes_it() -> None:
    replies = iter([Error(503), Error(503), "ok"])
    crew = crew_of(
        FunctionLLM(lambda request: next(replies), model="shaky"),
        "a",
        health=HealthPolicy(min_calls=100),  # error rates out of the way
        retry=RetryPolicy(max_attempts=3, initial=1, jitter=False),
        limits=Limits(breaker=Breaker(failures=2, requests=1, cooldown=5)),
    )

    async def main() -> list[RunHealthChanged]:
        with capture_events() as captured:
            await crew.kickoff()
        return changes(captured)

    opened, closed = run_virtual(main)

    assert raised(opened) == [("breaker_open", "shaky")]
    assert opened.health.breakers == {"shaky": "open"}
    assert cleared(closed) == [("breaker_open", "shaky")]
    assert closed.health.breakers == {}


def test_a_task_retried_n_times_is_an_issue_while_it_is_in_flight() -> None:
    attempts = iter([1, 2, 3])

    def answer(request: LLMRequest) -> str:
        if next(attempts) < 3:
            raise ValueError("not yet")
        return "fine"

    crew = crew_of(
        FunctionLLM(answer),
        "a",
        health=HealthPolicy(retries=2),
        retry=RetryPolicy(retry_on=(ValueError,), initial=1, jitter=False),
    )

    async def main() -> list[RunHealthChanged]:
        with capture_events() as captured:
            await crew.kickoff()
        return changes(captured)

    retried, done = run_virtual(main)

    assert raised(retried) == [("retries", "a")]
    assert "retried 2 times" in retried.raised[0].detail
    assert cleared(done) == [("retries", "a")]


def stalling_crew(**fields: Any) -> Crew:
    async def slow(request: LLMRequest) -> str:
        await anyio.sleep(150)
        return "done"

    fields.setdefault("health", HealthPolicy(stall_after=100))
    return crew_of(FunctionLLM(slow), "slow", **fields)


def test_an_async_alert_hook_gets_each_change_in_order() -> None:
    seen: list[str] = []

    async def on_alert(change: RunHealthChanged) -> None:
        seen.append(change.health.status)

    run_virtual(stalling_crew(on_alert=on_alert).kickoff)

    assert seen == ["stalled", "ok"]


def test_a_sync_alert_hook_runs_in_a_worker_thread() -> None:
    threads: list[threading.Thread] = []
    crew = stalling_crew(on_alert=lambda change: threads.append(threading.current_thread()))

    run_virtual(crew.kickoff)

    assert len(threads) == 2
    assert threading.main_thread() not in threads


def test_an_alert_hook_that_raises_is_logged_and_the_run_goes_on(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def on_alert(change: RunHealthChanged) -> None:
        raise RuntimeError("the pager is down")

    result = run_virtual(stalling_crew(on_alert=on_alert).kickoff)

    assert result.output.text == "done"
    assert "the alert hook failed" in capsys.readouterr().err


def test_an_alert_hook_that_hangs_is_abandoned_after_its_timeout(
    capsys: pytest.CaptureFixture[str],
) -> None:
    calls: list[float] = []

    async def on_alert(change: RunHealthChanged) -> None:
        calls.append(change.time)
        await anyio.sleep_forever()

    crew = stalling_crew(on_alert=on_alert, health=HealthPolicy(stall_after=100, alert_timeout=5))

    result = run_virtual(crew.kickoff)

    assert result.output.text == "done"
    assert len(calls) == 2  # the second change still reached the hook
    assert "the alert hook did not return in time" in capsys.readouterr().err


def test_handle_health_reports_a_stalled_task_while_the_run_goes() -> None:
    gate = anyio.Event()

    async def held(request: LLMRequest) -> str:
        await gate.wait()
        return "done"

    crew = crew_of(FunctionLLM(held), "held")  # no policy: the default one

    async def main() -> tuple[str, str, list[str], str]:
        async with crew.start() as handle:
            await anyio.sleep(1)
            early = handle.health().status
            await anyio.sleep(HealthPolicy().stall_after)
            health = handle.health()
            gate.set()
            await handle.result()
            return early, health.status, [i.subject for i in health.issues], handle.health().status

    early, status, subjects, after = run_virtual(main)

    assert (early, status, subjects, after) == ("ok", "stalled", ["held"], "ok")


def test_a_failed_run_still_ends_its_watch_and_raises_as_it_was() -> None:
    def broken(request: LLMRequest) -> str:
        raise ValueError("broken")

    crew = crew_of(FunctionLLM(broken), "a", on_alert=lambda change: None)

    with pytest.raises(TaskFailed):
        run_virtual(crew.kickoff)


def test_a_task_whose_calls_keep_ending_never_stalls_however_long_it_takes() -> None:
    replies = iter([Error(503), Error(503), "done"])

    async def slowly(request: LLMRequest) -> Any:
        await anyio.sleep(60)  # each call ends within the threshold: progress
        return next(replies)

    crew = crew_of(
        FunctionLLM(slowly),
        "a",
        health=HealthPolicy(stall_after=100, min_calls=100),
        retry=RetryPolicy(initial=1, jitter=False),
    )

    async def main() -> tuple[float, list[RunHealthChanged]]:
        with capture_events() as captured:
            result = await crew.kickoff()
        return result.duration, changes(captured)

    duration, seen = run_virtual(main)

    assert duration > 100  # longer than the threshold in all
    assert seen == []


async def test_the_stall_timer_leaves_a_fake_clock_alone(fake_clock: FakeClock) -> None:
    gate = anyio.Event()

    async def held(request: LLMRequest) -> str:
        await gate.wait()
        return "done"

    crew = crew_of(FunctionLLM(held), "held", on_alert=lambda change: None)

    async with crew.start() as handle:
        for _ in range(20):
            await anyio.lowlevel.checkpoint()
        fake_clock.advance(HealthPolicy().stall_after)
        stalled = handle.health()  # judged on demand, on the fake clock's time
        gate.set()
        await handle.result()

    assert fake_clock.sleeps == []  # a timer sleeping on it would have moved it
    assert stalled.status == "stalled"


# -- health recorded with the run in its store --------------------------------------------------


def test_a_stalled_task_is_recorded_with_the_run_and_its_recovery_replaces_it() -> None:
    store = MemoryStore()

    async def slow(request: LLMRequest) -> str:
        await anyio.sleep(150)  # virtual seconds
        return "done"

    agent = Agent(role="Worker", goal="Work", llm=FunctionLLM(slow))
    crew = Crew(
        tasks=[Task("Do slow", agent=agent, name="slow")],
        store=store,
        health=HealthPolicy(stall_after=100),
    )

    async def main() -> tuple[RunHealth | None, RunHealth | None, RunHealth | None]:
        async with crew.start() as handle:
            await anyio.sleep(1)
            started = await store.get_run(handle.run_id)
            await anyio.sleep(119)
            going = await store.get_run(handle.run_id)
            await handle.result()
        ended = await store.get_run(handle.run_id)
        assert started is not None
        assert going is not None
        assert ended is not None
        return started.health, going.health, ended.health

    started, going, ended = run_virtual(main)

    assert started is not None
    assert started.status == "ok"
    assert going is not None
    assert going.status == "stalled"
    assert [(issue.kind, issue.subject) for issue in going.issues] == [("stalled", "slow")]
    assert ended is not None
    assert (ended.status, ended.issues) == ("ok", [])


def test_a_run_without_health_or_alerts_records_no_health() -> None:
    store = MemoryStore()
    agent = Agent(role="Worker", goal="Work", llm=FunctionLLM(lambda request: "ok"))
    crew = Crew(tasks=[Task("Do a", agent=agent, name="a")], store=store)

    result = run_virtual(crew.kickoff)

    recorded = run_virtual(store.get_run, result.run_id)
    assert recorded is not None
    assert "health" not in recorded.details
    assert recorded.health is None


@pytest.mark.parametrize("watched", [False, True])
def test_a_resumed_run_judges_its_health_afresh(watched: bool) -> None:
    store = MemoryStore()
    fail = [True]

    def flaky(request: LLMRequest) -> str:
        if fail[0]:
            raise ValueError("boom")
        return "ok"

    agent = Agent(role="Worker", goal="Work", llm=FunctionLLM(flaky))
    fields: dict[str, Any] = {"health": HealthPolicy()} if watched else {}
    crew = Crew(tasks=[Task("Do a", agent=agent, name="a")], store=store, **fields)

    async def main() -> RunHealth | None:
        with pytest.raises(TaskFailed):
            await crew.kickoff()
        (run,) = await store.list_runs()
        stalled = {"status": "stalled", "issues": [], "recorded": "2026-03-01T12:00:05Z"}
        await store.record_health(run.run_id, stalled)  # what its last process saw
        fail[0] = False
        await crew.resume(run.run_id)
        resumed = await store.get_run(run.run_id)
        assert resumed is not None
        return resumed.health

    health = run_virtual(main)

    assert (None if health is None else health.status) == ("ok" if watched else None)
