"""`HealthMonitor`: a run's health, computed from its events, and the alerts on its changes.

The monitor is one more event sink of the run, attached only when someone asks for health
(`crewflow.health`): a run without it builds no event for it and pays nothing. Each event is a
few dict updates; the run's health is judged again on the events that can change it, and on a
timer on the run's clock for what changes with time alone (a task going quiet, old failed calls
leaving the error window). Each change is a `RunHealthChanged` event, and is handed to the
crew's ``on_alert`` hook by a task of its own, so that a slow, hanging or failing hook never
holds up or breaks the run: it is given ``alert_timeout`` seconds, and its failure is logged.
Each change while the run goes is also recorded with the run in its store (``record``), by one
more task that writes only the latest health: changes that come faster than the store writes
are folded into one write, and a write that fails is logged, never the run's end.
"""

from __future__ import annotations

import inspect
from collections import deque
from typing import TYPE_CHECKING, Any

import anyio

from crewflow._runtime.clock import SystemClock
from crewflow._runtime.limiter import registry
from crewflow.events import HealthIssue, RunHealth, RunHealthChanged

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

    from crewflow import events
    from crewflow.health import HealthPolicy

__all__ = ["HealthMonitor"]

# The kinds of the events that end a task's time in flight.
_ENDS = frozenset(
    {"task_finished", "task_failed", "task_skipped", "task_restored", "task_delegated"}
)
_IssueKey = tuple[str, str]


