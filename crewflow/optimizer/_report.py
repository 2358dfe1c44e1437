"""The optimizer's report: frozen pydantic models of what `analyze` found."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from crewflow._records import RunStatus

__all__ = [
    "Bottlenecks",
    "ChoiceOutcome",
    "ChoiceStats",
    "CriticalPath",
    "Learning",
    "LimitWait",
    "MeasuredProcess",
    "ProcessStats",
    "Recommendation",
    "RecommendationKind",
    "Report",
    "TaskStats",
    "TaskTime",
]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ProcessStats(_Model):
    """How one crew's runs went under one process.

    Attributes:
        crew: The crew's name.
        process: The process's name.
        runs: Runs analysed.
        completed: Clean runs: completed by themselves, never paused or resumed.
        success_rate: Clean runs over settled ones (completed or failed, never paused or
            resumed); ``None`` while none has settled.
        p50_seconds: Median duration of the clean runs (``None``: none measured).
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
        p50_seconds: Median duration over the clean runs (completed by themselves, never
            paused or resumed) in which it completed (``None``: none).
        p95_seconds: 95th percentile of the same.
        limit_wait: Seconds its calls waited for limits, over the clean runs.
        limit_wait_per_run: ``limit_wait`` over the clean runs in which it made attempts.
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
    """Time one crew's tasks spent waiting on one limit, in its clean runs (completed by
    themselves, never paused or resumed).

    Attributes:
        crew: The crew's name.
        key: As recorded, e.g. ``"concurrency:search"``.
        kind: What held the calls: ``concurrency``, ``rpm``, ``tpm`` or ``retry_after``.
        target: The group name or the model's limit key.
        seconds: Total wait over the crew's clean runs analysed.
        runs: Those of its clean runs in which some call waited on it.
        share: ``seconds`` over the summed duration of the crew's clean runs analysed. Tasks
            running at once wait at once, so in parallel runs it can exceed 1.
        tasks: The tasks that waited on it longest (at most three), longest first.
    """

    crew: str
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
        limits: Per crew, the limits it waited on, longest total wait first.
    """

    critical_paths: list[CriticalPath]
    limits: list[LimitWait]


class MeasuredProcess(_Model):
    """What the settled runs of one crew key measured of one process, counted as the process
    context's ``history()`` counts them (`crewflow.store.read_history`): a choosing process's
    run counts for the process it chose.

    Attributes:
        process: The process that ran the tasks.
        runs: Clean runs (completed by themselves, never paused or resumed).
        settled: Runs that ended by themselves (completed or failed), never paused or resumed.
        success_rate: ``runs / settled`` (``None`` without a settled run).
        p50_seconds: Median duration of the clean runs (``None`` without one).
        chosen: Settled runs in which a choosing process (adaptive) picked it.
        explored: Those of ``chosen`` that picked it to measure it, not as the best prediction.
    """

    process: str
    runs: int
    settled: int
    success_rate: float | None
    p50_seconds: float | None
    chosen: int = 0
    explored: int = 0


class ChoiceOutcome(_Model):
    """One settled run of a choosing process: what it predicted of the process it chose, and
    what the run measured.

    Attributes:
        run_id: The run.
        chosen: The process it chose.
        explored: Whether it chose it to measure it.
        status: ``completed`` or ``failed``.
        predicted_seconds: The chosen candidate's predicted duration (``None``: none recorded,
            or it was in task units because no task had been measured yet).
        actual_seconds: The run's duration (``None`` unless it completed).
        error: ``predicted / actual - 1`` (``None`` without both).
        regret: ``actual / best_p50 - 1``, against the crew key's fastest process (``None``
            without both): 0 is as fast as the best process's median, and a run faster than
            that median is below 0.
    """

    run_id: str
    chosen: str
    explored: bool
    status: RunStatus
    predicted_seconds: float | None
    actual_seconds: float | None
    error: float | None
    regret: float | None


class ChoiceStats(_Model):
    """How well one choosing process (adaptive) chose for one crew key.

    Attributes:
        process: The choosing process.
        runs: Its settled runs.
        failed: Those that failed.
        best_process: The crew key's process with the lowest p50 (``None``: none measured).
        best_p50_seconds: That p50.
        regret_runs: Completed runs with a regret (see `ChoiceOutcome.regret`).
        regret_explored: Those of ``regret_runs`` that explored.
        regret_mean: Mean regret over ``regret_runs`` (``None`` without one).
        regret_max: Largest regret.
        predicted_runs: Completed runs whose chosen prediction was in seconds.
        prediction_error: Mean absolute `ChoiceOutcome.error` over ``predicted_runs``, as a
            fraction of the actual duration (``None`` without one).
        outcomes: Each settled run, newest first.
    """

    process: str
    runs: int
    failed: int
    best_process: str | None
    best_p50_seconds: float | None
    regret_runs: int
    regret_explored: int
    regret_mean: float | None
    regret_max: float | None
    predicted_runs: int
    prediction_error: float | None
    outcomes: list[ChoiceOutcome]


class Learning(_Model):
    """What the runs of one crew key taught: each process's measured speed, and how well a
    choosing process (adaptive) chose between them. Only a crew key with a settled run of a
    choosing process has one, per crew name: crews of different names are not merged (the
    runtime's ``history()`` reads a key's runs under any name).

    Attributes:
        crew: The crew's name.
        crew_key: The crew key (`crewflow.store.RunRecord.crew_key`): the same tasks, agents
            and models, under any process.
        runs: Settled runs of the key analysed.
        processes: Per process that ran the tasks, fastest p50 first (unmeasured last).
        choices: Per choosing process.
    """

    crew: str
    crew_key: str
    runs: int
    processes: list[MeasuredProcess]
    choices: list[ChoiceStats]


class RecommendationKind(StrEnum):
    """What a recommendation asks for."""

    SWITCH_PROCESS = "switch_process"
    """Run the crew under another process (``target``)."""
    RAISE_MAX_CONCURRENCY = "raise_max_concurrency"
    """Let more of the crew's tasks run at once."""
    RAISE_LIMIT = "raise_limit"
    """Raise a declared limit (``target``) that held calls back."""
    ADD_RATE_LIMIT = "add_rate_limit"
    """Declare an rpm/tpm limit under the provider's quota: its Retry-After pauses held calls."""
    ADD_FALLBACK = "add_fallback"
    """Give a task that often fails (``target``) a fallback agent."""
    RAISE_TIMEOUT = "raise_timeout"
    """Raise the timeout of a task (``target``) whose attempts time out."""
    FIX_CONCURRENCY = "fix_concurrency"
    """Replace an auto concurrency limit (``target``, its key) that settled with that fixed
    value."""


class Recommendation(_Model):
    """One change worth making, with its evidence.

    Attributes:
        kind: What to change.
        crew: The crew it concerns (a limit's too: the crew whose runs waited on it).
        target: What to change it on: a process, a limit key, a task.
        message: The advice, in one line.
        evidence: The measured numbers behind it.
        saving_seconds: Estimated seconds saved per run, where the records allow an estimate.
    """

    kind: RecommendationKind
    crew: str
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
        learning: Per crew and crew key that a choosing process (adaptive) ran, each
            process's measured speed and the regret of its choices, newest first.
    """

    crew: str | None
    runs: int
    since: datetime | None
    until: datetime | None
    processes: list[ProcessStats]
    tasks: list[TaskStats]
    bottlenecks: Bottlenecks
    recommendations: list[Recommendation]
    learning: list[Learning] = Field(default_factory=list)
