"""Reading run records and the statistics `analyze` reports on them.

The definitions (a task's duration, a typical run) are those of the `crewflow.optimizer` docstring.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from crewflow.optimizer._graph import critical_path, percentile
from crewflow.optimizer._report import CriticalPath, LimitWait, ProcessStats, TaskStats, TaskTime
from crewflow.store import AttemptRow, AttemptStatus, RunRecord, RunStatus

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from crewflow.store import Store


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
        """The task's measured duration, if its last attempt completed (see the package doc)."""
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


def _pct(share: float) -> str:
    return f"{share * 100:.0f} %"


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
