"""Where each task of a stored run is, as every view of a store tells it (`crewflow show`, the
dashboard): from the run's record, its lease, its attempts and its outputs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from crewflow._records import RunStatus, TaskStatus

if TYPE_CHECKING:
    from collections.abc import Collection, Iterable, Mapping, Sequence

    from crewflow.store import AddedTaskRecord, AttemptRecord, DecisionRecord, RunRecord

__all__ = [
    "CONDITION_FALSE",
    "NOT_RUN",
    "decision_notes",
    "in_flight",
    "not_chosen",
    "skip_reasons",
    "task_names",
    "task_statuses",
]

NOT_RUN = "not run"
"""A task of a run that ended (or that nothing executes any more) which never started, though
nothing it depends on failed: the run stopped first, or it will run when the run is resumed."""

CONDITION_FALSE = "condition false"
"""The reason a run records for a task whose condition was false."""


def not_chosen(router: str) -> str:
    """The reason a run records for a branch the router of task ``router`` did not choose."""
    return f"not chosen by the router of {router!r}"


_BLOCKING = frozenset({TaskStatus.FAILED, TaskStatus.SKIPPED, TaskStatus.CANCELLED})


def in_flight(run: RunRecord) -> tuple[str, ...]:
    """The tasks of ``run`` in flight, as its lease last said (none unless it is running)."""
    if run.status != RunStatus.RUNNING or run.lease is None:
        return ()
    return run.lease.running


def skip_reasons(decisions: Iterable[DecisionRecord]) -> dict[str, str]:
    """Each task a run recorded as skipped, with why (the last word on each)."""
    return {d.task: d.reason for d in decisions if d.kind == "skip"}


def decision_notes(decisions: Iterable[DecisionRecord]) -> dict[str, str]:
    """What each task's condition, router, map or loop decided, in words (``condition held``,
    ``chose fix``, ``mapped 3 items``, ``round 1: again; round 2: done``), for the views of a
    stored run."""
    notes: dict[str, list[str]] = {}
    for decision in decisions:
        value = decision.value
        if decision.kind == "condition" and isinstance(value, bool):
            said = "condition held" if value else CONDITION_FALSE
        elif decision.kind == "router" and isinstance(value, list):
            said = f"chose {', '.join(map(str, value)) or 'none'}"
        elif decision.kind == "map" and isinstance(value, list):
            said = f"mapped {len(value)} item{'' if len(value) == 1 else 's'}"
            said += f" ({decision.reason})" if decision.reason else ""
        elif decision.kind == "loop" and isinstance(value, bool):
            said = f"round {decision.key.rpartition('#')[2]}: {'done' if value else 'again'}"
        else:
            continue
        notes.setdefault(decision.task, []).append(said)
    return {task: "; ".join(said) for task, said in notes.items()}


def task_names(
    run: RunRecord,
    added: Iterable[AddedTaskRecord],
    attempts: Iterable[AttemptRecord],
    finished: Iterable[str],
) -> list[str]:
    """Every task of the run in graph order, then the tasks its process added, in the order
    added, then any other task its records name."""
    names = dict.fromkeys(run.graph)
    names.update(dict.fromkeys(task.name for task in added))
    names.update(dict.fromkeys(attempt.task for attempt in attempts))
    names.update(dict.fromkeys(finished))
    return list(names)


def task_statuses(
    run: RunRecord,
    names: Sequence[str],
    attempts: Iterable[AttemptRecord],
    finished: Collection[str],
    depends_on: dict[str, list[str]] | None = None,
    skipped: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Each of ``names``'s status: ``completed`` (it has an output, in ``finished``), ``running``
    (in flight), its last attempt's status, ``pending`` (not started, while the run goes on),
    ``skipped`` (recorded as skipped, in ``skipped`` with why; or never started while a task it
    depends on failed, was skipped or cancelled), else `NOT_RUN`. ``depends_on``: each task's
    dependencies (default: the run's graph)."""
    graph = run.graph if depends_on is None else depends_on
    last: dict[str, TaskStatus] = {}
    for attempt in attempts:
        last[attempt.task] = attempt.status
    flying = in_flight(run)
    statuses: dict[str, str] = {}
    for name in names:
        if name in finished:
            status: str = TaskStatus.COMPLETED
        elif name in flying:
            status = TaskStatus.RUNNING
        elif name in last:
            status = last[name]
        elif skipped and name in skipped:
            status = TaskStatus.SKIPPED
        elif run.status == RunStatus.RUNNING:
            status = TaskStatus.PENDING
        elif any(statuses.get(dep) in _BLOCKING for dep in graph.get(name, ())):
            status = TaskStatus.SKIPPED
        else:
            status = NOT_RUN
        statuses[name] = str(status)
    return statuses
