"""Cluster-wide limits: one Ray actor holds the limits' counts for every worker of a
`RayExecutor`.

**Who holds what.** The driver declares the limits (its process-wide `crewflow.set_limits`
ones and the crew's ``limits``) to one named actor per worker pool, `LimitActor`, before any
kickoff starts. In each worker, kickoffs use a `SharedRegistry` in place of the process's
registry: every LLM call asks the actor for leave (a concurrency slot, one request from the rpm
bucket, its tokens from the tpm bucket, no Retry-After pause of its limit key in force) and
gives it back when the call ends, and a 429's Retry-After pauses the key in the actor, so on
every worker. The actor's counts are the process registry's own (`LimitRegistry`), kept in one
process; the breaker stays per worker.

**Waiting.** A call waiting for a concurrency slot waits in the actor (`LimitActor`, async:
many calls wait at once), woken when a permit comes back, and is told to ask again after a few
seconds. Other waits are the caller's: the actor says how long (until the rpm or tpm bucket
holds enough, until a pause ends) and the worker sleeps on its clock, then asks again. Waiting
is not strictly FIFO across workers, as it is within one process.

**Leases.** Each grant is a lease of `LEASE` seconds, renewed every third of that by the worker
holding it (a thread that sends the ids of the permits it holds, one message per worker). A
worker that dies stops renewing, and its slots come back when its leases run out.

**The actor dying.** It is created with ``max_restarts=-1``. While it is down or restarting,
callers wait (backoff from 50 ms to 1 s) and ask again; they never run unlimited. A restarted
actor has lost its counts: for one lease it grants nothing and takes back the permits the
workers still hold, as their renewals arrive (each renewal names what its permit took), and its
rpm and tpm buckets start empty; only then does it grant again, knowing every permit held.
Pauses in force when it died are lost (the provider's next 429 sets them again).

**Cost.** A call through the actor costs one round trip to take its permit (the release is sent
without waiting). Measured in one worker of a local 2-CPU cluster on a shared 2-core machine
(load average 9 to 18), alternating, median of 7 runs of 500 acquire-and-release pairs: 3.8 ms
per call through this actor, 3.0 ms through a plain (sync) actor holding the same book, 11 us
through the process's own registry; on a quieter machine (load 7.6) the plain actor took
2.1 ms. The async actor's extra ~0.7 ms buys waiting without polling: a slot given back is
granted at once, and a thousand waiting workers do not poll the actor. Calls take hundreds of
milliseconds of model time, so grants are not batched or leased in advance.
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

from crewflow._runtime import limiter
from crewflow._runtime.clock import current_clock
from crewflow._runtime.limiter import LimitRegistry, Permit, _Bucket, _Hold, _KeyState
from crewflow.exceptions import LLMError
from crewflow.limits import Limit, Limits

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    import anyio

__all__ = [
    "LEASE",
    "LimitActor",
    "LimitBook",
    "SharedLimits",
    "SharedRegistry",
    "declared_limits",
    "start",
    "stop",
    "use",
]

LEASE: Final = 10.0
"""Seconds a permit lasts unless its worker renews it; also how long a restarted actor grants
nothing while the workers' renewals tell it what they hold."""

_GRANTS_KEPT: Final = 1000
_ABANDONED_KEPT: Final = 10_000
_PATIENCE: Final = 5.0
"""Seconds a call waiting for a slot waits in the actor before it is told to ask again."""
_RECHECK: Final = 1.0
"""While a call waits in the actor, how often it looks again without being woken (leases
run out without a message)."""
_MAX_WAITING: Final = 10_000
"""Calls the actor serves at once (most of them waiting for a slot)."""
_SLOT_POLL: Final = (0.01, 0.2)
_DOWN_BACKOFF: Final = (0.05, 1.0)

Grant = tuple[Literal["granted", "wait", "refused"], float | None, str]
"""What `LimitBook.take` answers: granted (after waiting for the reason given, if any); wait
that many seconds (``None``: a slot is taken, ask again soon) for the reason given; or refused
with a message."""


@dataclass(frozen=True)
class SharedLimits:
    """What a worker needs to reach the executor's limit actor (sent with each kickoff)."""

    name: str
    namespace: str
    lease: float


@dataclass
class _Lease:
    permit: Permit
    expires: float


