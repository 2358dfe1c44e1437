"""The HTTP clients crewflow keeps per event loop, across kickoffs.

A client belongs to the event loop it was made in and is never used from another. Within a loop
there is one client per key, a digest of everything that makes two clients differ (base URL, API
key, organization, timeout, headers), so two API keys never share one and no key is kept in the
clear. Building a client costs 1-2 ms, which every kickoff used to pay.

The clients of a loop are closed by `aclose_loop_clients` (`crewflow.aclose`, and `kickoff_sync`
before its loop ends), or when the loop shuts down: each loop's pool parks an async generator at
its ``yield``, and ``loop.shutdown_asyncgens()`` (run by ``asyncio.run``, ``anyio.run`` and
``asyncio.Runner``, hence pytest-asyncio's per-test loops) closes it, which closes the clients.
A loop closed without that step (``loop.close()`` alone) keeps its clients, and itself, alive:
call ``await crewflow.aclose()`` before closing a loop you drive by hand.
"""

from __future__ import annotations

import asyncio
import hashlib
import weakref
from typing import TYPE_CHECKING, Any

from crewflow.llm._wire import close_shielded

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Callable

__all__ = ["aclose_loop_clients", "client_key", "loop_client"]


class _LoopPool:
    """One loop's clients, and the parked generator whose ``finally`` closes them."""

    __slots__ = ("clients", "finaliser", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.clients: dict[str, Any] = {}
        self.finaliser = self._finalise()

    async def _finalise(self) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            await self.close()

    async def close(self) -> None:
        if _pools.get(self.loop) is self:
            del _pools[self.loop]
        while self.clients:
            _, client = self.clients.popitem()
            await close_shielded(client)


# The pool holds its loop (through its generator's finaliser hook, too): an entry leaves when its
# loop shuts down or `aclose_loop_clients` runs, never while the loop may still use it.
_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopPool] = (
    weakref.WeakKeyDictionary()
)


def client_key(*settings: object) -> str:
    """A digest of a client's settings: equal settings, equal keys; the secrets among them (API
    keys, credentials in URLs, headers) never appear in it."""
    return hashlib.sha256(repr(settings).encode("utf-8", "surrogatepass")).hexdigest()


async def loop_client(key: str, make: Callable[[], Any]) -> Any:
    """The running loop's client for ``key``, made by ``make`` (a plain function, so two tasks
    never both make one) the first time.

    Args:
        key: A `client_key` digest of the client's settings.
        make: Builds the client; its ``aclose()`` (or ``close()``) closes it.
    """
    loop = asyncio.get_running_loop()
    pool = _pools.get(loop)
    if pool is not None:
        client = pool.clients.get(key)
        if client is not None:
            return client
    else:
        pool = _pools[loop] = _LoopPool(loop)
        # Its first step registers the generator with the loop, whose shutdown closes it.
        await anext(pool.finaliser)
    client = pool.clients.get(key)
    if client is None:
        client = pool.clients[key] = make()
    return client


async def aclose_loop_clients() -> None:
    """Close every client the running loop keeps; the next call makes new ones."""
    pool = _pools.get(asyncio.get_running_loop())
    if pool is None:
        return
    await pool.close()
    await pool.finaliser.aclose()
