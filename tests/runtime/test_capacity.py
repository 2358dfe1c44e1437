"""The auto concurrency controller (`crewflow._runtime.capacity`), driven with plain clock
times, and through the registry."""

from __future__ import annotations

import pytest

from crewflow import Auto, Limit, Limits
from crewflow._runtime.capacity import CONSERVATIVE_START, PROBE_WINDOWS, Controller
from crewflow._runtime.limiter import LimitRegistry, Permit
from crewflow.exceptions import ConfigurationError
from crewflow.testing import FakeClock, use_clock


def healthy(controller: Controller, times: int, *, at: float = 1.0, latency: float = 0.2) -> None:
    """``times`` healthy replies while the key uses its whole limit."""
    for _ in range(times):
        controller.observe(
            started=at, now=at + latency, status_code=None, ok=True, in_flight=controller.limit
        )


def test_auto_is_spelled_auto_or_with_bounds() -> None:
    assert Limit(concurrency="auto").concurrency == Auto()
    assert Limit(concurrency=Auto(min=2, max=8)).auto
    assert not Limit(concurrency=3).auto


@pytest.mark.parametrize(
    ("build", "says"),
    [
        (lambda: Limit(concurrency="AUTO"), "'auto' or Auto(min=..., max=...)"),
        (lambda: Auto(min=0), "whole numbers >= 1"),
        (lambda: Auto(max=2.5), "whole numbers >= 1"),
        (lambda: Auto(min=8, max=4), "min must not exceed max"),
    ],
)
def test_bad_auto_bounds_fail_at_once_saying_what_is_wrong(build: object, says: str) -> None:
    with pytest.raises(ConfigurationError, match=says.replace("(", r"\(").replace(")", r"\)")):
        build()  # type: ignore[operator]


def test_it_starts_conservatively_within_its_bounds() -> None:
    assert Controller("k", Auto()).limit == CONSERVATIVE_START
    assert Controller("k", Auto(min=10, max=20)).limit == 10
    assert Controller("k", Auto(max=2)).limit == 2


def test_slow_start_adds_one_per_healthy_reply_up_to_max() -> None:
    controller = Controller("k", Auto(max=9))
    healthy(controller, 3)
    assert controller.limit == CONSERVATIVE_START + 3
    healthy(controller, 50)
    assert controller.limit == 9


def test_a_429_cuts_to_the_calls_the_provider_still_serves() -> None:
    controller = Controller("k", Auto())
    healthy(controller, 6)  # 10
    change = controller.observe(started=2.0, now=2.0, status_code=429, ok=None, in_flight=6)
    assert change is not None
    assert (change.old, change.new, change.reason) == (10, 6, "rate_limited")
    assert controller.ceiling == 7


def test_a_burst_of_pushback_is_one_cut() -> None:
    controller = Controller("k", Auto())
    healthy(controller, 6)  # 10
    controller.observe(started=2.0, now=3.0, status_code=503, ok=False, in_flight=9)
    assert controller.limit == 7
    # Calls sent before the cut say nothing of the new limit.
    for _ in range(5):
        assert (
            controller.observe(started=2.5, now=3.1, status_code=429, ok=None, in_flight=1) is None
        )
    assert controller.limit == 7
    change = controller.observe(started=3.5, now=3.6, status_code=503, ok=False, in_flight=3)
    assert change is not None
    assert (change.reason, change.new) == ("server_error", 4)


def test_replies_far_slower_than_the_baseline_are_pushback() -> None:
    controller = Controller("k", Auto())
    healthy(controller, 2, latency=0.2)  # 6, baseline 0.2
    # One long answer is not overload.
    assert controller.observe(started=5.0, now=6.0, status_code=None, ok=True, in_flight=6)
    assert controller.limit == 7
    changes = [
        controller.observe(started=5.0, now=5.6, status_code=None, ok=True, in_flight=9)
        for _ in range(4)
    ]
    latency = [change for change in changes if change is not None and change.reason != "healthy"]
    assert [change.reason for change in latency] == ["latency"]


def test_no_signal_from_a_client_error_or_cancellation() -> None:
    controller = Controller("k", Auto())
    assert controller.observe(started=1, now=2, status_code=400, ok=None, in_flight=9) is None
    assert controller.limit == CONSERVATIVE_START


def test_a_key_not_using_its_whole_limit_does_not_grow() -> None:
    controller = Controller("k", Auto())
    for _ in range(20):
        controller.observe(started=1, now=1.2, status_code=None, ok=True, in_flight=1)
    assert controller.limit == CONSERVATIVE_START


def test_it_never_goes_below_min() -> None:
    controller = Controller("k", Auto(min=3))
    controller.observe(started=1.0, now=1.0, status_code=429, ok=None, in_flight=0)
    assert controller.limit == 3


def test_below_the_ceiling_it_grows_one_per_window_and_probes_rarely() -> None:
    controller = Controller("k", Auto())
    healthy(controller, 4)  # 8
    controller.observe(started=2.0, now=2.0, status_code=429, ok=None, in_flight=4)
    assert (controller.limit, controller.ceiling) == (4, 5)
    healthy(controller, 4 * PROBE_WINDOWS - 1, at=3.0)
    assert controller.limit == 4  # at one below the ceiling: waits PROBE_WINDOWS windows
    healthy(controller, 1, at=3.0)
    assert controller.limit == 5
    # The probe is refused: the next one waits twice as long.
    controller.observe(started=4.0, now=4.0, status_code=429, ok=None, in_flight=4)
    assert (controller.limit, controller.ceiling) == (4, 5)
    healthy(controller, 2 * 4 * PROBE_WINDOWS - 1, at=5.0)
    assert controller.limit == 4
    healthy(controller, 1, at=5.0)
    assert controller.limit == 5


