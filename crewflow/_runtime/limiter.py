"""The live side of the limits: the process-wide `LimitRegistry` that every LLM call asks for a
`Permit`, and `set_limits`. What the declared limits mean (keys, buckets and bursts, pauses, the
breaker) is described in `crewflow.limits`; how the registry applies them is below.

**Waiting.** Each key has a FIFO queue: only its head may take capacity, so waiting is fair and a
newcomer never overtakes. The head sleeps on the runtime clock when it waits for a bucket and on
an event when it waits for a slot; the others wait on events, so that only one waiter per key
sleeps (a `FakeClock` sees each wait once). A call takes its groups' capacity in sorted order
(not as given: two calls naming shared concurrency groups in different orders could otherwise
each hold a slot the other waits for), then its model's, holding what it took while it waits for
the next. Cancelled while waiting, a call gives back everything it took. After taking its
limits, a call checks the pause again: one that began meanwhile sends it back to wait, giving
its capacity back.

**The breaker.** A counted failure names its request (the reply-cache key): the circuit opens
only once the consecutive failures come from ``Breaker.requests`` distinct requests. While it is
open, a caller either fails fast (``Breaker(wait=False)``) or waits: on the clock until the
cooldown ends, then, while another call is the trial, on an event the trial's end sets; after
twice the cooldown it gives up with the same error fail-fast would have raised.

**Threads and loops.** The registry outlives event loops (successive ``anyio.run`` calls) and
may be used from several threads: its state is plain counters, buckets and queues behind one
`threading.Lock`; nothing bound to a loop is kept except each waiter's own `anyio.Event`, made
in the waiter's loop and set from another thread through ``loop.call_soon_threadsafe``. Time
comes from `current_clock`, so tests run on a fake clock.

**Auto concurrency.** A key declared with ``Limit(concurrency="auto")`` (or an `Auto`) has a
`crewflow._runtime.capacity.Controller` in its state, made on first use (at `learn`'s start
when a run read one from its store, else a conservative start): its limit stands in for a fixed
concurrency, and each released call reports its outcome and latency to it. `Permit.release`
returns the changes, so that the run whose call caused one emits and records it. A release
checks one flag when no key is auto (a 200-task chain under ``Limit(concurrency=4)``, A/B
against the code before, 9 alternating runs on a shared 2-core machine: 183 us per task (min)
against 213, 15.6 us per acquire-and-release pair against 16.8: within the noise).

**Fast path.** A call with no applicable limit, no state for its key (no pause, no failure ever
counted) takes two dict lookups and no lock.
"""

from __future__ import annotations

import threading
from collections import deque
from contextlib import suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from crewflow._runtime.capacity import Change, Controller
from crewflow._runtime.clock import current_clock
from crewflow.exceptions import ConfigurationError, LLMError
from crewflow.limits import Auto, Breaker, Limit, Limits

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Sequence

    import anyio

    from crewflow._runtime.clock import Clock

__all__ = ["LimitRegistry", "Permit", "registry", "set_limits"]

BreakerState = Literal["closed", "open", "half_open"]

# Bucket levels are floats refilled by elapsed * rate: accept a level this close to the need
# (relatively) so that a wait computed to be exact is not followed by a second tiny one.
_TOLERANCE = 1e-9


@dataclass(slots=True)
class _Bucket:
    level: float
    stamp: float


def _refill(bucket: _Bucket | None, rate: float, capacity: float, now: float) -> _Bucket:
    """The bucket brought up to ``now`` (full when it was never used)."""
    if bucket is None:
        return _Bucket(capacity, now)
    elapsed = now - bucket.stamp
    # A negative elapsed means another clock (tests): start over from here rather than drain.
    bucket.level = min(capacity, bucket.level + max(0.0, elapsed) * rate)
    bucket.stamp = now
    return bucket


def _peek(bucket: _Bucket | None, rate: float, capacity: float, now: float) -> float:
    if bucket is None:
        return capacity
    return min(capacity, bucket.level + max(0.0, now - bucket.stamp) * rate)


