"""Parallel crews over a real socket: limits, pauses, retries, breakers and control, as the
loopback server sees them.

Every crew here uses `OpenAIChat` against `OpenAIServer` on 127.0.0.1, so the assertions are
about what reached the wire (requests in flight, arrival order, aborted requests), not about what
the runtime believes it did. No check depends on how fast the machine is: the server holds replies
until the requests a test expects are all in flight, the runtime's own waits (rpm spacing,
Retry-After pauses) run on a clock the test moves by hand, and waits for the server's counters are
bounded polls under ``anyio.fail_after``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from collections import defaultdict
from contextlib import aclosing
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel
import pytest

from crewflow import Agent, Breaker, Crew, Limit, Limits, RetryPolicy, Task, TaskStatus, tool
from crewflow import events as ev
from crewflow.exceptions import (
    CrewPartialFailure,
    LLMError,
    RunCancelled,
    TaskFailed,
    TaskTimeout,
)
from crewflow.llm import OpenAIChat
from crewflow.store import MemoryStore
from crewflow.testing import (
    Error,
    FakeClock,
    OpenAIServer,
    ReceivedRequest,
    Reply,
    Slow,
    Text,
    ToolCall,
    ToolCalls,
    capture_events,
    use_clock,
)
from tests.waiting import wait_until

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

MODEL = "model-x"
OTHER = "model-y"
# Real (small) waits: retries in these tests must not take the default second or more.
FAST = RetryPolicy(max_attempts=3, initial=0.01, max=1.0, jitter=False)


@tool
async def lookup(term: str) -> str:
    """Look a term up.

    Args:
        term: What to look up.
    """
    return f"definition of {term}"


def agent_on(
    server: OpenAIServer, model: str = MODEL, role: str = "Worker", **kwargs: object
) -> Agent:
    llm = OpenAIChat(model, base_url=server.base_url, api_key="k")
    return Agent(role=role, goal="Answer", llm=llm, **kwargs)  # type: ignore[arg-type]


class ManualClock(FakeClock):
    """The runtime's clock, moved only by the test: each sleep (an rpm wait, a Retry-After pause,
    a backoff) lasts until `advance` has moved the time past its end.

    A test sees the runtime waiting (`waiting`), checks what reached the server meanwhile, and
    then lets the time pass, so what it checks never depends on how fast the machine runs.
    """

    def __init__(self) -> None:
        super().__init__()
        self._sleepers: list[tuple[float, anyio.Event]] = []

    @property
    def waiting(self) -> list[float]:
        """The time each sleep in progress has left, shortest first."""
        return sorted(end - self.now() for end, _ in self._sleepers)

    async def sleep(self, seconds: float) -> None:
        """Record the sleep and wait until the time has been advanced past its end."""
        self.sleeps.append(seconds)
        sleeper = (self.now() + max(0.0, seconds), anyio.Event())
        self._sleepers.append(sleeper)
        try:
            if sleeper[0] > self.now():
                await sleeper[1].wait()
            else:
                await anyio.lowlevel.checkpoint()
        finally:
            self._sleepers.remove(sleeper)

    def advance(self, seconds: float) -> None:
        """Move the time forward and wake every sleep that has ended."""
        super().advance(seconds)
        for end, wake in self._sleepers:
            if end <= self.now():
                wake.set()


@pytest.fixture
def manual_clock() -> Iterator[ManualClock]:
    clock = ManualClock()
    with use_clock(clock):
        yield clock


def in_waves(size: int) -> Callable[[ReceivedRequest], Awaitable[None]]:
    """A responder that holds each reply until ``size`` requests have arrived since the last
    wave, then gives them all the default reply: a limit of ``size`` is then reached for sure,
    however slowly the requests come."""
    arrived = 0
    waves: defaultdict[int, anyio.Event] = defaultdict(anyio.Event)

    async def respond(request: ReceivedRequest) -> None:
        nonlocal arrived
        wave = arrived // size
        arrived += 1
        if arrived % size == 0:
            waves[wave].set()
        await waves[wave].wait()

    return respond


def has_tool_result(request: ReceivedRequest) -> bool:
    return any(m.get("role") == "tool" for m in request.messages if isinstance(m, dict))


# -- concurrency -----------------------------------------------------------------------------------


async def test_max_concurrency_is_exactly_what_the_server_sees() -> None:
    async with OpenAIServer(responder=in_waves(3)) as server:
        agent = agent_on(server)
        tasks = [Task(f"Job {i}", agent=agent, name=f"job_{i}", context=[]) for i in range(9)]
        crew = Crew(tasks=tasks, process="parallel", max_concurrency=3)

        with anyio.fail_after(10):  # a cap below 3 would leave a wave waiting for ever
            result = await crew.kickoff()

    assert server.count == 9
    assert server.max_in_flight == 3
    assert [o.task for o in result.outputs] == [f"job_{i}" for i in range(9)]
    for i in range(9):
        assert f"Job {i}" in result[f"job_{i}"].text
    assert result.usage.requests == 9


async def test_a_model_concurrency_limit_holds_across_two_concurrent_crews() -> None:
    limits = Limits({f"openai/{MODEL}": Limit(concurrency=2)})
    results = {}

    async with OpenAIServer(responder=in_waves(2)) as server:

        def crew(label: str) -> Crew:
            # Each crew has its own agent and client: only the process-wide registry is shared.
            agent = agent_on(server, role=f"Worker {label}")
            tasks = [Task(f"{label} job {i}", agent=agent, context=[]) for i in range(4)]
            return Crew(tasks=tasks, process="parallel", max_concurrency=4, limits=limits)

        crews = {"A": crew("A"), "B": crew("B")}

        async def kickoff(label: str) -> None:
            results[label] = await crews[label].kickoff()

        with capture_events() as captured, anyio.fail_after(10):
            async with anyio.create_task_group() as group:
                for label in crews:
                    group.start_soon(kickoff, label)

    assert server.count == 8
    assert server.count_for("A job") == server.count_for("B job") == 4
    assert server.max_in_flight == 2
    assert all(len(result.outputs) == 4 for result in results.values())
    waits = captured.of_type(ev.LimiterWait)
    assert waits
    assert all(any(r.startswith("concurrency:") for r in w.reasons) for w in waits)


# -- Retry-After and rpm ---------------------------------------------------------------------------


async def test_a_429_retry_after_pauses_the_model_for_every_caller(
    manual_clock: ManualClock,
) -> None:
    retry_after = 0.3
    names = ("Alpha", "Beta", "Gamma", "Delta")
    first_arrived: set[str] = set()
    all_arrived = asyncio.Event()
    pause_taken = asyncio.Event()
    sent_429: list[ReceivedRequest] = []
    clock_at_arrival: list[float] = []

    def on_event(event: ev.Event) -> None:
        # Sent once the client has read the 429 and paused the model.
        if isinstance(event, ev.LLMCallRetrying) and event.status_code == 429:
            pause_taken.set()

    async def respond(request: ReceivedRequest) -> Reply:
        clock_at_arrival.append(manual_clock.now())
        name = next(n for n in names if n in request.last_user_message)
        if has_tool_result(request):
            return Text(f"{name} done")
        first_arrived.add(name)
        if len(first_arrived) == len(names):
            all_arrived.set()
        # Nothing is answered before every task's first request has arrived, so no request is
        # on its way while the 429 is delivered.
        await all_arrived.wait()
        if name == "Alpha" and not sent_429:
            sent_429.append(request)
            return Error(429, retry_after=retry_after)
        # The others come back for a second call only once the model is paused.
        await pause_taken.wait()
        return ToolCalls([ToolCall("lookup", {"term": name})])

    async def let_the_pause_pass(server: OpenAIServer) -> None:
        # Alpha's backoff and the other three's second calls all wait for the pause...
        await wait_until(lambda: len(manual_clock.waiting) == len(names))
        assert manual_clock.waiting == pytest.approx([retry_after] * len(names))
        # ...and meanwhile no request left the process.
        assert server.count == len(names)
        manual_clock.advance(retry_after)

    async with OpenAIServer(responder=respond) as server:
        agent = agent_on(server, tools=[lookup])
        tasks = [Task(f"Work on {n}", agent=agent, name=n.lower(), context=[]) for n in names]
        crew = Crew(tasks=tasks, process="parallel", retry=FAST, on_event=on_event)

        with capture_events() as captured, anyio.fail_after(10):
            async with anyio.create_task_group() as group:
                group.start_soon(let_the_pause_pass, server)
                result = await crew.kickoff()

    assert [o.text for o in result.outputs] == [f"{n} done" for n in names]
    (limited,) = sent_429
    assert limited.status == 429
    later = server.requests[len(names) :]
    # Alpha's retry and its tool round trip, and every other task's tool round trip.
    assert len(later) == server.count - len(names) == 5
    assert {n for r in later for n in names if n in r.last_user_message} == set(names)
    # On the runtime's clock, nothing reached the server before the Retry-After had passed.
    assert clock_at_arrival == [0.0] * len(names) + [retry_after] * len(later)
    # The callers that never saw the 429 waited for the pause too.
    paused = {
        w.task
        for w in captured.of_type(ev.LimiterWait)
        if any("retry_after:" in r for r in w.reasons)
    }
    assert paused == {"beta", "gamma", "delta"}


async def test_an_rpm_limit_spaces_requests_at_the_server(manual_clock: ManualClock) -> None:
    clock_at_arrival: list[float] = []

    def respond(request: ReceivedRequest) -> None:
        clock_at_arrival.append(manual_clock.now())

    async def step_through(server: OpenAIServer) -> None:
        for sent in range(1, 5):
            # Each request after the first waits for the rpm interval before it is sent...
            await wait_until(lambda n=sent: server.count == n and bool(manual_clock.waiting))
            assert manual_clock.waiting == pytest.approx([0.1])
            assert server.count == sent  # ...and nothing else reaches the server meanwhile
            manual_clock.advance(0.1)

    async with OpenAIServer(responder=respond) as server:
        agent = agent_on(server)
        tasks = [Task(f"Job {i}", agent=agent, context=[]) for i in range(5)]
        limits = Limits({f"openai/{MODEL}": Limit(rpm=600, burst=1)})
        crew = Crew(tasks=tasks, process="parallel", limits=limits)

        with capture_events() as captured, anyio.fail_after(10):
            async with anyio.create_task_group() as group:
                group.start_soon(step_through, server)
                result = await crew.kickoff()

    assert len(result.outputs) == 5
    assert server.count == 5
    # On the runtime's clock, the requests reached the server 0.1 s apart (600 per minute).
    assert clock_at_arrival == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    waits = captured.of_type(ev.LimiterWait)
    assert len(waits) == 4
    assert all(w.reasons == [f"rpm:openai/{MODEL}"] for w in waits)


COLD_PROCESS_SCRIPT = """
import asyncio, json, sys, threading

