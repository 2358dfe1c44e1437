"""The optimizer: what a crew's recorded runs say, and what to change.

It reads only run records (`crewflow.store`): each run's process, status, times, usage, task
graph and ``max_concurrency``, and each task attempt's times, status, tokens, cache hits, retries
and waits for limits. `analyze` turns the last runs into a typed `Report`:

- **processes**: per crew and process, runs, success rate, p50/p95 duration, tokens, cost;
- **tasks**: per task, duration, failure rate, retries, cache hit rate, time waited for limits;
- **bottlenecks**: the measured critical path of a typical run, and the limits tasks waited on;
- **recommendations**, each with the numbers behind it.

`expected_durations` is the cheap part the runtime needs before a kickoff: each task's median
measured duration, which the parallel process uses to put the longest remaining path first.

Definitions used throughout:

- A task's **duration** in a run runs from its first attempt's start to its last attempt's end,
  and is measured only when that last attempt completed. In a resumed run only the last
  attempt counts (earlier ones may predate the restart), and the run's own duration is not
  measured at all (its clock includes the time it lay dead).
- **Percentiles** interpolate linearly between the closest ranks (numpy's default method).
- A **typical run** of a crew uses the median duration of each task over the completed runs
  that have the crew's latest fingerprint, on the task graph of the newest of them.

The thresholds that make a finding a recommendation are module constants (`MIN_SAVING_SHARE`,
`MIN_SAVING_SECONDS`, `LIMIT_WAIT_SHARE`, `FAILURE_RATE`, `MIN_ATTEMPTS`).
"""

from __future__ import annotations

import heapq
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from crewflow.store import AttemptRow, AttemptStatus, RunRecord, RunStatus

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from rich.console import Console

    from crewflow.crew import Crew
    from crewflow.store import Store

