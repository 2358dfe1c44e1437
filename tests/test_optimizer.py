"""The optimizer reads recorded runs and reports what they measured and what to change.

Every history here is written straight into a store with chosen times, so each number the
report holds can be checked exactly.
"""

from __future__ import annotations

import io
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
from rich.console import Console

from crewflow import Agent, Crew, Task
from crewflow._records import Prediction, ProcessChoice
from crewflow.llm._types import Usage
from crewflow.optimizer import (
    RecommendationKind,
    Report,
    analyze,
    critical_path,
    estimate_duration,
    percentile,
    render,
)
from crewflow.store import (
    AttemptRecord,
    MemoryStore,
    RunRecord,
    RunStatus,
    SQLiteStore,
    TaskStatus,
    read_history,
)

if TYPE_CHECKING:
    from pathlib import Path

    from crewflow.store import Store

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
FAN_OUT = {"a": [], "b": [], "c": [], "d": [], "join": ["a", "b", "c", "d"]}
DIAMOND = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}


def at(seconds: float) -> datetime:
    """A UTC datetime ``seconds`` after a fixed start."""
    return T0 + timedelta(seconds=seconds)


def attempt(
    task: str, start: float, end: float, *, number: int = 1, ok: bool = True, **fields: Any
) -> AttemptRecord:
    """One finished attempt (`add_run` records it under its run)."""
    status = TaskStatus.COMPLETED if ok else TaskStatus.FAILED
    return AttemptRecord(
        task=task,
        number=number,
        start=at(start),
        end=at(end),
        duration=end - start,
        status=fields.pop("status", status),
        **fields,
    )


async def add_run(
    store: Store,
    run_id: str,
    attempts: list[AttemptRecord],
    *,
    started: float = 0.0,
    ended: float | None = None,
    graph: dict[str, list[str]] | None = None,
    status: RunStatus = RunStatus.COMPLETED,
    choice: ProcessChoice | None = None,
    **fields: Any,
) -> None:
    """Record a run with its attempts; it ends when its last attempt does, unless told. A
    ``choice`` is recorded as a choosing process records it (``ctx.choose``)."""
    if ended is None:
        ended_at = max((row.end for row in attempts), default=at(started))
    else:
        ended_at = at(ended)
    record = RunRecord(
        run_id=run_id,
        crew=fields.pop("crew", "research"),
        fingerprint=fields.pop("fingerprint", "v1"),
        process=fields.pop("process", "sequential"),
        started=at(started),
        graph=graph if graph is not None else {row.task: [] for row in attempts},
        **fields,
    )
    await store.start_run(record)
    if choice is not None:
        details = {"choice": choice.model_dump(mode="json")}
        await store.record_choice(run_id, choice.process, choice.reason, details)
    for row in attempts:
        await store.record_attempt(run_id, row)
    if status != RunStatus.RUNNING:
        await store.finish_run(run_id, status, ended_at, record.usage)


async def sequential_fan_out(store: Store, runs: int = 3, **fields: Any) -> None:
    """Sequential runs of four independent 10 s tasks and a 2 s join: 42 s each."""
    for index in range(runs):
        base = 100.0 * index
        rows = [attempt(name, base + 10 * i, base + 10 * (i + 1)) for i, name in enumerate("abcd")]
        rows.append(attempt("join", base + 40, base + 42))
        await add_run(store, f"seq-{index}", rows, started=base, graph=FAN_OUT, **fields)


def text_of(report: Report, width: int = 120) -> str:
    console = Console(file=io.StringIO(), width=width, record=True)
    render(report, console)
    return console.export_text()


# -- arithmetic ------------------------------------------------------------------------------------


def test_percentile_interpolates_linearly_between_ranks() -> None:
    assert percentile([4, 1, 3, 2], 0.5) == 2.5
    assert percentile(range(1, 21), 0.95) == pytest.approx(19.05)
    assert percentile([7.0], 0.95) == 7.0
    assert percentile([3, 9], 0.0) == 3
    assert percentile([3, 9], 1.0) == 9
    assert percentile([], 0.5) is None


def test_critical_path_of_a_diamond_follows_the_longer_branch() -> None:
    assert critical_path(DIAMOND, {"a": 1, "b": 5, "c": 2, "d": 1}) == (7.0, ["a", "b", "d"])
    assert critical_path(DIAMOND, {"a": 1, "b": 2, "c": 5, "d": 1}) == (7.0, ["a", "c", "d"])
    assert critical_path({}, {}) == (0.0, [])


def test_critical_path_counts_an_unmeasured_task_as_no_time() -> None:
    graph = {"a": [], "b": ["a"], "side": [], "gone": ["unknown"]}

    # Counted as 1.0 each, a and b would make the longer chain (2 s).
    assert critical_path(graph, {"side": 1.5}) == (1.5, ["side"])