class LimitBook:
    """The limit actor's state: the declared limits and every permit granted, by lease id.

    A plain class (the driver makes it a Ray actor); time is `current_clock`, so tests run it
    on a fake clock.

    Args:
        limits: The limits by key.
        lease: Seconds a permit lasts unless renewed.
        restarted: Whether this is the actor restarted after it died (None: ask Ray).
    """

    def __init__(self, limits: Mapping[str, Limit], lease: float, restarted: bool | None = None):
        if restarted is None:
            import ray

            restarted = ray.get_runtime_context().was_current_actor_reconstructed
        self._registry = LimitRegistry()
        self._registry.configure(Limits(dict(limits), breaker=None))
        self._lease = lease
        self._leases: dict[str, _Lease] = {}
        self._next_expiry = float("inf")
        self._granted: deque[tuple[float, tuple[str, ...]]] = deque(maxlen=_GRANTS_KEPT)
        # Leases given back before they were granted (their caller was cancelled while it
        # waited): never granted after. Only the most recent are kept.
        self._abandoned: OrderedDict[str, None] = OrderedDict()
        self.restarted = restarted
        now = current_clock().now()
        self._recovering_until = now + lease if restarted else now
        if restarted:  # the old buckets' levels are lost: start empty, never with a burst
            for key, rule in self._registry._limits.items():
                state = self._registry._state(key)
                state.requests = _Bucket(0.0, now) if rule.rpm is not None else None
                state.tokens = _Bucket(0.0, now) if rule.tpm is not None else None

    def configure(self, limits: Mapping[str, Limit]) -> None:
        """Declare limits again (the next `RayExecutor.kickoffs`); permits held stay."""
        self._registry.configure(Limits(dict(limits), breaker=None))

    def take(
        self, lease_id: str, model: str, limit_key: str, groups: Sequence[str], tokens: int
    ) -> Grant:
        """Grant a call's permit under ``lease_id``, or say how long to wait, or refuse it."""
        registry, now = self._registry, current_clock().now()
        self._expire(now)
        if lease_id in self._abandoned:
            return "refused", None, "the call was cancelled"
        if now < self._recovering_until:
            return "wait", self._recovering_until - now, "limits_actor:restarted"
        with registry._lock:
            try:
                registry._check_size(model, limit_key, groups, tokens)
            except LLMError as exc:
                return "refused", None, str(exc)
            paused = registry._pause_left(limit_key, now)
            if paused > 0:
                return "wait", paused, f"retry_after:{limit_key}"
            permit = Permit(_registry=registry, _limit_key=limit_key)
            for key in registry._applicable(model, limit_key, groups):
                delay, why = registry._try_take(permit, key, registry._state(key), tokens, now)
                if why:
                    registry._give_back(permit, now)
                    return "wait", delay, f"{why}:{key}"
        self._hold(lease_id, permit, now)
        self._granted.append((now, tuple(hold.key for hold in permit._held)))
        return "granted", 0.0, ""

    def release(self, lease_id: str, tokens: int | None = None) -> None:
        """Give a permit back, its tpm charge corrected by the call's reported ``tokens``."""
        held = self._leases.pop(lease_id, None)
        if held is not None:
            held.permit.release(tokens=tokens)
            return
        self._abandoned[lease_id] = None
        if len(self._abandoned) > _ABANDONED_KEPT:
            self._abandoned.popitem(last=False)

    def renew(self, holdings: Sequence[tuple[str, str, str, Sequence[str]]]) -> None:
        """Extend the leases a worker holds: ``(lease_id, model, limit_key, groups)`` each.

        While recovering from a restart, a lease it does not know is taken back: its slots
        counted as held (its rpm and tpm were spent before the restart).
        """
        now = current_clock().now()
        self._expire(now)
        registry = self._registry
        for lease_id, model, limit_key, groups in holdings:
            held = self._leases.get(lease_id)
            if held is not None:
                held.expires = now + self._lease
            elif now < self._recovering_until:
                permit = Permit(_registry=registry, _limit_key=limit_key)
                with registry._lock:
                    for key in registry._applicable(model, limit_key, groups):
                        state = registry._state(key)
                        state.in_flight += 1
                        permit._held.append(_Hold(key, state, False, None))
                self._hold(lease_id, permit, now)

    def pause(self, limit_key: str, seconds: float) -> None:
        """Start no call of ``limit_key`` on any worker before ``seconds`` from now."""
        self._registry.pause(limit_key, seconds)

    def held(self, key: str) -> int:
        """Calls of ``key`` in flight (for tests and diagnostics)."""
        return int(self._registry.state(key)["in_flight"])

    def granted(self, key: str) -> list[float]:
        """When (on the actor's clock) the last permits that took from ``key`` were granted,
        oldest first (the last 1,000 grants kept; for tests and diagnostics)."""
        return [when for when, keys in self._granted if key in keys]

    def was_restarted(self) -> bool:
        """Whether this actor was restarted after it died."""
        return self.restarted

    def _hold(self, lease_id: str, permit: Permit, now: float) -> None:
        expires = now + self._lease
        self._leases[lease_id] = _Lease(permit, expires)
        self._next_expiry = min(self._next_expiry, expires)

    def _expire(self, now: float) -> None:
        """Take back the permits of leases that ran out (their workers died or hung)."""
        if now < self._next_expiry:
            return
        gone = [lease_id for lease_id, held in self._leases.items() if held.expires <= now]
        for lease_id in gone:
            self._leases.pop(lease_id).permit.release()
        self._next_expiry = min((held.expires for held in self._leases.values()), default=now)
        if not self._leases:
            self._next_expiry = float("inf")