class _Waiter:
    __slots__ = ("event", "loop", "state", "thread")

    def __init__(self, state: _KeyState) -> None:
        import asyncio

        import anyio

        self.state = state
        self.loop: asyncio.AbstractEventLoop = asyncio.get_running_loop()
        self.thread = threading.get_ident()
        self.event: anyio.Event = anyio.Event()

    def wake(self) -> None:
        # anyio/asyncio events are not thread-safe: set them from their own loop.
        with suppress(RuntimeError):  # the waiter's loop is closed: nothing left to wake
            if self.thread == threading.get_ident():
                self.event.set()
            else:
                self.loop.call_soon_threadsafe(self.event.set)


class _KeyState:
    """Everything the registry remembers about one key."""

    __slots__ = (
        "auto",
        "blocked_on",
        "breaker",
        "breaker_waiters",
        "excused_at",
        "excused_until",
        "failed_requests",
        "failures",
        "in_flight",
        "opened_at",
        "paused_until",
        "queue",
        "requests",
        "tokens",
        "trial",
    )

    def __init__(self) -> None:
        self.in_flight = 0
        self.auto: Controller | None = None  # the auto limit's controller, made on first use
        # Until when an auto limit's 429 cuts the limit instead of pausing the key (see
        # `LimitRegistry.cut_instead_of_pausing`).
        self.excused_at = 0.0
        self.excused_until: float | None = None
        self.queue: deque[_Waiter] = deque()
        self.blocked_on = "concurrency"  # what the queue's head waits for (for Permit.reasons)
        self.requests: _Bucket | None = None  # None: full (never used)
        self.tokens: _Bucket | None = None
        self.paused_until: float | None = None
        self.breaker: BreakerState = "closed"
        self.failures = 0
        # The distinct requests among the consecutive failures (at most Breaker.requests kept).
        self.failed_requests: set[object] = set()
        self.breaker_waiters: list[_Waiter] = []  # calls waiting for a trial call to end
        self.opened_at = 0.0
        self.trial = False

    def close_breaker(self) -> None:
        self.breaker, self.failures, self.trial = "closed", 0, False
        self.failed_requests.clear()
        self.wake_breaker_waiters()

    def wake_breaker_waiters(self) -> None:
        waiters, self.breaker_waiters = self.breaker_waiters, []
        for waiter in waiters:
            if not waiter.loop.is_closed():
                waiter.wake()

    def wake_head(self) -> None:
        queue = self.queue
        while queue:
            if queue[0].loop.is_closed():  # abandoned with its loop: would block the key
                queue.popleft()
                continue
            queue[0].wake()
            return


@dataclass(frozen=True, slots=True)
class _Rule:
    """A declared `Limit` as the per-call path reads it: slots, and the bucket sizes worked out
    once (reading a pydantic model's field costs several times a slot's)."""

    limit: Limit | None  # as declared, for `LimitRegistry.state`
    concurrency: int | None
    rpm: float | None
    tpm: float | None
    request_capacity: float
    token_capacity: float
    auto: Auto | None = None  # concurrency follows the key's controller

    @classmethod
    def of(cls, limit: Limit) -> _Rule:
        concurrency = limit.concurrency
        auto = concurrency if isinstance(concurrency, Auto) else None
        return cls(
            limit,
            None if auto is not None else concurrency,  # type: ignore[arg-type]
            limit.rpm,
            limit.tpm,
            limit.request_capacity,
            limit.token_capacity,
            auto,
        )


_NO_RULE = _Rule(None, None, None, None, 0.0, 0.0)


@dataclass(slots=True)
class _Hold:
    key: str
    state: _KeyState
    request: bool  # took one request from the rpm bucket
    tokens: float | None  # charged to the tpm bucket (None: no tpm limit)
    started: float = 0.0  # clock time it was taken (an auto limit's latency)