class HealthMonitor:
    """Watches one run's events (an `EventSink`) and judges its health under ``policy``.

    Args:
        run_id: The run watched.
        policy: The thresholds.
        clock: The run's clock: the stall timer runs on the real one (the loop's time, so
            virtual time too), not on a `crewflow.testing.FakeClock`.
        now: Seconds on the run's clock.
        emit: Sends an event to the run's listeners.
        limit_keys: The run's models with their limit keys (for their breakers' state).
        log: The run's logger.
        on_alert: Called with each `RunHealthChanged`, sync (in a worker thread) or async.
        record: Records the health with the run in its store (on each change while the run
            goes; never after its end, so that an ended run keeps the last health it had).
    """

    def __init__(
        self,
        *,
        run_id: str,
        policy: HealthPolicy,
        clock: object,
        now: Callable[[], float],
        emit: Callable[[events.Event], None],
        limit_keys: Callable[[], dict[str, str]],
        log: Any,
        on_alert: Callable[[RunHealthChanged], Any] | None = None,
        record: Callable[[RunHealth], Awaitable[None]] | None = None,
    ) -> None:
        self.run_id = run_id
        self.policy = policy
        self._clock = clock
        self.now = now
        self._emit = emit
        self._limit_keys = limit_keys
        self._log = log
        self._on_alert = on_alert
        self._started: dict[str, float] = {}  # task in flight -> when it started
        self._last: dict[str, float] = {}  # task in flight -> its last event
        self._retries: dict[str, int] = {}
        self._calls: dict[str, deque[tuple[float, bool]]] = {}  # model -> (time, failed)
        self._failures: dict[str, int] = {}  # model -> failed calls among its _calls
        self._suspects: set[str] = set()  # models whose breaker may not be closed
        self._busy = 0.0  # seconds in flight of the tasks that ended
        self._waited = 0.0  # seconds the calls waited for limits
        self._issues: dict[_IssueKey, HealthIssue] = {}
        self._health: RunHealth | None = RunHealth()
        self._seen: tuple[float, dict[str, float], dict[str, Any], float] = (0.0, {}, {}, 0.0)
        self._ended = False
        self._sleep: anyio.CancelScope | None = None
        self._wake_at: float | None = None  # when the timer wakes next (None: only if poked)
        self._alerts: MemoryObjectSendStream[RunHealthChanged] | None = None
        self._record = record
        self._unrecorded: RunHealth | None = None  # the latest change, not yet written
        self._recorded: anyio.Event | None = None  # set to wake the writer (while it runs)
        self._closing = False

    # -- the sink ------------------------------------------------------------------------------

    def __call__(self, event: events.Event, /) -> None:
        # Dispatched on ``kind`` (a string compare), not isinstance: this runs on every event.
        kind = event.kind
        if kind == "run_health_changed":
            return  # its own
        task: str | None = getattr(event, "task", None)
        if task is not None and kind not in _ENDS:
            last = self._last
            if task in last:
                last[task] = event.time  # any event of a task in flight is progress
        if self._note(kind, event) or self._issues:
            self.judge(event.time)

    def _note(self, kind: str, event: Any) -> bool:
        """Take in what ``event`` tells; whether it may raise an issue. (The others can only
        end some: judged only while there are issues.)"""
        if kind == "task_started":
            if event.task not in self._started:
                self._started[event.task] = event.time
                self._last[event.task] = event.time
                wake = self._wake_at
                if wake is None or wake > event.time + self.policy.stall_after:
                    self._poke()  # its stall deadline comes before the timer's next wake
            return False
        if kind in _ENDS:
            self._end(event.task, event.time)
            return False
        if kind == "llm_call_finished":
            return self._call(event)
        if kind == "task_retrying":
            self._retries[event.task] = self._retries.get(event.task, 0) + 1
        elif kind == "limiter_wait":
            self._waited += event.waited
            if any(reason.startswith("breaker:") for reason in event.reasons):
                self._suspects.add(event.model)
        elif kind == "run_finished":
            self._ended = True
            self._poke()
        else:
            return False  # progress only (a call starting, a tool call, a streamed token...)
        return True

    def _end(self, task: str, now: float) -> None:
        started = self._started.pop(task, None)
        if started is not None:
            self._busy += max(0.0, now - started)
        self._last.pop(task, None)
        self._retries.pop(task, None)

    def _call(self, event: events.LLMCallFinished) -> bool:
        """Count the call in its model's window; whether it failed."""
        if event.cached:
            return False
        calls = self._calls.get(event.model)
        if calls is None:
            calls = self._calls[event.model] = deque()
        failed = event.error is not None
        calls.append((event.time, failed))
        if failed:
            self._failures[event.model] = self._failures.get(event.model, 0) + 1
            self._suspects.add(event.model)
        return failed

    # -- judging -------------------------------------------------------------------------------

    def health(self) -> RunHealth:
        """The run's health now (judged again first, while the run goes)."""
        if not self._ended:
            self.judge(self.now())
        return self._built()

    def judge(self, now: float) -> None:
        """Judge the run's health at ``now``; on a change, emit `RunHealthChanged` and queue
        the alert. (On every event of a watched run: the `RunHealth` is built only on a change
        or when asked for.)"""
        found: dict[_IssueKey, HealthIssue] = {}
        rates: dict[str, float] = {}
        breakers: dict[str, Any] = {}
        if not self._ended:
            self._stalls(now, found)
            self._retried(found, now)
            rates = self._error_rates(now, found)
            breakers = self._breakers(now, found)
        share = self._share(now, found)
        self._seen = (now, rates, breakers, share)
        self._health = None
        before = self._issues
        if found.keys() == before.keys():
            return
        raised = [issue for key, issue in found.items() if key not in before]
        cleared = [issue for key, issue in before.items() if key not in found]
        self._issues = {key: before.get(key, issue) for key, issue in found.items()}
        self._changed(raised, cleared, now)

    def _built(self) -> RunHealth:
        """The `RunHealth` of the last judgement."""
        if self._health is None:
            now, rates, breakers, share = self._seen
            issues = sorted(self._issues.values(), key=lambda issue: issue.since)
            stalled = any(issue.kind == "stalled" for issue in issues)
            self._health = RunHealth(
                status="stalled" if stalled else ("degraded" if issues else "ok"),
                time=now,
                issues=issues,
                in_flight=len(self._started),
                error_rates=rates,
                limit_wait_share=share,
                breakers=breakers,
            )
        return self._health

    def _stalls(self, now: float, found: dict[_IssueKey, HealthIssue]) -> None:
        after = self.policy.stall_after
        for task, last in self._last.items():
            if now - last >= after - 1e-9:  # the timer wakes at the deadline, give or take
                found["stalled", task] = HealthIssue(
                    kind="stalled",
                    subject=task,
                    detail=f"task {task!r} has made no progress for {now - last:.0f} s",
                    since=last + after,
                )

    def _retried(self, found: dict[_IssueKey, HealthIssue], now: float) -> None:
        most = self.policy.retries
        for task, count in self._retries.items():
            if count >= most:
                found["retries", task] = HealthIssue(
                    kind="retries",
                    subject=task,
                    detail=f"task {task!r} was retried {count} times",
                    since=now,
                )

    def _error_rates(self, now: float, found: dict[_IssueKey, HealthIssue]) -> dict[str, float]:
        policy, rates = self.policy, {}
        oldest = now - policy.error_window
        for model, calls in self._calls.items():
            while calls and calls[0][0] < oldest:
                if calls.popleft()[1]:
                    self._failures[model] -= 1
            if not calls:
                continue
            failed = self._failures.get(model, 0)
            rate = rates[model] = failed / len(calls)
            if len(calls) >= policy.min_calls and rate >= policy.error_rate:
                found["error_rate", model] = HealthIssue(
                    kind="error_rate",
                    subject=model,
                    detail=(
                        f"{failed} of the last {len(calls)} calls to {model} failed "
                        f"({rate:.0%}, over the last {policy.error_window:g} s)"
                    ),
                    since=now,
                )
        return rates

    def _breakers(self, now: float, found: dict[_IssueKey, HealthIssue]) -> dict[str, Any]:
        if not self._suspects:
            return {}
        keys, limits, breakers = self._limit_keys(), registry(), {}
        for model in list(self._suspects):
            key = keys.get(model)
            state = limits.state(key)["breaker"] if key is not None else "closed"
            if state == "closed":
                self._suspects.discard(model)
                continue
            breakers[model] = state
            found["breaker_open", model] = HealthIssue(
                kind="breaker_open",
                subject=model,
                detail=f"the circuit breaker of {model} is {state.replace('_', '-')}",
                since=now,
            )
        return breakers

    def _share(self, now: float, found: dict[_IssueKey, HealthIssue]) -> float:
        busy = self._busy + sum(now - started for started in self._started.values())
        if busy <= 0:
            return 0.0
        share = min(1.0, self._waited / busy)
        # Judged once the tasks have been in flight for a window's worth in all: one early
        # wait is no trend.
        policy = self.policy
        if not self._ended and busy >= policy.error_window and share >= policy.limit_wait_share:
            found["limit_waits", "run"] = HealthIssue(
                kind="limit_waits",
                subject="run",
                detail=f"the tasks spent {share:.0%} of their time waiting for limits",
                since=now,
            )
        return share

    def _changed(self, raised: list[HealthIssue], cleared: list[HealthIssue], now: float) -> None:
        change = RunHealthChanged(
            run_id=self.run_id, time=now, health=self._built(), raised=raised, cleared=cleared
        )
        # A new issue is worth a warning; one ending is news, not trouble.
        log = self._log.warning if raised else self._log.info
        log(
            "run health changed",
            status=change.health.status,
            raised=[issue.detail for issue in raised],
            cleared=[issue.detail for issue in cleared],
        )
        self._emit(change)
        if any(issue.kind == "error_rate" for issue in raised):
            self._poke()  # its calls leaving the window may end it before the next wake
        if self._alerts is not None:
            self._alerts.send_nowait(change)
        if self._recorded is not None:
            self._unrecorded = change.health
            self._recorded.set()

    # -- the timer and the alerts --------------------------------------------------------------

    async def watch(self, body: Callable[[], Awaitable[None]]) -> None:
        """Await ``body`` (the run) with the stall timer and the alert hook going alongside;
        ``body``'s error comes out as it was raised. Alerts queued when ``body`` ends are
        still delivered (each within ``alert_timeout``)."""
        failure: BaseException | None = None
        async with anyio.create_task_group() as group:
            receive: MemoryObjectReceiveStream[RunHealthChanged] | None = None
            if self._on_alert is not None:
                self._alerts, receive = anyio.create_memory_object_stream[RunHealthChanged](
                    max_buffer_size=float("inf")
                )
                group.start_soon(self._deliver, receive)
            if self._record is not None:
                self._recorded = anyio.Event()
                group.start_soon(self._write)
            timer = anyio.CancelScope()
            if isinstance(self._clock, SystemClock):
                # A fake clock's sleeps move its time: a timer would make time fly. There,
                # stalls are judged on the run's events and on `health` only.
                group.start_soon(self._timer, timer)
            try:
                await body()
            except anyio.get_cancelled_exc_class():
                raise
            except BaseException as exc:  # raised below as it is
                failure = exc
            finally:
                timer.cancel()
                if self._recorded is not None:
                    self._closing = True  # the writer writes what is left, then ends
                    self._recorded.set()
                if self._alerts is not None:
                    self._alerts.close()
                    self._alerts = None
        if failure is not None:
            raise failure

    async def _timer(self, scope: anyio.CancelScope) -> None:
        with scope:
            while not self._ended:
                wake = self._wake_at = self._next_wake()
                with anyio.CancelScope() as self._sleep:
                    if wake is None:
                        await anyio.sleep_forever()
                    else:
                        await anyio.sleep(max(0.0, wake - self.now()))
                self._sleep = self._wake_at = None
                if not self._ended:
                    self.judge(self.now())

    def _next_wake(self) -> float | None:
        """When the health may next change with time alone: a task's stall deadline, or the
        oldest call of a failing model leaving the error window."""
        after, times = self.policy.stall_after, list[float]()
        stalled = {key[1] for key in self._issues if key[0] == "stalled"}
        times.extend(last + after for task, last in self._last.items() if task not in stalled)
        window = self.policy.error_window
        for kind, model in self._issues:
            calls = self._calls.get(model)
            if kind == "error_rate" and calls:
                times.append(calls[0][0] + window)
        return min(times) if times else None

    def _poke(self) -> None:
        """Make the timer work out its next wake again."""
        if self._sleep is not None:
            self._sleep.cancel()

    async def _write(self) -> None:
        """Record the latest health whenever it changed, until the run's body ended."""
        record = self._record
        assert record is not None
        while True:
            event = self._recorded
            assert event is not None
            await event.wait()
            self._recorded = anyio.Event()
            health, self._unrecorded = self._unrecorded, None
            if health is not None:
                try:
                    await record(health)
                except Exception as exc:  # the record is for views: the run goes on
                    self._log.warning("could not record the run's health", error=str(exc))
            if self._closing and self._unrecorded is None:
                self._recorded = None
                return

    async def _deliver(self, receive: MemoryObjectReceiveStream[RunHealthChanged]) -> None:
        hook = self._on_alert
        assert hook is not None
        timeout = self.policy.alert_timeout
        async with receive:
            async for change in receive:
                try:
                    with anyio.fail_after(timeout):
                        await _call_hook(hook, change)
                except TimeoutError:
                    self._log.error(
                        "the alert hook did not return in time; it was abandoned",
                        hook=repr(hook),
                        timeout=timeout,
                    )
                except Exception as exc:
                    self._log.error("the alert hook failed", hook=repr(hook), error=repr(exc))


async def _call_hook(hook: Callable[[RunHealthChanged], Any], change: RunHealthChanged) -> None:
    if inspect.iscoroutinefunction(hook) or inspect.iscoroutinefunction(
        getattr(hook, "__call__", None)  # noqa: B004 - an object with an async __call__
    ):
        await hook(change)
        return
    import anyio.to_thread

    result = await anyio.to_thread.run_sync(hook, change, abandon_on_cancel=True)
    if inspect.isawaitable(result):
        await result
