"""The sequential process: tasks one after another, in the order they are listed.

A task whose context is not declared receives the previous task's output (an implicit graph
edge); everything else — retries, timeouts, records, events — is the runtime's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from crewflow.exceptions import ConfigurationError
from crewflow.processes import Process

if TYPE_CHECKING:
    from crewflow.graph import TaskGraph
    from crewflow.processes import ProcessContext

__all__ = ["Sequential"]


class Sequential(Process):
    """Run tasks in list order, one at a time."""

    name: ClassVar[str] = "sequential"

    def prepare_graph(self, graph: TaskGraph) -> None:
        """A task whose context is not declared depends on the task before it."""
        graph.chain_undeclared()

    def validate(self, graph: TaskGraph) -> None:
        """Every task must come after the tasks its context names."""
        position = {name: i for i, name in enumerate(graph.names)}
        for name in graph.names:
            for dependency in graph.dependency_names(name):
                if position[dependency] > position[name]:
                    raise ConfigurationError(
                        f"task {name!r} needs the output of {dependency!r}, which is listed "
                        "after it; a sequential crew runs tasks in list order, so move "
                        f"{dependency!r} before {name!r}"
                    )

    async def run(self, ctx: ProcessContext) -> None:
        """Execute each task in turn; the first failure ends the run."""
        for task in ctx.graph.tasks:
            await ctx.execute(task)
