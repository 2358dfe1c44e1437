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
    DUPLICATE = "duplicate"
    UNKNOWN_DEPENDENCY = "unknown_dependency"
    SELF_DEPENDENCY = "self_dependency"
    CYCLE = "cycle"
    NO_AGENT = "no_agent"
    MISSING_INPUT = "missing_input"
    UNCOVERED = "uncovered"
    UNKNOWN_TASK = "unknown_task"


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
