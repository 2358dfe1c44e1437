"""Test support: waiting on what has no event to wait on."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    from collections.abc import Callable


async def wait_until(predicate: Callable[[], bool], within: float = 5.0) -> None:
    """Poll ``predicate`` (the loopback server's counters, a clock's sleepers: they have no
    event) until it holds; fail after ``within`` seconds, which only a broken behaviour reaches."""
    with anyio.fail_after(within):
        while not predicate():  # noqa: ASYNC110
            await anyio.sleep(0.005)
