"""Advice on auto concurrency limits: a limit that settled is worth fixing."""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

from crewflow.optimizer._report import Recommendation, RecommendationKind
from crewflow.store._history import concurrency_changes

if TYPE_CHECKING:
    from collections.abc import Sequence

    from crewflow.store._history import RunAttempts

__all__ = ["STABLE_RUNS", "concurrency_advice"]

STABLE_RUNS = 3
"""Consecutive clean runs whose auto limit ended at one value make it worth fixing."""


def concurrency_advice(history: Sequence[RunAttempts]) -> list[Recommendation]:
    """A fixed `Limit(concurrency=n)` for each auto limit whose level stayed ``n`` at the end
    of a crew's last `STABLE_RUNS` clean runs (a run that changed nothing kept the level)."""
    by_crew: dict[str, list[RunAttempts]] = defaultdict(list)
    for run in sorted(history, key=lambda run: run.record.started):
        if run.clean:
            by_crew[run.record.crew].append(run)
    advice = []
    for crew, runs in by_crew.items():
        level: dict[str, int] = {}
        trail: dict[str, list[int]] = defaultdict(list)
        for run in runs:
            attempts = (attempt for group in run.attempts.values() for attempt in group)
            for _, key, _, new in concurrency_changes(attempts):
                level[key] = new
            for key, value in level.items():
                trail[key].append(value)
        for key, levels in trail.items():
            last = levels[-STABLE_RUNS:]
            if len(last) < STABLE_RUNS or len(set(last)) != 1:
                continue
            advice.append(
                Recommendation(
                    kind=RecommendationKind.FIX_CONCURRENCY,
                    crew=crew,
                    target=key,
                    message=f"Declare Limit(concurrency={last[0]}) for {key}: its auto limit "
                    f"settled at {last[0]} in the last {STABLE_RUNS} completed runs of {crew}, "
                    f"and a fixed value skips the search (and the pushback it costs)",
                    evidence=[
                        f"auto limit at the end of the last {len(levels)} completed runs: "
                        + ", ".join(str(value) for value in levels[-10:])
                    ],
                )
            )
    return advice
