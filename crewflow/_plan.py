"""What can be wrong with a plan: tasks a process wants to add to a running crew.

`TaskGraph.check_tasks` finds the problems, `ProcessContext.check_plan` hands them to a process
(to show a model that should plan again), and `crewflow.exceptions.InvalidPlan` carries them when
a plan is added anyway.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["PlanProblem", "ProblemKind"]


class ProblemKind(StrEnum):
    """What is wrong with a task of a plan (see `PlanProblem`). ``uncovered`` and
    ``unknown_task`` are a manager's: a crew task its plan has no step for, or a task the crew
    does not have."""

    UNNAMED = "unnamed"
    """The task has no name (an added task needs one, the same on every resume)."""
    DUPLICATE = "duplicate"
    """Its name is taken by another task, or the task itself is in the run already."""
    UNKNOWN_DEPENDENCY = "unknown_dependency"
    """Its context names a task that is neither in the run nor in the plan."""
    SELF_DEPENDENCY = "self_dependency"
    """Its context names the task itself."""
    CYCLE = "cycle"
    """Tasks of the plan depend on each other in a circle."""
    NO_AGENT = "no_agent"
    """It has no agent, and the crew has no single agent to give it."""
    MISSING_INPUT = "missing_input"
    """Its templates need inputs the run was not given."""
    UNCOVERED = "uncovered"
    """A manager's plan does not cover a crew task: no step, too many, or one without
    instructions."""
    UNKNOWN_TASK = "unknown_task"
    """The manager's plan names a task the crew does not have."""


@dataclass(frozen=True, slots=True)
class PlanProblem:
    """One thing wrong with a plan: tasks a process wants to add to a running crew.

    Attributes:
        kind: What is wrong.
        task: The name of the task it is wrong with (its description when it has no name).
        message: What is wrong and how to fix it, in a sentence.
    """

    kind: ProblemKind
    task: str
    message: str

    def describe(self) -> str:
        """The problem as a line for a prompt, e.g. to ask a manager for a better plan."""
        return f"- {self.task}: {self.message}"