class LimitActor:
    """The Ray actor: a `LimitBook` behind async methods, all run on the actor's one event loop.

    A call that waits for a concurrency slot waits here, woken when a permit is given back (or
    every `_RECHECK` s, since leases run out without a message), for up to `_PATIENCE` s; then
    it is told to ask again. Other waits (buckets, pauses, a restart) are the caller's.

    Args:
        limits: The limits by key.
        lease: Seconds a permit lasts unless renewed.
        restarted: Whether this is the actor restarted after it died (None: ask Ray).
    """

    def __init__(self, limits: Mapping[str, Limit], lease: float, restarted: bool | None = None):
        self.book = LimitBook(limits, lease, restarted)
        self._changed: anyio.Event | None = None

    async def take(
        self, lease_id: str, model: str, limit_key: str, groups: Sequence[str], tokens: int
    ) -> Grant:
        """`LimitBook.take`, waiting here while every slot is taken; a grant that waited
        names what it waited for, as a wait does."""
        import anyio

        grant = first = self.book.take(lease_id, model, limit_key, groups, tokens)
        with anyio.move_on_after(_PATIENCE):
            while grant[0] == "wait" and grant[1] is None:
                if self._changed is None:
                    self._changed = anyio.Event()
                with anyio.move_on_after(_RECHECK):
                    await self._changed.wait()
                grant = self.book.take(lease_id, model, limit_key, groups, tokens)
        if grant[0] == "granted" and first[0] == "wait":
            return "granted", 0.0, first[2]
        return grant

    async def release(self, lease_id: str, tokens: int | None = None) -> None:
        """`LimitBook.release`, waking the calls waiting for a slot."""
        self.book.release(lease_id, tokens)
        self._wake()

    async def renew(self, holdings: Sequence[tuple[str, str, str, Sequence[str]]]) -> None:
        """`LimitBook.renew`."""
        self.book.renew(holdings)
        self._wake()

    async def configure(self, limits: Mapping[str, Limit]) -> None:
        """`LimitBook.configure`."""
        self.book.configure(limits)
        self._wake()

    async def pause(self, limit_key: str, seconds: float) -> None:
        """`LimitBook.pause`."""
        self.book.pause(limit_key, seconds)

    async def held(self, key: str) -> int:
        """`LimitBook.held`."""
        return self.book.held(key)

    async def granted(self, key: str) -> list[float]:
        """`LimitBook.granted`."""
        return self.book.granted(key)

    async def was_restarted(self) -> bool:
        """Whether this actor was restarted after it died."""
        return self.book.restarted

    def _wake(self) -> None:
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()


# A worker's permits hold this state: the counts are in the actor.
_REMOTE_STATE: Final = _KeyState()