def test_a_recorded_graph_with_a_cycle_is_refused_by_name() -> None:
    graph = {"a": ["b"], "b": ["a"]}

    with pytest.raises(ValueError, match="cycle: a -> b -> a"):
        critical_path(graph, {})
    with pytest.raises(ValueError, match="cycle"):
        estimate_duration(graph, {})


def test_estimate_of_a_fan_out_depends_on_the_slots() -> None:
    durations = {"a": 10, "b": 10, "c": 10, "d": 10, "join": 2}
    assert estimate_duration(FAN_OUT, durations, max_concurrency=1) == 42.0
    assert estimate_duration(FAN_OUT, durations, max_concurrency=2) == 22.0
    assert estimate_duration(FAN_OUT, durations, max_concurrency=3) == 22.0
    assert estimate_duration(FAN_OUT, durations, max_concurrency=4) == 12.0
    assert estimate_duration(FAN_OUT, durations) == 12.0


def test_estimate_runs_the_longest_remaining_path_first() -> None:
    # Declaration order first would run x and y, then the chain: 16 s.
    graph = {"x": [], "y": [], "z1": [], "z2": ["z1"]}
    durations = {"x": 5, "y": 5, "z1": 1, "z2": 10}
    assert estimate_duration(graph, durations, max_concurrency=2) == 11.0


# -- statistics ------------------------------------------------------------------------------------


async def test_process_stats_count_success_and_duration_percentiles() -> None:
    store = MemoryStore()
    usage = Usage(requests=2, prompt_tokens=100, completion_tokens=50, cost=0.01)
    for index, length in enumerate([40, 42, 44]):
        await add_run(
            store,
            f"ok-{index}",
            [attempt("a", 100 * index, 100 * index + length)],
            started=100 * index,
            usage=usage,
        )
    await add_run(
        store,
        "bad",
        [attempt("a", 500, 501, ok=False)],
        started=500,
        status=RunStatus.FAILED,
        usage=usage,
    )
    await add_run(store, "par", [attempt("a", 600, 610)], started=600, process="parallel")

    report = await analyze(store, "research")

    sequential, parallel = sorted(report.processes, key=lambda stats: stats.process, reverse=True)
    assert (sequential.process, sequential.runs, sequential.completed) == ("sequential", 4, 3)
    assert sequential.success_rate == 0.75
    assert sequential.p50_seconds == 42.0
    assert sequential.p95_seconds == pytest.approx(43.8)
    assert sequential.tokens == 600
    assert sequential.tokens_per_run == 150.0
    assert sequential.cost == pytest.approx(0.04)
    assert (parallel.runs, parallel.success_rate, parallel.p50_seconds) == (1, 1.0, 10.0)
    assert parallel.cost is None
    assert report.runs == 5
    assert (report.since, report.until) == (at(0), at(610))


async def test_process_stats_measure_only_clean_runs_and_rate_only_settled_ones() -> None:
    store = MemoryStore()
    for index, length in enumerate([40, 42, 44]):
        base = 100 * index
        await add_run(store, f"ok-{index}", [attempt("a", base, base + length)], started=base)
    await add_run(store, "bad", [attempt("a", 500, 501, ok=False)], status=RunStatus.FAILED)
    # Neither settled nor clean: still running, paused once, resumed once.
    await add_run(store, "live", [attempt("a", 600, 601)], status=RunStatus.RUNNING)
    await add_run(store, "paused", [attempt("a", 700, 1700)], started=700, paused=True)
    await add_run(store, "resumed", [attempt("a", 800, 1800)], started=800, resumed=1)
    failed_after_pause = [attempt("a", 900, 901, ok=False)]
    await add_run(store, "paused-bad", failed_after_pause, status=RunStatus.FAILED, paused=True)

    (stats,) = (await analyze(store, "research")).processes

    assert (stats.runs, stats.completed) == (8, 3)
    assert stats.success_rate == 0.75  # 3 clean of 4 settled
    assert stats.p50_seconds == 42.0
    assert stats.p95_seconds == pytest.approx(43.8)


async def test_a_run_of_a_choosing_process_counts_for_the_process_it_chose() -> None:
    store = MemoryStore()
    await add_run(store, "chose", [attempt("a", 0, 10)], process="adaptive", chosen="parallel")
    await add_run(store, "par", [attempt("a", 100, 120)], started=100, process="parallel")
    await add_run(store, "seq", [attempt("a", 200, 230)], started=200, process="sequential")

    report = await analyze(store, "research")

    by_process = {stats.process: (stats.runs, stats.p50_seconds) for stats in report.processes}
    assert by_process == {"parallel": (2, 15.0), "sequential": (1, 30.0)}


