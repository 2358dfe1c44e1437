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
from collections import deque
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
    uses_durations: ClassVar[bool] = True

    async def run(self, run: Run) -> None:
        """Dispatch ready tasks into free slots until every task has ended.

        One dispatcher takes slots and starts tasks; each finished task releases its slot and
        queues the dependants it made ready before the dispatcher looks again, so a task that
        becomes ready at the instant a slot frees competes for it on priority.
        """
        await _Dispatch(run).run()


class _Dispatch:
    """The state of one parallel run: the ready queue, the count of unfinished dependencies,
    and a pool of reusable workers (spawning a task per crew task costs more than the
    scheduling itself at scale)."""

    def __init__(self, run: Run) -> None:
        graph = run.graph
        self.run_ = run
        self.remaining = graph.remaining_paths(run.durations)
        self.blocking = {name: len(graph.dependency_names(name)) for name in graph.names}
        self.ready: list[tuple[int, float, int, str]] = []
        self.in_flight = 0
        self.jobs: deque[tuple[str, Slot]] = deque()
        self.idle: list[anyio.Event] = []
        for name, count in self.blocking.items():
            if count == 0:
                self.queue(name)

    def queue(self, name: str) -> None:
        graph = self.run_.graph
        priority = graph.task(name).priority
        heapq.heappush(self.ready, (-priority, -self.remaining[name], graph.position(name), name))

    async def run(self) -> None:
        slots = self.run_.slots
        async with anyio.create_task_group() as group:
            while self.ready or self.in_flight:
                while self.ready:
                    slot = slots.try_acquire()
                    if slot is None:
                        break
                    self.in_flight += 1
                    name = heapq.heappop(self.ready)[3]
                    if self.idle:
                        self.jobs.append((name, slot))
                        self.idle.pop().set()
                    else:
                        group.start_soon(self.worker, name, slot)
                await slots.changed()
            for woken in self.idle:
                woken.set()

    async def worker(self, name: str, slot: Slot) -> None:
        while True:
            await self.execute(name, slot)
            if not self.jobs:
                woken = anyio.Event()
                self.idle.append(woken)
                await woken.wait()
                if not self.jobs:
                    return  # the run is over
            name, slot = self.jobs.popleft()

    async def execute(self, name: str, slot: Slot) -> None:
        run = self.run_
        await run.execute(run.graph.task(name), priority=self.remaining[name], slot=slot)
        for dependant in run.graph.dependant_names(name):
            self.blocking[dependant] -= 1
            if self.blocking[dependant] == 0:
                self.queue(dependant)
        self.in_flight -= 1
