"""The optimizer: what a crew's recorded runs say, and what to change.

It reads only run records (`crewflow.store`): each run's process, status, times, usage, task
graph and ``max_concurrency``, and each task attempt's times, status, tokens, cache hits, retries
and waits for limits. `analyze` turns the last runs into a typed `Report`, per crew (crews are
told apart by name, and never merged):

- **processes**: per crew and process, runs, success rate, p50/p95 duration, tokens, cost;
- **tasks**: per task, duration, failure rate, retries, cache hit rate, time waited for limits;
- **bottlenecks**: the measured critical path of a typical run, and the limits tasks waited on;
- **recommendations**, each naming its crew, with the numbers behind it;
- **learning**: per crew and crew key that a choosing process (adaptive) ran, each process's
  measured p50, the regret of the choices (a run's duration over the fastest process's p50,
  minus 1) and the chosen predictions against the measured durations.

Definitions used throughout are those of `crewflow.store.read_history`, which the runtime's
``history()`` uses too (the same module counts the same runs the same way):

- A run is **clean** when it completed by itself, never paused or resumed: every timing
  statistic (run and task durations, critical paths, waits for limits and their share of run
  time) is measured over clean runs only (a paused run's clock includes the pause, a resumed
  one's the time it lay dead, a cancelled or failed one stopped early). Counts (runs, attempts,
  failures, retries, cache hits, tokens) come from every run.
- A task's **duration** in a clean run runs from its first attempt's start to its last
  attempt's end, and is measured only when that last attempt completed.
- **Percentiles** interpolate linearly between the closest ranks (numpy's default method).
- A **typical run** of a crew uses the median duration of each task over the clean runs that
  have the crew's latest fingerprint, on the task graph of the newest of them.

The thresholds that make a finding a recommendation are constants of this package
(`MIN_SAVING_SHARE`, `MIN_SAVING_SECONDS`, `LIMIT_WAIT_SHARE`, `FAILURE_RATE`, `MIN_ATTEMPTS`).
"""

from crewflow.optimizer._analyze import (
    FAILURE_RATE,
    LIMIT_WAIT_SHARE,
    MIN_ATTEMPTS,
    MIN_SAVING_SECONDS,
    MIN_SAVING_SHARE,
    analyze,
)
from crewflow.optimizer._graph import critical_path, estimate_duration
from crewflow.optimizer._render import render
from crewflow.optimizer._report import (
    Bottlenecks,
    ChoiceOutcome,
    ChoiceStats,
    CriticalPath,
    Learning,
    LimitWait,
    MeasuredProcess,
    ProcessStats,
    Recommendation,
    RecommendationKind,
    Report,
    TaskStats,
    TaskTime,
)
from crewflow.store._history import percentile

__all__ = [
    "FAILURE_RATE",
    "LIMIT_WAIT_SHARE",
    "MIN_ATTEMPTS",
    "MIN_SAVING_SECONDS",
    "MIN_SAVING_SHARE",
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
    "analyze",
    "critical_path",
    "estimate_duration",
    "percentile",
    "render",
]
