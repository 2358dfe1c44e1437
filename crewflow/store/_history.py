"""What earlier runs measured: the one statistics module of run records.

The process context's ``history()`` (what a process may learn from earlier runs of its crew)
and the optimizer (`crewflow.optimizer`) both read records through here, so both count the same
runs the same way:

- A run is **settled** when it ended by itself (``completed`` or ``failed``) and was never
  paused or resumed: only such a run's outcome and duration say something about its process.
- A run is **clean** when it is settled and ``completed``: durations (of runs and of tasks),
  waits, tokens and costs come from clean runs only; a success rate is clean runs over settled
  ones.
- A task's **duration** in a clean run runs from its first attempt's start to its last
  attempt's end, and is measured only when that last attempt completed.
- **Percentiles** interpolate linearly between the closest ranks (numpy's default method).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from crewflow._records import CONCURRENCY_CHANGES, AttemptRecord, RunStatus, TaskStatus

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from crewflow.store._base import Store
    from crewflow.store._records import RunRecord

__all__ = [
    "HISTORY_RUNS",
    "History",
    "ProcessHistory",
    "RunAttempts",
    "is_clean",
    "is_settled",
    "median_task_seconds",
    "percentile",
    "process_history",
    "read_history",
]

HISTORY_RUNS = 100
"""Runs of a crew key `read_history` reads at most (the newest)."""
HISTORY_TASK_RUNS = 20
"""Clean runs whose attempts give the median task durations (the newest)."""


def is_settled(record: RunRecord) -> bool:
    """Whether the run ended by itself and was never paused or resumed."""
    return (
        record.status in (RunStatus.COMPLETED, RunStatus.FAILED)
        and not record.resumed
        and not record.paused
        and record.ended is not None
    )


def is_clean(record: RunRecord) -> bool:
    """Whether the run is settled and completed: its duration measures its process."""
    return is_settled(record) and record.status == RunStatus.COMPLETED


def run_seconds(record: RunRecord) -> float | None:
    """A clean run's duration in seconds, else ``None``."""
    if not is_clean(record) or record.ended is None:
        return None
    return max(0.0, (record.ended - record.started).total_seconds())


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


def median(values: Sequence[float]) -> float:
    """The median of ``values`` (0.0 when there are none)."""
    middle = percentile(values, 0.5)
    return 0.0 if middle is None else middle


@dataclass(slots=True)
class RunAttempts:
    """One run's record with its attempts by task (attempt order)."""

    record: RunRecord
    attempts: dict[str, list[AttemptRecord]] = field(default_factory=dict)

    @classmethod
    def of(cls, record: RunRecord, attempts: Iterable[AttemptRecord]) -> RunAttempts:
        """Group ``attempts`` (of ``record``'s run) by task."""
        run = cls(record)
        for attempt in sorted(attempts, key=lambda attempt: attempt.number):
            run.attempts.setdefault(attempt.task, []).append(attempt)
        return run

    @property
    def clean(self) -> bool:
        """Whether the run is clean (see the module's docstring)."""
        return is_clean(self.record)

    def duration(self) -> float | None:
        """Seconds of a clean run, else ``None``."""
        return run_seconds(self.record)

    def task_duration(self, task: str, *, waits: bool = True) -> float | None:
        """The task's measured duration, in a clean run where its last attempt completed
        (else ``None``); ``waits=False``: less the time its calls waited for limits
        (Retry-After pauses, rate and concurrency limits), which says how busy the provider
        was rather than how long the task is."""
        attempts = self.attempts.get(task)
        if not self.clean or not attempts or attempts[-1].status != TaskStatus.COMPLETED:
            return None
        seconds = (attempts[-1].end - attempts[0].start).total_seconds()
        if not waits:
            seconds -= sum(attempt.limit_wait for attempt in attempts)
        return max(0.0, seconds)


async def load_attempts(store: Store, records: Iterable[RunRecord]) -> list[RunAttempts]:
    """Each run of ``records`` with its attempts, read from ``store``."""
    return [RunAttempts.of(record, await store.attempts(record.run_id)) for record in records]


def median_task_seconds(runs: Iterable[RunAttempts], *, waits: bool = True) -> dict[str, float]:
    """Each task's median duration over the clean ones of ``runs``, in first-seen order
    (``waits=False``: less its limit waits, see `RunAttempts.task_duration`)."""
    measured: dict[str, list[float]] = defaultdict(list)
    for run in runs:
        for task in dict.fromkeys([*run.record.graph, *run.attempts]):
            seconds = run.task_duration(task, waits=waits)
            if seconds is not None:
                measured[task].append(seconds)
    return {task: median(values) for task, values in measured.items()}


