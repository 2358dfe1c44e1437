"""Shared limits: concurrency, rpm/tpm buckets, Retry-After pauses and the circuit breaker."""

from __future__ import annotations

import functools
import threading
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import pytest
from pydantic import ValidationError

from crewflow import Agent, Crew, Task
from crewflow._runtime.limiter import LimitRegistry, Permit, registry, set_limits
from crewflow.exceptions import ConfigurationError, CrewPartialFailure, LLMError, TaskFailed
from crewflow.limits import Breaker, Limit, Limits
from crewflow.testing import Error, FunctionLLM, run_virtual

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from crewflow.llm import LLMRequest
    from crewflow.testing import FakeClock

MODEL = "openai/gpt-4o"
KEY = "openai|https://api.openai.com/v1|gpt-4o"
OTHER_KEY = "openai|http://localhost:8000/v1|gpt-4o"


@pytest.fixture
def limits() -> LimitRegistry:
    return LimitRegistry()


async def settle(predicate: Callable[[], bool]) -> None:
    """Let other tasks run until ``predicate`` holds (they never sleep for real here)."""
    with anyio.fail_after(5):
        while not predicate():
            await anyio.lowlevel.checkpoint()


def acquire(
    limits: LimitRegistry,
    *,
    key: str = KEY,
    groups: Sequence[str] = (),
    tokens: int = 0,
) -> Any:
    return limits.acquire(model=MODEL, limit_key=key, groups=groups, tokens=tokens)


class Caller:
    """An acquirer running in a task group: what it got and when."""

    def __init__(self, limits: LimitRegistry, clock: Any = None, **kwargs: Any) -> None:
        self.limits, self.clock, self.kwargs = limits, clock, kwargs
        self.permit: Permit | None = None
        self.started: float | None = None
        self.at: float | None = None
        self.error: BaseException | None = None

    async def __call__(self) -> None:
        if self.clock is not None:
            self.started = self.clock.now()
        try:
            self.permit = await acquire(self.limits, **self.kwargs)
        except LLMError as exc:
            self.error = exc
        if self.clock is not None:
            self.at = self.clock.now()


# -- declarations ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"concurrency": 0}, "concurrency"),
        ({"concurrency": -2}, "concurrency"),
        ({"concurrency": 1.5}, "concurrency"),
        ({"concurrency": True}, "concurrency"),
        ({"rpm": 0}, "rpm"),
        ({"rpm": -60}, "rpm"),
        ({"rpm": float("nan")}, "rpm"),
        ({"tpm": float("inf")}, "tpm"),
        ({"tpm": "1000"}, "tpm"),
        ({"burst": 5}, "set rpm too"),
        ({"rpm": 60, "burst": 0.5}, "at least one request"),
        ({"token_burst": 100}, "set tpm too"),
        ({"tpm": 100, "token_burst": 0}, "token_burst"),
    ],
)
def test_impossible_limits_are_configuration_errors(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Limit(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"failures": 0},
        {"failures": 2.5},
        {"requests": 0},
        {"requests": True},
        {"cooldown": -1.0},
        {"cooldown": float("nan")},
        {"wait": "yes"},
    ],
)
def test_impossible_breakers_are_configuration_errors(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError, match="Breaker"):
        Breaker(**kwargs)


def test_burst_defaults_to_one_seconds_worth_and_at_least_one() -> None:
    assert Limit(rpm=600).request_capacity == 10
    assert Limit(rpm=60).request_capacity == 1
    assert Limit(rpm=6).request_capacity == 1
    assert Limit(rpm=60, burst=4).request_capacity == 4
    assert Limit(tpm=60_000).token_capacity == 1_000
    assert Limit(tpm=30).token_capacity == 1
    assert Limit(tpm=60_000, token_burst=50).token_capacity == 50


