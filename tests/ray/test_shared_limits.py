"""Cluster-wide limits: every worker of a `RayExecutor` takes its permits from one actor.

The actor's book (`LimitBook`) is tested first on a fake clock, without Ray; then the kickoffs
of 2 workers against one loopback server, counted at the server or in the actor.
"""

from __future__ import annotations

import threading
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from crewflow import Agent, Crew, Limit, Limits, Task
from crewflow.crew import CrewResult
from crewflow.executors._limits import LimitActor, LimitBook, SharedLimits, SharedRegistry
from crewflow.store import SQLiteStore
from crewflow.testing import Error, FakeClock, OpenAIServer, use_clock
from tests.ray.conftest import _import_ray as import_ray

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator
    from pathlib import Path

    from crewflow.testing import ReceivedRequest
    from crewflow.testing._server import Responder

MODEL = "openai/test-model"


def book(limits: dict[str, Limit], *, lease: float = 10.0, restarted: bool = False) -> LimitBook:
    return LimitBook(limits, lease, restarted=restarted)


# -- the book, on a fake clock --------------------------------------------------------------


def test_the_book_grants_slots_up_to_the_concurrency_and_again_on_release() -> None:
    with use_clock(FakeClock()):
        limits = book({MODEL: Limit(concurrency=2)})
        take = [limits.take(f"l{i}", MODEL, "k", (), 0) for i in range(3)]
        assert [t[0] for t in take] == ["granted", "granted", "wait"]
        assert take[2][1] is None  # a slot: ask again soon
        assert take[2][2] == f"concurrency:{MODEL}"
        limits.release("l0")
        assert limits.take("l2", MODEL, "k", (), 0)[0] == "granted"
        assert limits.held(MODEL) == 2


def test_a_lease_not_renewed_runs_out_and_its_slot_comes_back() -> None:
    # A worker that dies stops renewing: its permit expires after one lease.
    with use_clock(FakeClock()) as clock:
        limits = book({MODEL: Limit(concurrency=1)}, lease=3.0)
        assert limits.take("dead", MODEL, "k", (), 0)[0] == "granted"
        assert limits.take("alive", MODEL, "k", (), 0)[0] == "wait"
        clock.advance(2.0)
        assert limits.take("alive", MODEL, "k", (), 0)[0] == "wait"
        clock.advance(1.0)
        assert limits.take("alive", MODEL, "k", (), 0)[0] == "granted"
        # Renewed, a lease lasts: nobody else gets the slot.
        for _ in range(3):
            clock.advance(2.0)
            limits.renew([("alive", MODEL, "k", ())])
            assert limits.take("other", MODEL, "k", (), 0)[0] == "wait"


def test_a_restarted_book_grants_nothing_until_the_holders_have_renewed() -> None:
    # Its counts were lost: for one lease it only takes back what the workers still hold, so
    # it never grants above the limit; its rpm bucket starts empty (no burst).
    with use_clock(FakeClock()) as clock:
        limits = book({MODEL: Limit(concurrency=2, rpm=60)}, lease=3.0, restarted=True)
        kind, seconds, why = limits.take("new", MODEL, "k", (), 0)
        assert (kind, seconds, why) == ("wait", 3.0, "limits_actor:restarted")
        limits.renew([("held-a", MODEL, "k", ()), ("held-b", MODEL, "k", ())])
        assert limits.held(MODEL) == 2
        clock.advance(2.0)
        limits.renew([("held-a", MODEL, "k", ()), ("held-b", MODEL, "k", ())])
        clock.advance(1.0)
        assert limits.take("new", MODEL, "k", (), 0)[:1] == ("wait",)  # both slots held
        limits.release("held-a")
        assert limits.take("new", MODEL, "k", (), 0)[0] == "granted"  # the bucket refilled
        limits.renew([("late", MODEL, "k", ())])  # recovery is over: unknown leases are gone
        assert limits.held(MODEL) == 2


def test_a_pause_holds_every_call_of_its_key_and_calls_too_big_are_refused() -> None:
    with use_clock(FakeClock()) as clock:
        limits = book({MODEL: Limit(tpm=600)})
        limits.pause("k", 5.0)
        assert limits.take("a", MODEL, "k", (), 1) == ("wait", 5.0, "retry_after:k")
        assert limits.take("a", MODEL, "other-key", (), 1)[0] == "granted"
        clock.advance(5.0)
        assert limits.take("b", MODEL, "k", (), 1)[0] == "granted"
        kind, _, message = limits.take("c", MODEL, "k", (), 5_000)
        assert kind == "refused"
        assert "more than twice the tpm limit" in message


# -- the actor: calls waiting for a slot wait in it ------------------------------------------


