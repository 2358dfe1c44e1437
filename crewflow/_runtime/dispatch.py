"""The shared dependency-driven dispatcher behind ``ProcessContext.run_ready()``.

Every task starts the moment its own dependencies have ended and a slot is free, never level by
level: one slow branch never holds back unrelated ones. When slots are scarce, the ready task that
matters most goes first: higher ``Task.priority``, then the longest remaining path to the end of
the graph (measured seconds where the run has them, else every task counts the same), then graph
order. Work-conserving: a slot never stays idle while a task is ready.

The run tells the dispatcher when a task ends (however it was started) and when tasks are added;
it keeps, for every task, the count of dependencies that have not ended, and a heap of the ready
ones. Dispatching looks at the heap only when woken by the slots, so a task that becomes ready at
the instant a slot frees competes for that slot on priority instead of losing it to whoever asked
first. Workers are reused: spawning a task per crew task costs more than the scheduling itself
at scale.
"""

from __future__ import annotations

import asyncio
import heapq
from collections import deque
from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from anyio.abc import TaskGroup

    from crewflow._runtime.run import Run
    from crewflow._runtime.slots import Slot

__all__ = ["Dispatcher"]


class Dispatcher:
    """The ready queue of one run.

    Args:
        run: The run whose tasks it dispatches.
        durations: Expected seconds per task name, where earlier runs measured them.
    """

    def __init__(self, run: Run, durations: Mapping[str, float]) -> None:
        self.run = run
        self.durations = durations
        self.remaining: dict[str, float] = {}
        self.blocking: dict[str, int] = {}
        self.heap: list[tuple[int, float, int, str]] = []
        self.active = False
        self.over = False
        self.in_flight = 0
        self.jobs: deque[tuple[str, Slot]] = deque()
        self.idle: list[asyncio.Future[None]] = []  # each parked worker's wake-up
        self.added(run.graph.names)

    # -- what the run tells it -----------------------------------------------------------------

    def added(self, names: Iterable[str]) -> None:
        """Tasks joined the graph: count what they wait for, and rank every task again (an
        added task lengthens the remaining paths of the tasks it depends on)."""
        run, graph = self.run, self.run.graph
        self.remaining = graph.remaining_paths(self.durations)
        for name in names:
            self.blocking[name] = sum(not run.released(d) for d in graph.dependency_names(name))
        ready = {entry[3] for entry in self.heap}
        ready.update(name for name in names if self.blocking[name] == 0)
        self.heap = []
        for name in ready:
            self._queue(name)
        heapq.heapify(self.heap)

    def ended(self, name: str) -> None:
        """Task ``name`` ended (finished, failed or skipped): its dependants wait for one
        fewer."""
        blocking = self.blocking
        for dependant in self.run.graph.dependant_names(name):
            count = blocking[dependant] - 1
            blocking[dependant] = count
            if count == 0:
                self._queue(dependant, push=True)

    # -- dispatching ---------------------------------------------------------------------------

    async def run_ready(self) -> None:
        """Dispatch ready tasks into free slots until every task of the graph has ended."""
        if self.active:
            raise RuntimeError("run_ready() is already running in this run; await that call")
        self.active = True
        self.over = False
        try:
            async with anyio.create_task_group() as group:
                await self._dispatch(group)
                # A worker still busy (a task that ended may still hand its output over to a
                # task delegated to it) finds the dispatch over when it is done, and returns.
                self.over = True
                for woken in self.idle:
                    if not woken.done():
                        woken.set_result(None)
        finally:
            self.active = False
            self.idle.clear()
            if self.in_flight or self.jobs:
                self._interrupted()

    def _interrupted(self) -> None:
        """The dispatch was cancelled (a deadline of the process's around `run_ready`, say)
        with tasks in flight or handed to a worker: its workers are gone, so count none in
        flight, give back the slots of the tasks that never started, and queue again what is
        ready, for the next call."""
        for _, slot in self.jobs:
            slot.release()
        self.jobs.clear()
        self.in_flight = 0
        self.added(self.run.graph.names)

    async def _dispatch(self, group: TaskGroup) -> None:
        run, slots = self.run, self.run.slots
        while True:
            while self.heap:
                name = self.heap[0][3]
                if (
                    run.ended(name)
                    or run.is_running(name)
                    or name in run.delegated
                    or name in run.owned
                ):
                    # Started directly meanwhile, done, delegated, or run by another task.
                    heapq.heappop(self.heap)
                    continue
                slot = slots.try_acquire()
                if slot is None:
                    break
                heapq.heappop(self.heap)
                self._start(group, name, slot)
            if run.unended == 0:
                return
            if not self.heap and not self.in_flight and not run.running:
                # A cancellation of the run may have reached its tasks and not this one yet:
                # it is taken here, and a task it cancelled is never given up.
                await anyio.lowlevel.checkpoint_if_cancelled()
                if run.give_up_cancelled():
                    continue  # their dependants are ready now, to be skipped
                raise RuntimeError(  # a bug of the runtime's, never a user's: say what is stuck
                    f"run_ready() found nothing ready, nothing running and tasks not ended: "
                    f"{[n for n in run.graph.names if not run.ended(n)]}"
                )
            await slots.changed()

    def _start(self, group: TaskGroup, name: str, slot: Slot) -> None:
        self.in_flight += 1
        idle = self.idle
        while idle:
            woken = idle.pop()
            if not woken.done():  # else its worker was cancelled while parked, and has left
                self.jobs.append((name, slot))
                woken.set_result(None)
                return
        group.start_soon(self._worker, name, slot)

    async def _worker(self, name: str, slot: Slot) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.run.execute(name, slot=slot)
            self.in_flight -= 1
            if not self.jobs:
                if self.over:
                    return
                # A bare future, not an anyio.Event (an asyncio.Event, its waiters' deque, a
                # future and two coroutines): a worker parks once a task in a wide graph.
                woken: asyncio.Future[None] = loop.create_future()
                self.idle.append(woken)
                await woken
                if not self.jobs:
                    return  # the dispatch is over
            name, slot = self.jobs.popleft()

    def _queue(self, name: str, *, push: bool = False) -> None:
        graph = self.run.graph
        entry = (-graph.task(name).priority, -self.remaining[name], graph.position(name), name)
        if push:
            heapq.heappush(self.heap, entry)
        else:
            self.heap.append(entry)