class SharedRegistry(LimitRegistry):
    """A worker's registry when its kickoffs share limits through the actor.

    Every call asks the actor (`LimitBook.take`): there is no free path, since a pause set on
    another worker may apply to any call. The breaker stays this worker's own.
    """

    def __init__(self, actor: Any, shared: SharedLimits) -> None:
        super().__init__()
        self.shared = shared
        self._actor = actor
        # lease id -> (model, limit_key, groups), renewed by the thread below.
        self._holding: dict[str, tuple[str, str, tuple[str, ...]]] = {}
        self._holding_lock = threading.Lock()
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def free(self, *, model: str, limit_key: str, groups: Sequence[str] = ()) -> Permit | None:
        return None

    async def acquire(
        self, *, model: str, limit_key: str, groups: Sequence[str] = (), tokens: int = 0
    ) -> Permit:
        clock = current_clock()
        started = clock.now()
        reasons: list[str] = []
        trial = await self._pass_breaker(model, limit_key, clock, reasons)
        permit = Permit(_registry=self, _limit_key=limit_key, _trial=trial)
        try:
            lease_id = await self._lease_of(model, limit_key, tuple(groups), tokens, reasons)
        except BaseException:
            with self._lock:
                self._end_trial(permit)
            permit._released = True
            raise
        permit._held.append(_Hold(lease_id, _REMOTE_STATE, True, None))
        if reasons:
            permit.waited = clock.now() - started
            permit.reasons = tuple(dict.fromkeys(reasons))
        return permit

    def pause(self, limit_key: str, seconds: float) -> None:
        if seconds > 0:
            with self._holding_lock:  # sent in order with this worker's releases
                self._actor.pause.remote(limit_key, seconds)

    def close(self) -> None:
        """Stop renewing (this registry is no longer the worker's)."""
        self._stop.set()

    async def _lease_of(
        self, model: str, limit_key: str, groups: tuple[str, ...], tokens: int, reasons: list[str]
    ) -> str:
        import anyio
        from ray.exceptions import RayActorError

        clock = current_clock()
        lease_id = uuid.uuid4().hex
        poll, down = _SLOT_POLL[0], _DOWN_BACKOFF[0]
        while True:
            try:
                kind, seconds, why = await self._actor.take.remote(
                    lease_id, model, limit_key, groups, tokens
                )
            except RayActorError:
                reasons.append("limits_actor:unavailable")  # restarting: wait, never run unlimited
                await clock.sleep(down)
                down = min(2 * down, _DOWN_BACKOFF[1])
                continue
            except anyio.get_cancelled_exc_class():
                self._send_release(lease_id, None)  # granted meanwhile: give it back
                raise
            if kind == "granted":
                if why:  # it waited in the actor for a slot
                    reasons.append(why)
                with self._holding_lock:
                    self._holding[lease_id] = (model, limit_key, groups)
                    self._start_renewing()
                return lease_id
            if kind == "refused":
                raise LLMError(why, model=model, retryable=False)
            reasons.append(why)
            if seconds is None:
                seconds, poll = poll, min(2 * poll, _SLOT_POLL[1])
            await clock.sleep(seconds)

    def _release(
        self, permit: Permit, tokens: int | None, ok: bool | None, request: str | None
    ) -> None:
        held, permit._held = permit._held, []
        for hold in held:
            self._send_release(hold.key, tokens)
        super()._release(permit, tokens, ok, request)  # the breaker's part, in this worker

    def _send_release(self, lease_id: str, tokens: int | None) -> None:
        with self._holding_lock:
            self._holding.pop(lease_id, None)
            try:
                self._actor.release.remote(lease_id, tokens)
            except Exception:  # the actor is gone: the lease runs out
                return

    def _start_renewing(self) -> None:
        if self._renewer is None:
            self._renewer = threading.Thread(
                target=self._renew, name="crewflow-limit-leases", daemon=True
            )
            self._renewer.start()

    def _renew(self) -> None:
        # One message per worker every third of a lease, whatever it holds; its answer is
        # not awaited (a lost renewal is made up by the next).
        while not self._stop.wait(self.shared.lease / 3):
            with self._holding_lock:
                holdings = [(lease_id, *held) for lease_id, held in self._holding.items()]
                if holdings:
                    try:
                        self._actor.renew.remote(holdings)
                    except Exception:  # down: the next renewal retries
                        continue


def declared_limits(crew_limits: Limits | None) -> dict[str, Limit]:
    """The limits a cluster shares: this process's (`crewflow.set_limits`) and the crew's."""
    declared = {key: rule.limit for key, rule in limiter.registry()._limits.items() if rule.limit}
    if crew_limits is not None:
        declared.update(crew_limits.limits)
    return declared


def start(ray: Any, limits: Mapping[str, Limit], existing: SharedLimits | None) -> SharedLimits:
    """Create a pool's limit actor (or declare the limits again to the one it has)."""
    if existing is not None:
        actor = ray.get_actor(existing.name, namespace=existing.namespace)
        ray.get(actor.configure.remote(dict(limits)))
        return existing
    shared = SharedLimits(
        name=f"crewflow-limits-{uuid.uuid4().hex[:12]}",
        namespace=ray.get_runtime_context().namespace,
        lease=LEASE,
    )
    actor_class = ray.remote(
        max_restarts=-1, max_task_retries=0, num_cpus=0, max_concurrency=_MAX_WAITING
    )(LimitActor)
    actor = actor_class.options(name=shared.name, namespace=shared.namespace).remote(
        dict(limits), shared.lease
    )
    ray.get(actor.was_restarted.remote())  # up before the first kickoff
    _DRIVER_HANDLES[shared.name] = actor
    return shared


# The driver keeps its actors' handles: a named actor lives while a handle to it does.
_DRIVER_HANDLES: dict[str, Any] = {}


def stop(ray: Any, shared: SharedLimits) -> None:
    """Stop a limit actor `start` made (its pool is closed)."""
    actor = _DRIVER_HANDLES.pop(shared.name, None)
    if actor is not None:
        ray.kill(actor)


def use(shared: SharedLimits | None) -> None:
    """In a worker, before a kickoff: route its limits through ``shared``'s actor, or (None)
    through the process's own registry again."""
    current = limiter._REGISTRY
    if isinstance(current, SharedRegistry):
        if shared is not None and current.shared == shared:
            return
        current.close()
        limiter._REGISTRY = _PLAIN
    if shared is not None:
        import ray

        actor = ray.get_actor(shared.name, namespace=shared.namespace)
        limiter._REGISTRY = SharedRegistry(actor, shared)


_PLAIN: Final = limiter._REGISTRY
