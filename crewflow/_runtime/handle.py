"""`RunHandle`: a run in the background of the running event loop, to control and watch.

``crew.start(inputs)`` is the one place where a run outlives the call that started it: the handle
owns that background task, and cancels it when closed (``async with crew.start(...) as h:``).
Signals are plain methods; events reach only consumers that exist, each with its own buffer,
so a run nobody watches holds no growing buffer.
"""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING, Any

import anyio

from crewflow._records import RunStatus
from crewflow.exceptions import RunCancelled

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from types import TracebackType

    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

    from crewflow._runtime.run import Run
    from crewflow.crew import CrewResult
    from crewflow.events import Event, RunHealth

__all__ = ["RunHandle"]


class RunHandle:
    """A crew's run going on in the background.

    Get one from `Crew.start` (imported as ``crewflow.RunHandle``, for type hints; it is not
    built directly). ``async with`` it to cancel the run if the block exits before the run
    ends; ``await handle`` is ``await handle.result()``.

    Example:
        ```python
        async with crew.start({"topic": "tides"}) as handle:
            async for event in handle.events():
                if event.kind == "task_finished":
                    print(event.task)
            result = await handle.result()
        ```
    """

    def __init__(
        self,
        run: Run,
        finish: Callable[[], Awaitable[CrewResult]],
        *,
        html: Callable[[Run, RunStatus], str] | None = None,
    ) -> None:
        self._run = run
        self._html = html  # draws `_repr_html_` (the report's templates, given by the crew)
        self._streams: list[MemoryObjectSendStream[Event]] = []
        run.add_sink(self._publish)
        self._task = asyncio.get_running_loop().create_task(_drive(finish))
        # A callback, not a ``finally``: a task cancelled before it first ran never runs its
        # body, and its consumers must still see the end of the events.
        self._task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[CrewResult]) -> None:
        self._run.remove_sink(self._publish)
        for stream in self._streams:
            stream.close()
        self._streams.clear()

    # -- state ---------------------------------------------------------------------------------

    @property
    def run_id(self) -> str:
        """The run's id."""
        return self._run.run_id

    @property
    def status(self) -> RunStatus:
        """``pending``, ``running``, ``paused``, ``completed``, ``failed`` or ``cancelled``."""
        status = self._run.status
        if self._task.done() and status in (RunStatus.PENDING, RunStatus.RUNNING, RunStatus.PAUSED):
            return RunStatus.CANCELLED  # cancelled before the run could record how it ended
        return status

    @property
    def done(self) -> bool:
        """Whether the run has ended (in any way)."""
        return self._task.done()

    # -- signals -------------------------------------------------------------------------------

    def pause(self) -> None:
        """Start no new task; tasks in flight finish."""
        self._run.pause()

    def resume(self) -> None:
        """Start tasks again."""
        self._run.resume()

    def cancel(self) -> None:
        """Cancel the run: tasks in flight are cancelled and their HTTP requests aborted."""
        self._task.cancel()

    def health(self) -> RunHealth:
        """How the run is doing now, judged from its events under the crew's
        `crewflow.HealthPolicy` (the default one when the crew has none): tasks stalled, each
        model's error rate, the share of time spent waiting for limits, breakers not closed.

        Example:
            ```python
            health = handle.health()
            if health.status != "ok":
                for issue in health.issues:
                    print(issue.kind, issue.detail)
            ```
        """
        monitor = self._run.health
        if monitor is None:  # a run handed over without a watch: start one (not from the start)
            from crewflow.health import HealthPolicy

            monitor = self._run.watch_health(HealthPolicy(), None)
        return monitor.health()

    def set_concurrency(self, limit: int | None) -> None:
        """Change how many tasks may run at once, up or down, while running."""
        self._run.set_concurrency(limit)

    # -- results -------------------------------------------------------------------------------

    async def result(self) -> CrewResult:
        """Wait for the run to end and return its result.

        Raises:
            CrewRunError: The run failed (as `Crew.kickoff` raises).
            RunCancelled: The run was cancelled; ``.outputs`` holds what finished.
        """
        try:
            return await asyncio.shield(self._task)
        except asyncio.CancelledError:
            if not self._task.cancelled():
                raise  # the caller was cancelled, not the run
            raise RunCancelled(
                f"run {self.run_id} was cancelled", outputs=self._run.outputs
            ) from None

    def events(self) -> AsyncIterator[Event]:
        """The run's events from now on, until it ends; buffered for this consumer only.

        Each call is a new consumer; stop iterating (``break``) to unsubscribe.
        """
        send: MemoryObjectSendStream[Event]
        receive: MemoryObjectReceiveStream[Event]
        send, receive = anyio.create_memory_object_stream(math.inf)
        if self._task.done():
            send.close()
        else:
            self._streams.append(send)
        return _consume(receive, lambda: self._unsubscribe(send))

    def _publish(self, event: Event) -> None:
        for stream in list(self._streams):
            try:
                stream.send_nowait(event)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._unsubscribe(stream)

    def _unsubscribe(self, stream: MemoryObjectSendStream[Event]) -> None:
        if stream in self._streams:
            self._streams.remove(stream)
        stream.close()

    # -- structured form -----------------------------------------------------------------------

    async def __aenter__(self) -> RunHandle:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Cancel the run if it is still going, and wait until it has stopped."""
        if not self._task.done():
            self._task.cancel()
        await asyncio.wait({self._task})
        if not self._task.cancelled():
            self._task.exception()  # mark a failure as retrieved: the caller saw it, or not

    def __await__(self) -> Any:
        return self.result().__await__()

    def __repr__(self) -> str:
        return f"RunHandle(run_id={self.run_id!r}, status={self.status!r})"

    # -- notebooks -----------------------------------------------------------------------------

    def _repr_html_(self) -> str:
        """The run's status as it is now (tasks done of all, the tasks running), for notebooks;
        display it again for a fresh one. Its progress while it runs shows by itself in the
        cell that started it."""
        if self._html is not None:
            return self._html(self._run, self.status)
        import html

        return f"<pre>{html.escape(repr(self))}</pre>"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        run = self._run
        running = ", ".join(sorted(run.running)) or "none"
        printer.text(
            f"RunHandle(run_id={self.run_id!r}, status={self.status.value!r}, "
            f"done={len(run.outputs)}/{len(run.graph.names)}, running: {running})"
        )


async def _consume(
    receive: MemoryObjectReceiveStream[Event], unsubscribe: Callable[[], None]
) -> AsyncIterator[Event]:
    try:
        async with receive:
            async for event in receive:
                yield event
    finally:
        unsubscribe()


async def _drive(finish: Callable[[], Awaitable[CrewResult]]) -> CrewResult:
    return await finish()
