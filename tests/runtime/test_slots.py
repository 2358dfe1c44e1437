"""`SlotPool`: the run's task slots (capacity, priority order, pause, scaling)."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from crewflow._runtime.slots import Slot, SlotPool
from crewflow.exceptions import ConfigurationError


async def settle() -> None:
    """Let every runnable task take its next step (the pool grants synchronously)."""
    for _ in range(5):
        await anyio.lowlevel.checkpoint()


async def test_try_acquire_grants_up_to_the_capacity_and_release_frees() -> None:
    pool = SlotPool(2)
    first, second = pool.try_acquire(), pool.try_acquire()

    assert first is not None
    assert second is not None
    assert pool.try_acquire() is None
    first.release()
    first.release()  # idempotent: one release frees one slot
    assert pool.in_use == 1
    assert pool.try_acquire() is not None


async def test_no_capacity_means_no_limit() -> None:
    pool = SlotPool(None)

    slots = [pool.try_acquire() for _ in range(100)]

    assert all(slots)
    assert pool.in_use == 100


async def test_waiters_are_granted_by_priority_then_tie_then_arrival() -> None:
    pool = SlotPool(1)
    held = pool.try_acquire()
    assert held is not None
    order: list[str] = []

    async def wait(label: str, priority: float, tie: int) -> None:
        slot = await pool.acquire(priority, tie)
        order.append(label)
        slot.release()

    async with anyio.create_task_group() as group:
        group.start_soon(wait, "low", 1.0, 0)
        group.start_soon(wait, "high-late-tie", 5.0, 9)
        group.start_soon(wait, "high-early-tie", 5.0, 2)
        group.start_soon(wait, "mid", 3.0, 0)
        await settle()
        held.release()

    assert order == ["high-early-tie", "high-late-tie", "mid", "low"]


async def test_try_acquire_does_not_jump_the_queue() -> None:
    pool = SlotPool(1)
    held = pool.try_acquire()
    assert held is not None
    granted = anyio.Event()

    async def wait() -> None:
        (await pool.acquire()).release()
        granted.set()

    async with anyio.create_task_group() as group:
        group.start_soon(wait)
        await settle()
        held.release()  # handed straight to the waiter
        assert pool.try_acquire() is None or granted.is_set()
        with anyio.fail_after(5):
            await granted.wait()


async def test_pause_grants_nothing_until_resume() -> None:
    pool = SlotPool(3)
    pool.pause()
    assert pool.try_acquire() is None
    got: list[Slot] = []

    async def wait() -> None:
        got.append(await pool.acquire())

    async with anyio.create_task_group() as group:
        group.start_soon(wait)
        await settle()
        assert got == []
        pool.resume()
    assert len(got) == 1


async def test_set_capacity_scales_up_and_down_while_held() -> None:
    pool = SlotPool(1)
    first = pool.try_acquire()
    assert first is not None
    pool.set_capacity(3)
    assert pool.try_acquire() is not None
    assert pool.try_acquire() is not None
    assert pool.try_acquire() is None

    pool.set_capacity(1)
    first.release()
    assert pool.in_use == 2
    assert pool.try_acquire() is None  # still above the new capacity


async def test_changed_wakes_on_release_resume_and_resize() -> None:
    pool = SlotPool(1)
    slot = pool.try_acquire()
    assert slot is not None
    woken = 0

    async def watch() -> None:
        nonlocal woken
        for _ in range(3):
            await pool.changed()
            woken += 1

    async with anyio.create_task_group() as group:
        group.start_soon(watch)
        await settle()
        slot.release()
        await settle()
        pool.pause()
        await settle()
        pool.set_capacity(2)
    assert woken == 3


async def test_a_cancelled_waiter_leaves_no_slot_taken() -> None:
    pool = SlotPool(1)
    held = pool.try_acquire()
    assert held is not None

    with anyio.move_on_after(0.01):
        await pool.acquire()
    held.release()

    assert pool.in_use == 0
    assert pool.try_acquire() is not None


async def test_a_waiter_cancelled_just_after_its_grant_passes_the_slot_on() -> None:
    pool = SlotPool(1)
    held = pool.try_acquire()
    assert held is not None
    second_got = anyio.Event()

    async def first_waiter(scope_holder: list[anyio.CancelScope]) -> None:
        with anyio.CancelScope() as scope:
            scope_holder.append(scope)
            # Either the cancellation lands in acquire (which passes the slot on) or acquire
            # returns first and the slot is ours to give back.
            (await pool.acquire(priority=10)).release()

    async def second_waiter() -> None:
        (await pool.acquire(priority=1)).release()
        second_got.set()

    scopes: list[anyio.CancelScope] = []
    async with anyio.create_task_group() as group:
        group.start_soon(first_waiter, scopes)
        group.start_soon(second_waiter)
        await settle()
        held.release()  # granted to the first waiter...
        scopes[0].cancel()  # ...which is cancelled before it runs again
        with anyio.fail_after(5):
            await second_got.wait()
    assert pool.in_use == 0


def test_capacity_below_one_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="at least 1"):
        SlotPool(0)