# Every module imported from here on, with the thread that imported it (the import system asks
# a finder only about modules that are not imported yet).
imported = []

class Watch:
    def find_spec(self, name, path=None, target=None):
        imported.append((name, threading.get_ident()))
        return None

sys.meta_path.insert(0, Watch())

from crewflow import Agent, Crew, Task
from crewflow.llm import OpenAIChat
from crewflow.testing import OpenAIServer

TASKS = 5
STREAM = sys.argv[1] == "stream"

async def main():
    arrived = 0
    all_in = asyncio.Event()
    first_task = []

    async def hold(request):
        nonlocal arrived
        arrived += 1
        if arrived == TASKS:
            all_in.set()
        await all_in.wait()  # no first call is answered before all of them are in flight

    def on_event(event):
        if event.kind == "task_started" and not first_task:
            first_task.append(len(imported))

    async with OpenAIServer(responder=hold) as server:
        llm = OpenAIChat("model-x", base_url=server.base_url, api_key="k")
        agent = Agent(role="Worker", goal="Answer", llm=llm, stream=STREAM)
        crew = Crew(
            tasks=[Task(f"Job {i}", agent=agent, context=[]) for i in range(TASKS)],
            process="parallel",
            on_event=on_event,
        )
        before_kickoff = len(imported)
        await asyncio.wait_for(crew.kickoff(), 60)
        in_flight = server.max_in_flight
    loop = threading.get_ident()
    print(json.dumps({
        # Clients are opened before the first task starts; from then on, tasks are running.
        "imported_on_the_loop": [n for n, t in imported[first_task[0]:] if t == loop],
        "imported_off_the_loop": [n for n, t in imported[before_kickoff:] if t != loop],
        "imported": [n for n, _ in imported],
        "max_in_flight": in_flight,
    }))

