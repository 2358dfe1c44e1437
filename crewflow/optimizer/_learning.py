"""What a choosing process (adaptive) learned: per crew key, each process's measured speed, the
regret of its choices, and its predictions against what its runs measured.

Runs are counted as the process context's ``history()`` counts them (`crewflow.store.read_history`,
the same functions): only settled runs (ended by themselves, never paused or resumed); durations
from clean ones (completed); a choosing process's run counts for the process it chose. Crews of
different names are told apart, even with one crew key.
"""

from __future__ import annotations

from collections import defaultdict
from statistics import fmean
from typing import TYPE_CHECKING

from crewflow._records import RunStatus
from crewflow.optimizer._report import ChoiceOutcome, ChoiceStats, Learning, MeasuredProcess
from crewflow.store._history import is_settled, process_history, run_seconds

if TYPE_CHECKING:
    from collections.abc import Sequence

    from crewflow._records import ProcessChoice
    from crewflow.store import RunRecord

__all__ = ["learning"]


def learning(records: Sequence[RunRecord]) -> list[Learning]:
    """Per crew and crew key with a settled run of a choosing process, newest first: what its
    settled ``records`` (newest first) measured of each process, and how well the choices
    went."""
    by_key: dict[tuple[str, str], list[RunRecord]] = defaultdict(list)
    for record in records:
        if record.crew_key and is_settled(record):
            by_key[(record.crew, record.crew_key)].append(record)
    return [
        _learning(crew, key, runs)
        for (crew, key), runs in by_key.items()
        if any(run.chosen for run in runs)
    ]


def _learning(crew: str, crew_key: str, runs: Sequence[RunRecord]) -> Learning:
    by_process: dict[str, list[RunRecord]] = defaultdict(list)
    for run in runs:
        by_process[run.ran].append(run)
    processes = [
        MeasuredProcess(
            process=name,
            runs=measured.runs,
            settled=measured.settled,
            success_rate=measured.success_rate,
            p50_seconds=measured.p50_seconds,
            chosen=sum(run.chosen == name for run in group),
            explored=sum(run.chosen == name and _explored(run) for run in group),
        )
        for name, group in by_process.items()
        for measured in [process_history(name, group)]
    ]
    processes.sort(key=lambda p: (p.p50_seconds is None, p.p50_seconds or 0.0))
    best = processes[0] if processes[0].p50_seconds is not None else None
    choosers: dict[str, list[RunRecord]] = defaultdict(list)
    for run in runs:
        if run.chosen:
            choosers[run.process].append(run)
    return Learning(
        crew=crew,
        crew_key=crew_key,
        runs=len(runs),
        processes=processes,
        choices=[_choice_stats(name, group, best) for name, group in choosers.items()],
    )


def _choice_stats(
    process: str, runs: Sequence[RunRecord], best: MeasuredProcess | None
) -> ChoiceStats:
    best_p50 = best.p50_seconds if best is not None else None
    outcomes = [_outcome(run, best_p50) for run in runs]
    regrets = [o.regret for o in outcomes if o.regret is not None]
    errors = [abs(o.error) for o in outcomes if o.error is not None]
    return ChoiceStats(
        process=process,
        runs=len(outcomes),
        failed=sum(o.status == RunStatus.FAILED for o in outcomes),
        best_process=best.process if best is not None else None,
        best_p50_seconds=best_p50,
        regret_runs=len(regrets),
        regret_explored=sum(o.explored for o in outcomes if o.regret is not None),
        regret_mean=fmean(regrets) if regrets else None,
        regret_max=max(regrets, default=None),
        predicted_runs=len(errors),
        prediction_error=fmean(errors) if errors else None,
        outcomes=outcomes,
    )


def _outcome(run: RunRecord, best_p50: float | None) -> ChoiceOutcome:
    actual = run_seconds(run)
    predicted = _predicted_seconds(run.choice)
    return ChoiceOutcome(
        run_id=run.run_id,
        chosen=run.ran,
        explored=_explored(run),
        status=run.status,
        predicted_seconds=predicted,
        actual_seconds=actual,
        error=predicted / actual - 1 if predicted is not None and actual else None,
        regret=actual / best_p50 - 1 if actual is not None and best_p50 else None,
    )


def _explored(run: RunRecord) -> bool:
    choice = run.choice
    return choice is not None and choice.explored


def _predicted_seconds(choice: ProcessChoice | None) -> float | None:
    """The chosen candidate's predicted seconds; ``None`` when the predictions were in task
    units (graph estimates made before any task was measured)."""
    if choice is None or any(p.unit != "s" for p in choice.predictions):
        return None
    return next((p.seconds for p in choice.predictions if p.process == choice.process), None)
