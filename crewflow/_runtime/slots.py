"""Task slots of one run: how many tasks run at once, pause/resume, and scaling while running.

A `SlotPool` is the per-task scheduling slot of the runtime. ``max_concurrency`` is never
exceeded, a paused pool grants nothing (in-flight tasks finish), and ``set_capacity`` scales up
or down while running (down: no new grant until enough slots are released).

Two ways in, for two kinds of process:

- ``await pool.acquire(priority, tie)`` waits its turn: the highest priority first, then the
  smallest ``tie`` (the runtime passes graph order). Sequential and simple plug-ins use it
  through ``ctx.execute``.
- ``pool.try_acquire()`` never waits. The run's dispatcher (``run_ready``, `dispatch.py`) keeps
  its own ready queue, takes slots while there are any, and waits on ``pool.changed()``; because
  it looks at its queue only when woken, a task that becomes ready at the instant a slot frees
  competes for that slot on priority instead of losing it to whoever asked first.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field

import anyio

__all__ = ["Slot", "SlotPool"]


@dataclass(eq=False)
class Slot:
    """A granted slot; give it back with `release` (idempotent)."""

    pool: SlotPool
    released: bool = False

    def release(self) -> None:
        """Give the slot back to its pool."""
        if not self.released:
            self.released = True
            self.pool._give_back()


@dataclass(order=True)
class _Waiter:
    key: tuple[float, int, int]
    event: anyio.Event = field(compare=False)
    slot: Slot | None = field(default=None, compare=False)
    gone: bool = field(default=False, compare=False)


class SlotPool:
    """Slots for the tasks of one run.

    Args:
        capacity: The most slots granted at once; ``None`` for no limit.
    """

    def __init__(self, capacity: int | None = None) -> None:
        self._check(capacity)
        self.capacity = capacity
        self.in_use = 0
        self.paused = False
        self._waiters: list[_Waiter] = []
        self._sequence = itertools.count()
        self._changed: anyio.Event | None = None  # made only when someone waits

    # -- granting ------------------------------------------------------------------------------

    @property
    def available(self) -> bool:
        """Whether a slot would be granted now."""
        return not self.paused and (self.capacity is None or self.in_use < self.capacity)

    def try_acquire(self) -> Slot | None:
        """A slot if one is free now (and nobody is queued for it), else ``None``."""
        if not self.available or self._has_waiters():
            return None
        self.in_use += 1
        return Slot(self)

    async def acquire(self, priority: float = 0.0, tie: int = 0) -> Slot:
        """Wait for a slot: higher ``priority`` first, then smaller ``tie``, then arrival."""
        slot = self.try_acquire()
        if slot is not None:
            return slot  # no extra loop turn: the task's own awaits follow at once
        waiter = _Waiter((-priority, tie, next(self._sequence)), anyio.Event())
        heapq.heappush(self._waiters, waiter)
        try:
            await waiter.event.wait()
        except BaseException:
            waiter.gone = True
            if waiter.slot is not None:  # granted as we were cancelled: pass it on
                waiter.slot.release()
            raise
        assert waiter.slot is not None
        return waiter.slot

    async def unpaused(self) -> None:
        """Return at once, or when the pool is resumed."""
        while self.paused:
            await self.changed()

    async def changed(self) -> None:
        """Return at the next release, resume, capacity change or `wake`."""
        if self._changed is None:
            self._changed = anyio.Event()
        await self._changed.wait()

    # -- control -------------------------------------------------------------------------------

    def pause(self) -> None:
        """Grant nothing until `resume` (tasks holding slots keep them)."""
        self.paused = True
        self._notify()

    def resume(self) -> None:
        """Grant slots again."""
        self.paused = False
        self._grant()
        self._notify()

    def set_capacity(self, capacity: int | None) -> None:
        """Change the number of slots while running."""
        self._check(capacity)
        self.capacity = capacity
        self._grant()
        self._notify()

    def wake(self) -> None:
        """Wake whoever waits in `changed` (the run's tasks changed: some ended or were
        added, so a dispatcher has something new to look at)."""
        self._notify()

    # -- internals -----------------------------------------------------------------------------

    def _give_back(self) -> None:
        self.in_use -= 1
        self._grant()
        self._notify()

    def _grant(self) -> None:
        while self.available and self._has_waiters():
            waiter = heapq.heappop(self._waiters)
            self.in_use += 1
            waiter.slot = Slot(self)
            waiter.event.set()

    def _has_waiters(self) -> bool:
        while self._waiters and self._waiters[0].gone:
            heapq.heappop(self._waiters)
        return bool(self._waiters)

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    @staticmethod
    def _check(capacity: int | None) -> None:
        if capacity is not None and capacity < 1:
            from crewflow.exceptions import ConfigurationError

            raise ConfigurationError(f"concurrency must be at least 1, not {capacity}")
