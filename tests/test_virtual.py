"""`VirtualTimeLoop` / `run_virtual`: sleeps take no real time and the clock jumps exactly."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.from_thread
import pytest

from crewflow._runtime.clock import current_clock
from crewflow.testing import VirtualTimeLoop, run_virtual

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

T = TypeVar("T")


class WatchedLoop(VirtualTimeLoop):
    """A `VirtualTimeLoop` that notes each time it waits for real: a poll of its selector with
    a timeout other than zero. "Takes no real time" is then a fact of the run, not a stopwatch
    reading that a busy machine could spoil."""

    def __init__(self) -> None:
        super().__init__()
        self.real_waits: list[float | None] = []
        selector: Any = getattr(self, "_selector")  # noqa: B009 - asyncio internals, on purpose
        poll = selector.select

        def watched(timeout: float | None = None) -> Any:
            if timeout is None or timeout > 0:
                self.real_waits.append(timeout)
            return poll(timeout)

        selector.select = watched


def run_watched(scenario: Callable[[], Awaitable[T]]) -> tuple[T, list[float | None]]:
    """Run ``scenario`` as `run_virtual` does; return its result and the loop's real waits."""
    loop = WatchedLoop()
    with asyncio.Runner(loop_factory=lambda: loop) as runner:
        result = runner.run(scenario())  # type: ignore[arg-type]
    return result, loop.real_waits


def test_run_virtual_returns_the_coroutine_result_and_passes_arguments() -> None:
    async def add(a: int, b: int) -> int:
        await anyio.sleep(1)
        return a + b

    assert run_virtual(add, 2, 3) == 5


def test_run_virtual_propagates_the_coroutine_exception() -> None:
    async def fail() -> None:
        await anyio.sleep(0.5)
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        run_virtual(fail)


def test_run_virtual_runs_on_a_fresh_virtual_loop_starting_at_zero() -> None:
    async def look() -> tuple[type[asyncio.AbstractEventLoop], float]:
        loop = asyncio.get_running_loop()
        return type(loop), loop.time()

    first = run_virtual(look)
    second = run_virtual(look)

    assert first == (VirtualTimeLoop, 0.0)
    assert second == (VirtualTimeLoop, 0.0)  # a new loop each time: no time carried over


def test_a_long_sleep_advances_virtual_time_exactly_and_takes_no_real_time() -> None:
    async def sleep_long() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        before = loop.time()
        await anyio.sleep(100)
        return before, loop.time()

    (before, after), real_waits = run_watched(sleep_long)

    assert before == 0.0
    assert after == 100.0
    assert real_waits == []


def test_successive_and_concurrent_sleeps_add_up_as_on_an_infinitely_fast_machine() -> None:
    async def scenario() -> dict[str, float]:
        loop = asyncio.get_running_loop()
        ends: dict[str, float] = {}

        async def sleeper(name: str, seconds: float) -> None:
            await anyio.sleep(seconds)
            ends[name] = loop.time()

        async with anyio.create_task_group() as group:
            group.start_soon(sleeper, "short", 0.25)
            group.start_soon(sleeper, "long", 2.0)
            group.start_soon(sleeper, "mid", 1.5)
        await anyio.sleep(0.5)
        ends["after"] = loop.time()
        return ends

    assert run_virtual(scenario) == {"short": 0.25, "mid": 1.5, "long": 2.0, "after": 2.5}


def test_the_runtime_clock_reads_virtual_time() -> None:
    async def read() -> tuple[float, float]:
        clock = current_clock()
        before = clock.now()
        await clock.sleep(7.5)
        return before, clock.now()

    assert run_virtual(read) == (0.0, 7.5)


def test_cancelled_timers_do_not_make_the_loop_wait() -> None:
    async def scenario() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        handles = [loop.call_later(1000.0 + i, lambda: None) for i in range(5)]
        for handle in handles:
            handle.cancel()
        # Also a sleep cancelled by a scope: its timer is cancelled, not waited for.
        with anyio.move_on_after(3):
            await anyio.sleep(5000)
        cancelled_at = loop.time()
        await anyio.sleep(1)
        return cancelled_at, loop.time()

    (cancelled_at, end), real_waits = run_watched(scenario)

    assert cancelled_at == 3.0
    assert end == 4.0  # never jumped to 1000 or 5000
    assert real_waits == []  # nor waited for them


def test_a_loop_with_only_cancelled_timers_finishes_at_once() -> None:
    async def scenario() -> float:
        loop = asyncio.get_running_loop()
        loop.call_later(10_000, lambda: None).cancel()
        await asyncio.sleep(0)
        return loop.time()

    assert run_watched(scenario) == (0.0, [])


def test_fail_after_times_out_in_virtual_time() -> None:
    async def scenario() -> float:
        loop = asyncio.get_running_loop()
        with pytest.raises(TimeoutError):
            with anyio.fail_after(5):
                await anyio.sleep(60)
        return loop.time()

    assert run_watched(scenario) == (5.0, [])


def test_fail_after_does_not_fire_when_the_work_finishes_in_time() -> None:
    async def scenario() -> float:
        loop = asyncio.get_running_loop()
        with anyio.fail_after(5):
            await anyio.sleep(4.5)
        await anyio.sleep(10)  # the cancelled deadline timer does not interfere
        return loop.time()

    assert run_virtual(scenario) == 14.5


def test_an_event_set_later_wakes_its_waiter_at_the_setters_virtual_time() -> None:
    async def scenario() -> float:
        loop = asyncio.get_running_loop()
        event = anyio.Event()
        woke = 0.0

        async def waiter() -> None:
            nonlocal woke
            await event.wait()
            woke = loop.time()

        async def setter() -> None:
            await anyio.sleep(2.5)
            event.set()

        async with anyio.create_task_group() as group:
            group.start_soon(waiter)
            group.start_soon(setter)
        return woke

    assert run_virtual(scenario) == 2.5


def test_work_in_a_worker_thread_does_not_jump_virtual_time() -> None:
    async def scenario() -> float:
        loop = asyncio.get_running_loop()
        async with anyio.create_task_group() as group:
            group.start_soon(anyio.sleep, 100)  # some other task's timer, far away
            await anyio.to_thread.run_sync(time.sleep, 0.05)
            after_thread = loop.time()
            group.cancel_scope.cancel()
        return after_thread

    assert run_virtual(scenario) < 1.0


def test_advance_moves_the_clock_past_a_timeout_while_a_worker_thread_blocks() -> None:
    release = threading.Event()

    async def scenario() -> float:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualTimeLoop)
        entered = anyio.Event()

        def blocking() -> None:
            anyio.from_thread.run_sync(entered.set)
            release.wait()

        async def time_out() -> None:
            await entered.wait()
            loop.advance(30)  # the clock stood still while the thread worked

        with anyio.move_on_after(30) as scope:
            async with anyio.create_task_group() as group:
                group.start_soon(time_out)
                await anyio.to_thread.run_sync(blocking, abandon_on_cancel=True)
        assert scope.cancelled_caught
        return loop.time()

    try:
        assert run_virtual(scenario) == 30.0
    finally:
        release.set()


def test_time_never_moves_back() -> None:
    loop = VirtualTimeLoop()
    try:
        with pytest.raises(ValueError, match="only moves forward"):
            loop.advance(-1)
        assert loop.time() == 0.0
    finally:
        loop.close()