class ProcessHistory(BaseModel):
    """What the settled runs of one process measured.

    Attributes:
        process: The process that ran them (a choosing process's choice, not itself).
        runs: Clean runs (completed; never paused or resumed): what the durations, tokens and
            costs are measured over.
        settled: Runs that ended by themselves (completed or failed), never paused or resumed.
        success_rate: ``runs / settled`` (``None`` without a settled run).
        p50_seconds: Median duration of the clean runs (``None`` without one).
        p95_seconds: 95th percentile of those durations.
        tokens: Mean tokens (prompt + completion) per clean run.
        cost: Mean cost in USD per clean run, when known.
    """

    model_config = ConfigDict(frozen=True, defer_build=True)

    process: str
    runs: int = 0
    settled: int = 0
    success_rate: float | None = None
    p50_seconds: float | None = None
    p95_seconds: float | None = None
    tokens: float = 0.0
    cost: float | None = None


class History(BaseModel):
    """What the store knows of earlier runs of one crew key: the same tasks, agents and models,
    under any process (see `RunRecord.crew_key`).

    Attributes:
        crew_key: The crew key.
        runs: Settled runs read (at most `HISTORY_RUNS`, the newest).
        processes: Per process that ran them, what its runs measured.
        task_seconds: Each task's median duration over the newest clean runs, less the time
            its calls waited for limits (how long the task takes, not how busy the provider
            was while it ran).
        recent: The process that ran each of those settled runs, newest first.
    """

    model_config = ConfigDict(frozen=True, defer_build=True)

    crew_key: str = ""
    runs: int = 0
    processes: dict[str, ProcessHistory] = Field(default_factory=dict)
    task_seconds: dict[str, float] = Field(default_factory=dict)
    recent: list[str] = Field(default_factory=list)


def process_history(process: str, records: Sequence[RunRecord]) -> ProcessHistory:
    """What ``records`` (runs of ``process``) measured; only their settled runs count."""
    settled = [record for record in records if is_settled(record)]
    clean = [record for record in settled if record.status == RunStatus.COMPLETED]
    seconds = [s for record in clean if (s := run_seconds(record)) is not None]
    costs = [record.usage.cost for record in clean if record.usage.cost is not None]
    return ProcessHistory(
        process=process,
        runs=len(clean),
        settled=len(settled),
        success_rate=len(clean) / len(settled) if settled else None,
        p50_seconds=percentile(seconds, 0.5),
        p95_seconds=percentile(seconds, 0.95),
        tokens=sum(r.usage.total_tokens for r in clean) / len(clean) if clean else 0.0,
        cost=sum(costs) / len(costs) if costs else None,
    )


async def read_history(
    store: Store, crew_key: str, *, runs: int = HISTORY_RUNS, task_runs: int = HISTORY_TASK_RUNS
) -> History:
    """The history of ``crew_key`` in ``store``: its newest ``runs`` runs, and the attempts of
    its newest ``task_runs`` clean ones."""
    if not crew_key:
        return History()
    records = [record for record in await store.runs_of_key(crew_key, runs) if is_settled(record)]
    by_process: dict[str, list[RunRecord]] = defaultdict(list)
    for record in records:
        by_process[record.ran].append(record)
    clean = [record for record in records if record.status == RunStatus.COMPLETED]
    return History(
        crew_key=crew_key,
        runs=len(records),
        processes={name: process_history(name, group) for name, group in by_process.items()},
        task_seconds=median_task_seconds(
            await load_attempts(store, clean[:task_runs]), waits=False
        ),
        recent=[record.ran for record in records],
    )


LEARNED_RUNS = 10
"""Clean runs `learned_concurrency` looks through at most (the newest)."""


def concurrency_changes(attempts: Iterable[AttemptRecord]) -> list[tuple[float, str, int, int]]:
    """The changes of auto concurrency limits kept in ``attempts``' records, in time order:
    ``(seconds since the epoch, key, old, new)``."""
    changes: list[tuple[float, str, int, int]] = []
    for attempt in attempts:
        kept = attempt.details.get(CONCURRENCY_CHANGES)
        if not isinstance(kept, list):
            continue
        begun = attempt.start.timestamp()
        for change in kept:
            if not isinstance(change, dict):
                continue
            at, key, old, new = (change.get(name) for name in ("at", "key", "old", "new"))
            if (
                isinstance(at, int | float)
                and isinstance(key, str)
                and isinstance(old, int)
                and isinstance(new, int)
            ):
                changes.append((begun + at, key, old, new))
    changes.sort(key=lambda change: change[0])
    return changes


async def learned_concurrency(
    store: Store, keys: Iterable[str], *, runs: int = LEARNED_RUNS
) -> dict[str, int]:
    """What the newest clean runs (of any crew) learned of each auto concurrency limit of
    ``keys``: the level its last recorded change reached. A key no clean run changed is left
    out."""
    wanted = set(keys)
    learned: dict[str, int] = {}
    if not wanted:
        return learned
    for record in await store.list_runs(limit=runs * 2):
        if not is_clean(record):
            continue
        runs -= 1
        for _, key, _, new in concurrency_changes(await store.attempts(record.run_id)):
            if key in wanted:
                learned[key] = new  # time order: the last one wins
        wanted -= learned.keys()
        if not wanted or runs <= 0:
            break
    return learned