@dataclass(slots=True)
class Permit:
    """Leave to make one provider call; `release` it when the call ends, whatever happened.

    Attributes:
        waited: Seconds spent waiting for limits (pauses, concurrency, rpm, tpm).
        reasons: Which limits made the call wait, e.g. ``("concurrency:search",
            "rpm:openai/gpt-4o", "retry_after:openai|https://api.openai.com/v1|gpt-4o")``.
    """

    waited: float = 0.0
    reasons: tuple[str, ...] = ()
    _registry: LimitRegistry | None = field(default=None, repr=False, compare=False)
    _limit_key: str = field(default="", repr=False, compare=False)
    _held: list[_Hold] = field(default_factory=list, repr=False, compare=False)
    _trial: bool = field(default=False, repr=False, compare=False)
    _released: bool = field(default=False, repr=False, compare=False)

    def release(
        self,
        *,
        tokens: int | None = None,
        ok: bool | None = None,
        request: str | None = None,
        status_code: int | None = None,
    ) -> tuple[Change, ...]:
        """Free the call's concurrency slots and report how it went. Idempotent.

        Args:
            tokens: The provider's reported total tokens (prompt + completion); corrects the tpm
                charge, which was the estimated prompt tokens (``0``: the provider did not
                process the call, which gets its estimate back).
            ok: For the breaker: ``True`` a success (closes a half-open circuit, resets the
                count), ``False`` a failure that counts, ``None`` neither (4xx, cancellation).
            request: The failed request's key (`crewflow._runtime.cache.cache_key`): failures
                of one request count as one request toward ``Breaker.requests``. ``None``: a
                request of its own.
            status_code: The provider's HTTP status of a failed call: a 429 or a 5xx is
                pushback for an auto concurrency limit.

        Returns:
            The changes of auto concurrency limits this call's outcome caused (mostly none).
        """
        if self._released:
            return ()
        self._released = True
        registry = self._registry
        if registry is None or (
            not self._held
            and not self._trial
            and (ok is None or (ok and self._limit_key not in registry._states))
        ):
            return ()
        if not registry._auto:  # no auto limit declared: nothing to observe
            registry._release(self, tokens, ok, request)
            return ()
        auto = [hold for hold in self._held if hold.state.auto is not None]
        registry._release(self, tokens, ok, request)
        return registry._observe(auto, ok, status_code) if auto else ()


