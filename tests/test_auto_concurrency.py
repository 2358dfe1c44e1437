"""``Limit(concurrency="auto")`` and ``Crew(max_concurrency="auto")`` against a model with a
hidden capacity (`crewflow.testing.Capacity`), in virtual time: counts, never durations."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import pytest

from crewflow import Agent, Auto, Crew, Limit, Limits, Task, events
from crewflow._runtime.limiter import registry
from crewflow.exceptions import ConfigurationError
from crewflow.store import SQLiteStore
from crewflow.testing import (
    Capacity,
    Error,
    FunctionLLM,
    Text,
    capture_events,
    reset_limits,
    run_virtual,
)

if TYPE_CHECKING:
    from pathlib import Path


def fan_out(llm: FunctionLLM, tasks: int, **crew: object) -> Crew:
    agent = Agent(role="Worker", goal="answer", llm=llm)
    items = [Task(f"item {i}", agent=agent, context=[]) for i in range(tasks)]
    return Crew(tasks=items, process="parallel", **crew)  # type: ignore[arg-type]


def test_crew_max_concurrency_says_what_it_takes() -> None:
    with pytest.raises(ConfigurationError, match="'auto' to let each model's limit"):
        Crew(tasks=[Task("x")], max_concurrency="automatic")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="whole number >= 1"):
        Crew(tasks=[Task("x")], max_concurrency=0)


def test_the_limit_finds_a_rejecting_capacity_and_the_run_records_each_change(
    tmp_path: Path,
) -> None:
    hidden = Capacity(3, mode="reject", latency=0.2)
    llm = FunctionLLM(hidden, model="hidden")

    async def main() -> tuple[list[events.ConcurrencyChanged], list[object]]:
        async with SQLiteStore(tmp_path / "runs.db") as store:
            crew = fan_out(llm, 60, max_concurrency="auto", store=store)
            with capture_events() as captured:
                result = await crew.kickoff()
            return captured.of_type(events.ConcurrencyChanged), await store.attempts(result.run_id)

    changes, attempts = run_virtual(main)
    assert hidden.served == 60
    assert hidden.max_in_flight == 3  # the provider never held more than its capacity
    assert (changes[0].reason, changes[0].key) == ("rate_limited", llm.limit_key)
    assert changes[-1].new <= 3
    assert hidden.rejected <= 2 * 3 + 5
    recorded = [
        change
        for attempt in attempts
        for change in attempt.details.get("concurrency", [])  # type: ignore[attr-defined, union-attr]
    ]
    assert sorted((c["old"], c["new"], c["reason"]) for c in recorded) == sorted(  # type: ignore[index]
        (c.old, c.new, c.reason) for c in changes
    )


def test_the_limit_backs_off_from_replies_slowed_by_load() -> None:
    hidden = Capacity(4, mode="slow", latency=0.2)
    llm = FunctionLLM(hidden, model="hidden")

    async def main() -> list[events.ConcurrencyChanged]:
        crew = fan_out(llm, 80, limits=Limits({"hidden": Limit(concurrency=Auto(max=32))}))
        with capture_events() as captured:
            await crew.kickoff()
        return captured.of_type(events.ConcurrencyChanged)

    changes = run_virtual(main)
    assert "latency" in {change.reason for change in changes}
    assert hidden.rejected == 0
    # It grew past the capacity, then latency held it back, far from its max of 32 (which
    # buys nothing here: the provider serves 4 at a time however many wait).
    assert max(change.new for change in changes) > 4
    assert changes[-1].new <= 4 * 4


def test_a_second_process_starts_from_what_the_store_learned(tmp_path: Path) -> None:
    hidden = Capacity(3, mode="reject", latency=0.2)
    llm = FunctionLLM(hidden, model="hidden")

    async def kickoff() -> list[events.ConcurrencyChanged]:
        async with SQLiteStore(tmp_path / "runs.db") as store:
            crew = fan_out(llm, 40, max_concurrency="auto", store=store)
            with capture_events() as captured:
                await crew.kickoff()
            return captured.of_type(events.ConcurrencyChanged)

    first = run_virtual(kickoff)
    rejected = hidden.rejected
    reset_limits()  # a new process: nothing live, only the store
    second = run_virtual(kickoff)
    assert (second[0].reason, second[0].new) == ("learned", first[-1].new)
    assert hidden.rejected - rejected <= 2  # started at what it learned


def test_an_auto_limit_is_shared_by_crews_running_at_once() -> None:
    hidden = Capacity(2, mode="reject", latency=0.2)
    llm = FunctionLLM(hidden, model="hidden")

    async def main() -> None:
        shared = Limits({"hidden": Limit(concurrency="auto")})
        async with anyio.create_task_group() as group:
            for _ in range(2):
                group.start_soon(fan_out(llm, 30, limits=shared).kickoff)

    run_virtual(main)
    assert hidden.served == 60
    assert registry().concurrency("hidden") is not None
    assert hidden.rejected <= 2 * 2 + 5


def test_a_declared_model_limit_wins_over_the_crew_shortcut() -> None:
    llm = FunctionLLM(lambda request: "ok", model="fixed")

    async def main() -> None:
        crew = fan_out(
            llm, 3, max_concurrency="auto", limits=Limits({"fixed": Limit(concurrency=2)})
        )
        await crew.kickoff()

    run_virtual(main)
    assert registry().state("fixed")["limit"] == Limit(concurrency=2)
    assert registry().concurrency("fixed") is None


def test_the_capacity_double_rejects_above_its_capacity_and_slows_in_proportion() -> None:
    async def main() -> tuple[list[object], list[float]]:
        rejecting = Capacity(2, mode="reject", latency=1.0)
        slowing = Capacity(2, mode="slow", latency=1.0)
        replies: list[object] = []
        finished: list[float] = []

        async def ask(capacity: Capacity) -> None:
            replies.append(await capacity(None))
            finished.append(anyio.current_time())

        async with anyio.create_task_group() as group:
            for _ in range(3):
                group.start_soon(ask, rejecting)
        async with anyio.create_task_group() as group:
            for _ in range(4):
                group.start_soon(ask, slowing)
        return replies, finished

    replies, finished = run_virtual(main)
    assert [type(reply) for reply in replies[:3]].count(Error) == 1
    assert any(isinstance(r, Error) and r.retry_after == 1.0 for r in replies[:3])
    assert all(isinstance(reply, Text) for reply in replies[3:])
    start = finished[2]  # the slow ones started when the rejecting ones were done
    # Arrivals 1 and 2 are within the capacity; 3 and 4 take 1.5x and 2x the latency.
    assert [round(t - start, 6) for t in finished[3:]] == [1.0, 1.0, 1.5, 2.0]


def test_the_report_draws_the_limit_over_time_on_its_models_panel(tmp_path: Path) -> None:
    from crewflow.report import Report
    from crewflow.report._timeline import axis_of, limit_changes

    hidden = Capacity(3, mode="reject", latency=0.2)
    llm = FunctionLLM(hidden, model="hidden")

    async def main() -> tuple[Report, list[events.ConcurrencyChanged]]:
        async with SQLiteStore(tmp_path / "runs.db") as store:
            crew = fan_out(llm, 30, max_concurrency="auto", store=store)
            with capture_events() as captured:
                result = await crew.kickoff()
            report = await Report.from_store(store, result.run_id)
            return report, captured.of_type(events.ConcurrencyChanged)

    report, changes = run_virtual(main)
    drawn = limit_changes(report.tasks, axis_of(report))
    assert sorted((c.model, c.old, c.new) for c in drawn) == sorted(
        ("hidden", c.old, c.new) for c in changes
    )
    assert 'class="limit"' in report.html()
    assert "auto concurrency limit" in report.html()


def test_a_run_without_auto_limits_draws_no_limit_line() -> None:
    async def main() -> str:
        crew = fan_out(FunctionLLM(lambda request: "ok", model="plain"), 3)
        return (await crew.kickoff()).report().html()

    assert 'class="limit"' not in run_virtual(main)


def test_optimize_suggests_a_fixed_value_once_the_learned_one_is_stable(tmp_path: Path) -> None:
    from crewflow.optimizer import RecommendationKind, analyze
    from crewflow.optimizer._concurrency import STABLE_RUNS

    hidden = Capacity(3, mode="reject", latency=0.2)
    llm = FunctionLLM(hidden, model="hidden")

    async def kickoff() -> list[str]:
        async with SQLiteStore(tmp_path / "runs.db") as store:
            await fan_out(llm, 30, max_concurrency="auto", store=store, name="fan").kickoff()
            report = await analyze(store, "fan")
            return [
                advice.message
                for advice in report.recommendations
                if advice.kind == RecommendationKind.FIX_CONCURRENCY and advice.target == "hidden"
            ]

    advice = []
    for _ in range(STABLE_RUNS):
        assert advice == []  # not before the level held over enough runs
        reset_limits()  # each run a new process: it starts from what the store learned
        advice = run_virtual(kickoff)
    assert advice == [
        f"Declare Limit(concurrency=3) for hidden: its auto limit settled at 3 in the last "
        f"{STABLE_RUNS} completed runs of fan, and a fixed value skips the search (and the "
        f"pushback it costs)"
    ]
