"""A process plug-in, as a package would ship one: the crew's tasks in reverse order."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from crewflow.processes import Process

if TYPE_CHECKING:
    from crewflow.processes import ProcessContext


class Reverse(Process):
    """Run the crew's tasks last to first, each without the others' outputs.

    Only the summary above is what ``crewflow processes`` shows.
    """

    name: ClassVar[str] = "reverse"

    async def run(self, ctx: ProcessContext) -> None:
        for task in reversed(ctx.graph.tasks):
            await ctx.execute(task, context=[])
