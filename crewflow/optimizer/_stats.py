"""Reading run records and the statistics `analyze` reports on them.

The definitions (a clean run, a task's duration, a typical run) are those of the
`crewflow.optimizer` docstring. Everything is per crew: crews are told apart by name.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

from crewflow._records import AttemptRecord, TaskStatus
from crewflow.optimizer._graph import critical_path
from crewflow.optimizer._report import CriticalPath, LimitWait, ProcessStats, TaskStats, TaskTime
from crewflow.store._history import (
    RunAttempts,
    median_task_seconds,
    percentile,
    process_history,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from crewflow.store import RunRecord


def _sum_known(values: Iterable[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return sum(known) if known else None


def _tokens(item: RunRecord | AttemptRecord) -> int:
    return item.usage.total_tokens


def _pct(share: float) -> str:
    return f"{share * 100:.0f} %"


# -- statistics ----------------------------------------------------------------------------------


def _process_stats(history: Sequence[RunAttempts]) -> list[ProcessStats]:
    groups: dict[tuple[str, str], list[RunAttempts]] = defaultdict(list)
    for run in history:
        groups[(run.record.crew, run.record.ran)].append(run)
    stats = []
    for (crew, process), group in groups.items():
        measured = process_history(process, [run.record for run in group])
        tokens = sum(_tokens(run.record) for run in group)
        stats.append(
            ProcessStats(
                crew=crew,
                process=process,
                runs=len(group),
                completed=measured.runs,
                success_rate=measured.success_rate,
                p50_seconds=measured.p50_seconds,
                p95_seconds=measured.p95_seconds,
                tokens=tokens,
                tokens_per_run=tokens / len(group),
                cost=_sum_known(run.record.usage.cost for run in group),
            )
        )
    return stats


def _task_entries(history: Sequence[RunAttempts]) -> dict[tuple[str, str], list[RunAttempts]]:
    """The runs in which each (crew, task) made attempts, in each crew's newest task order."""
    entries: dict[tuple[str, str], list[RunAttempts]] = {}
    for run in history:  # newest first: a crew's newest graph sets its order
        crew = run.record.crew
        for task in dict.fromkeys([*run.record.graph, *run.attempts]):
            group = entries.setdefault((crew, task), [])
            if task in run.attempts:
                group.append(run)
    crews = list(dict.fromkeys(run.record.crew for run in history))
    ordered = sorted(entries.items(), key=lambda item: crews.index(item[0][0]))
    return {key: group for key, group in ordered if group}


def _task_stats(crew: str, task: str, runs: Sequence[RunAttempts]) -> TaskStats:
    rows = [row for run in runs for row in run.attempts[task]]
    ended = rows  # a record holds finished attempts only
    failed = sum(row.status == TaskStatus.FAILED for row in ended)
    # Counts come from every run, times from clean ones only.
    clean = [run for run in runs if run.clean]
    durations = [d for run in clean if (d := run.task_duration(task)) is not None]
    wait = sum(row.limit_wait for run in clean for row in run.attempts[task])
    return TaskStats(
        crew=crew,
        task=task,
        runs=len(runs),
        attempts=len(ended),
        failed=failed,
        failure_rate=failed / len(ended) if ended else 0.0,
        retries=sum(len(run.attempts[task]) - 1 for run in runs)
        + sum(row.llm_retries for row in rows),
        cache_hit_rate=sum(row.cache_hits > 0 for row in ended) / len(ended) if ended else 0.0,
        p50_seconds=percentile(durations, 0.5),
        p95_seconds=percentile(durations, 0.95),
        limit_wait=wait,
        limit_wait_per_run=wait / len(clean) if clean else 0.0,
        tokens=sum(_tokens(row) for row in rows),
        cost=_sum_known(row.usage.cost for row in rows),
    )


def _typical_runs(history: Sequence[RunAttempts]) -> dict[str, list[RunAttempts]]:
    """Per crew, its completed runs with the fingerprint of its newest completed run."""
    latest: dict[str, str] = {}
    typical: dict[str, list[RunAttempts]] = defaultdict(list)
    for run in history:
        if run.clean:
            record = run.record
            if latest.setdefault(record.crew, record.fingerprint) == record.fingerprint:
                typical[record.crew].append(run)
    return typical


def _critical_path(crew: str, typical: Sequence[RunAttempts]) -> CriticalPath | None:
    graph = typical[0].record.graph
    if not graph:
        return None  # recorded before runs kept their graph
    durations = median_task_seconds(typical)
    length, path = critical_path(graph, durations)
    return CriticalPath(
        crew=crew,
        fingerprint=typical[0].record.fingerprint,
        runs=len(typical),
        tasks=[TaskTime(task=task, seconds=durations.get(task, 0.0)) for task in path],
        seconds=length,
        work_seconds=sum(durations.get(task, 0.0) for task in graph),
    )


def _limit_waits(history: Sequence[RunAttempts]) -> list[LimitWait]:
    """Per crew, each limit its clean runs waited on, longest total wait first."""
    measured: dict[str, float] = defaultdict(float)  # per crew, its clean runs' summed durations
    waits: dict[tuple[str, str], float] = defaultdict(float)
    by_task: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    in_runs: dict[tuple[str, str], set[str]] = defaultdict(set)
    for run in history:
        crew, seconds = run.record.crew, run.duration()
        if seconds is None:
            continue  # not clean: its clock may include a pause, or the time it lay dead
        measured[crew] += seconds
        for task, rows in run.attempts.items():
            for row in rows:
                for key, wait in row.limit_waits.items():
                    waits[(crew, key)] += wait
                    by_task[(crew, key)][task] += wait
                    in_runs[(crew, key)].add(run.record.run_id)
    limits = []
    for (crew, key), seconds in sorted(waits.items(), key=lambda item: (-item[1], item[0])):
        if seconds <= 0:
            continue
        kind, _, target = key.partition(":")
        top = sorted(by_task[(crew, key)].items(), key=lambda item: (-item[1], item[0]))[:3]
        limits.append(
            LimitWait(
                crew=crew,
                key=key,
                kind=kind,
                target=target,
                seconds=seconds,
                runs=len(in_runs[(crew, key)]),
                share=seconds / measured[crew] if measured[crew] > 0 else 0.0,
                tasks=[TaskTime(task=task, seconds=wait) for task, wait in top],
            )
        )
    return limits
