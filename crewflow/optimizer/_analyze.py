"""`analyze`, and the rules that turn statistics into recommendations."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from crewflow._records import TaskStatus
from crewflow.optimizer._concurrency import concurrency_advice
from crewflow.optimizer._graph import critical_path, estimate_duration
from crewflow.optimizer._learning import learning
from crewflow.optimizer._report import (
    Bottlenecks,
    LimitWait,
    Recommendation,
    RecommendationKind,
    Report,
    TaskStats,
)
from crewflow.optimizer._stats import (
    _critical_path,
    _limit_waits,
    _pct,
    _process_stats,
    _task_entries,
    _task_stats,
    _typical_runs,
)
from crewflow.store._history import (
    RunAttempts,
    load_attempts,
    median,
    median_task_seconds,
    percentile,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from crewflow.crew import Crew
    from crewflow.store import Store

__all__ = [
    "FAILURE_RATE",
    "LIMIT_WAIT_SHARE",
    "MIN_ATTEMPTS",
    "MIN_SAVING_SECONDS",
    "MIN_SAVING_SHARE",
    "analyze",
]

MIN_SAVING_SHARE = 0.20
"""A process change is advised only if it saves at least this share of the measured run time."""
MIN_SAVING_SECONDS = 1.0
"""A process change is advised only if it saves at least this many seconds per run."""
LIMIT_WAIT_SHARE = 0.10
"""A limit is worth raising when waits on it add up to this share of the summed run time."""
FAILURE_RATE = 0.20
"""A task is advised a fallback (or a longer timeout) when this share of its attempts fail."""
MIN_ATTEMPTS = 5
"""Attempts a task needs before its failure rate counts."""

_TIMEOUT_ERROR = "TaskTimeout"


# -- recommendations -----------------------------------------------------------------------------
def _process_advice(
    crew: str, typical: Sequence[RunAttempts], process: str | None
) -> Recommendation | None:
    """Switch sequential to parallel, or raise a parallel run's ``max_concurrency``, when the
    typical run's graph says it saves enough."""
    process = process or typical[0].record.process
    same = [run for run in typical if run.record.process == process]
    measured = [d for run in same if (d := run.duration()) is not None]
    if not measured:
        return None
    graph, bound = same[0].record.graph, same[0].record.max_concurrency
    durations = median_task_seconds(typical)
    if process == "sequential":
        current = estimate_duration(graph, durations, max_concurrency=1)
        better = estimate_duration(graph, durations, max_concurrency=bound)
    elif process == "parallel" and bound is not None:
        current = estimate_duration(graph, durations, max_concurrency=bound)
        better = estimate_duration(graph, durations)
    else:
        return None
    now = median(measured)
    # Keep what the schedule does not explain (overheads, waits) in the estimate too.
    then = max(better, now - (current - better))
    saving = now - then
    if saving < MIN_SAVING_SECONDS or saving < MIN_SAVING_SHARE * now:
        return None
    length, path = critical_path(graph, durations)
    evidence = [
        f"measured: median {now:.1f} s over {len(measured)} completed {process} runs",
        f"critical path {length:.1f} s: " + " → ".join(path),
        f"every task one after another: {current:.1f} s (median task durations)",
        f"saving about {saving:.1f} s per run ({_pct(saving / now)})",
    ]
    if process == "sequential":
        limit = "unbounded" if bound is None else f"max_concurrency={bound}"
        evidence.insert(
            3, f"parallel ({limit}): about {then:.1f} s, every recorded dependency kept"
        )
        return Recommendation(
            kind=RecommendationKind.SWITCH_PROCESS,
            crew=crew,
            target="parallel",
            message=f"Switch {crew} to process='parallel': about {then:.1f} s instead of "
            f"{now:.1f} s per run",
            evidence=evidence,
            saving_seconds=saving,
        )
    assert bound is not None
    enough = next(
        (
            n
            for n in range(bound + 1, len(graph) + 1)
            if estimate_duration(graph, durations, max_concurrency=n) <= better + 1e-9
        ),
        len(graph),
    )
    evidence.insert(3, f"max_concurrency={enough}: about {then:.1f} s (no more helps)")
    return Recommendation(
        kind=RecommendationKind.RAISE_MAX_CONCURRENCY,
        crew=crew,
        target="max_concurrency",
        message=f"Raise max_concurrency of {crew} from {bound} to {enough}: about {then:.1f} s "
        f"instead of {now:.1f} s per run",
        evidence=evidence,
        saving_seconds=saving,
    )


def _limit_advice(limit: LimitWait, runs: int) -> Recommendation | None:
    """Advice on a limit ``limit.crew`` waited on, over its ``runs`` clean runs."""
    if limit.kind == "limits_actor":  # Ray's limit actor was restarting: nothing to tune
        return None
    crew = limit.crew
    evidence = [
        f"{_pct(limit.share)} of run time spent waiting on {limit.key} "
        f"({limit.seconds:.1f} s over {runs} completed runs)",
        f"waited in {limit.runs} of {runs} completed runs",
        "longest waits: " + ", ".join(f"{t.task} {t.seconds:.1f} s" for t in limit.tasks),
    ]
    if limit.kind == "retry_after":
        return Recommendation(
            kind=RecommendationKind.ADD_RATE_LIMIT,
            crew=crew,
            target=limit.target,
            message=f"Declare an rpm/tpm Limit for {limit.target} just under the provider's "
            f"quota (or ask for more): its Retry-After pauses held the calls of {crew}",
            evidence=evidence,
        )
    what = "concurrency" if limit.kind == "concurrency" else limit.kind
    quota = "" if limit.kind == "concurrency" else " (if the provider's quota allows)"
    return Recommendation(
        kind=RecommendationKind.RAISE_LIMIT,
        crew=crew,
        target=limit.key,
        message=f"Raise Limit({what}=...) for {limit.target}{quota}: {crew} waits on it "
        f"{_pct(limit.share)} of its run time",
        evidence=evidence,
    )


