"""The parallel process: every task as soon as its own dependencies are done and a slot is free.

It is one call: ``ctx.run_ready()``, the runtime's dependency-driven dispatcher (most urgent
first when slots are scarce: higher ``Task.priority``, then the longest remaining path, then
declaration order). ``max_concurrency``, pause and resume, retries, limits, failure handling and
records are the runtime's too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from crewflow.processes import Process

if TYPE_CHECKING:
    from crewflow.processes import ProcessContext

__all__ = ["Parallel"]


class Parallel(Process):
    """Run tasks concurrently as their dependencies allow, most urgent first."""

    name: ClassVar[str] = "parallel"

    async def run(self, ctx: ProcessContext) -> None:
        """Dispatch every task as it becomes ready, until all have ended."""
        await ctx.run_ready()