def test_a_learned_start_skips_slow_start() -> None:
    controller = Controller("k", Auto())
    controller.learned(12)
    healthy(controller, 12)
    assert controller.limit == 12


async def test_the_registry_holds_an_auto_key_to_its_controller_and_reports_changes() -> None:
    limits = LimitRegistry()
    limits.configure(Limits(search=Limit(concurrency=Auto(max=5))))
    with use_clock(FakeClock()):
        permits: list[Permit] = []
        for _ in range(CONSERVATIVE_START):
            permits.append(await limits.acquire(model="m", limit_key="m", groups=["search"]))
        assert limits.state("search")["in_flight"] == CONSERVATIVE_START
        assert limits.free(model="m", limit_key="m", groups=["search"]) is None
        changes = permits.pop().release(ok=True)
        assert [(c.key, c.old, c.new, c.reason) for c in changes] == [
            ("search", CONSERVATIVE_START, CONSERVATIVE_START + 1, "healthy")
        ]
        assert limits.concurrency("search") == CONSERVATIVE_START + 1
        cut = permits.pop().release(ok=None, status_code=429)
        assert [change.reason for change in cut] == ["rate_limited"]
        assert limits.concurrency("search") == cut[0].new
        for permit in permits:
            permit.release(ok=True)


async def test_redeclaring_a_key_fixed_drops_its_controller() -> None:
    limits = LimitRegistry()
    limits.configure(Limits(search=Limit(concurrency="auto")))
    with use_clock(FakeClock()):
        held = [
            await limits.acquire(model="m", limit_key="m", groups=["search"])
            for _ in range(CONSERVATIVE_START)
        ]
        held[0].release(ok=True)
        assert limits.concurrency("search") == CONSERVATIVE_START + 1
        limits.configure(Limits(search=Limit(concurrency=2)))
        assert limits.concurrency("search") is None
        assert limits.learn("search", 9) is None  # not auto: nothing to learn


def test_learning_starts_a_key_once() -> None:
    limits = LimitRegistry()
    limits.configure(Limits(search=Limit(concurrency=Auto(max=10))))
    with use_clock(FakeClock()):
        change = limits.learn("search", 40)
        assert change is not None
        assert (change.new, change.reason) == (10, "learned")
        assert limits.learn("search", 3) is None  # the live controller knows better
        assert limits.concurrency("search") == 10


def test_calls_waiting_for_the_limit_count_as_using_it() -> None:
    # Calls that end together each see the others gone before their slots are refilled: with
    # calls waiting, the key is held back by its limit all the same, and it grows.
    controller = Controller("k", Auto())
    for _ in range(CONSERVATIVE_START):
        controller.observe(started=1, now=1.2, status_code=None, ok=True, in_flight=0, waiting=50)
    assert controller.limit == 2 * CONSERVATIVE_START
    tail = Controller("k", Auto())
    for _ in range(CONSERVATIVE_START):
        tail.observe(started=1, now=1.2, status_code=None, ok=True, in_flight=0, waiting=0)
    assert tail.limit == CONSERVATIVE_START  # the run's tail says nothing of the capacity


async def test_an_auto_limit_s_first_429_cuts_it_and_a_later_one_pauses_the_key() -> None:
    limits = LimitRegistry()
    limits.configure(Limits(m=Limit(concurrency="auto"), fixed=Limit(concurrency=4)))
    clock = FakeClock()
    with use_clock(clock):
        before = [await limits.acquire(model="m", limit_key="m") for _ in range(2)]
        # The first 429: the cut is the backoff, the key is not paused.
        assert limits.cut_instead_of_pausing("m", 1.0, before[0])
        # Another call of the same overshoot (sent before that 429): not paused either.
        assert limits.cut_instead_of_pausing("m", 1.0, before[1])
        for permit in before:
            permit.release(ok=None, status_code=429)
        clock.advance(0.5)
        after = await limits.acquire(model="m", limit_key="m")
        # Sent after the cut and refused within its Retry-After: the key is paused as usual.
        assert not limits.cut_instead_of_pausing("m", 1.0, after)
        after.release(ok=None, status_code=429)
        clock.advance(1.0)
        again = await limits.acquire(model="m", limit_key="m")
        assert limits.cut_instead_of_pausing("m", 1.0, again)  # a new window: a cut again
        again.release(ok=True)
        # A fixed limit is always paused.
        fixed = await limits.acquire(model="f", limit_key="fixed")
        assert not limits.cut_instead_of_pausing("fixed", 1.0, fixed)
        fixed.release(ok=True)


async def test_an_auto_limit_on_a_group_is_cut_rather_than_its_endpoint_paused() -> None:
    limits = LimitRegistry()
    limits.configure(Limits(search=Limit(concurrency="auto")))
    with use_clock(FakeClock()):
        grouped = await limits.acquire(model="m", limit_key="m", groups=["search"])
        assert limits.cut_instead_of_pausing("m", 1.0, grouped)
        grouped.release(ok=None, status_code=429)
        alone = await limits.acquire(model="other", limit_key="other")
        assert not limits.cut_instead_of_pausing("other", 1.0, alone)  # no auto limit held
        alone.release(ok=True)
