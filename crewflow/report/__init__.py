"""Seeing a run: `Report`, one self-contained HTML page of a run.

It reads records only (a stored run's, or a `crewflow.CrewResult`'s timeline), never live
runtime state. The page holds a Gantt of every task attempt, the requests in flight and waits
for limits per model, the dependency graph, usage and cost, the process and why it ran, the
optimizer's recommendations, and each task's output with its prompts and tool calls folded.
`Comparison` (`Report.compare`) puts two runs side by side.
"""

from crewflow.report._compare import (
    MAX_DIFF_LINES,
    Comparison,
    DiffLine,
    OutputChange,
    TaskComparison,
)
from crewflow.report._html import MAX_OUTPUT
from crewflow.report._model import Report, TaskEntry

__all__ = [
    "MAX_DIFF_LINES",
    "MAX_OUTPUT",
    "Comparison",
    "DiffLine",
    "OutputChange",
    "Report",
    "TaskComparison",
    "TaskEntry",
]