__all__ = [
    "FAILURE_RATE",
    "LIMIT_WAIT_SHARE",
    "MIN_ATTEMPTS",
    "MIN_SAVING_SECONDS",
    "MIN_SAVING_SHARE",
    "Bottlenecks",
    "CriticalPath",
    "LimitWait",
    "ProcessStats",
    "Recommendation",
    "RecommendationKind",
    "Report",
    "TaskStats",
    "TaskTime",
    "analyze",
    "critical_path",
    "estimate_duration",
    "expected_durations",
    "percentile",
    "render",
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
_SCAN_LIMIT = 1000  # runs expected_durations looks back through, at most


# -- the report ----------------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ProcessStats(_Model):
    """How one crew's runs went under one process.

    Attributes:
        crew: The crew's name.
        process: The process's name.
        runs: Runs analysed.
        completed: Runs that completed.
        success_rate: Completed runs over runs that ended (``None`` while none has).
        p50_seconds: Median duration of completed runs (``None``: none measured).
        p95_seconds: 95th percentile of the same.
        tokens: Prompt and completion tokens of every run.
        tokens_per_run: ``tokens`` over ``runs``.
        cost: USD over the runs whose cost is known (``None``: none is).
    """

    crew: str
    process: str
    runs: int
    completed: int
    success_rate: float | None
    p50_seconds: float | None
    p95_seconds: float | None
    tokens: int
    tokens_per_run: float
    cost: float | None


class TaskStats(_Model):
    """How one task went over the runs analysed.

    Attributes:
        crew: The crew's name.
        task: The task's name.
        runs: Runs in which it made at least one attempt.
        attempts: Its attempts that ended.
        failed: Those that failed.
        failure_rate: ``failed`` over ``attempts`` (0 without attempts).
        retries: Attempts beyond the first of each run, plus provider calls retried inside
            attempts.
        cache_hit_rate: Attempts answered from the cache, over ``attempts``.
        p50_seconds: Median duration over the runs where it completed (``None``: none did).
        p95_seconds: 95th percentile of the same.
        limit_wait: Seconds its calls waited for limits, over every run.
        limit_wait_per_run: ``limit_wait`` over ``runs``.
        tokens: Prompt and completion tokens of every attempt.
        cost: USD over the attempts whose cost is known (``None``: none is).
    """

    crew: str
    task: str
    runs: int
    attempts: int
    failed: int
    failure_rate: float
    retries: int
    cache_hit_rate: float
    p50_seconds: float | None
    p95_seconds: float | None
    limit_wait: float
    limit_wait_per_run: float
    tokens: int
    cost: float | None


class TaskTime(_Model):
    """A task with seconds measured for it (its median duration, or its wait on a limit)."""

    task: str
    seconds: float


class CriticalPath(_Model):
    """The longest chain of dependent tasks in a typical run of a crew.

    Attributes:
        crew: The crew's name.
        fingerprint: The crew version measured (its latest).
        runs: Completed runs measured.
        tasks: The chain, first to last.
        seconds: Its length: what the run takes with unbounded concurrency.
        work_seconds: The sum of every task's median: what it takes one task at a time.
    """

    crew: str
    fingerprint: str
    runs: int
    tasks: list[TaskTime]
    seconds: float
    work_seconds: float


class LimitWait(_Model):
    """Time tasks spent waiting on one limit.

    Attributes:
        key: As recorded, e.g. ``"concurrency:search"``.
        kind: What held the calls: ``concurrency``, ``rpm``, ``tpm`` or ``retry_after``.
        target: The group name or the model's limit key.
        seconds: Total wait over the runs analysed.
        runs: Runs in which some call waited on it.
        share: ``seconds`` over the summed duration of the runs analysed. Tasks running at once
            wait at once, so in parallel runs it can exceed 1.
        tasks: The tasks that waited on it longest (at most three), longest first.
    """

    key: str
    kind: str
    target: str
    seconds: float
    runs: int
    share: float
    tasks: list[TaskTime]


class Bottlenecks(_Model):
    """What held runs back.

    Attributes:
        critical_paths: The measured critical path of each crew's typical run.
        limits: The limits waited on, longest total wait first.
    """

    critical_paths: list[CriticalPath]
    limits: list[LimitWait]


class RecommendationKind(StrEnum):
    """What a recommendation asks for."""

    SWITCH_PROCESS = "switch_process"
    RAISE_MAX_CONCURRENCY = "raise_max_concurrency"
    RAISE_LIMIT = "raise_limit"
    ADD_RATE_LIMIT = "add_rate_limit"
    ADD_FALLBACK = "add_fallback"
    RAISE_TIMEOUT = "raise_timeout"


class Recommendation(_Model):
    """One change worth making, with its evidence.

    Attributes:
        kind: What to change.
        crew: The crew it concerns (``None``: limits, which every crew of a process shares,
            when the report covers every crew).
        target: What to change it on: a process, a limit key, a task.
        message: The advice, in one line.
        evidence: The measured numbers behind it.
        saving_seconds: Estimated seconds saved per run, where the records allow an estimate.
    """

    kind: RecommendationKind
    crew: str | None
    target: str
    message: str
    evidence: list[str]
    saving_seconds: float | None = None


class Report(_Model):
    """What `analyze` found.

    Attributes:
        crew: The crew analysed, or ``None`` for every crew in the store.
        runs: Runs analysed.
        since: When the oldest of them started (``None`` without runs).
        until: When the newest of them ended, or started if it has not ended.
        processes: Per crew and process, newest first.
        tasks: Per task, in each crew's latest declaration order.
        bottlenecks: Critical paths and limit waits.
        recommendations: Changes worth making, with their evidence.
    """

    crew: str | None
    runs: int
    since: datetime | None
    until: datetime | None
    processes: list[ProcessStats]
    tasks: list[TaskStats]
    bottlenecks: Bottlenecks
    recommendations: list[Recommendation]


# -- graph arithmetic ----------------------------------------------------------------------------


def percentile(values: Iterable[float], q: float) -> float | None:
    """The ``q``-quantile (0 to 1) of ``values`` by linear interpolation between closest ranks.

    The method numpy calls ``linear``: rank ``q * (n - 1)`` of the sorted values, interpolated.

    Example:
        ```python
        percentile([1, 2, 3, 4], 0.5)  # 2.5
        ```

    Returns:
        ``None`` when there are no values.
    """
    ordered = sorted(values)
    if not ordered:
        return None
    rank = q * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _dependencies(graph: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """Each task's distinct, known dependencies."""
    return {name: [d for d in dict.fromkeys(deps) if d in graph] for name, deps in graph.items()}


def _topological(deps: Mapping[str, Sequence[str]]) -> list[str]:
    """Tasks after their dependencies, declaration order breaking ties (a cycle's are left out)."""
    waiting = {name: len(ds) for name, ds in deps.items()}
    dependants: dict[str, list[str]] = defaultdict(list)
    for name, ds in deps.items():
        for dep in ds:
            dependants[dep].append(name)
    position = {name: index for index, name in enumerate(deps)}
    ready = [(position[name], name) for name, count in waiting.items() if count == 0]
    order: list[str] = []
    while ready:
        _, name = heapq.heappop(ready)
        order.append(name)
        for dependant in dependants[name]:
            waiting[dependant] -= 1
            if waiting[dependant] == 0:
                heapq.heappush(ready, (position[dependant], dependant))
    return order


def critical_path(
    graph: Mapping[str, Sequence[str]], durations: Mapping[str, float]
) -> tuple[float, list[str]]:
    """The longest chain of dependent tasks, weighted by ``durations`` (missing tasks: 0 s).

    Args:
        graph: Each task's dependencies, as in `RunRecord.graph`.
        durations: Seconds per task name.

    Returns:
        The chain's length in seconds and its task names, first to last (``(0.0, [])`` for an
        empty graph).
    """
    deps = _dependencies(graph)
    best: dict[str, tuple[float, str | None]] = {}
    for name in _topological(deps):
        start, parent = 0.0, None
        for dep in deps[name]:
            if parent is None or best[dep][0] > start:
                start, parent = best[dep][0], dep
        best[name] = (start + durations.get(name, 0.0), parent)
    if not best:
        return 0.0, []
    end: str | None = max(best, key=lambda name: best[name][0])
    length = best[end][0] if end is not None else 0.0
    path: list[str] = []
    while end is not None:
        path.append(end)
        end = best[end][1]
    return length, path[::-1]


def estimate_duration(
    graph: Mapping[str, Sequence[str]],
    durations: Mapping[str, float],
    *,
    max_concurrency: int | None = None,
) -> float:
    """How long a run takes when each task starts as soon as its dependencies are done and one
    of ``max_concurrency`` slots is free, the longest remaining path first (list scheduling, as
    the parallel process does).

    ``max_concurrency=1`` gives the sum of the durations (a sequential run); ``None`` (no bound)
    gives the critical path.

    Args:
        graph: Each task's dependencies, as in `RunRecord.graph`.
        durations: Seconds per task name (missing tasks: 0 s).
        max_concurrency: Tasks at once (``None``: unbounded).
    """
    deps = _dependencies(graph)
    order = _topological(deps)
    dependants: dict[str, list[str]] = defaultdict(list)
    for name in order:
        for dep in deps[name]:
            dependants[dep].append(name)
    remaining: dict[str, float] = {}
    for name in reversed(order):
        after = max((remaining[d] for d in dependants[name]), default=0.0)
        remaining[name] = durations.get(name, 0.0) + after
    position = {name: index for index, name in enumerate(graph)}
    waiting = {name: len(deps[name]) for name in order}
    ready = [(-remaining[n], position[n], n) for n in order if waiting[n] == 0]
    heapq.heapify(ready)
    running: list[tuple[float, int, str]] = []
    now = 0.0
    while ready or running:
        while ready and (max_concurrency is None or len(running) < max_concurrency):
            _, index, name = heapq.heappop(ready)
            heapq.heappush(running, (now + durations.get(name, 0.0), index, name))
        now = running[0][0]
        while running and running[0][0] <= now:  # everything ending now frees its slot first
            _, _, name = heapq.heappop(running)
            for dependant in dependants[name]:
                waiting[dependant] -= 1
                if waiting[dependant] == 0:
                    heapq.heappush(ready, (-remaining[dependant], position[dependant], dependant))
    return now


# -- reading the records -------------------------------------------------------------------------


@dataclass(slots=True)
class _Run:
    """One run's record with its attempts by task (attempt order)."""

    record: RunRecord
    attempts: dict[str, list[AttemptRow]] = field(default_factory=dict)

    @classmethod
    def of(cls, record: RunRecord, rows: Iterable[AttemptRow]) -> _Run:
        run = cls(record)
        for row in sorted(rows, key=lambda row: row.attempt):
            run.attempts.setdefault(row.task, []).append(row)
        return run

    @property
    def completed(self) -> bool:
        return self.record.status == RunStatus.COMPLETED

    def duration(self) -> float | None:
        """Seconds of a completed run that was never resumed, else ``None``."""
        record = self.record
        if not self.completed or record.resumed or record.ended is None:
            return None
        return max(0.0, (record.ended - record.started).total_seconds())

    def span(self) -> float:
        """Seconds from its start to its end, or to its last recorded activity."""
        ends = [r.end for rows in self.attempts.values() for r in rows if r.end is not None]
        end = self.record.ended or max(ends, default=self.record.started)
        return max(0.0, (end - self.record.started).total_seconds())

    def task_duration(self, task: str) -> float | None:
        """The task's measured duration, if its last attempt completed (see the module doc)."""
        rows = self.attempts.get(task)
        if not rows or rows[-1].status != AttemptStatus.COMPLETED or rows[-1].end is None:
            return None
        first = rows[-1] if self.record.resumed else rows[0]
        return max(0.0, (rows[-1].end - first.start).total_seconds())


async def _load(store: Store, records: Iterable[RunRecord]) -> list[_Run]:
    return [_Run.of(record, await store.attempts(record.run_id)) for record in records]


def _medians(runs: Iterable[_Run]) -> dict[str, float]:
    """Each task's median duration over ``runs``, in first-seen order."""
    measured: dict[str, list[float]] = defaultdict(list)
    for run in runs:
        for task in dict.fromkeys([*run.record.graph, *run.attempts]):
            seconds = run.task_duration(task)
            if seconds is not None:
                measured[task].append(seconds)
    return {task: _median(values) for task, values in measured.items()}


def _median(values: Sequence[float]) -> float:
    middle = percentile(values, 0.5)
    return 0.0 if middle is None else middle


def _sum_known(values: Iterable[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return sum(known) if known else None


def _tokens(item: RunRecord | AttemptRow) -> int:
    usage = item.usage if isinstance(item, RunRecord) else item
    return usage.prompt_tokens + usage.completion_tokens


def _label(crew: str, task: str, several_crews: bool) -> str:
    return f"{crew}:{task}" if several_crews else task


# -- statistics ----------------------------------------------------------------------------------


def _process_stats(history: Sequence[_Run]) -> list[ProcessStats]:
    groups: dict[tuple[str, str], list[_Run]] = defaultdict(list)
    for run in history:
        groups[(run.record.crew, run.record.process)].append(run)
    stats = []
    for (crew, process), group in groups.items():
        ended = sum(run.record.status != RunStatus.RUNNING for run in group)
        completed = sum(run.completed for run in group)
        durations = [d for run in group if (d := run.duration()) is not None]
        tokens = sum(_tokens(run.record) for run in group)
        stats.append(
            ProcessStats(
                crew=crew,
                process=process,
                runs=len(group),
                completed=completed,
                success_rate=completed / ended if ended else None,
                p50_seconds=percentile(durations, 0.5),
                p95_seconds=percentile(durations, 0.95),
                tokens=tokens,
                tokens_per_run=tokens / len(group),
                cost=_sum_known(run.record.usage.cost for run in group),
            )
        )
    return stats


def _task_entries(history: Sequence[_Run]) -> dict[tuple[str, str], list[_Run]]:
    """The runs in which each (crew, task) made attempts, in each crew's newest task order."""
    entries: dict[tuple[str, str], list[_Run]] = {}
    for run in history:  # newest first: a crew's newest graph sets its order
        crew = run.record.crew
        for task in dict.fromkeys([*run.record.graph, *run.attempts]):
            group = entries.setdefault((crew, task), [])
            if task in run.attempts:
                group.append(run)
    crews = list(dict.fromkeys(run.record.crew for run in history))
    ordered = sorted(entries.items(), key=lambda item: crews.index(item[0][0]))
    return {key: group for key, group in ordered if group}


def _task_stats(crew: str, task: str, runs: Sequence[_Run]) -> TaskStats:
    rows = [row for run in runs for row in run.attempts[task]]
    ended = [row for row in rows if row.status != AttemptStatus.RUNNING]
    failed = sum(row.status == AttemptStatus.FAILED for row in ended)
    durations = [d for run in runs if (d := run.task_duration(task)) is not None]
    wait = sum(row.limit_wait for row in rows)
    return TaskStats(
        crew=crew,
        task=task,
        runs=len(runs),
        attempts=len(ended),
        failed=failed,
        failure_rate=failed / len(ended) if ended else 0.0,
        retries=sum(len(run.attempts[task]) - 1 for run in runs)
        + sum(row.llm_retries for row in rows),
        cache_hit_rate=sum(row.cache_hit for row in ended) / len(ended) if ended else 0.0,
        p50_seconds=percentile(durations, 0.5),
        p95_seconds=percentile(durations, 0.95),
        limit_wait=wait,
        limit_wait_per_run=wait / len(runs),
        tokens=sum(_tokens(row) for row in rows),
        cost=_sum_known(row.cost for row in rows),
    )


def _typical_runs(history: Sequence[_Run]) -> dict[str, list[_Run]]:
    """Per crew, its completed runs with the fingerprint of its newest completed run."""
    latest: dict[str, str] = {}
    typical: dict[str, list[_Run]] = defaultdict(list)
    for run in history:
        if run.completed:
            record = run.record
            if latest.setdefault(record.crew, record.fingerprint) == record.fingerprint:
                typical[record.crew].append(run)
    return typical


def _critical_path(crew: str, typical: Sequence[_Run]) -> CriticalPath | None:
    graph = typical[0].record.graph
    if not graph:
        return None  # recorded before runs kept their graph
    durations = _medians(typical)
    length, path = critical_path(graph, durations)
    return CriticalPath(
        crew=crew,
        fingerprint=typical[0].record.fingerprint,
        runs=len(typical),
        tasks=[TaskTime(task=task, seconds=durations.get(task, 0.0)) for task in path],
        seconds=length,
        work_seconds=sum(durations.get(task, 0.0) for task in graph),
    )


def _limit_waits(history: Sequence[_Run]) -> list[LimitWait]:
    several = len({run.record.crew for run in history}) > 1
    total = sum(run.span() for run in history)
    waits: dict[str, float] = defaultdict(float)
    by_task: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    in_runs: dict[str, set[str]] = defaultdict(set)
    for run in history:
        for task, rows in run.attempts.items():
            for row in rows:
                for key, seconds in row.limit_waits.items():
                    waits[key] += seconds
                    by_task[key][_label(run.record.crew, task, several)] += seconds
                    in_runs[key].add(run.record.run_id)
    limits = []
    for key, seconds in sorted(waits.items(), key=lambda item: (-item[1], item[0])):
        if seconds <= 0:
            continue
        kind, _, target = key.partition(":")
        top = sorted(by_task[key].items(), key=lambda item: (-item[1], item[0]))[:3]
        limits.append(
            LimitWait(
                key=key,
                kind=kind,
                target=target,
                seconds=seconds,
                runs=len(in_runs[key]),
                share=seconds / total if total > 0 else 0.0,
                tasks=[TaskTime(task=task, seconds=wait) for task, wait in top],
            )
        )
    return limits


# -- recommendations -----------------------------------------------------------------------------


def _pct(share: float) -> str:
    return f"{share * 100:.0f} %"


def _process_advice(
    crew: str, typical: Sequence[_Run], process: str | None
) -> Recommendation | None:
    """Switch sequential to parallel, or raise a parallel run's ``max_concurrency``, when the
    typical run's graph says it saves enough."""
    process = process or typical[0].record.process
    same = [run for run in typical if run.record.process == process]
    measured = [d for run in same if (d := run.duration()) is not None]
    if not measured:
        return None
    graph, bound = same[0].record.graph, same[0].record.max_concurrency
    durations = _medians(typical)
    if process == "sequential":
        current = estimate_duration(graph, durations, max_concurrency=1)
        better = estimate_duration(graph, durations, max_concurrency=bound)
    elif process == "parallel" and bound is not None:
        current = estimate_duration(graph, durations, max_concurrency=bound)
        better = estimate_duration(graph, durations)
    else:
        return None
    now = _median(measured)
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


def _limit_advice(limit: LimitWait, runs: int, crew: str | None) -> Recommendation:
    evidence = [
        f"{_pct(limit.share)} of run time spent waiting on {limit.key} "
        f"({limit.seconds:.1f} s over {runs} runs)",
        f"waited in {limit.runs} of {runs} runs",
        "longest waits: " + ", ".join(f"{t.task} {t.seconds:.1f} s" for t in limit.tasks),
    ]
    if limit.kind == "retry_after":
        return Recommendation(
            kind=RecommendationKind.ADD_RATE_LIMIT,
            crew=crew,
            target=limit.target,
            message=f"Declare an rpm/tpm Limit for {limit.target} just under the provider's "
            f"quota (or ask for more): its Retry-After pauses held calls",
            evidence=evidence,
        )
    what = "concurrency" if limit.kind == "concurrency" else limit.kind
    quota = "" if limit.kind == "concurrency" else " (if the provider's quota allows)"
    return Recommendation(
        kind=RecommendationKind.RAISE_LIMIT,
        crew=crew,
        target=limit.key,
        message=f"Raise Limit({what}=...) for {limit.target}{quota}",
        evidence=evidence,
    )


def _has_fallback(spec: Crew | None, task: str, runs: Sequence[_Run]) -> bool | None:
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
    stats: TaskStats, runs: Sequence[_Run], spec: Crew | None
) -> Recommendation | None:
    if stats.attempts < MIN_ATTEMPTS or stats.failure_rate < FAILURE_RATE:
        return None
    rows = [row for run in runs for row in run.attempts[stats.task]]
    errors = Counter(
        row.error_type or "unknown" for row in rows if row.status == AttemptStatus.FAILED
    )
    gave_up = sum(run.attempts[stats.task][-1].status == AttemptStatus.FAILED for run in runs)
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
            if row.status == AttemptStatus.COMPLETED and row.end is not None
        ]
        if spans:
            evidence.append(
                f"completed attempts took p50 {_median(spans):.1f} s, "
                f"p95 {percentile(spans, 0.95) or 0.0:.1f} s"
            )
        return Recommendation(
            kind=RecommendationKind.RAISE_TIMEOUT,
            crew=stats.crew,
            target=stats.task,
            message=f"Raise the timeout of task {stats.task} (or split its work): "
            f"{timeouts} of its {stats.attempts} attempts timed out",
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
        message=f"Give task {stats.task} a fallback_agent (e.g. another model): it fails "
        f"{_pct(stats.failure_rate)} of attempts",
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
    name = spec.name if spec is not None else crew if isinstance(crew, str) else None
    history = await _load(store, await store.list_runs(crew=name, limit=runs))
    entries = _task_entries(history)
    tasks = [_task_stats(crew_name, task, group) for (crew_name, task), group in entries.items()]
    typical = _typical_runs(history)
    limits = _limit_waits(history)
    process = spec.process_name if spec is not None else None
    advice: list[Recommendation | None] = [
        _process_advice(crew_name, group, process) for crew_name, group in typical.items()
    ]
    advice += [
        _limit_advice(limit, len(history), name)
        for limit in limits
        if limit.share >= LIMIT_WAIT_SHARE
    ]
    advice += [_failure_advice(stats, entries[(stats.crew, stats.task)], spec) for stats in tasks]
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
    )


async def expected_durations(
    store: Store, crew: str, *, fingerprint: str | None = None, runs: int = 20
) -> dict[str, float]:
    """Each task's median measured duration over the crew's last ``runs`` completed runs.

    What the parallel process ranks ready tasks by (longest remaining path first) and the
    adaptive process estimates with. Reads only what it needs: the newest runs (at most 1000
    looked through) and their attempts.

    Example:
        ```python
        durations = await expected_durations(store, "research", fingerprint=crew_fingerprint)
        ```

    Args:
        store: Where the runs are recorded.
        crew: The crew's name.
        fingerprint: Only runs of this version of the crew.
        runs: How many completed runs to take the median over.

    Returns:
        Seconds per task name; empty when no completed run was recorded.

    Raises:
        ValueError: ``runs`` is below 1.
    """
    if runs < 1:
        raise ValueError(f"runs must be at least 1, not {runs}")
    limit = runs
    while True:
        records = await store.list_runs(crew=crew, limit=limit)
        chosen = [
            record
            for record in records
            if record.status == RunStatus.COMPLETED
            and (fingerprint is None or record.fingerprint == fingerprint)
        ][:runs]
        if len(chosen) == runs or len(records) < limit or limit >= _SCAN_LIMIT:
            break
        limit = min(limit * 4, _SCAN_LIMIT)
    return _medians(await _load(store, chosen))


# -- rendering -----------------------------------------------------------------------------------


def _seconds(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f} s"


def _cost(value: float | None) -> str:
    return "–" if value is None else f"${value:.4f}"


def _process_rows(report: Report, several: bool) -> list[list[str]]:
    return [
        [
            *([stats.crew] if several else []),
            stats.process or "?",
            str(stats.runs),
            "–" if stats.success_rate is None else _pct(stats.success_rate),
            _seconds(stats.p50_seconds),
            _seconds(stats.p95_seconds),
            f"{stats.tokens_per_run:,.0f}",
            _cost(stats.cost),
        ]
        for stats in report.processes
    ]


def _task_rows(report: Report, several: bool) -> list[list[str]]:
    return [
        [
            _label(stats.crew, stats.task, several),
            str(stats.runs),
            _seconds(stats.p50_seconds),
            _seconds(stats.p95_seconds),
            f"{_pct(stats.failure_rate)} ({stats.failed}/{stats.attempts})",
            str(stats.retries),
            _pct(stats.cache_hit_rate),
            _seconds(stats.limit_wait),
            f"{stats.tokens:,}",
        ]
        for stats in report.tasks
    ]


def _limit_rows(report: Report) -> list[list[str]]:
    return [
        [
            limit.key,
            _seconds(limit.seconds),
            _pct(limit.share),
            str(limit.runs),
            ", ".join(f"{t.task} {t.seconds:.1f} s" for t in limit.tasks),
        ]
        for limit in report.bottlenecks.limits
    ]


def _recommendation_lines(report: Report) -> list[tuple[str, str]]:
    """(text, style) lines: each recommendation, then its evidence."""
    lines: list[tuple[str, str]] = []
    for number, advice in enumerate(report.recommendations, start=1):
        saving = (
            "" if advice.saving_seconds is None else f" (saves ~{advice.saving_seconds:.1f} s/run)"
        )
        lines.append((f"{number}. [{advice.kind}] {advice.message}{saving}", "bold"))
        lines += [(f"     • {item}", "") for item in advice.evidence]
    return lines


def render(report: Report, console: Console) -> None:
    """Print ``report`` as rich tables: processes, tasks, bottlenecks, recommendations.

    Example:
        ```python
        from rich.console import Console

        render(await analyze(store, "research"), Console())
        ```
    """
    from rich import box
    from rich.table import Table
    from rich.text import Text

    def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> Table:
        made = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
        for index, header in enumerate(headers):
            made.add_column(header, justify="left" if index == 0 else "right")
        for row in rows:
            made.add_row(*(Text(cell) for cell in row))  # Text: names may hold [brackets]
        return made

    scope = f"crew {report.crew}" if report.crew else "every crew"
    if not report.runs or report.since is None or report.until is None:
        console.print(Text(f"No runs recorded for {scope}: nothing to analyse yet."))
        return
    span = f"{report.since:%Y-%m-%d %H:%M} to {report.until:%Y-%m-%d %H:%M}"
    console.print(Text(f"{report.runs} runs of {scope}, {span}", style="bold"))
    several = len({stats.crew for stats in report.processes}) > 1
    crew_column = ["crew"] if several else []
    headers = [*crew_column, "process", "runs", "success", "p50", "p95", "tokens/run", "cost"]
    console.print(table("Processes", headers, _process_rows(report, several)))
    headers = ["task", "runs", "p50", "p95", "failed", "retries", "cache", "limit wait", "tokens"]
    console.print(table("Tasks", headers, _task_rows(report, several)))
    for path in report.bottlenecks.critical_paths:
        steps = " → ".join(f"{step.task} {step.seconds:.1f} s" for step in path.tasks)
        console.print(
            Text(
                f"Critical path of {path.crew} ({path.runs} completed runs): {steps} = "
                f"{path.seconds:.1f} s; all tasks one after another: {path.work_seconds:.1f} s"
            )
        )
    if report.bottlenecks.limits:
        headers = ["limit", "waited", "share of run time", "runs", "longest waits"]
        console.print(table("Limits waited on", headers, _limit_rows(report)))
    if not report.recommendations:
        console.print(Text("No recommendations: nothing measured crosses a threshold."))
        return
    console.print(Text("Recommendations", style="bold"))
    for line, style in _recommendation_lines(report):
        console.print(Text(line, style=style))