@asynccontextmanager
async def b_waiting_behind_a() -> AsyncIterator[tuple[LimitActor, list[Any]]]:
    """An actor whose one slot call "a" holds, and call "b" waiting in it for the slot: the
    block runs while b waits; b's answer is in the list once the block has ended."""
    actor = LimitActor({MODEL: Limit(concurrency=1)}, 10.0, restarted=False)
    assert (await actor.take("a", MODEL, "k", (), 0))[0] == "granted"
    answers: list[Any] = []

    async def waiter() -> None:
        answers.append(await actor.take("b", MODEL, "k", (), 0))

    async with anyio.create_task_group() as group:
        group.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        yield actor, answers


async def test_a_call_waiting_for_a_slot_waits_in_the_actor_until_one_comes_back() -> None:
    async with b_waiting_behind_a() as (actor, answers):
        assert answers == []
        await actor.release("a")

    assert answers == [("granted", 0.0, f"concurrency:{MODEL}")]  # the wait is accounted
    assert await actor.held(MODEL) == 1


async def test_a_call_given_up_while_it_waits_in_the_actor_is_never_granted() -> None:
    # Its worker was cancelled and sent the release before the grant: the slot stays free.
    async with b_waiting_behind_a() as (actor, answers):
        await actor.release("b")
        await actor.release("a")

    assert answers[0][0] == "refused"
    assert await actor.held(MODEL) == 0


# -- a worker's registry, against the book behind a stand-in for the actor ------------------


class Ref:
    """What ``actor.method.remote(...)`` returns: awaitable (after ``gate``, if given)."""

    def __init__(self, value: Any = None, error: BaseException | None = None) -> None:
        self.value, self.error = value, error
        self.gate: anyio.Event | None = None

    def __await__(self) -> Any:
        if self.gate is not None:
            yield from self.gate.wait().__await__()
        if self.error is not None:
            raise self.error
        return self.value


class StandIn:
    """The book answering ``.take.remote(...)`` and the like, as a Ray actor handle would; down
    (every take fails as Ray's do) for its first ``down`` takes."""

    def __init__(self, book: LimitBook, *, down: int = 0) -> None:
        self.book, self.down = book, down
        self.gate: anyio.Event | None = None

    def __getattr__(self, name: str) -> Any:
        stand_in = self

        class Method:
            @staticmethod
            def remote(*args: Any) -> Ref:
                from ray.exceptions import RayActorError

                if name == "take" and stand_in.down:
                    stand_in.down -= 1
                    return Ref(error=RayActorError())
                ref = Ref(getattr(stand_in.book, name)(*args))
                if name == "take":
                    ref.gate = stand_in.gate
                return ref

        return Method


@pytest.fixture
def worker(fake_clock: FakeClock) -> Iterator[Callable[[StandIn], SharedRegistry]]:
    import_ray()
    made: list[SharedRegistry] = []

    def make(actor: StandIn) -> SharedRegistry:
        made.append(SharedRegistry(actor, SharedLimits("limits", "test", 10.0)))
        return made[-1]

    yield make
    for registry in made:
        registry.close()


async def test_while_the_actor_is_down_calls_wait_and_ask_again(
    worker: Callable[[StandIn], SharedRegistry], fake_clock: FakeClock
) -> None:
    with use_clock(fake_clock):
        actor = StandIn(book({MODEL: Limit(concurrency=1)}), down=3)
        registry = worker(actor)

        permit = await registry.acquire(model=MODEL, limit_key="k")

    assert fake_clock.sleeps == [0.05, 0.1, 0.2]  # backing off, never running unlimited
    assert permit.reasons == ("limits_actor:unavailable",)
    assert actor.book.held(MODEL) == 1
    permit.release(ok=True)
    assert actor.book.held(MODEL) == 0


async def test_a_call_cancelled_while_its_permit_is_granted_gives_it_back(
    worker: Callable[[StandIn], SharedRegistry], fake_clock: FakeClock
) -> None:
    # The actor granted it, the answer had not arrived: the lease goes back at once rather
    # than when it runs out.
    with use_clock(fake_clock):
        actor = StandIn(book({MODEL: Limit(concurrency=1)}))
        actor.gate = anyio.Event()
        registry = worker(actor)

        with anyio.move_on_after(0):
            await registry.acquire(model=MODEL, limit_key="k")

    assert len(actor.book.granted(MODEL)) == 1
    assert actor.book.held(MODEL) == 0


# -- on the cluster -------------------------------------------------------------------------


def topic_crew(store: Path, limits: Limits) -> Crew:
    agent = Agent(role="W", goal="G", llm=MODEL)
    return Crew(tasks=[Task("about {topic}", agent=agent)], store=store, limits=limits)


@pytest.fixture
def executor() -> Iterator[Any]:
    from crewflow.executors import RayExecutor

    made = RayExecutor(workers=2)  # 2 worker processes, each with its own registry
    yield made
    made.close()  # its workers and its limit actor