asyncio.run(main())
"""


@pytest.mark.slow
@pytest.mark.parametrize("calls", ["plain", "stream"])
async def test_the_first_calls_of_a_process_load_nothing_on_the_loop_and_run_together(
    calls: str,
) -> None:
    # A module imported on the event loop stalls every task for as long as the import takes
    # (the SDK's chat resources: hundreds of modules, 0.3-1 s), and the first rate-limited
    # requests then reach the server together. How long the stall lasts is for
    # benchmarks/cold_start.py to measure; here, that nothing is imported there.
    env = {**os.environ, "CREWFLOW_FORBID_REAL_LLM_CALLS": "1"}
    with anyio.fail_after(90):
        done = await anyio.run_process([sys.executable, "-c", COLD_PROCESS_SCRIPT, calls], env=env)
    seen = json.loads(done.stdout)
    # The process was cold: the SDK was loaded during the run, off the loop. A plain call never
    # loads the SDK's chat resources (crewflow posts the body itself); a stream reads them,
    # loaded off the loop too.
    assert "openai" in seen["imported_off_the_loop"]
    if calls == "plain":
        assert "openai.resources.chat.completions" not in seen["imported"]
    else:
        assert "openai.resources.chat.completions" in seen["imported_off_the_loop"]
    assert seen["imported_on_the_loop"] == []
    assert seen["max_in_flight"] == 5


# -- retries and timeouts --------------------------------------------------------------------------


async def test_5xx_is_retried_over_http_while_other_branches_run(server: OpenAIServer) -> None:
    server.enqueue_for("Flaky", Error(500), Error(503))
    agent = agent_on(server)
    crew = Crew(
        tasks=[
            Task("Flaky job", agent=agent, name="flaky", context=[]),
            Task("Steady job", agent=agent, context=[]),
        ],
        process="parallel",
        retry=FAST,
    )

    result = await crew.kickoff()

    assert "Flaky job" in result["flaky"].text
    assert server.count_for("Flaky") == 3
    assert server.count_for("Steady") == 1
    assert [r.status for r in server.requests if "Flaky" in r.last_user_message] == [
        500,
        503,
        200,
    ]
    (attempt,) = result.timeline[0].attempts
    assert attempt.llm_retries == 2
    assert result.usage.requests == 4


async def test_a_task_timeout_aborts_the_request_and_retries_the_task(
    server: OpenAIServer,
) -> None:
    # Neither attempt can be answered in time, so both time out however fast the machine is.
    server.enqueue_for("Slowpoke", Slow(3600, Text("too late")), Slow(3600, Text("too late")))
    store = MemoryStore()
    agent = agent_on(server)
    retry = RetryPolicy(max_attempts=2, initial=0.01, jitter=False)
    crew = Crew(
        tasks=[
            Task("Slowpoke job", agent=agent, name="slow", timeout=0.2, retry=retry, context=[]),
            Task("Quick job", agent=agent, name="quick", context=[]),
        ],
        process="parallel",
        on_failure="continue",
        store=store,
    )

    with anyio.fail_after(10), pytest.raises(CrewPartialFailure) as caught:
        await crew.kickoff()

    failure = caught.value
    assert list(failure.outputs) == ["quick"]
    error = failure.failures["slow"]
    assert error.attempts == 2
    assert isinstance(error.cause, TaskTimeout)
    assert error.cause.timeout == 0.2
    # Each timed-out attempt's HTTP request was aborted, not left running.
    slowpoke = [r for r in server.requests if "Slowpoke" in r.last_user_message]
    assert len(slowpoke) == 2
    await wait_until(lambda: all(r.disconnected for r in slowpoke))
    assert [r.status for r in slowpoke] == [None, None]
    assert server.disconnects == 2
    # The aborted requests were sent (and may be billed): they count.
    (run,) = await store.list_runs()
    attempts = [a for a in await store.attempts(run.run_id) if a.task == "slow"]
    assert [(a.error_type, a.usage.requests) for a in attempts] == [("TaskTimeout", 1)] * 2
    assert server.count == 3


# -- fallback and breaker --------------------------------------------------------------------------


async def test_a_fallback_agent_on_a_second_model_answers_after_a_400() -> None:
    def respond(request: ReceivedRequest) -> Reply:
        if request.model == MODEL:
            return Error(400, "model-x rejects this request")
        return Text(f"answer from {request.model}")

    async with OpenAIServer(responder=respond) as server:
        primary = agent_on(server, MODEL, role="Primary")
        backup = agent_on(server, OTHER, role="Backup")
        crew = Crew(
            tasks=[
                Task("Summarise", agent=primary, fallback_agent=backup, name="summary", context=[]),
                Task("Also summarise", agent=backup, name="direct", context=[]),
            ],
            process="parallel",
            retry=FAST,
        )

        result = await crew.kickoff()

    assert result["summary"].text == f"answer from {OTHER}"
    assert result["summary"].model == f"openai/{OTHER}"
    assert result["summary"].agent == "Backup"
    record = result.timeline[0]
    assert [a.model for a in record.attempts] == [f"openai/{MODEL}", f"openai/{OTHER}"]
    assert [a.status for a in record.attempts] == [TaskStatus.FAILED, TaskStatus.COMPLETED]
    assert "400" in (record.attempts[0].error or "")
    # A 400 is not retried: the primary model was asked exactly once.
    summary = [r.model for r in server.requests if "Summarise" in r.last_user_message]
    assert summary == [MODEL, OTHER]


async def test_an_open_circuit_keeps_requests_off_the_wire() -> None:
    def respond(request: ReceivedRequest) -> Reply | None:
        return Error(500, "model-x is down") if request.model == MODEL else None

    limits = Limits(breaker=Breaker(failures=2, cooldown=60, wait=False))
    retry = RetryPolicy(max_attempts=5, initial=0.01, jitter=False)
    async with OpenAIServer(responder=respond) as server:

        def to_x() -> int:
            return sum(1 for r in server.requests if r.model == MODEL)

        opener_agent = agent_on(server)
        opener = Crew(
            tasks=[
                Task("Open it", agent=opener_agent, name="a", context=[]),
                Task("Open it again", agent=opener_agent, name="b", context=[]),
            ],
            limits=limits,
            retry=retry,
            on_failure="continue",
        )
        with pytest.raises(CrewPartialFailure) as opened:
            await opener.kickoff()

        # Five 500s of one request left the circuit closed; the first 500 of another request
        # opened it, and that request's retry never left the process.
        assert to_x() == 6
        assert "circuit open" not in str(opened.value.failures["a"].cause)
        cause = opened.value.failures["b"].cause
        assert isinstance(cause, LLMError)
        assert "circuit open" in str(cause)
        assert not cause.retryable

        x_agent = agent_on(server, role="X")
        y_agent = agent_on(server, OTHER, role="Y")
        crew = Crew(
            tasks=[
                *(Task(f"X job {i}", agent=x_agent, name=f"x{i}", context=[]) for i in range(3)),
                Task("Y job", agent=y_agent, name="y", context=[]),
            ],
            process="parallel",
            on_failure="continue",
            limits=limits,
            retry=retry,
        )
        with anyio.fail_after(5), pytest.raises(CrewPartialFailure) as partial:
            await crew.kickoff()

    assert to_x() == 6  # nothing more reached the server for model-x
    failure = partial.value
    assert sorted(failure.failures) == ["x0", "x1", "x2"]
    for error in failure.failures.values():
        assert "circuit open" in str(error)
        assert error.attempts == 1
    # The breaker is per model: model-y on the same server still answers.
    assert list(failure.outputs) == ["y"]
    assert sum(1 for r in server.requests if r.model == OTHER) == 1


# -- control ---------------------------------------------------------------------------------------


async def test_cancelling_a_started_run_aborts_its_http_request(server: OpenAIServer) -> None:
    server.enqueue(Slow(3600, Text("never sent")))  # in flight until cancelled
    crew = Crew(tasks=[Task("Long job", agent=agent_on(server))], process="parallel")

    handle = crew.start()
    await wait_until(lambda: server.count == 1)
    handle.cancel()

    with anyio.fail_after(5), pytest.raises(RunCancelled):
        await handle.result()
    await wait_until(lambda: server.disconnects == 1)
    assert server.requests[0].disconnected
    assert server.requests[0].status is None
    assert handle.status == "cancelled"


async def test_pause_lets_the_request_in_flight_finish_and_starts_nothing_until_resume() -> None:
    paused = asyncio.Event()

    async def respond(request: ReceivedRequest) -> Reply | None:
        if "Job 0" in request.last_user_message:
            await paused.wait()  # in flight until the run is paused
            return Text("first answer")
        return None

    async with OpenAIServer(responder=respond) as server:
        agent = agent_on(server)
        tasks = [Task(f"Job {i}", agent=agent, name=f"job_{i}", context=[]) for i in range(3)]
        # An in-memory store: no thread of its own that the runtime could still be waiting for
        # when the test checks that nothing has started.
        crew = Crew(tasks=tasks, process="parallel", max_concurrency=1, store=MemoryStore())

        with capture_events() as captured:
            handle = crew.start()
            async with aclosing(handle.events()) as stream:
                await wait_until(lambda: server.count == 1)
                handle.pause()
                assert handle.status == "paused"
                paused.set()
                with anyio.fail_after(5):
                    async for event in stream:
                        if isinstance(event, ev.TaskFinished):
                            finished = event
                            break
            assert finished.task == "job_0"
            assert server.requests[0].status == 200
            # Paused: the freed slot is not handed out, so nothing new starts or reaches the
            # server, however long the runtime is given.
            await anyio.wait_all_tasks_blocked()
            assert [e.task for e in captured.of_type(ev.TaskStarted)] == ["job_0"]
            assert server.count == 1
            assert server.in_flight == 0

            handle.resume()
            with anyio.fail_after(5):
                result = await handle.result()

    assert server.count == 3
    assert result["job_0"].text == "first answer"
    assert [o.task for o in result.outputs] == ["job_0", "job_1", "job_2"]


# -- failure policy --------------------------------------------------------------------------------


async def test_on_failure_continue_keeps_the_other_branch_over_http(server: OpenAIServer) -> None:
    server.enqueue_for("Alpha", Error(400, "alpha is malformed"))
    agent = agent_on(server)
    alpha = Task("Alpha job", agent=agent, name="alpha")
    beta = Task("Beta job", agent=agent, name="beta")
    gamma = Task("Gamma job", agent=agent, name="gamma", context=[alpha])
    crew = Crew(tasks=[alpha, beta, gamma], process="parallel", on_failure="continue", retry=FAST)

    with pytest.raises(CrewPartialFailure) as caught:
        await crew.kickoff()

    error = caught.value
    assert list(error.outputs) == ["beta"]
    assert "Beta job" in error.outputs["beta"].text
    assert list(error.failures) == ["alpha"]
    cause = error.failures["alpha"].cause
    assert isinstance(cause, LLMError)
    assert cause.status_code == 400
    assert error.skipped == ["gamma"]
    assert server.count == 2
    assert server.count_for("Gamma") == 0


async def test_on_failure_stop_aborts_the_requests_in_flight() -> None:
    beta_arrived = asyncio.Event()

    async def respond(request: ReceivedRequest) -> Reply:
        if "Beta" in request.last_user_message:
            beta_arrived.set()
            return Slow(3600, Text("beta never finishes"))
        await beta_arrived.wait()  # fail only once Beta's request is on the server
        return Error(400, "alpha is malformed")

    async with OpenAIServer(responder=respond) as server:
        agent = agent_on(server)
        crew = Crew(
            tasks=[
                Task("Alpha job", agent=agent, name="alpha", context=[]),
                Task("Beta job", agent=agent, name="beta", context=[]),
            ],
            process="parallel",
            on_failure="stop",
            retry=FAST,
        )
        with anyio.fail_after(10), pytest.raises(TaskFailed) as caught:
            await crew.kickoff()

        beta = next(r for r in server.requests if "Beta" in r.last_user_message)
        await wait_until(lambda: beta.disconnected)

    error = caught.value
    assert error.task == "alpha"
    assert isinstance(error.cause, LLMError)
    assert error.cause.status_code == 400
    assert dict(error.outputs) == {}
    assert beta.status is None
    assert server.disconnects == 1
    assert server.count == 2


# -- streaming and kickoff_for_each ----------------------------------------------------------------


async def test_streaming_agents_emit_token_deltas_over_http(server: OpenAIServer) -> None:
    server.enqueue_for("Alpha", Text("alpha streams in several words"))
    server.enqueue_for("Beta", Text("beta streams too"))
    agent = agent_on(server, stream=True)
    crew = Crew(
        tasks=[
            Task("Alpha job", agent=agent, name="alpha", context=[]),
            Task("Beta job", agent=agent, name="beta", context=[]),
        ],
        process="parallel",
    )

    with capture_events() as captured:
        result = await crew.kickoff()

    deltas = captured.of_type(ev.TokenDelta)
    for name in ("alpha", "beta"):
        pieces = [d.text for d in deltas if d.task == name]
        assert len(pieces) > 1
        assert "".join(pieces) == result[name].text
        assert all(d.model == f"openai/{MODEL}" for d in deltas if d.task == name)
    assert result["alpha"].text == "alpha streams in several words"
    assert server.count == 2
    assert all(r.stream and r.body["stream"] is True for r in server.requests)


async def test_kickoff_for_each_keeps_order_and_its_concurrency_over_http() -> None:
    def respond(request: ReceivedRequest) -> Reply:
        match = re.search(r"Topic: (\w+)", request.last_user_message)
        assert match is not None
        return Text(f"about {match.group(1)}")

    topics = [f"t{i}" for i in range(6)]
    pairs = in_waves(2)

    async def respond_in_pairs(request: ReceivedRequest) -> Reply:
        await pairs(request)
        return respond(request)

    async with OpenAIServer(responder=respond_in_pairs) as server:
        crew = Crew(tasks=[Task("Topic: {topic}", agent=agent_on(server))])

        with anyio.fail_after(10):  # kickoffs one at a time would leave a pair waiting for ever
            results = await crew.kickoff_for_each([{"topic": t} for t in topics], concurrency=2)

    assert [r.output.text for r in results] == [f"about {t}" for t in topics]
    assert server.count == 6
    assert server.max_in_flight <= 2
    assert server.max_in_flight == 2  # and the two kickoffs did overlap