class LimitRegistry:
    """Declared limits and their live state, shared by every crew of the process.

    Use the process-wide one, `registry()`; separate instances are for tests.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Replaced, never mutated, so that the lock-free fast path reads a consistent dict.
        self._limits: dict[str, _Rule] = {}
        self._states: dict[str, _KeyState] = {}
        self._breaker: Breaker | None = Breaker()
        self._auto = False  # some key has an auto concurrency limit

    def configure(self, limits: Limits) -> None:
        """Declare limits; the most recent declaration of a key wins, other keys stay.

        A key declared again keeps its calls in flight and its bucket levels (capped at the new
        capacity); waiters re-check at once. The breaker is replaced by ``limits.breaker``.

        Raises:
            ConfigurationError: ``limits`` is not a `Limits`.
        """
        if not isinstance(limits, Limits):
            raise ConfigurationError(
                f"expected crewflow.Limits, got {type(limits).__name__}: "
                f"wrap it, e.g. Limits({{'openai/gpt-4o': Limit(rpm=60)}})"
            )
        rules = {key: _Rule.of(limit) for key, limit in limits.items()}
        with self._lock:
            for key, rule in rules.items():
                state = self._states.get(key)
                if state is not None:
                    _carry_buckets(state, self._limits.get(key), rule, current_clock().now())
                    if state.auto is not None:
                        if rule.auto is None:
                            state.auto = None
                        else:
                            state.auto.rebound(rule.auto)
                    state.wake_head()
            self._limits = {**self._limits, **rules}
            self._auto = any(rule.auto is not None for rule in self._limits.values())
            # Limits that do not mention a breaker leave the process's breaker as it is.
            if "breaker" in limits.model_fields_set:
                self._breaker = limits.breaker

    async def acquire(
        self, *, model: str, limit_key: str, groups: Sequence[str] = (), tokens: int = 0
    ) -> Permit:
        """Wait until a call may start under every applicable limit, and take its share.

        In order: the size of the call against every tpm limit, the breaker of ``limit_key``
        (waits while it is open, or fails fast with ``Breaker(wait=False)``), any Retry-After
        pause of ``limit_key``, then each limit (the groups' and the model's) in turn: a concurrency
        slot, one request from the rpm bucket, ``tokens`` from the tpm bucket. Cancelled while
        waiting, it gives everything back.

        Args:
            model: The model string, for the model's limit and error messages.
            limit_key: The LLM's limit key: pauses, breaker, and the model's limit.
            groups: Group names of the agent or task making the call.
            tokens: The call's estimated prompt tokens.

        Returns:
            The permit; `Permit.release` it when the call ends.

        Raises:
            LLMError: The circuit of ``limit_key`` is open (``retryable=False``), or ``tokens``
                is more than twice a tpm limit could ever let through (``retryable=False``).
        """
        permit = self.free(model=model, limit_key=limit_key, groups=groups)
        if permit is not None:
            return permit
        return await self._acquire(model, limit_key, groups, tokens)

    def free(self, *, model: str, limit_key: str, groups: Sequence[str] = ()) -> Permit | None:
        """The permit of a call nothing can hold back, at once; ``None`` when `acquire` must
        decide.

        A call is free when no limit applies to it (no group, no limit of its model or its
        limit key) and its limit key has no state (no pause, no breaker count): the usual
        case, which then needs no estimate of its tokens and no await.
        """
        limits = self._limits
        if (
            not groups
            and limit_key not in self._states
            and (not limits or (limit_key not in limits and model not in limits))
        ):
            return Permit(_registry=self, _limit_key=limit_key)
        return None

    def pause(self, limit_key: str, seconds: float) -> None:
        """Start no call of ``limit_key`` before ``seconds`` from now (a 429's Retry-After).

        An existing longer pause is kept: pauses extend, never shorten.
        """
        if not seconds > 0:
            return
        with self._lock:
            until = current_clock().now() + seconds
            state = self._state(limit_key)
            if state.paused_until is None or state.paused_until < until:
                state.paused_until = until

    def cut_instead_of_pausing(self, limit_key: str, seconds: float, permit: Permit) -> bool:
        """Whether a 429 of ``limit_key`` with a Retry-After of ``seconds`` only cuts the auto
        limit ``permit`` held (on that key, its model or a group), rather than also pausing
        every call of the key (`pause`).

        Under an auto limit a 429 is how the provider says the limit went past its capacity:
        the controller cuts the limit to the calls the provider serves, and the refused call
        waits its Retry-After before it is sent again; the calls within the new limit go on.
        That holds for the first 429, and for the calls ``permit`` shows were sent before it
        (the same overshoot). A call sent after it and refused within that Retry-After (the cut
        was not enough, or the provider limits by rate, not by calls in flight) pauses the key
        as for a fixed limit. A key without an auto limit is always paused.
        """
        with self._lock:
            # The auto limit the call held: on the key itself, or on its model or a group.
            hold = next((h for h in permit._held if h.state.auto is not None), None)
            if hold is None:
                return False
            state, now = hold.state, current_clock().now()
            if state.excused_until is not None and state.excused_until > now:
                return hold.started <= state.excused_at
            state.excused_at, state.excused_until = now, now + seconds
            return True

    def learn(self, key: str, start: int) -> Change | None:
        """Start ``key``'s auto concurrency at ``start`` (what earlier runs learned, within its
        bounds), unless its controller runs already: what this process learned is newer.

        Returns:
            The change to ``start`` from the conservative start (``reason="learned"``), or
            ``None`` when the key is not auto, already running, or starts there anyway.
        """
        with self._lock:
            rule = self._limits.get(key)
            if rule is None or rule.auto is None:
                return None
            state = self._state(key)
            if state.auto is not None:
                return None
            state.auto = Controller(key, rule.auto)
            old = state.auto.limit
            state.auto.learned(start)
            state.wake_head()
            if state.auto.limit == old:
                return None
            return Change(key, old, state.auto.limit, "learned", current_clock().now())

    def declared(self, limit_key: str, model: str) -> bool:
        """Whether a limit is declared for the model of ``limit_key`` (by it or ``model``)."""
        limits = self._limits
        return limit_key in limits or model in limits

    def concurrency(self, key: str) -> int | None:
        """The auto concurrency limit of ``key`` now (``None``: not auto, or not used yet)."""
        state = self._states.get(key)
        controller = state.auto if state is not None else None
        return controller.limit if controller is not None else None

    def state(self, key: str) -> dict[str, Any]:
        """A snapshot of one key, for tests and diagnostics.

        Returns:
            ``limit`` (the declared `Limit` or ``None``), ``in_flight``, ``waiting``,
            ``rpm_tokens`` and ``tpm_tokens`` (bucket levels now, ``None`` without that rate),
            ``paused_until`` (clock time or ``None``), ``breaker`` (``"closed"``, ``"open"``
            or ``"half_open"``) and ``failures`` (consecutive counted failures); an auto
            concurrency limit's value is `concurrency`.
        """
        with self._lock:
            now = current_clock().now()
            limit = self._limits.get(key)
            state = self._states.get(key) or _KeyState()
            breaker = state.breaker
            if breaker == "open" and (
                self._breaker is None or now >= state.opened_at + self._breaker.cooldown
            ):
                breaker = "half_open" if self._breaker is not None else "closed"
            paused = state.paused_until
            return {
                "limit": limit.limit if limit is not None else None,
                "in_flight": state.in_flight,
                "waiting": len(state.queue) + len(state.breaker_waiters),
                "rpm_tokens": _peek(state.requests, limit.rpm / 60, limit.request_capacity, now)
                if limit is not None and limit.rpm is not None
                else None,
                "tpm_tokens": _peek(state.tokens, limit.tpm / 60, limit.token_capacity, now)
                if limit is not None and limit.tpm is not None
                else None,
                "paused_until": paused if paused is not None and paused > now else None,
                "breaker": breaker,
                "failures": state.failures,
            }

    def reset(self) -> None:
        """Forget every declaration and all state (tests). Waiters start over."""
        with self._lock:
            states = self._states
            self._states = {}
            self._limits = {}
            self._auto = False
            self._breaker = Breaker()
            for state in states.values():
                for waiter in state.queue:
                    waiter.wake()
                state.wake_breaker_waiters()

    # -- the slow path --------------------------------------------------------------------------

    def _state(self, key: str) -> _KeyState:
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = _KeyState()
        return state

    async def _acquire(
        self, model: str, limit_key: str, groups: Sequence[str], tokens: int
    ) -> Permit:
        clock = current_clock()
        started = clock.now()
        permit = Permit(_registry=self, _limit_key=limit_key)
        reasons: list[str] = []
        with self._lock:
            self._check_size(model, limit_key, groups, tokens)
        permit._trial = await self._pass_breaker(model, limit_key, clock, reasons)
        try:
            while True:
                await self._wait_for_pause(limit_key, clock, reasons)
                with self._lock:
                    keys = self._applicable(model, limit_key, groups)
                for key in keys:
                    await self._take(permit, key, tokens, clock, reasons)
                with self._lock:
                    if self._pause_left(limit_key, clock.now()) <= 0:
                        break
                    self._give_back(permit, clock.now())  # paused meanwhile: wait again
        except BaseException:
            with self._lock:
                self._give_back(permit, clock.now())
                self._end_trial(permit)
            permit._released = True
            raise
        if reasons:
            permit.waited = clock.now() - started
            permit.reasons = tuple(dict.fromkeys(reasons))
        return permit

    def _check_size(self, model: str, limit_key: str, groups: Sequence[str], tokens: int) -> None:
        """Refuse a call that no tpm limit of it could let through without a huge debt."""
        for key in self._applicable(model, limit_key, groups):
            rule = self._limits[key]
            if rule.tpm is None:
                continue
            most = 2 * max(rule.tpm, rule.token_capacity)
            if tokens > most:
                raise _too_big(model, model if key == limit_key else key, rule, tokens, most)

    async def _pass_breaker(
        self, model: str, limit_key: str, clock: Clock, reasons: list[str]
    ) -> bool:
        """Wait (or fail fast) while the circuit of ``limit_key`` is open; returns whether this
        call is the half-open circuit's trial."""
        deadline: float | None = None
        while True:
            with self._lock:
                now = clock.now()
                admitted = self._admit(limit_key, now)
                if isinstance(admitted, bool):
                    return admitted
                state = self._states[limit_key]
                left, why = admitted
                config = self._breaker
                assert config is not None
                if deadline is None:
                    since, deadline = now, now + 2 * config.cooldown
                if not config.wait or now >= deadline:
                    waited = now - since if config.wait else None
                    raise _circuit_open(model, state.failures, why, waited)
                waiter: _Waiter | None = None
                if left is None:  # a trial is in flight: wait for its end
                    waiter = _Waiter(state)
                    state.breaker_waiters.append(waiter)
            reasons.append(f"breaker:{limit_key}")
            if waiter is None:
                await clock.sleep(min(left or 0.0, deadline - now))
                continue
            import anyio

            # The loop's timer bounds the wait: the runtime clock's own time unless a test
            # swapped in a fake clock, whose trial calls end before any real timeout.
            try:
                with anyio.move_on_after(deadline - now):
                    await waiter.event.wait()
            finally:
                with self._lock:
                    if waiter in state.breaker_waiters:
                        state.breaker_waiters.remove(waiter)
            if not waiter.event.is_set():
                deadline = min(deadline, clock.now())  # timed out on the loop's clock

    def _admit(self, limit_key: str, now: float) -> bool | tuple[float | None, str]:
        """Check the breaker: whether this call is the half-open circuit's trial, or what it
        waits for (seconds until the cooldown ends, ``None`` for the trial in flight) and why.
        """
        state = self._states.get(limit_key)
        if state is None or state.breaker == "closed":
            return False
        config = self._breaker
        if config is None:  # breakers were turned off since the circuit opened
            state.close_breaker()
            return False
        if state.breaker == "open":
            left = state.opened_at + config.cooldown - now
            if left > 0:
                return left, f"the next trial call is allowed in {left:.1f} s"
            state.breaker, state.trial = "half_open", False
        if state.trial:
            return None, "a trial call is in flight and the next is allowed once it succeeds"
        state.trial = True
        return True

    def _applicable(self, model: str, limit_key: str, groups: Sequence[str]) -> list[str]:
        limits = self._limits
        model_key = limit_key if limit_key in limits else model if model in limits else None
        # Groups in sorted order, not as given: two calls naming the same groups in different
        # orders would otherwise each hold a slot the other waits for.
        keys = sorted({group for group in groups if group in limits and group != model_key})
        if model_key is not None:
            keys.append(model_key)
        return keys

    def _pause_left(self, limit_key: str, now: float) -> float:
        state = self._states.get(limit_key)
        if state is None or state.paused_until is None:
            return 0.0
        left = state.paused_until - now
        if left <= 0:
            state.paused_until = None
            self._forget_if_idle(limit_key, state)
        return left

    def _forget_if_idle(self, key: str, state: _KeyState) -> None:
        """Drop an undeclared key's state once it holds nothing, so its calls go fast again."""
        if (
            key not in self._limits
            and state.paused_until is None
            and state.breaker == "closed"
            and not state.failures
            and not state.in_flight
            and not state.queue
            and not state.breaker_waiters
            and self._states.get(key) is state
        ):
            del self._states[key]

    async def _wait_for_pause(self, limit_key: str, clock: Clock, reasons: list[str]) -> None:
        while True:
            with self._lock:
                left = self._pause_left(limit_key, clock.now())
            if left <= 0:
                return
            reasons.append(f"retry_after:{limit_key}")
            await clock.sleep(left)

    async def _take(
        self, permit: Permit, key: str, tokens: int, clock: Clock, reasons: list[str]
    ) -> None:
        """Take ``key``'s share for the call, waiting in the key's FIFO queue if needed."""
        waiter: _Waiter | None = None
        try:
            while True:
                with self._lock:
                    state = self._state(key)
                    if waiter is not None and waiter.state is not state:
                        waiter = None  # the registry was reset: queue again
                    delay: float | None = None
                    if waiter is None and state.queue:
                        why = state.blocked_on  # others came first: wait for our turn
                    elif waiter is None or state.queue[0] is waiter:
                        delay, why = self._try_take(permit, key, state, tokens, clock.now())
                        if not why:
                            if waiter is not None:
                                state.queue.popleft()
                                waiter = None
                                state.wake_head()
                            return
                        state.blocked_on = why
                    else:
                        why = state.blocked_on
                    if waiter is None:
                        waiter = _Waiter(state)
                        state.queue.append(waiter)
                    elif delay is None:
                        import anyio

                        waiter.event = anyio.Event()
                    event = waiter.event
                reasons.append(f"{why}:{key}")
                if delay is None:
                    await event.wait()
                else:
                    await clock.sleep(delay)
        finally:
            if waiter is not None:
                with self._lock:
                    _leave(waiter)

    def _try_take(
        self, permit: Permit, key: str, state: _KeyState, tokens: int, now: float
    ) -> tuple[float | None, str]:
        """Take the call's share of ``key`` if all of it is there.

        Returns:
            ``(None, "")`` when taken; else what is missing and how long to sleep for it
            (``None``: until woken, for a concurrency slot).
        """
        limit = self._limits.get(key)
        if limit is None:
            limit = _NO_RULE
        if limit.concurrency is not None and state.in_flight >= limit.concurrency:
            return None, "concurrency"
        if limit.auto is not None:
            controller = state.auto
            if controller is None:
                controller = state.auto = Controller(key, limit.auto)
            if state.in_flight >= controller.limit:
                return None, "concurrency"
        if limit.rpm is not None:
            rate = limit.rpm / 60
            bucket = state.requests = _refill(state.requests, rate, limit.request_capacity, now)
            if bucket.level * (1 + _TOLERANCE) < 1:
                return (1 - bucket.level) / rate, "rpm"
        if limit.tpm is not None and tokens > 0:
            rate, capacity = limit.tpm / 60, limit.token_capacity
            bucket = state.tokens = _refill(state.tokens, rate, capacity, now)
            need = min(float(tokens), capacity)  # bigger calls go when the bucket is full
            if bucket.level + _TOLERANCE * need < need:
                return (need - bucket.level) / rate, "tpm"
        state.in_flight += 1
        if state.requests is not None and limit.rpm is not None:
            state.requests.level -= 1
        charged: float | None = None
        if limit.tpm is not None:
            charged = float(tokens)
            if tokens > 0 and state.tokens is not None:
                state.tokens.level -= tokens  # may go below zero: a debt later calls wait for
        permit._held.append(_Hold(key, state, limit.rpm is not None, charged, now))
        return None, ""

    def _give_back(self, permit: Permit, now: float) -> None:
        """Undo what the permit took (cancelled, or paused before it could start)."""
        for hold in permit._held:
            state = hold.state
            state.in_flight -= 1
            limit = self._limits.get(hold.key)
            if limit is not None and limit.rpm is not None and hold.request:
                rate, capacity = limit.rpm / 60, limit.request_capacity
                bucket = state.requests = _refill(state.requests, rate, capacity, now)
                bucket.level = min(capacity, bucket.level + 1)
            if limit is not None and limit.tpm is not None and hold.tokens:
                _correct_tokens(state, limit, -hold.tokens, now)
            state.wake_head()
        permit._held.clear()

    def _end_trial(self, permit: Permit) -> None:
        if permit._trial:
            state = self._states.get(permit._limit_key)
            if state is not None and state.breaker == "half_open":
                state.trial = False  # the next call may be the trial
                state.wake_breaker_waiters()

    def _release(
        self, permit: Permit, tokens: int | None, ok: bool | None, request: str | None
    ) -> None:
        with self._lock:
            now = current_clock().now()
            for hold in permit._held:
                hold.state.in_flight -= 1
                limit = self._limits.get(hold.key)
                if tokens is not None and hold.tokens is not None and limit and limit.tpm:
                    _correct_tokens(hold.state, limit, tokens - hold.tokens, now)
                hold.state.wake_head()
            permit._held.clear()
            if ok is None:
                self._end_trial(permit)
            elif ok:
                state = self._states.get(permit._limit_key)
                if state is not None:
                    state.close_breaker()
                    self._forget_if_idle(permit._limit_key, state)
            else:
                self._count_failure(permit, now, request)

    def _observe(
        self, holds: list[_Hold], ok: bool | None, status_code: int | None
    ) -> tuple[Change, ...]:
        """Tell the auto limits of a released call's ``holds`` how it went."""
        changes: list[Change] = []
        with self._lock:
            now = current_clock().now()
            for hold in holds:
                controller = hold.state.auto
                if controller is None:  # redeclared fixed meanwhile
                    continue
                change = controller.observe(
                    started=hold.started,
                    now=now,
                    status_code=status_code,
                    ok=ok,
                    in_flight=hold.state.in_flight,
                    waiting=len(hold.state.queue),
                )
                if change is not None:
                    changes.append(change)
                    if change.new > change.old:
                        hold.state.wake_head()
        return tuple(changes)

    def _count_failure(self, permit: Permit, now: float, request: str | None) -> None:
        config = self._breaker
        if config is None:
            self._end_trial(permit)
            return
        state = self._state(permit._limit_key)
        state.failures += 1
        if len(state.failed_requests) < config.requests:
            state.failed_requests.add(object() if request is None else request)
        trial_failed = permit._trial and state.breaker == "half_open"
        if trial_failed or (
            state.breaker == "closed"
            and state.failures >= config.failures
            and len(state.failed_requests) >= config.requests
        ):
            state.breaker, state.opened_at, state.trial = "open", now, False
            state.wake_breaker_waiters()  # to sleep out the new cooldown