async def test_task_stats_count_failures_retries_cache_hits_and_waits() -> None:
    store = MemoryStore()
    runs = [
        [attempt("flaky", 0, 2, ok=False), attempt("flaky", 3, 5, number=2, cache_hits=1)],
        [attempt("flaky", 100, 104, llm_retries=2, limit_wait=1.5)],
        [
            attempt("flaky", 200, 201, ok=False),
            attempt("flaky", 202, 203, number=2, ok=False),
            attempt("flaky", 204, 210, number=3, cache_hits=3, limit_wait=0.5),
        ],
        [attempt("flaky", 300, 303, usage=Usage(prompt_tokens=10, completion_tokens=5, cost=0.5))],
    ]
    for index, rows in enumerate(runs):
        await add_run(store, f"run-{index}", rows, started=100 * index)

    (stats,) = (await analyze(store)).tasks

    assert (stats.crew, stats.task, stats.runs) == ("research", "flaky", 4)
    assert (stats.attempts, stats.failed) == (7, 3)
    assert stats.failure_rate == pytest.approx(3 / 7)
    assert stats.retries == 3 + 2  # extra attempts, then provider retries
    assert stats.cache_hit_rate == pytest.approx(2 / 7), "attempts with a hit, not hits"
    # First attempt's start to last attempt's end: 5, 4, 10 and 3 s.
    assert stats.p50_seconds == 4.5
    assert stats.p95_seconds == pytest.approx(9.25)
    assert (stats.limit_wait, stats.limit_wait_per_run) == (2.0, 0.5)
    assert (stats.tokens, stats.cost) == (15, 0.5)


async def test_a_resumed_run_counts_its_attempts_but_none_of_its_durations() -> None:
    store = MemoryStore()
    # The first attempt died with its process: a store reads it back cancelled, ended at start.
    killed = attempt("a", 0, 0, status=TaskStatus.CANCELLED)
    rows = [killed, attempt("a", 3600, 3610, number=2)]
    await add_run(store, "resumed", rows, ended=3610, resumed=1)

    report = await analyze(store)

    assert report.tasks[0].p50_seconds is None
    assert report.processes[0].p50_seconds is None
    assert (report.tasks[0].attempts, report.tasks[0].failed) == (2, 0)


async def test_timing_statistics_leave_out_paused_cancelled_and_resumed_runs() -> None:
    store = MemoryStore()
    waits = {"concurrency:search": 2.0}
    for index, seconds in enumerate([10, 12, 14]):
        base = 100.0 * index
        rows = [attempt("a", base, base + seconds, limit_wait=2.0, limit_waits=waits)]
        await add_run(store, f"clean-{index}", rows, started=base)
    # Each took 1000 s, waited 900 s of it, and none of that measures the crew.
    slow = {"concurrency:search": 900.0}
    unclean: list[dict[str, Any]] = [
        {"paused": True},
        {"resumed": 1},
        {"status": RunStatus.CANCELLED},
    ]
    for index, flags in enumerate(unclean):
        base = 1000.0 + 2000 * index
        rows = [attempt("a", base, base + 1000, limit_wait=900.0, limit_waits=slow)]
        await add_run(store, f"unclean-{index}", rows, started=base, **flags)

    report = await analyze(store, "research")

    (task,) = report.tasks
    assert (task.runs, task.attempts) == (6, 6)  # counts come from every run
    assert (task.p50_seconds, task.p95_seconds) == (12.0, pytest.approx(13.8))
    assert (task.limit_wait, task.limit_wait_per_run) == (6.0, 2.0)
    (limit,) = report.bottlenecks.limits
    assert (limit.crew, limit.seconds, limit.runs) == ("research", 6.0, 3)
    assert limit.share == pytest.approx(6.0 / 36.0)
    (path,) = report.bottlenecks.critical_paths
    assert (path.runs, path.seconds) == (3, 12.0)


async def test_the_critical_path_uses_median_task_durations_of_the_latest_version() -> None:
    store = MemoryStore()
    # b is the longer branch in the median run, although c is longer in the last run.
    for index, (b, c) in enumerate([(5, 2), (6, 3), (4, 8)]):
        base = 100.0 * index
        rows = [
            attempt("a", base, base + 1),
            attempt("b", base + 1, base + 1 + b),
            attempt("c", base + 1, base + 1 + c),
            attempt("d", base + 1 + max(b, c), base + 2 + max(b, c)),
        ]
        await add_run(store, f"run-{index}", rows, started=base, graph=DIAMOND)
    # An older version with another shape does not count.
    await add_run(store, "old", [attempt("a", -100, -50)], started=-100, fingerprint="v0")

    (path,) = (await analyze(store, "research")).bottlenecks.critical_paths

    assert [(step.task, step.seconds) for step in path.tasks] == [
        ("a", 1.0),
        ("b", 5.0),
        ("d", 1.0),
    ]
    assert (path.seconds, path.work_seconds) == (7.0, 10.0)
    assert (path.fingerprint, path.runs) == ("v1", 3)


# -- recommendations -------------------------------------------------------------------------------