def test_limits_is_a_mapping_of_keys_to_limits() -> None:
    declared = Limits({MODEL: Limit(rpm=60)}, search=Limit(concurrency=2))

    assert len(declared) == 2
    assert set(declared) == {MODEL, "search"}
    assert "search" in declared
    assert "other" not in declared
    assert declared.get("search") == Limit(concurrency=2)
    assert declared.get("other") is None
    assert declared.breaker == Breaker()
    assert declared == Limits({MODEL: Limit(rpm=60), "search": Limit(concurrency=2)})
    assert declared != Limits({MODEL: Limit(rpm=60)}, search=Limit(concurrency=2), breaker=None)
    assert hash(declared) == hash(Limits({MODEL: Limit(rpm=60)}, search=Limit(concurrency=2)))
    assert "search" in repr(declared)
    assert "Breaker(failures=5" in repr(declared)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Limits({"search": {"concurrency": 2}}), "use crewflow.Limit"),
        (lambda: Limits({"": Limit()}), "non-empty strings"),
        (lambda: Limits({"search": Limit()}, search=Limit()), "given twice"),
        (lambda: Limits(breaker=5), "breaker"),
        (lambda: Limits([("search", Limit())]), "give limits by key"),  # type: ignore[arg-type]
        (lambda: Limit(colour="red"), "unknown field; valid fields: burst, concurrency"),
    ],
)
def test_bad_limits_declarations_are_configuration_errors(
    build: Callable[[], Limits], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        build()


def test_declarations_are_frozen_values() -> None:
    assert Limit(rpm=60) == Limit(rpm=60.0)
    assert hash(Limit(rpm=60)) == hash(Limit(rpm=60.0))
    assert Breaker(failures=2) == Breaker(failures=2, cooldown=30)
    assert len({Limits(search=Limit(concurrency=1)), Limits({"search": Limit(concurrency=1)})}) == 1
    with pytest.raises(ValidationError, match="frozen"):
        Limit(rpm=60).rpm = 120  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        Limits().breaker = None  # type: ignore[misc]


async def test_a_crew_takes_its_limits_as_a_plain_dict_too(limits: LimitRegistry) -> None:
    task = Task("x", agent=Agent(role="r", goal="g"))
    crew = Crew(tasks=[task], limits={"openai/o3": Limit(rpm=60), "search": Limit(concurrency=2)})
    assert crew.limits == Limits({"openai/o3": Limit(rpm=60)}, search=Limit(concurrency=2))
    with pytest.raises(ConfigurationError, match=r"use crewflow\.Limit"):
        Crew(tasks=[task], limits={"search": {"concurrency": 2}})
    # Like Limits(...) without a breaker, the dict leaves the process's breaker as it is.
    limits.configure(Limits(breaker=None))
    assert crew.limits is not None
    limits.configure(crew.limits)

    await fail(limits, 50)

    assert limits.state(KEY)["breaker"] == "closed"


def test_configure_takes_only_limits(limits: LimitRegistry) -> None:
    with pytest.raises(ConfigurationError, match=r"expected crewflow\.Limits"):
        limits.configure({"search": Limit(concurrency=1)})  # type: ignore[arg-type]


# -- the fast path -----------------------------------------------------------------------------


async def test_a_call_with_nothing_declared_starts_at_once(limits: LimitRegistry) -> None:
    permit = await acquire(limits, tokens=1_000, groups=())

    assert permit.waited == 0
    assert permit.reasons == ()
    permit.release(tokens=2_000, ok=True)
    assert limits.state(KEY)["in_flight"] == 0
    assert limits.state(KEY)["breaker"] == "closed"


async def test_undeclared_groups_limit_nothing(limits: LimitRegistry) -> None:
    limits.configure(Limits(search=Limit(concurrency=1)))

    permits = [await acquire(limits, groups=["web"]) for _ in range(5)]

    assert all(permit.waited == 0 for permit in permits)


# -- concurrency -------------------------------------------------------------------------------


async def test_concurrency_is_never_exceeded_by_many_concurrent_callers(
    limits: LimitRegistry,
) -> None:
    limits.configure(Limits({MODEL: Limit(concurrency=3)}))
    in_flight = peak = done = 0
    waited_reasons: set[str] = set()

    async def call(turns: int) -> None:
        nonlocal in_flight, peak, done
        permit = await acquire(limits)
        waited_reasons.update(permit.reasons)
        in_flight += 1
        peak = max(peak, in_flight)
        for _ in range(turns):
            await anyio.lowlevel.checkpoint()
        in_flight -= 1
        done += 1
        permit.release(ok=True)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            for index in range(40):
                group.start_soon(call, index % 4)

    assert done == 40
    assert peak == 3
    assert waited_reasons == {f"concurrency:{MODEL}"}
    assert limits.state(MODEL)["in_flight"] == 0
    assert limits.state(MODEL)["waiting"] == 0


async def test_waiters_get_slots_in_arrival_order_and_newcomers_queue_behind(
    limits: LimitRegistry,
) -> None:
    limits.configure(Limits({MODEL: Limit(concurrency=1)}))
    holder = await acquire(limits)
    order: list[int] = []

    async def call(index: int) -> None:
        permit = await acquire(limits)
        order.append(index)
        await anyio.lowlevel.checkpoint()
        permit.release()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            for index in range(6):
                group.start_soon(call, index)
                await settle(lambda n=index: limits.state(MODEL)["waiting"] == n + 1)
            holder.release()
            # The slot is free, but the queue is not: a newcomer must not overtake.
            group.start_soon(call, 99)

    assert order == [0, 1, 2, 3, 4, 5, 99]


async def test_release_is_idempotent(limits: LimitRegistry) -> None:
    limits.configure(Limits({MODEL: Limit(concurrency=2)}))
    first = await acquire(limits)
    second = await acquire(limits)

    first.release(ok=False)
    first.release(ok=False)

    assert limits.state(MODEL)["in_flight"] == 1
    assert limits.state(KEY)["failures"] == 1
    second.release()
    assert limits.state(MODEL)["in_flight"] == 0


# -- rate limits -------------------------------------------------------------------------------


async def test_rpm_spaces_concurrent_requests_by_exactly_its_rate(
    limits: LimitRegistry, fake_clock: FakeClock
) -> None:
    limits.configure(Limits({MODEL: Limit(rpm=60, burst=1)}))
    callers = [Caller(limits, fake_clock) for _ in range(5)]

    async with anyio.create_task_group() as group:
        for caller in callers:
            group.start_soon(caller)

    assert sorted(caller.at or 0.0 for caller in callers) == [0.0, 1.0, 2.0, 3.0, 4.0]
    # One sleeper at a time: the fake clock sees each wait once.
    assert fake_clock.sleeps == [1.0, 1.0, 1.0, 1.0]
    # (A fake clock's sleep moves time at once: later callers start later.)
    for caller in callers:
        assert caller.permit is not None
        assert caller.permit.waited == (caller.at or 0.0) - (caller.started or 0.0)
        assert caller.permit.reasons == ((f"rpm:{MODEL}",) if caller.permit.waited else ())


@pytest.mark.parametrize(
    ("limit", "starts"),
    [
        (Limit(rpm=60), [0.0, 1.0, 2.0, 3.0]),  # default burst: 1
        (Limit(rpm=120), [0.0, 0.0, 0.5, 1.0]),  # default burst: 2 (one second's worth)
        (Limit(rpm=30), [0.0, 2.0, 4.0, 6.0]),  # default burst: at least 1
        (Limit(rpm=60, burst=3), [0.0, 0.0, 0.0, 1.0]),
    ],
)
async def test_rpm_bucket_lets_a_burst_through_then_refills_continuously(
    limits: LimitRegistry, fake_clock: FakeClock, limit: Limit, starts: list[float]
) -> None:
    limits.configure(Limits({MODEL: limit}))
    times = []
    for _ in starts:
        await acquire(limits)
        times.append(fake_clock.now())

    assert times == pytest.approx(starts)


async def test_an_idle_rpm_bucket_refills_up_to_its_burst_only(
    limits: LimitRegistry, fake_clock: FakeClock
) -> None:
    limits.configure(Limits({MODEL: Limit(rpm=60, burst=2)}))
    await acquire(limits)
    await acquire(limits)
    assert limits.state(MODEL)["rpm_tokens"] == 0

    fake_clock.advance(100)

    assert limits.state(MODEL)["rpm_tokens"] == 2


async def test_tpm_charges_the_estimated_prompt_tokens(
    limits: LimitRegistry, fake_clock: FakeClock
) -> None:
    limits.configure(Limits({MODEL: Limit(tpm=6_000)}))  # 100 tokens/s, holds 100

    first = await acquire(limits, tokens=100)
    second = await acquire(limits, tokens=50)

    assert first.waited == 0
    assert second.waited == pytest.approx(0.5)
    assert second.reasons == (f"tpm:{MODEL}",)


async def test_a_call_bigger_than_the_token_bucket_goes_when_it_is_full(
    limits: LimitRegistry, fake_clock: FakeClock
) -> None:
    limits.configure(Limits({MODEL: Limit(tpm=6_000)}))  # holds 100 tokens
    small = await acquire(limits, tokens=40)

    big = await acquire(limits, tokens=300)  # waits for a full bucket, not for 300 tokens
    after = await acquire(limits, tokens=100)  # the big call's debt is paid first

    assert small.waited == 0
    assert big.waited == pytest.approx(0.4)
    assert after.waited == pytest.approx(3.0)


async def test_a_call_above_twice_the_tpm_fails_at_once_naming_the_limit(
    limits: LimitRegistry, fake_clock: FakeClock
) -> None:
    limits.configure(Limits({MODEL: Limit(tpm=6_000)}, search=Limit(tpm=600, token_burst=1_000)))
    await acquire(limits, tokens=100)  # empties the model's bucket

    with pytest.raises(LLMError) as caught:
        await acquire(limits, tokens=12_001)
    with pytest.raises(LLMError, match=r"'search' \(Limit\(tpm=600\) lets at most 2,000"):
        await acquire(limits, tokens=2_001, groups=["search"])  # twice its bigger bucket

    error = caught.value
    assert error.retryable is False
    assert error.model == MODEL
    assert f"estimated at 12,001 prompt tokens is more than twice the tpm limit of {MODEL!r}" in (
        str(error)
    )
    assert "Limit(tpm=6000) lets at most 12,000 through in one call" in str(error)
    assert fake_clock.sleeps == []  # at once: it did not wait for the bucket first
    assert limits.state(MODEL)["waiting"] == 0
    big = await acquire(limits, tokens=12_000)  # at twice the limit: waits for a full bucket
    assert big.waited == pytest.approx(1.0)


async def test_a_call_the_provider_did_not_process_gets_its_estimate_back(
    limits: LimitRegistry, fake_clock: FakeClock
) -> None:
    limits.configure(Limits({MODEL: Limit(tpm=6_000)}))  # holds 100 tokens
    rejected = await acquire(limits, tokens=5_000)  # leaves the bucket 4,900 in debt

    rejected.release(tokens=0)  # e.g. a 400: the prompt was too long

    assert limits.state(MODEL)["tpm_tokens"] == 100
    assert (await acquire(limits, tokens=100)).waited == 0


async def test_reported_usage_corrects_the_tpm_charge(
    limits: LimitRegistry, fake_clock: FakeClock
) -> None:
    limits.configure(Limits({MODEL: Limit(tpm=60_000, token_burst=1_000)}))

    permit = await acquire(limits, tokens=400)
    assert limits.state(MODEL)["tpm_tokens"] == 600
    permit.release(tokens=700)  # the answer cost 300 more than the estimate
    assert limits.state(MODEL)["tpm_tokens"] == 300

    permit = await acquire(limits, tokens=300)
    assert limits.state(MODEL)["tpm_tokens"] == 0
    permit.release(tokens=100)  # 200 less: refunded
    assert limits.state(MODEL)["tpm_tokens"] == 200

    permit = await acquire(limits, tokens=200)
    fake_clock.advance(0.9)  # refilled 900 meanwhile
    permit.release(tokens=0)  # a refund never fills the bucket beyond its capacity
    assert limits.state(MODEL)["tpm_tokens"] == 1_000


async def test_requests_and_tokens_are_both_charged(
    limits: LimitRegistry, fake_clock: FakeClock
) -> None:
    limits.configure(Limits({MODEL: Limit(rpm=60, tpm=600, token_burst=100)}))  # 10 tokens/s

    await acquire(limits, tokens=100)
    permit = await acquire(limits, tokens=30)

    # One second for the request, then two more for the tokens.
    assert permit.waited == pytest.approx(3.0)
    assert permit.reasons == (f"rpm:{MODEL}", f"tpm:{MODEL}")


# -- Retry-After pauses ------------------------------------------------------------------------


async def test_a_pause_holds_every_caller_of_the_key_until_it_ends(
    limits: LimitRegistry, fake_clock: FakeClock
) -> None:
    limits.pause(KEY, 5.0)
    callers = [Caller(limits, fake_clock) for _ in range(3)]

    async with anyio.create_task_group() as group:
        for caller in callers:
            group.start_soon(caller)
    other = await acquire(limits, key=OTHER_KEY)

    assert [caller.at for caller in callers] == [5.0, 5.0, 5.0]
    assert fake_clock.sleeps == [5.0]
    assert callers[0].permit is not None
    assert callers[0].permit.waited == 5.0
    assert callers[0].permit.reasons == (f"retry_after:{KEY}",)
    assert other.waited == 0  # another endpoint of the same model is not paused
    assert limits.state(KEY)["paused_until"] is None


async def test_a_pause_extends_but_never_shortens(
    limits: LimitRegistry, fake_clock: FakeClock
) -> None:
    limits.pause(KEY, 5.0)
    limits.pause(KEY, 2.0)
    assert limits.state(KEY)["paused_until"] == 5.0

    fake_clock.advance(1.0)
    limits.pause(KEY, 10.0)
    assert limits.state(KEY)["paused_until"] == 11.0

    limits.pause(KEY, 0)
    assert limits.state(KEY)["paused_until"] == 11.0


async def test_a_pause_that_begins_while_a_call_waits_for_a_slot_is_respected(
    limits: LimitRegistry, fake_clock: FakeClock
) -> None:
    limits.configure(Limits({KEY: Limit(concurrency=1)}))
    holder = await acquire(limits)
    waiter = Caller(limits, fake_clock)

    async with anyio.create_task_group() as group:
        group.start_soon(waiter)
        await settle(lambda: limits.state(KEY)["waiting"] == 1)
        limits.pause(KEY, 3.0)  # the holder's call got a 429
        holder.release()

    assert waiter.at == 3.0
    assert waiter.permit is not None
    assert set(waiter.permit.reasons) == {f"concurrency:{KEY}", f"retry_after:{KEY}"}
    assert limits.state(KEY)["in_flight"] == 1


# -- groups and keys ---------------------------------------------------------------------------


async def test_group_and_model_limits_apply_together(limits: LimitRegistry) -> None:
    limits.configure(Limits({MODEL: Limit(concurrency=2)}, search=Limit(concurrency=1)))
    searching = await acquire(limits, groups=["search"])
    grouped = Caller(limits, groups=["search"])
    plain = await acquire(limits)  # the model's second slot
    ungrouped = Caller(limits)

    async with anyio.create_task_group() as group:
        group.start_soon(grouped)
        group.start_soon(ungrouped)
        await settle(lambda: limits.state("search")["waiting"] == 1)
        await settle(lambda: limits.state(MODEL)["waiting"] == 1)
        assert limits.state(MODEL)["in_flight"] == 2
        assert limits.state("search")["in_flight"] == 1
        searching.release()  # frees a search slot and a model slot
        plain.release()

    assert grouped.permit is not None
    assert ungrouped.permit is not None
    assert grouped.permit.reasons[0] == "concurrency:search"
    assert ungrouped.permit.reasons == (f"concurrency:{MODEL}",)
    assert limits.state("search")["in_flight"] == 1
    assert limits.state(MODEL)["in_flight"] == 2


async def test_calls_naming_groups_in_opposite_orders_do_not_deadlock(
    limits: LimitRegistry,
) -> None:
    limits.configure(Limits(a=Limit(concurrency=1), b=Limit(concurrency=1)))
    done = 0

    async def call(groups: list[str]) -> None:
        nonlocal done
        permit = await acquire(limits, groups=groups)
        await anyio.lowlevel.checkpoint()
        permit.release()
        done += 1

    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            for index in range(20):
                group.start_soon(call, ["a", "b"] if index % 2 else ["b", "a"])

    assert done == 20


async def test_a_model_string_limit_is_shared_by_every_endpoint_of_the_model(
    limits: LimitRegistry,
) -> None:
    limits.configure(Limits({MODEL: Limit(concurrency=2)}))

    await acquire(limits, key=KEY)
    await acquire(limits, key=OTHER_KEY)

    assert limits.state(MODEL)["in_flight"] == 2


async def test_a_limit_key_limit_wins_over_the_model_strings(limits: LimitRegistry) -> None:
    limits.configure(Limits({MODEL: Limit(concurrency=5), KEY: Limit(concurrency=1)}))

    await acquire(limits, key=KEY)
    await acquire(limits, key=OTHER_KEY)

    assert limits.state(KEY)["in_flight"] == 1
    assert limits.state(MODEL)["in_flight"] == 1  # only the other endpoint's call


# -- what the provider did not process ----------------------------------------------------------


def too_long_for_the_model(request: LLMRequest) -> Any:
    """A model whose context holds 100,000 characters: longer prompts get a 400."""
    if sum(len(message.content or "") for message in request.messages) > 100_000:
        return Error(400, "This model's maximum context length is 25000 tokens")
    return "fine"


async def test_a_rejected_long_prompt_does_not_stall_the_next_call(fake_clock: FakeClock) -> None:
    llm = FunctionLLM(too_long_for_the_model, model="long")
    agent = Agent(role="A", goal="G", llm=llm)
    crew = Crew(
        tasks=[
            Task("x" * 1_200_000, agent=agent, name="huge", context=[]),  # ~300,000 tokens
            Task("short", agent=agent, name="short", context=[]),
        ],
        on_failure="continue",
        limits=Limits({"long": Limit(tpm=200_000)}),
    )

    with pytest.raises(CrewPartialFailure) as caught:
        await crew.kickoff()

    cause = caught.value.failures["huge"].cause
    assert isinstance(cause, LLMError)
    assert cause.status_code == 400
    assert caught.value.outputs["short"].text == "fine"
    # Left charged, the rejected call's 300,000 tokens would have held "short" for 90 s.
    assert fake_clock.sleeps == []
    assert registry().state("long")["tpm_tokens"] > 3_000  # nearly full: no debt


async def test_a_connection_that_failed_before_sending_gives_its_estimate_back(
    fake_clock: FakeClock,
) -> None:
    replies = iter(
        [
            LLMError("long: connection refused", model="long", retryable=True, sent=False),
            "fine",
        ]
    )
    llm = FunctionLLM(lambda request: next(replies), model="long")
    crew = Crew(
        tasks=[Task("y" * 1_600, agent=Agent(role="A", goal="G", llm=llm))],  # ~400 tokens
        limits=Limits({"long": Limit(tpm=600)}),  # 10 tokens a second
    )

    result = await crew.kickoff()

    assert result.text == "fine"
    assert len(llm.requests) == 2
    assert len(fake_clock.sleeps) == 1  # the backoff; no wait for the tokens never sent


async def test_a_prompt_above_twice_the_tpm_fails_at_once_and_is_never_sent(
    fake_clock: FakeClock,
) -> None:
    llm = FunctionLLM(too_long_for_the_model, model="long")
    crew = Crew(
        tasks=[Task("x" * 2_000_000, agent=Agent(role="A", goal="G", llm=llm))],  # 2 MB
        limits=Limits({"long": Limit(tpm=200_000)}),
    )

    with pytest.raises(TaskFailed) as caught:
        await crew.kickoff()

    cause = caught.value.cause
    assert isinstance(cause, LLMError)
    assert cause.retryable is False
    assert "more than twice the tpm limit of 'long'" in str(cause)
    assert llm.requests == []
    assert fake_clock.sleeps == []


# -- the circuit breaker -----------------------------------------------------------------------


async def fail(limits: LimitRegistry, times: int, *, ok: bool | None = False) -> None:
    for _ in range(times):
        (await acquire(limits)).release(ok=ok)


async def test_the_circuit_opens_after_consecutive_failures_and_fails_fast(
    limits: LimitRegistry, fake_clock: FakeClock
) -> None:
    limits.configure(Limits(breaker=Breaker(failures=3, cooldown=10, wait=False)))
    await fail(limits, 2)
    assert limits.state(KEY)["breaker"] == "closed"

    await fail(limits, 1)
    fake_clock.advance(4)

    assert limits.state(KEY)["breaker"] == "open"
    assert limits.state(KEY)["failures"] == 3
    with pytest.raises(LLMError) as caught:
        await acquire(limits)
    error = caught.value
    assert error.model == MODEL
    assert error.retryable is False
    assert f"circuit open for {MODEL} after 3 consecutive failures" in str(error)
    assert "the next trial call is allowed in 6.0 s" in str(error)
    assert "Breaker(failures=..., cooldown=...)" in str(error)
    assert fake_clock.sleeps == []  # failed fast
    # Another endpoint of the model has its own circuit.
    await acquire(limits, key=OTHER_KEY)


async def test_only_consecutive_counted_failures_open_the_circuit(
    limits: LimitRegistry,
) -> None:
    limits.configure(Limits(breaker=Breaker(failures=3)))

    await fail(limits, 2)
    await fail(limits, 5, ok=None)  # 4xx, cancellations: not counted
    assert limits.state(KEY)["failures"] == 2
    await fail(limits, 1, ok=True)  # a success resets the count
    await fail(limits, 2)

    assert limits.state(KEY)["breaker"] == "closed"
    assert limits.state(KEY)["failures"] == 2


async def test_after_the_cooldown_one_trial_call_at_a_time_is_let_through(
    limits: LimitRegistry, fake_clock: FakeClock
) -> None:
    limits.configure(Limits(breaker=Breaker(failures=2, cooldown=30, wait=False)))
    await fail(limits, 2)
    fake_clock.advance(30)
    assert limits.state(KEY)["breaker"] == "half_open"

    trial = await acquire(limits)
    with pytest.raises(LLMError, match="a trial call is in flight") as caught:
        await acquire(limits)
    assert f"circuit open for {MODEL} after 2 consecutive failures" in str(caught.value)

    trial.release(ok=True)
    assert limits.state(KEY)["breaker"] == "closed"
    assert limits.state(KEY)["failures"] == 0
    (await acquire(limits)).release(ok=True)


async def test_a_failed_trial_opens_the_circuit_for_another_cooldown(
    limits: LimitRegistry, fake_clock: FakeClock
) -> None:
    limits.configure(Limits(breaker=Breaker(failures=2, cooldown=30, wait=False)))
    await fail(limits, 2)
    fake_clock.advance(30)

    await fail(limits, 1)  # the trial
    fake_clock.advance(29)

    assert limits.state(KEY)["breaker"] == "open"
    with pytest.raises(LLMError, match=r"after 3 consecutive failures; .* in 1\.0 s"):
        await acquire(limits)
    fake_clock.advance(1)
    assert limits.state(KEY)["breaker"] == "half_open"


async def test_a_trial_that_does_not_count_lets_the_next_call_be_the_trial(
    limits: LimitRegistry, fake_clock: FakeClock
) -> None:
    limits.configure(Limits(breaker=Breaker(failures=1, requests=1, cooldown=5)))
    await fail(limits, 1)
    fake_clock.advance(5)

    trial = await acquire(limits)
    trial.release(ok=None)  # e.g. cancelled, or a 400
    next_trial = await acquire(limits)

    assert limits.state(KEY)["breaker"] == "half_open"
    next_trial.release(ok=True)
    assert limits.state(KEY)["breaker"] == "closed"


async def test_one_request_failing_again_and_again_never_opens_the_circuit(
    limits: LimitRegistry,
) -> None:
    limits.configure(Limits(breaker=Breaker(failures=3)))  # from 2 requests, by default

    for _ in range(20):  # e.g. a prompt that always gets a 500, retried
        (await acquire(limits)).release(ok=False, request="v1:bad-prompt")

    assert limits.state(KEY)["failures"] == 20
    assert limits.state(KEY)["breaker"] == "closed"
    (await acquire(limits)).release(ok=False, request="v1:another-prompt")
    assert limits.state(KEY)["breaker"] == "open"


async def test_the_circuit_opens_once_failures_come_from_enough_distinct_requests(
    limits: LimitRegistry,
) -> None:
    limits.configure(Limits(breaker=Breaker(failures=2, requests=3)))

    for request in ("v1:a", "v1:b", "v1:a", "v1:b"):
        (await acquire(limits)).release(ok=False, request=request)
    assert limits.state(KEY)["breaker"] == "closed"
    (await acquire(limits)).release(ok=False, request="v1:c")

    assert limits.state(KEY)["breaker"] == "open"


async def test_a_success_forgets_which_requests_failed(limits: LimitRegistry) -> None:
    limits.configure(Limits(breaker=Breaker(failures=2)))
    (await acquire(limits)).release(ok=False, request="v1:a")
    (await acquire(limits)).release(ok=True)

    (await acquire(limits)).release(ok=False, request="v1:b")
    (await acquire(limits)).release(ok=False, request="v1:b")

    assert limits.state(KEY)["breaker"] == "closed"


async def test_while_the_circuit_is_open_callers_wait_for_the_trial_and_go_when_it_succeeds(
    limits: LimitRegistry, fake_clock: FakeClock
) -> None:
    limits.configure(Limits(breaker=Breaker(failures=2, cooldown=30)))  # wait=True by default
    await fail(limits, 2)
    fake_clock.advance(10)

    trial = await acquire(limits)  # waits out the cooldown instead of failing
    assert fake_clock.sleeps == [pytest.approx(20)]
    assert trial.reasons == (f"breaker:{KEY}",)
    assert limits.state(KEY)["breaker"] == "half_open"
    waiting = Caller(limits)
    async with anyio.create_task_group() as group:
        group.start_soon(waiting)
        await settle(lambda: limits.state(KEY)["waiting"] == 1)
        assert waiting.permit is None  # not failed: waiting for the trial's outcome
        trial.release(ok=True)

    assert waiting.error is None
    assert waiting.permit is not None
    assert limits.state(KEY)["breaker"] == "closed"
    assert limits.state(KEY)["waiting"] == 0


async def test_a_caller_waiting_on_a_failed_trial_waits_out_the_next_cooldown(
    limits: LimitRegistry, fake_clock: FakeClock
) -> None:
    limits.configure(Limits(breaker=Breaker(failures=2, cooldown=30)))
    await fail(limits, 2)
    fake_clock.advance(30)
    trial = await acquire(limits)
    waiting = Caller(limits, fake_clock)
    async with anyio.create_task_group() as group:
        group.start_soon(waiting)
        await settle(lambda: limits.state(KEY)["waiting"] == 1)
        trial.release(ok=False)  # opens the circuit again, for another 30 s

    assert waiting.permit is not None  # the next trial
    assert waiting.at == pytest.approx(60)
    assert limits.state(KEY)["breaker"] == "half_open"


async def test_a_caller_cancelled_while_waiting_for_the_trial_leaves_no_trace(
    limits: LimitRegistry, fake_clock: FakeClock
) -> None:
    limits.configure(Limits(breaker=Breaker(failures=2, cooldown=30)))
    await fail(limits, 2)
    fake_clock.advance(30)
    trial = await acquire(limits)

    async with anyio.create_task_group() as group:
        group.start_soon(acquire, limits)
        await settle(lambda: limits.state(KEY)["waiting"] == 1)
        group.cancel_scope.cancel()

    assert limits.state(KEY)["waiting"] == 0
    trial.release(ok=True)
    assert KEY not in limits._states  # forgotten: the key's calls take the fast path again


def test_a_caller_waits_for_the_circuit_at_most_twice_the_cooldown(limits: LimitRegistry) -> None:
    async def main() -> tuple[LLMError, float]:
        limits.configure(Limits(breaker=Breaker(failures=2, cooldown=30)))
        await fail(limits, 2)
        await anyio.sleep(30)
        await acquire(limits)  # the trial, which never ends
        started = anyio.current_time()
        with pytest.raises(LLMError) as caught:
            await acquire(limits)
        return caught.value, anyio.current_time() - started

    error, waited = run_virtual(main)

    assert waited == pytest.approx(60)
    assert error.retryable is False
    assert "a trial call is in flight" in str(error)
    assert "This call waited 60.0 s for it, twice the cooldown, and gave up" in str(error)
    assert limits.state(KEY)["waiting"] == 0


async def test_without_a_breaker_failures_never_open_a_circuit(
    limits: LimitRegistry,
) -> None:
    limits.configure(Limits(breaker=None))

    await fail(limits, 50)

    assert limits.state(KEY)["breaker"] == "closed"


async def test_limits_that_do_not_mention_the_breaker_leave_it_as_declared(
    limits: LimitRegistry,
) -> None:
    limits.configure(Limits(breaker=None))
    limits.configure(Limits(search=Limit(concurrency=2)))  # e.g. a crew's own limits

    await fail(limits, 50)

    assert limits.state(KEY)["breaker"] == "closed"


async def test_turning_breakers_off_closes_open_circuits(limits: LimitRegistry) -> None:
    limits.configure(Limits(breaker=Breaker(failures=1, cooldown=60)))
    await fail(limits, 1)

    limits.configure(Limits(breaker=None))

    (await acquire(limits)).release(ok=True)
    assert limits.state(KEY)["breaker"] == "closed"


# -- cancellation ------------------------------------------------------------------------------


async def test_a_call_cancelled_while_waiting_keeps_nothing(limits: LimitRegistry) -> None:
    limits.configure(
        Limits({MODEL: Limit(concurrency=1)}, search=Limit(concurrency=2, rpm=60, burst=5))
    )
    holder = await acquire(limits)

    with anyio.move_on_after(5) as scope:
        async with anyio.create_task_group() as group:
            group.start_soon(functools.partial(acquire, limits, groups=["search"]))
            # It took a search slot and a request, then queued for the model's slot.
            await settle(lambda: limits.state(MODEL)["waiting"] == 1)
            assert limits.state("search")["in_flight"] == 1
            group.cancel_scope.cancel()

    assert not scope.cancelled_caught
    assert limits.state("search")["in_flight"] == 0
    assert limits.state("search")["rpm_tokens"] == pytest.approx(5.0)
    assert limits.state(MODEL)["waiting"] == 0
    holder.release()
    assert limits.state(MODEL)["in_flight"] == 0


async def test_a_cancelled_head_of_the_queue_lets_the_next_waiter_in(
    limits: LimitRegistry,
) -> None:
    limits.configure(Limits({MODEL: Limit(concurrency=1)}))
    holder = await acquire(limits)
    second = Caller(limits)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            first_scope = anyio.CancelScope()
            group.start_soon(_cancellable, first_scope, limits)
            await settle(lambda: limits.state(MODEL)["waiting"] == 1)
            group.start_soon(second)
            await settle(lambda: limits.state(MODEL)["waiting"] == 2)
            first_scope.cancel()
            await settle(lambda: limits.state(MODEL)["waiting"] == 1)
            assert second.permit is None
            holder.release()

    assert second.permit is not None
    assert limits.state(MODEL)["in_flight"] == 1
    assert limits.state(MODEL)["waiting"] == 0


async def _cancellable(scope_holder: anyio.CancelScope, limits: LimitRegistry) -> None:
    with scope_holder:
        await acquire(limits)
    assert scope_holder.cancelled_caught


async def test_a_trial_call_cancelled_while_waiting_frees_the_trial(
    limits: LimitRegistry, fake_clock: FakeClock
) -> None:
    breaker = Breaker(failures=1, requests=1, cooldown=1)
    limits.configure(Limits({MODEL: Limit(concurrency=2)}, breaker=breaker))
    holder = await acquire(limits)
    (await acquire(limits)).release(ok=False)  # opens the circuit
    limits.configure(Limits({MODEL: Limit(concurrency=1)}, breaker=breaker))
    fake_clock.advance(1)

    async with anyio.create_task_group() as group:
        group.start_soon(acquire, limits)  # the trial: admitted, then queued for the slot
        await settle(lambda: limits.state(MODEL)["waiting"] == 1)
        group.cancel_scope.cancel()

    holder.release(ok=None)
    assert limits.state(KEY)["breaker"] == "half_open"
    trial = await acquire(limits)  # not refused: the cancelled call is no longer the trial
    trial.release(ok=True)
    assert limits.state(KEY)["breaker"] == "closed"


# -- reconfiguration, process-wide declarations, threads ---------------------------------------


async def test_raising_a_concurrency_limit_lets_waiters_in_at_once(limits: LimitRegistry) -> None:
    limits.configure(Limits({MODEL: Limit(concurrency=1)}))
    await acquire(limits)
    waiters = [Caller(limits) for _ in range(2)]

    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            for waiter in waiters:
                group.start_soon(waiter)
            await settle(lambda: limits.state(MODEL)["waiting"] == 2)
            limits.configure(Limits({MODEL: Limit(concurrency=3)}))

    assert limits.state(MODEL)["in_flight"] == 3


async def test_redeclaring_a_key_keeps_its_state_and_others_declarations(
    limits: LimitRegistry, fake_clock: FakeClock
) -> None:
    limits.configure(Limits({MODEL: Limit(rpm=60, burst=5)}, search=Limit(concurrency=1)))
    for _ in range(4):
        await acquire(limits)
    assert limits.state(MODEL)["rpm_tokens"] == 1

    limits.configure(Limits({MODEL: Limit(rpm=60, burst=10)}))

    assert limits.state(MODEL)["limit"] == Limit(rpm=60, burst=10)
    assert limits.state(MODEL)["rpm_tokens"] == 1  # not refilled by redeclaring
    assert limits.state("search")["limit"] == Limit(concurrency=1)
    limits.configure(Limits({MODEL: Limit(rpm=60, burst=1)}))
    assert limits.state(MODEL)["rpm_tokens"] == 1  # capped at the new burst
    fake_clock.advance(5)
    assert limits.state(MODEL)["rpm_tokens"] == 1


async def test_reset_forgets_declarations_and_state(limits: LimitRegistry) -> None:
    limits.configure(Limits({MODEL: Limit(concurrency=1)}, breaker=Breaker(failures=1)))
    await fail(limits, 1)
    limits.pause(KEY, 60)

    limits.reset()

    assert limits.state(KEY) == {
        "limit": None,
        "in_flight": 0,
        "waiting": 0,
        "rpm_tokens": None,
        "tpm_tokens": None,
        "paused_until": None,
        "breaker": "closed",
        "failures": 0,
    }
    await acquire(limits)
    await acquire(limits)


async def test_set_limits_declares_for_the_process_wide_registry() -> None:
    try:
        set_limits(Limits(search=Limit(concurrency=1)))
        assert registry().state("search")["limit"] == Limit(concurrency=1)
        assert registry() is registry()
    finally:
        registry().reset()


def test_the_registry_is_shared_across_event_loops_and_threads(limits: LimitRegistry) -> None:
    limits.configure(Limits({MODEL: Limit(concurrency=2)}))
    guard = threading.Lock()
    in_flight = peak = 0

    async def calls() -> None:
        nonlocal in_flight, peak
        with anyio.fail_after(10):
            for _ in range(200):
                permit = await acquire(limits)
                with guard:
                    in_flight += 1
                    peak = max(peak, in_flight)
                await anyio.lowlevel.checkpoint()
                with guard:
                    in_flight -= 1
                permit.release(ok=True)

    async def loop() -> None:
        async with anyio.create_task_group() as group:
            for _ in range(3):
                group.start_soon(calls)

    errors: list[BaseException] = []

    def thread() -> None:
        try:
            anyio.run(loop)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=thread) for _ in range(3)]
    for worker in threads:
        worker.start()
    anyio.run(loop)  # one more loop, in this thread
    for worker in threads:
        worker.join(timeout=20)

    assert errors == []
    assert peak <= 2
    assert limits.state(MODEL)["in_flight"] == 0
    assert limits.state(MODEL)["waiting"] == 0