def _correct_tokens(state: _KeyState, limit: _Rule, extra: float, now: float) -> None:
    """Charge ``extra`` more tokens (or refund, when negative, up to the capacity)."""
    assert limit.tpm is not None
    rate, capacity = limit.tpm / 60, limit.token_capacity
    bucket = state.tokens = _refill(state.tokens, rate, capacity, now)
    bucket.level = min(capacity, bucket.level - extra) if extra < 0 else bucket.level - extra


def _carry_buckets(state: _KeyState, old: _Rule | None, new: _Rule, now: float) -> None:
    """Keep a re-declared key's bucket levels, brought up to now and capped at the new size."""
    if state.requests is not None and old is not None and old.rpm is not None and new.rpm:
        _refill(state.requests, old.rpm / 60, old.request_capacity, now)
        state.requests.level = min(state.requests.level, new.request_capacity)
    else:
        state.requests = None
    if state.tokens is not None and old is not None and old.tpm is not None and new.tpm:
        _refill(state.tokens, old.tpm / 60, old.token_capacity, now)
        state.tokens.level = min(state.tokens.level, new.token_capacity)
    else:
        state.tokens = None


def _leave(waiter: _Waiter) -> None:
    """Take a waiter that gave up out of its queue, and wake the new head if it was first."""
    queue = waiter.state.queue
    try:
        index = queue.index(waiter)
    except ValueError:
        return
    del queue[index]
    if index == 0:
        waiter.state.wake_head()