def _has_fallback(spec: Crew | None, task: str, runs: Sequence[RunAttempts]) -> bool | None:
    """Whether the task has a fallback agent: from the crew when given, else from a recorded
    attempt by another agent; ``None`` when neither tells."""
    if spec is not None:
        try:
            return spec.graph.task(task).fallback_agent is not None
        except KeyError:
            pass  # no longer in the crew: the records may still tell
    if any(len({row.agent for row in run.attempts[task]}) > 1 for run in runs):
        return True
    return False if spec is not None else None


def _failure_advice(
    stats: TaskStats, runs: Sequence[RunAttempts], spec: Crew | None
) -> Recommendation | None:
    if stats.attempts < MIN_ATTEMPTS or stats.failure_rate < FAILURE_RATE:
        return None
    rows = [row for run in runs for row in run.attempts[stats.task]]
    errors = Counter(row.error_type or "unknown" for row in rows if row.status == TaskStatus.FAILED)
    gave_up = sum(run.attempts[stats.task][-1].status == TaskStatus.FAILED for run in runs)
    evidence = [
        f"fails {_pct(stats.failure_rate)} of attempts ({stats.failed} of {stats.attempts}, "
        f"over {stats.runs} runs)",
        "errors: " + ", ".join(f"{name} ×{count}" for name, count in errors.most_common(3)),
        f"still failed after its last attempt in {gave_up} of {stats.runs} runs",
    ]
    timeouts = errors[_TIMEOUT_ERROR]
    if 2 * timeouts >= stats.failed:
        spans = [
            (row.end - row.start).total_seconds()
            for row in rows
            if row.status == TaskStatus.COMPLETED and row.end is not None
        ]
        if spans:
            evidence.append(
                f"completed attempts took p50 {median(spans):.1f} s, "
                f"p95 {percentile(spans, 0.95) or 0.0:.1f} s"
            )
        return Recommendation(
            kind=RecommendationKind.RAISE_TIMEOUT,
            crew=stats.crew,
            target=stats.task,
            message=f"Raise the timeout of task {stats.task} of {stats.crew} (or split its "
            f"work): {timeouts} of its {stats.attempts} attempts timed out",
            evidence=evidence,
        )
    has_fallback = _has_fallback(spec, stats.task, runs)
    if has_fallback:
        return None  # a fallback already takes over when its attempts are used up
    if has_fallback is None:
        evidence.append("crew not given and no fallback attempt recorded: check it has none")
    return Recommendation(
        kind=RecommendationKind.ADD_FALLBACK,
        crew=stats.crew,
        target=stats.task,
        message=f"Give task {stats.task} of {stats.crew} a fallback_agent (e.g. another "
        f"model): it fails {_pct(stats.failure_rate)} of attempts",
        evidence=evidence,
    )


# -- the public entry points ---------------------------------------------------------------------


async def analyze(store: Store, crew: str | Crew | None = None, *, runs: int = 100) -> Report:
    """Analyse the last ``runs`` recorded runs (of one crew, or of every crew).

    Example:
        ```python
        report = await analyze(SQLiteStore(), "research")
        for advice in report.recommendations:
            print(advice.message, advice.evidence)
        ```

    Args:
        store: Where the runs are recorded.
        crew: A crew name, or the `Crew` itself (its name; and then its tasks tell which
            already have a fallback agent, and its process is the one to improve on).
            ``None``: every crew in the store.
        runs: How many of the newest runs to read.

    Returns:
        The report; with no runs recorded, an empty one.

    Raises:
        ValueError: ``runs`` is below 1.
    """
    if runs < 1:
        raise ValueError(f"runs must be at least 1, not {runs}")
    spec = None if crew is None or isinstance(crew, str) else crew
    # A crew that kept its default name settles it as a kickoff does (the runs recorded it so).
    name = spec._settle_name() if spec is not None else crew if isinstance(crew, str) else None
    history = await load_attempts(store, await store.list_runs(crew=name, limit=runs))
    entries = _task_entries(history)
    tasks = [_task_stats(crew_name, task, group) for (crew_name, task), group in entries.items()]
    typical = _typical_runs(history)
    limits = _limit_waits(history)
    process = spec.process_name if spec is not None else None
    advice: list[Recommendation | None] = [
        _process_advice(crew_name, group, process) for crew_name, group in typical.items()
    ]
    clean = Counter(run.record.crew for run in history if run.clean)
    advice += [
        _limit_advice(limit, clean[limit.crew])
        for limit in limits
        if limit.share >= LIMIT_WAIT_SHARE
    ]
    advice += [_failure_advice(stats, entries[(stats.crew, stats.task)], spec) for stats in tasks]
    advice += concurrency_advice(history)
    return Report(
        crew=name,
        runs=len(history),
        since=min((run.record.started for run in history), default=None),
        until=max((run.record.ended or run.record.started for run in history), default=None),
        processes=_process_stats(history),
        tasks=tasks,
        bottlenecks=Bottlenecks(
            critical_paths=[
                path for c, group in typical.items() if (path := _critical_path(c, group))
            ],
            limits=limits,
        ),
        recommendations=[item for item in advice if item is not None],
        learning=learning([run.record for run in history]),
    )
