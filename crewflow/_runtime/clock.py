"""The runtime's clock: monotonic time and sleeping, swappable for a fake one in tests.

Backoff waits and Retry-After pauses go through `current_clock()`, so tests can run retries
without waiting (`crewflow.testing.FakeClock`). The clock is a context variable: setting it
affects the current task and the tasks it starts, nothing else.
"""

from __future__ import annotations

import sys
import time
from contextvars import ContextVar, Token
from typing import Protocol


class Clock(Protocol):
    """Monotonic seconds and an async sleep."""

    def now(self) -> float:
        """Seconds on a monotonic clock."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds``."""
        ...


class SystemClock:
    """The real clock: the running event loop's time (monotonic) and `anyio.sleep`.

    Reading the loop's clock rather than `time.monotonic` directly keeps the runtime's timings
    consistent with its sleeps, also under a virtual-time loop
    (`crewflow.testing.VirtualTimeLoop`).
    """

    def now(self) -> float:
        """Seconds on the running loop's monotonic clock (`time.monotonic` outside a loop)."""
        # Without asyncio imported there is no running loop (and no need to import it here).
        asyncio = sys.modules.get("asyncio")
        if asyncio is not None:
            try:
                return float(asyncio.get_running_loop().time())
            except RuntimeError:
                pass
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        """Sleep for real."""
        import anyio

        await anyio.sleep(seconds)


_SYSTEM_CLOCK = SystemClock()
_clock: ContextVar[Clock | None] = ContextVar("crewflow_clock", default=None)


def current_clock() -> Clock:
    """The clock in force in this context."""
    return _clock.get() or _SYSTEM_CLOCK


def set_clock(clock: Clock) -> Token[Clock | None]:
    """Use ``clock`` in this context; returns a token for `reset_clock`."""
    return _clock.set(clock)


def reset_clock(token: Token[Clock | None]) -> None:
    """Undo a `set_clock`."""
    _clock.reset(token)


_real_work = 0


class _RealWork:
    """Mark an await on work done outside the event loop (a store's thread) for its duration:
    ``with real_work():``.

    That work takes real time, so a virtual-time loop (`crewflow.testing.run_virtual`) must
    wait for it rather than jump its clock ahead while it runs. One shared instance, which
    calling returns, keeps the count: every checkpoint enters it, and a generator-based context
    manager costs three times as much; an instance each would be one object more that every
    waiting checkpoint holds (and that the garbage collector counts).
    """

    __slots__ = ()

    def __call__(self) -> _RealWork:
        return self

    def __enter__(self) -> None:
        global _real_work
        _real_work += 1

    def __exit__(self, *exc: object) -> None:
        global _real_work
        _real_work -= 1


real_work = _RealWork()


def real_work_in_flight() -> bool:
    """Whether some `real_work` is being awaited."""
    return _real_work > 0
