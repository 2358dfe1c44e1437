"""Test support: a sync tool whose calls hold their worker thread until the test releases them,
and the log lines they cause.

Each call announces itself on the event loop, so a test waits for events, never for time; a
generous guard turns a hang into a failure.
"""

from __future__ import annotations

import asyncio
import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import anyio
import structlog
from structlog.testing import capture_logs

from crewflow import tools
from crewflow.tools import Tool, tool

if TYPE_CHECKING:
    from collections.abc import Iterator, MutableMapping

GUARD = 10.0  # seconds: only ever reached when the behaviour under test is broken


class Held:
    """A sync tool (``self.tool``) whose calls block until `release` is set.

    Args:
        name: The tool's name.
        idempotent: Mark the tool ``@tool(idempotent=True)``.
    """

    def __init__(self, name: str = "fetch", *, idempotent: bool = False) -> None:
        self.release = threading.Event()
        self.started = 0
        self.returned = 0
        self._returns = threading.Condition()
        # Set, on its loop, when a call arrives: (the loop, the event) of a waiting test.
        self._waiter: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None

        def fetch(url: str) -> str:
            """Fetch a page.

            Args:
                url: Its address.
            """
            with self._returns:
                self.started += 1
                if self._waiter is not None:
                    loop, arrived = self._waiter
                    loop.call_soon_threadsafe(arrived.set)
            self.release.wait()
            with self._returns:
                self.returned += 1
                self._returns.notify_all()
            return f"the page at {url}"

        self.tool: Tool = tool(name=name, idempotent=idempotent)(fetch)
        # Should the code under test wait for a held thread (the bug these tests guard against),
        # the calls are released after a while, so that the test fails instead of hanging.
        self._watchdog = threading.Timer(GUARD, self.release.set)
        self._watchdog.daemon = True
        self._watchdog.start()

    async def wait_started(self, count: int = 1) -> None:
        """Wait until ``count`` calls are inside the tool (blocked, unless released)."""
        with anyio.fail_after(GUARD):
            while True:
                with self._returns:
                    if self.started >= count:
                        self._waiter = None
                        return
                    arrived = asyncio.Event()
                    self._waiter = (asyncio.get_running_loop(), arrived)
                await arrived.wait()

    def settle(self) -> None:
        """Release every call and wait until each thread has returned and its tool no longer
        counts it as abandoned."""
        self._watchdog.cancel()
        self.release.set()
        with self._returns:
            assert self._returns.wait_for(lambda: self.returned == self.started, GUARD)
        with tools._lock:
            assert tools._lock.wait_for(lambda: self.tool.abandoned == 0, GUARD)


@contextmanager
def captured_logs() -> Iterator[list[MutableMapping[str, Any]]]:
    """structlog's `capture_logs`, leaving structlog unconfigured if it found it so.

    ``capture_logs`` restores the processors it found by configuring structlog with them, which
    leaves an unconfigured structlog configured with its defaults: every later run would then
    print its info lines to stdout.
    """
    configured = structlog.is_configured()
    try:
        with capture_logs() as logs:
            yield logs
    finally:
        if not configured:
            structlog.reset_defaults()
