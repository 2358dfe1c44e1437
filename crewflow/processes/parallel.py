"""The parallel process: every task as soon as its own dependencies are done and a slot is free.

It is one call: ``ctx.run_ready()``, the runtime's dependency-driven dispatcher (most urgent
first when slots are scarce: higher ``Task.priority``, then the longest remaining path, then
declaration order). ``max_concurrency``, pause and resume, retries, limits, failure handling and
records are the runtime's too.

Only declared ``context`` makes dependencies here: a crew switched over from ``sequential``, where
a task with undeclared context got the previous task's output, loses those edges. A crew of
several tasks none of which declares any context is the mark of one, and gets a
`crewflow.CrewflowWarning` at construction; declaring any context, even ``context=[]``, says the
tasks are meant to be as they are.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from crewflow._caller import warn
from crewflow.processes import Process

if TYPE_CHECKING:
    from crewflow.graph import TaskGraph
    from crewflow.processes import ProcessContext

__all__ = ["Parallel"]


class Parallel(Process):
    """Run tasks concurrently as their dependencies allow, most urgent first."""

    name: ClassVar[str] = "parallel"

    async def run(self, ctx: ProcessContext) -> None:
        """Dispatch every task as it becomes ready, until all have ended."""
        await ctx.run_ready()

    def validate(self, graph: TaskGraph) -> None:
        """Warn when none of several tasks declares context (see the module's docstring)."""
        tasks = graph.tasks
        if len(tasks) > 1 and all(task.context is None for task in tasks):
            first, second = graph.names[:2]
            warn(
                f"parallel crew: none of its {len(tasks)} tasks declares context, so they all "
                "start at once and none gets another's output (under sequential, each got the "
                "output of the task before it). Declare what each task needs, e.g. "
                f"context=[{first!r}] on {second!r} (tasks or task names), and context=[] on a "
                "task that needs nothing"
            )