def _circuit_open(model: str, failures: int, when: str, waited: float | None) -> LLMError:
    if waited is None:
        how = f"Calls to {model} fail fast until then"
    else:
        how = f"This call waited {waited:.1f} s for it, twice the cooldown, and gave up"
    return LLMError(
        f"circuit open for {model} after {failures} consecutive failures; {when}. {how}: "
        f"check the provider's status, or tune the breaker with "
        f"Limits(..., breaker=Breaker(failures=..., cooldown=...)) (breaker=None turns it off)",
        model=model,
        retryable=False,
    )


def _too_big(model: str, name: str, rule: _Rule, tokens: int, most: float) -> LLMError:
    return LLMError(
        f"{model}: a call estimated at {tokens:,} prompt tokens is more than twice the tpm limit "
        f"of {name!r} (Limit(tpm={rule.tpm:g}) lets at most {most:,.0f} through in one call). "
        f"Shorten the prompt (fewer or shorter context outputs), or raise that limit's tpm",
        model=model,
        retryable=False,
    )


_REGISTRY = LimitRegistry()


def registry() -> LimitRegistry:
    """The process-wide registry every crew's calls go through."""
    return _REGISTRY


def set_limits(limits: Limits) -> None:
    """Declare limits for the whole process (the most recent declaration of a key wins).

    Example:
        ```python
        crewflow.set_limits(Limits({"openai/gpt-4o-mini": Limit(rpm=500, tpm=200_000)}))
        ```

    Raises:
        ConfigurationError: ``limits`` is not a `Limits`.
    """
    registry().configure(limits)