async def test_a_sequential_fan_out_is_advised_to_go_parallel() -> None:
    store = MemoryStore()
    await sequential_fan_out(store)

    report = await analyze(store, "research")

    (advice,) = report.recommendations
    assert advice.kind == RecommendationKind.SWITCH_PROCESS
    assert advice.target == "parallel"
    assert advice.saving_seconds == 30.0
    assert "about 12.0 s instead of 42.0 s" in advice.message
    assert "critical path 12.0 s: a → join" in advice.evidence
    assert "saving about 30.0 s per run (71 %)" in advice.evidence


async def test_the_parallel_estimate_respects_the_recorded_max_concurrency() -> None:
    store = MemoryStore()
    await sequential_fan_out(store, max_concurrency=2)

    (advice,) = (await analyze(store, "research")).recommendations

    assert advice.kind == RecommendationKind.SWITCH_PROCESS
    assert advice.saving_seconds == 20.0
    assert "about 22.0 s instead of 42.0 s" in advice.message


async def test_a_crew_already_declared_parallel_is_not_advised_to_switch() -> None:
    store = MemoryStore()
    await sequential_fan_out(store)
    agent = Agent(role="Researcher", goal="Find facts", llm="offline")
    tasks = [Task(f"Part {name}", agent=agent, name=name, context=[]) for name in "abcd"]
    join = Task("Join", agent=agent, name="join", context=tasks)
    crew = Crew(tasks=[*tasks, join], name="research", process="parallel")

    report = await analyze(store, crew)

    assert report.recommendations == []
    assert report.bottlenecks.critical_paths[0].seconds == 12.0


async def test_a_chain_is_not_advised_to_go_parallel() -> None:
    store = MemoryStore()
    rows = [attempt("a", 0, 10), attempt("b", 10, 20)]
    await add_run(store, "chain", rows, graph={"a": [], "b": ["a"]})

    assert (await analyze(store, "research")).recommendations == []


