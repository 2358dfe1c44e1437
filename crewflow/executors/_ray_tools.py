"""Tool calls as Ray tasks: what `RayExecutor.call_tool` sends, and what runs in the worker.

A tool's function travels once per executor, pickled by value (`crewflow.executors._ship`) and
put in Ray's object store; each call sends the validated arguments and gets back what the
function returned. A raise in the worker comes back as a value (`Raised`) and is raised again
on the driver, so the agent sees the message a local raise gives. Tool calls are not retried
by Ray (``max_retries=0``): a tool runs at least once already when its task is retried, and a
call that died with its worker must not run twice behind the agent's back.
"""

from __future__ import annotations

import inspect
import pickle
import signal
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from crewflow import _version

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = ["Prepared", "Raised", "raise_again", "run_interruptibly", "run_tool"]


@dataclass(frozen=True)
class Prepared:
    """A tool ready for calls on one cluster: its remote function with options, its function's
    pickled bytes in the object store, and their digest."""

    remote: Any
    function: Any
    digest: str


@dataclass(frozen=True)
class Raised:
    """What a tool raised in a worker.

    Attributes:
        kind: The exception's class name.
        message: ``str()`` of it.
        error: The exception itself, when it survives a pickle round trip, else ``None``.
    """

    kind: str
    message: str
    error: Exception | None


def raise_again(raised: Raised) -> None:
    """Raise on the driver what the tool raised in the worker: the exception itself, or one of
    a class of the same name with the same message when it could not travel."""
    if raised.error is not None:
        raise raised.error
    stand_in = type(raised.kind, (Exception,), {"__module__": "crewflow.executors.remote"})
    raise stand_in(raised.message)


_FUNCTIONS: dict[str, Callable[..., Any]] = {}
_FUNCTIONS_KEPT: Final = 32
"""How many unpickled tool functions a worker keeps (by digest)."""


def run_tool(
    digest: str, payload: bytes, args: list[Any], kwargs: dict[str, Any], driver_version: str
) -> Any:
    """One tool call, inside a Ray worker: the function unpickled (once per worker), called,
    awaited if it is async; a raise returned as `Raised`."""
    if _version.__version__ != driver_version:
        from crewflow.executors._ray import _VersionMismatch

        message = str(_VersionMismatch(driver_version, _version.__version__, "a worker"))
        return Raised("ConfigurationError", message, None)
    function = _FUNCTIONS.get(digest)
    if function is None:
        function = pickle.loads(payload)
        while len(_FUNCTIONS) >= _FUNCTIONS_KEPT:
            _FUNCTIONS.pop(next(iter(_FUNCTIONS)))
        _FUNCTIONS[digest] = function
    try:
        result = function(*args, **kwargs)
        if inspect.isawaitable(result):
            result = run_interruptibly(_awaited, result)
    except Exception as exc:
        return Raised(type(exc).__name__, str(exc), _travels(exc))
    return result


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def run_interruptibly(function: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    """``anyio.run(function, *args)`` in a Ray worker, cancelled when Ray cancels its task.

    ``ray.cancel`` interrupts the worker's main thread as a SIGINT would, without a signal: an
    event loop waiting for I/O would not notice it before its next wakeup (never, for a call
    that waits on a model). Listening for SIGINT through the loop wakes it at once; the call is
    then cancelled (a kickoff records its run as cancelled) and `KeyboardInterrupt` tells Ray
    the task was cancelled.
    """
    import anyio

    async def main() -> Any:
        outcome: list[Any] = []
        async with anyio.create_task_group() as group:

            async def call() -> None:
                try:
                    outcome.append(await function(*args))
                except Exception as exc:  # raised below as it is, not in an exception group
                    outcome.append(_Failed(exc))
                group.cancel_scope.cancel()

            group.start_soon(call)
            if threading.current_thread() is threading.main_thread():
                with anyio.open_signal_receiver(signal.SIGINT) as interrupts:
                    async for _ in interrupts:
                        group.cancel_scope.cancel()
        if not outcome:
            raise KeyboardInterrupt
        if isinstance(outcome[0], _Failed):
            raise outcome[0].error
        return outcome[0]

    return anyio.run(main)


@dataclass(frozen=True)
class _Failed:
    error: Exception


def _travels(error: Exception) -> Exception | None:
    """``error`` if it comes back whole from a pickle round trip (exceptions whose ``__init__``
    takes other arguments than their message do not), else ``None``."""
    try:
        back = pickle.loads(pickle.dumps(error))
    except Exception:
        return None
    return back if isinstance(back, Exception) else None
