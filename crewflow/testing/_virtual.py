"""A virtual-time event loop: sleeps take no real time, so timing behaviour is testable exactly.

When nothing is ready to run, the loop jumps its clock to the next timer instead of waiting.
Scheduling, timeouts, backoff and rate limits then run in virtual seconds: a crew of tasks that
each "take" 200 ms finishes at once, with every timestamp exactly where it would be on an
infinitely fast machine. Only for code without real I/O (offline, scripted and function LLMs):
a socket read would see time jump past it.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

T = TypeVar("T")

__all__ = ["VirtualTimeLoop", "run_virtual"]


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An asyncio loop whose ``time()`` is virtual and jumps to the next timer when idle."""

    def __init__(self) -> None:
        super().__init__()
        self._virtual_now = 0.0

    def time(self) -> float:
        """The virtual time in seconds (starts at 0)."""
        return self._virtual_now

    def advance(self, seconds: float) -> None:
        """Move the virtual clock ``seconds`` forward now.

        The loop never jumps while a worker thread is at work (a sync tool's time is real), so a
        test whose sync tool blocks on purpose moves the clock itself, e.g. past a task's
        timeout::

            await held_tool_entered.wait()
            asyncio.get_running_loop().advance(task.timeout)

        Raises:
            ValueError: ``seconds`` is negative.
        """
        if seconds < 0:
            raise ValueError(f"virtual time only moves forward; got {seconds} s")
        self._virtual_now += seconds

    def _run_once(self) -> None:
        # Nothing ready: instead of blocking until the earliest timer, move time to it.
        ready: Any = getattr(self, "_ready")  # noqa: B009 - asyncio internals, on purpose
        scheduled: Any = getattr(self, "_scheduled")  # noqa: B009
        if not ready and scheduled and not _threads_busy():
            pending = [timer.when() for timer in scheduled if not timer.cancelled()]
            if pending:
                self._virtual_now = max(self._virtual_now, min(pending))
        super()._run_once()  # type: ignore[misc]


def _threads_busy() -> bool:
    """Whether anyio worker threads (sync tools) or a store's thread are at work: their time
    is real, so the loop must wait for them rather than jump ahead."""
    import anyio.to_thread
    import sniffio

    from crewflow._runtime.clock import real_work_in_flight

    if real_work_in_flight():
        return True
    # Between callbacks no task is current, so tell anyio which library runs this loop.
    token = sniffio.current_async_library_cvar.set("asyncio")
    try:
        return anyio.to_thread.current_default_thread_limiter().borrowed_tokens > 0
    except Exception:  # anyio has not been used in this loop
        return False
    finally:
        sniffio.current_async_library_cvar.reset(token)


def run_virtual(function: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run ``function(*args)`` to completion on a fresh `VirtualTimeLoop` and return its result.

    Example:
        ```python
        result = run_virtual(crew.kickoff)
        assert result.duration == 0.6   # virtual seconds
        ```
    """
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(function(*args))  # type: ignore[arg-type]