async def test_a_bounded_parallel_run_is_advised_to_raise_max_concurrency() -> None:
    store = MemoryStore()
    for index in range(2):
        base = 100.0 * index
        rows = [
            attempt(n, base + 10 * (i // 2), base + 10 * (i // 2 + 1)) for i, n in enumerate("abcd")
        ]
        rows.append(attempt("join", base + 20, base + 22))
        await add_run(
            store,
            f"par-{index}",
            rows,
            started=base,
            graph=FAN_OUT,
            process="parallel",
            max_concurrency=2,
        )

    (advice,) = (await analyze(store, "research")).recommendations

    assert advice.kind == RecommendationKind.RAISE_MAX_CONCURRENCY
    assert advice.message.startswith("Raise max_concurrency of research from 2 to 4")
    assert "about 12.0 s instead of 22.0 s" in advice.message
    assert advice.saving_seconds == 10.0


async def test_a_limit_that_holds_runs_back_is_reported_with_its_share() -> None:
    store = MemoryStore()
    rpm = "rpm:openai|https://api.openai.com/v1|gpt-4o"
    for index in range(5):
        base = 100.0 * index
        waits = {"concurrency:search": 4.0, rpm: 0.2}
        rows = [attempt("search", base, base + 10, limit_wait=4.2, limit_waits=waits)]
        await add_run(store, f"run-{index}", rows, started=base)

    report = await analyze(store, "research")

    search, model = report.bottlenecks.limits
    assert (search.kind, search.target, search.seconds, search.runs) == (
        "concurrency",
        "search",
        20.0,
        5,
    )
    assert search.share == pytest.approx(0.4)
    assert [(t.task, t.seconds) for t in search.tasks] == [("search", 20.0)]
    assert (model.kind, model.target) == ("rpm", "openai|https://api.openai.com/v1|gpt-4o")
    assert model.share == pytest.approx(0.02)
    (advice,) = report.recommendations  # 2 % of run time is below the threshold
    assert advice.kind == RecommendationKind.RAISE_LIMIT
    assert advice.target == "concurrency:search"
    assert advice.crew == "research"
    assert advice.message == (
        "Raise Limit(concurrency=...) for search: research waits on it 40 % of its run time"
    )
    assert advice.evidence[:2] == [
        "40 % of run time spent waiting on concurrency:search (20.0 s over 5 completed runs)",
        "waited in 5 of 5 completed runs",
    ]


async def test_retry_after_pauses_are_advised_a_rate_limit() -> None:
    store = MemoryStore()
    waits = {"retry_after:openai|https://api.openai.com/v1|gpt-4o": 3.0}
    await add_run(store, "run", [attempt("a", 0, 10, limit_waits=waits)])

    (advice,) = (await analyze(store)).recommendations

    assert advice.kind == RecommendationKind.ADD_RATE_LIMIT
    assert advice.target == "openai|https://api.openai.com/v1|gpt-4o"
    assert advice.evidence[0].startswith("30 % of run time")


async def test_waits_for_a_restarting_limit_actor_are_not_a_limit_to_raise() -> None:
    # Kickoffs on Ray wait while the cluster's limit actor restarts: no Limit to tune.
    store = MemoryStore()
    waits = {"limits_actor:restarted": 5.0, "limits_actor:unavailable": 1.0}
    await add_run(store, "run", [attempt("a", 0, 10, limit_waits=waits)])

    assert (await analyze(store)).recommendations == []


async def flaky_history(store: Store, *, error_type: str = "LLMError") -> None:
    """Seven runs of task ``flaky``: three fail once then succeed (3 of 10 attempts fail)."""
    for index in range(7):
        base = 100.0 * index
        if index < 3:
            rows = [
                attempt("flaky", base, base + 1, ok=False, error_type=error_type),
                attempt("flaky", base + 2, base + 4, number=2),
            ]
        else:
            rows = [attempt("flaky", base, base + 2)]
        await add_run(store, f"run-{index}", rows, started=base)


def research_crew(*, fallback: bool) -> Crew:
    researcher = Agent(role="Researcher", goal="Find facts", llm="offline")
    backup = Agent(role="Backup", goal="Find facts", llm="offline")
    task = Task(
        "Find facts", agent=researcher, name="flaky", fallback_agent=backup if fallback else None
    )
    return Crew(tasks=[task], name="research")


async def test_a_task_that_often_fails_is_advised_a_fallback() -> None:
    store = MemoryStore()
    await flaky_history(store)

    (advice,) = (await analyze(store, "research")).recommendations

    assert advice.kind == RecommendationKind.ADD_FALLBACK
    assert advice.target == "flaky"
    assert "fails 30 % of attempts" in advice.message
    assert advice.evidence[:3] == [
        "fails 30 % of attempts (3 of 10, over 7 runs)",
        "errors: LLMError ×3",
        "still failed after its last attempt in 0 of 7 runs",
    ]
    assert "check it has none" in advice.evidence[-1]


async def test_the_crew_tells_whether_the_task_already_has_a_fallback() -> None:
    store = MemoryStore()
    await flaky_history(store)

    without = await analyze(store, research_crew(fallback=False))
    with_one = await analyze(store, research_crew(fallback=True))

    (advice,) = without.recommendations
    assert advice.kind == RecommendationKind.ADD_FALLBACK
    assert not any("check it has none" in line for line in advice.evidence)
    assert with_one.crew == "research"
    assert with_one.recommendations == []


async def test_a_task_that_keeps_timing_out_is_advised_a_longer_timeout() -> None:
    store = MemoryStore()
    await flaky_history(store, error_type="TaskTimeout")

    (advice,) = (await analyze(store, research_crew(fallback=True))).recommendations

    assert advice.kind == RecommendationKind.RAISE_TIMEOUT
    assert "3 of its 10 attempts timed out" in advice.message
    assert "completed attempts took p50 2.0 s, p95 2.0 s" in advice.evidence


async def test_rare_failures_or_few_attempts_bring_no_advice() -> None:
    store = MemoryStore()
    rows = [attempt("flaky", 0, 1, ok=False), attempt("flaky", 1, 2, number=2)]
    await add_run(store, "run", rows)

    report = await analyze(store)

    assert report.tasks[0].failure_rate == 0.5
    assert report.recommendations == []


async def test_every_recommendation_names_its_crew_and_crews_are_never_merged() -> None:
    store = MemoryStore()
    # Two crews of one file, with the same tasks (one crew key), each waiting on its own limit
    # half of its run time, and failing 3 of 8 attempts.
    rate = "retry_after:openai|https://api.openai.com/v1|gpt-4o"
    crews = {"reports:daily": "concurrency:search", "reports:weekly": rate}
    for crew, limit in crews.items():
        for index in range(5):
            base = 100.0 * index
            rows = [attempt("a", base, base + 10, number=2, limit_waits={limit: 5.0})]
            if index < 3:
                rows.insert(0, attempt("a", base, base + 1, ok=False, error_type="LLMError"))
            choice = chose("sequential", {"sequential": 10.0}) if index == 0 else None
            process = "adaptive" if choice else "sequential"
            await add_run(
                store,
                f"{crew}-{index}",
                rows,
                started=base,
                crew=crew,
                crew_key="k1",
                process=process,
                choice=choice,
            )

    report = await analyze(store)

    assert sorted((stats.crew, stats.runs) for stats in report.processes) == [
        ("reports:daily", 5),
        ("reports:weekly", 5),
    ]
    assert sorted((stats.crew, stats.task) for stats in report.tasks) == [
        ("reports:daily", "a"),
        ("reports:weekly", "a"),
    ]
    assert sorted((wait.crew, wait.key, wait.share) for wait in report.bottlenecks.limits) == [
        ("reports:daily", "concurrency:search", 0.5),
        ("reports:weekly", rate, 0.5),
    ]
    assert sorted((advice.crew, advice.kind) for advice in report.recommendations) == [
        ("reports:daily", RecommendationKind.ADD_FALLBACK),
        ("reports:daily", RecommendationKind.RAISE_LIMIT),
        ("reports:weekly", RecommendationKind.ADD_FALLBACK),
        ("reports:weekly", RecommendationKind.ADD_RATE_LIMIT),
    ]
    assert all(advice.crew in advice.message for advice in report.recommendations)
    assert sorted(
        (learned.crew, learned.crew_key, learned.runs) for learned in report.learning
    ) == [
        ("reports:daily", "k1", 5),
        ("reports:weekly", "k1", 5),
    ]


# -- task durations from history (what the runtime's history() reads) ----------------------------


async def test_task_seconds_are_medians_of_the_clean_runs_of_the_crew_key() -> None:
    store = MemoryStore()
    runs = [(2, "k1", "sequential"), (4, "k1", "parallel"), (6, "k1", "sequential"), (10, "k2", "")]
    for index, (seconds, key, process) in enumerate(runs):
        base = 100.0 * index
        rows = [attempt("a", base, base + seconds), attempt("b", base + seconds, base + 11)]
        await add_run(store, f"run-{index}", rows, started=base, crew_key=key, process=process)
    await add_run(
        store,
        "failed",
        [attempt("a", 900, 990, ok=False)],
        started=900,
        status=RunStatus.FAILED,
        crew_key="k1",
    )
    # Completed, but not clean: a paused or resumed run's durations measure nothing.
    unclean: list[dict[str, Any]] = [{"paused": True}, {"resumed": 1}]
    for index, flags in enumerate(unclean):
        base = 1000.0 + 100 * index
        rows = [attempt("a", base, base + 90), attempt("b", base + 90, base + 95)]
        await add_run(store, f"unclean-{index}", rows, started=base, crew_key="k1", **flags)

    # Whichever process ran them: a crew key leaves the process out.
    assert (await read_history(store, "k1")).task_seconds == {"a": 4.0, "b": 7.0}
    assert (await read_history(store, "k2")).task_seconds == {"a": 10.0, "b": 1.0}
    assert (await read_history(store, "k1", task_runs=1)).task_seconds == {"a": 6.0, "b": 5.0}
    assert (await read_history(store, "other")).task_seconds == {}
    assert (await read_history(store, "")).task_seconds == {}


async def test_task_seconds_look_past_runs_of_other_keys_and_runs_that_are_not_clean() -> None:
    store = MemoryStore()
    await add_run(store, "old", [attempt("a", 0, 3)], crew_key="k1")
    for index in range(1, 6):
        base = 100 * index
        rows = [attempt("a", base, base + 1)]
        await add_run(store, f"new-{index}", rows, started=base, crew_key="k2")
        rows = [attempt("a", base + 50, base + 51, ok=False)]
        await add_run(
            store,
            f"failed-{index}",
            rows,
            started=base + 50,
            status=RunStatus.FAILED,
            crew_key="k1",
        )

    assert (await read_history(store, "k1", task_runs=1)).task_seconds == {"a": 3.0}
    assert (await read_history(store, "k2", task_runs=1)).task_seconds == {"a": 1.0}


# -- what a choosing process learned ---------------------------------------------------------------


def chose(
    process: str, predicted: dict[str, float], *, explored: bool = False, basis: str = "3 runs"
) -> ProcessChoice:
    """What adaptive records when it picks ``process``, having predicted those seconds."""
    predictions = [
        Prediction(
            process=name,
            seconds=seconds,
            lower_bound=1.0,
            basis=basis,
            unit="task units" if basis == "graph" else "s",
        )
        for name, seconds in sorted(predicted.items(), key=lambda item: item[1])
    ]
    return ProcessChoice(
        process=process, reason=f"{process}: why", explored=explored, predictions=predictions
    )


async def adaptive_history(store: Store) -> None:
    """Ten settled runs of crew key k1, one resumed, and runs of other keys.

    Direct runs: sequential 10, 12, 14 s; parallel 4, 6 s. Adaptive runs: a1 chose parallel
    (predicted 5 s, took 5 s), a2 explored sequential (predicted 12 s, took 10 s), a3 chose
    parallel (predicted 4 s, took 8 s), a4 chose parallel and failed, a5 chose parallel on a
    prediction in task units (took 6 s). So parallel's p50 is 6 s (4, 5, 6, 6, 8), sequential's
    11 s (10, 10, 12, 14).
    """
    predicted = {"parallel": 5.0, "sequential": 12.0}
    runs: list[tuple[str, str, float, dict[str, Any]]] = [
        ("s1", "sequential", 10, {}),
        ("s2", "sequential", 12, {}),
        ("s3", "sequential", 14, {}),
        ("p1", "parallel", 4, {}),
        ("p2", "parallel", 6, {}),
        ("a1", "adaptive", 5, {"choice": chose("parallel", predicted)}),
        ("a2", "adaptive", 10, {"choice": chose("sequential", predicted, explored=True)}),
        ("a3", "adaptive", 8, {"choice": chose("parallel", {**predicted, "parallel": 4.0})}),
        ("a4", "adaptive", 3, {"choice": chose("parallel", predicted), "ok": False}),
        (
            "a5",
            "adaptive",
            6,
            {"choice": chose("parallel", {"parallel": 2, "sequential": 3}, basis="graph")},
        ),
        # Not settled: resumed, so neither its duration nor its choice counts.
        ("a6", "adaptive", 100, {"choice": chose("sequential", predicted), "resumed": 1}),
    ]
    for index, (run_id, process, seconds, extra) in enumerate(runs):
        base, ok = 1000.0 * index, extra.pop("ok", True)
        await add_run(
            store,
            run_id,
            [attempt("a", base, base + seconds, ok=ok)],
            started=base,
            process=process,
            crew_key="k1",
            status=RunStatus.COMPLETED if ok else RunStatus.FAILED,
            **extra,
        )
    # Other keys: direct runs only (no learning), and adaptive runs recorded without a key.
    await add_run(store, "other-key", [attempt("a", 20000, 20001)], started=20000, crew_key="k2")
    await add_run(
        store,
        "no-key",
        [attempt("a", 21000, 21001)],
        started=21000,
        process="adaptive",
        choice=chose("parallel", predicted),
    )


async def test_learning_measures_each_process_of_the_crew_key_as_history_does() -> None:
    store = MemoryStore()
    await adaptive_history(store)

    (learning,) = (await analyze(store, "research")).learning

    assert (learning.crew, learning.crew_key, learning.runs) == ("research", "k1", 10)
    parallel, sequential = learning.processes  # fastest first
    assert (parallel.process, parallel.runs, parallel.settled) == ("parallel", 5, 6)
    assert parallel.success_rate == pytest.approx(5 / 6)
    assert parallel.p50_seconds == 6.0
    assert (parallel.chosen, parallel.explored) == (4, 0)
    assert (sequential.process, sequential.runs, sequential.settled) == ("sequential", 4, 4)
    assert sequential.p50_seconds == 11.0
    assert (sequential.chosen, sequential.explored) == (1, 1)
    history = await read_history(store, "k1")
    assert {p.process: p.p50_seconds for p in learning.processes} == {
        name: measured.p50_seconds for name, measured in history.processes.items()
    }


async def test_regret_compares_each_completed_adaptive_run_with_the_fastest_p50() -> None:
    store = MemoryStore()
    await adaptive_history(store)

    (learning,) = (await analyze(store)).learning
    (stats,) = learning.choices

    assert (stats.process, stats.runs, stats.failed) == ("adaptive", 5, 1)
    assert (stats.best_process, stats.best_p50_seconds) == ("parallel", 6.0)
    regrets = {o.run_id: o.regret for o in stats.outcomes}
    assert regrets == pytest.approx(
        {"a5": 0.0, "a4": None, "a3": 8 / 6 - 1, "a2": 10 / 6 - 1, "a1": 5 / 6 - 1}
    )
    assert list(regrets) == ["a5", "a4", "a3", "a2", "a1"]  # newest first
    assert (stats.regret_runs, stats.regret_explored) == (4, 1)
    assert stats.regret_mean == pytest.approx((0 + 2 / 6 + 4 / 6 - 1 / 6) / 4)
    assert stats.regret_max == pytest.approx(4 / 6)


async def test_predictions_in_seconds_are_compared_with_the_measured_durations() -> None:
    store = MemoryStore()
    await adaptive_history(store)

    (learning,) = (await analyze(store)).learning
    (stats,) = learning.choices

    outcomes = {o.run_id: o for o in stats.outcomes}
    # a2 explored sequential: its prediction is sequential's (12 s), not the best one's.
    assert [
        (outcomes[r].predicted_seconds, outcomes[r].actual_seconds) for r in ("a1", "a2", "a3")
    ] == [
        (5.0, 5.0),
        (12.0, 10.0),
        (4.0, 8.0),
    ]
    assert outcomes["a2"].error == pytest.approx(0.2)
    assert outcomes["a3"].error == pytest.approx(-0.5)
    assert (outcomes["a4"].status, outcomes["a4"].actual_seconds, outcomes["a4"].error) == (
        RunStatus.FAILED,
        None,
        None,
    )
    # a5's predictions rest on the graph alone: task units, not seconds.
    assert (outcomes["a5"].predicted_seconds, outcomes["a5"].error) == (None, None)
    assert stats.predicted_runs == 3
    assert stats.prediction_error == pytest.approx((0 + 0.2 + 0.5) / 3)


async def test_without_a_clean_run_there_is_no_regret_yet() -> None:
    store = MemoryStore()
    failing = chose("parallel", {"parallel": 1.0, "sequential": 2.0})
    for index in range(2):
        await add_run(
            store,
            f"f{index}",
            [attempt("a", 10 * index, 10 * index + 1, ok=False)],
            started=10 * index,
            process="adaptive",
            crew_key="k1",
            status=RunStatus.FAILED,
            choice=failing,
        )

    (learning,) = (await analyze(store)).learning
    (stats,) = learning.choices

    assert [(p.process, p.runs, p.settled, p.p50_seconds) for p in learning.processes] == [
        ("parallel", 0, 2, None)
    ]
    assert (stats.runs, stats.failed, stats.best_process, stats.regret_runs) == (2, 2, None, 0)
    assert (stats.regret_mean, stats.regret_max, stats.prediction_error) == (None, None, None)


async def test_crews_without_a_choosing_process_have_no_learning() -> None:
    store = MemoryStore()
    await sequential_fan_out(store, crew_key="k1")

    assert (await analyze(store)).learning == []


async def test_a_sqlite_history_gives_the_same_learning(tmp_path: Path) -> None:
    memory = MemoryStore()
    await adaptive_history(memory)
    async with SQLiteStore(tmp_path / "runs.db") as store:
        await adaptive_history(store)
        report = await analyze(store)

    assert report.learning == (await analyze(memory)).learning
    assert Report.model_validate_json(report.model_dump_json()) == report


@pytest.mark.parametrize("width", [60, 80, 120])
async def test_render_shows_the_learning_at_any_width(width: int) -> None:
    store = MemoryStore()
    await adaptive_history(store)

    text = text_of(await analyze(store, "research"), width=width)

    lines = [" ".join(line.split()) for line in text.splitlines()]
    assert "Learning of research (crew key k1): 10 settled runs" in lines
    assert "parallel 5 83 % 6.0 s 4 0" in lines
    assert "sequential 4 100 % 11.0 s 1 1" in lines
    assert "adaptive: 5 settled runs, 1 failed" in lines
    assert "fastest: parallel, p50 6.0 s" in lines
    if width >= 80:  # at 60 columns the summary lines may wrap
        assert "regret: mean +21 %, max +67 % over 4 runs, 1 explored" in lines
        assert "prediction error: mean ±23 % over 3 runs" in lines
    assert any(line.startswith("a2") and "sequential*" in line for line in lines)
    assert "* explored: chosen to measure it, not as the best prediction" in lines
    assert max(len(line) for line in text.splitlines()) <= width


# -- edges and output ------------------------------------------------------------------------------


async def test_an_empty_store_gives_an_empty_report() -> None:
    report = await analyze(MemoryStore(), "research")

    assert report.crew == "research"
    assert (report.runs, report.since, report.until) == (0, None, None)
    assert report.processes == report.tasks == report.recommendations == []
    assert report.bottlenecks.critical_paths == report.bottlenecks.limits == []
    assert Report.model_validate_json(report.model_dump_json()) == report
    assert "No runs recorded for crew research" in text_of(report)


async def test_runs_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        await analyze(MemoryStore(), runs=0)
    with pytest.raises(ValueError, match="at least 1"):
        await read_history(MemoryStore(), "k1", runs=0)


async def test_analyze_reads_only_the_newest_runs_of_the_crew() -> None:
    store = MemoryStore()
    await sequential_fan_out(store, runs=3)
    await add_run(store, "other", [attempt("x", 0, 1)], crew="other")

    report = await analyze(store, "research", runs=2)
    everything = await analyze(store)

    assert report.runs == 2
    assert {stats.crew for stats in report.tasks} == {"research"}
    assert [stats.task for stats in report.tasks] == ["a", "b", "c", "d", "join"]
    assert everything.runs == 4
    assert {path.crew for path in everything.bottlenecks.critical_paths} == {"research", "other"}


async def test_a_sqlite_history_gives_the_same_report(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "runs.db") as store:
        await sequential_fan_out(store)
        report = await analyze(store, "research")

    assert report.processes[0].p50_seconds == 42.0
    assert report.bottlenecks.critical_paths[0].seconds == 12.0
    assert [advice.saving_seconds for advice in report.recommendations] == [30.0]
    assert Report.model_validate_json(report.model_dump_json()) == report


async def test_render_prints_the_key_numbers() -> None:
    store = MemoryStore()
    await sequential_fan_out(store)
    waits = {"concurrency:[search]": 30.0}
    rows = [attempt("a", -1000, -900, limit_waits=waits)]
    await add_run(store, "waiting", rows, started=-1000, fingerprint="v0")

    text = text_of(await analyze(store, "research"))

    assert "4 runs of crew research" in text
    assert "42.0 s" in text  # the sequential runs' median
    assert "a 10.0 s → join 2.0 s = 12.0 s" in text
    assert "concurrency:[search]" in text  # brackets are not taken for markup
    assert "[switch_process]" in text
    assert "about 12.0 s instead of 42.0 s" in text
    assert "13 % of run time spent waiting on concurrency:[search]" in text


def test_importing_the_optimizer_loads_no_heavy_library() -> None:
    code = (
        "import sys, crewflow.optimizer; "
        "print(sorted({'rich', 'typer', 'networkx', 'openai', 'litellm'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