@contextmanager
def serving(
    monkeypatch: pytest.MonkeyPatch, responder: Responder | None = None
) -> Iterator[OpenAIServer]:
    with OpenAIServer(latency=0.25, responder=responder).in_thread() as running:
        monkeypatch.setenv("OPENAI_BASE_URL", running.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-ray-test-shared-limits")
        yield running


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[OpenAIServer]:
    with serving(monkeypatch) as running:
        yield running


def inputs(count: int) -> list[dict[str, str]]:
    return [{"topic": str(i)} for i in range(count)]


@pytest.mark.slow
def test_an_rpm_limit_holds_across_the_workers(
    ray_cluster: Any, tmp_path: Path, server: Any, executor: Any
) -> None:
    # One request per 0.1 s with no burst, for the cluster as a whole: counted on the actor's
    # clock, k + 1 grants never fall within less than k tenths of a second.
    crew = topic_crew(tmp_path / "runs.db", Limits({MODEL: Limit(rpm=600, burst=1)}))

    results = anyio.run(lambda: crew.kickoff_for_each(inputs(6), executor=executor))

    assert all(isinstance(r, CrewResult) for r in results)
    assert len(server.requests) == 6
    granted = ray_cluster.get(actor_of(ray_cluster, executor).granted.remote(MODEL))
    assert len(granted) == 6
    for first in range(len(granted)):
        for last in range(first + 1, len(granted)):
            assert granted[last] - granted[first] >= (last - first) * 0.1 - 1e-6


@pytest.mark.slow
def test_a_concurrency_limit_and_a_retry_after_hold_across_the_workers(
    ray_cluster: Any, tmp_path: Path, server: Any, executor: Any
) -> None:
    # Each worker alone would let its own request go: 2 at once at the server (as a run with
    # RayExecutor(shared_limits=False) shows). And the first request anywhere is told to wait
    # 1 s: no request of any worker reaches the server before that second is over (one at a
    # time, so none was in flight meanwhile).
    server.enqueue(Error(429, retry_after=1))
    crew = topic_crew(tmp_path / "runs.db", Limits({MODEL: Limit(concurrency=1)}))

    results = anyio.run(lambda: crew.kickoff_for_each(inputs(8), executor=executor))

    assert all(isinstance(r, CrewResult) for r in results)
    assert server.max_in_flight == 1
    refused, *others = server.requests
    assert refused.status == 429
    assert len(others) == 8
    assert refused.finished_at is not None
    assert min(r.received_at for r in others) >= refused.finished_at + 1.0
    # The calls' waits are recorded as in one process, by the limit that held them.
    waited = anyio.run(limit_waits, tmp_path / "runs.db", [r.run_id for r in results])
    assert f"concurrency:{MODEL}" in waited
    assert any(reason.startswith("retry_after:openai|") for reason in waited)


@pytest.mark.slow
def test_the_limit_actor_killed_mid_run_is_restarted_and_the_limit_still_holds(
    ray_cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, executor: Any
) -> None:
    from crewflow.executors import _limits

    monkeypatch.setattr(_limits, "LEASE", 1.0)  # the restarted actor waits one lease
    crew = topic_crew(tmp_path / "runs.db", Limits({MODEL: Limit(concurrency=1)}))
    in_flight = threading.Event()

    def first_request_arrived(request: ReceivedRequest) -> None:
        in_flight.set()

    async def kill_while_a_call_is_in_flight() -> None:
        await anyio.to_thread.run_sync(in_flight.wait)
        ray_cluster.kill(actor_of(ray_cluster, executor), no_restart=False)

    results: list[Any] = []

    async def main() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(kill_while_a_call_is_in_flight)
            results.extend(await crew.kickoff_for_each(inputs(6), executor=executor))

    with serving(monkeypatch, first_request_arrived) as server:
        anyio.run(main)

    assert all(isinstance(r, CrewResult) for r in results)
    assert len(server.requests) == 6
    assert server.max_in_flight == 1
    assert ray_cluster.get(actor_of(ray_cluster, executor).was_restarted.remote()) is True
    # Calls waited for the actor (down, then restarted and taking back what was held).
    waited = anyio.run(limit_waits, tmp_path / "runs.db", [r.run_id for r in results])
    assert waited & {"limits_actor:unavailable", "limits_actor:restarted"}


async def limit_waits(path: Path, run_ids: list[str]) -> set[str]:
    async with SQLiteStore(path) as store:
        return {
            reason
            for run_id in run_ids
            for attempt in await store.attempts(run_id)
            for reason in attempt.limit_waits
        }


def actor_of(ray: Any, executor: Any) -> Any:
    shared = executor._pool.limits
    assert shared is not None
    return ray.get_actor(shared.name, namespace=shared.namespace)
