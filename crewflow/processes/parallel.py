"""The parallel process: every task as soon as its own dependencies are done and a slot is free.

Dependency-driven, never level by level: one slow branch never holds back unrelated ones. When
slots are scarce, the ready task that matters most goes first: higher ``Task.priority``, then the
longest remaining path to the end of the graph (measured durations where the run has them, else
every task counts the same), then declaration order. Work-conserving: a slot never stays idle
while a task is ready. ``max_concurrency``, pause and resume are the runtime's slots; retries,
limits, failure handling and records are the runtime's too.
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING, ClassVar

import anyio

from crewflow.processes import Process

if TYPE_CHECKING:
    from crewflow._runtime.run import Run
    from crewflow._runtime.slots import Slot

__all__ = ["Parallel"]


class Parallel(Process):
    """Run tasks concurrently as their dependencies allow, most urgent first."""

    name: ClassVar[str] = "parallel"

    async def run(self, run: Run) -> None:
        """Dispatch ready tasks into free slots until every task has ended.

        One dispatcher takes slots and starts tasks; each finished task releases its slot and
        queues the dependants it made ready before the dispatcher looks again, so a task that
        becomes ready at the instant a slot frees competes for it on priority.
        """
        graph = run.graph
        remaining = graph.remaining_paths(run.durations)
        blocking = {name: len(graph.dependency_names(name)) for name in graph.names}
        ready: list[tuple[int, float, int, str]] = []
        in_flight = 0

        def queue(name: str) -> None:
            task = graph.task(name)
            heapq.heappush(ready, (-task.priority, -remaining[name], graph.position(name), name))

        async def execute(name: str, slot: Slot) -> None:
            nonlocal in_flight
            await run.execute(graph.task(name), priority=remaining[name], slot=slot)
            for dependant in graph.dependant_names(name):
                blocking[dependant] -= 1
                if blocking[dependant] == 0:
                    queue(dependant)
            in_flight -= 1

        for name, count in blocking.items():
            if count == 0:
                queue(name)
        async with anyio.create_task_group() as group:
            while ready or in_flight:
                while ready:
                    slot = run.slots.try_acquire()
                    if slot is None:
                        break
                    in_flight += 1
                    group.start_soon(execute, heapq.heappop(ready)[3], slot)
                await run.slots.changed()
