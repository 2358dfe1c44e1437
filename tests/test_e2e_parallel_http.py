"""Parallel crews over a real socket: limits, pauses, retries, breakers and control, as the
loopback server sees them.

Every crew here uses `OpenAIChat` against `OpenAIServer` on 127.0.0.1, so the assertions are
about what reached the wire (arrival times, requests in flight, aborted requests), not about what
the runtime believes it did. Timing checks are lower bounds with small real delays; waits are
bounded polls under ``anyio.fail_after``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import sys
from contextlib import aclosing
from typing import TYPE_CHECKING

import anyio
import pytest

from crewflow import Agent, Breaker, Crew, Limit, Limits, RetryPolicy, Task, TaskStatus, tool
from crewflow import events as ev
from crewflow.exceptions import CrewPartialFailure, LLMError, RunCancelled, TaskFailed
from crewflow.llm import OpenAIChat
from crewflow.testing import (
    Error,
    OpenAIServer,
    ReceivedRequest,
    Reply,
    Slow,
    Text,
    ToolCall,
    ToolCalls,
    capture_events,
)

if TYPE_CHECKING:
    from collections.abc import Callable

MODEL = "model-x"
OTHER = "model-y"
# Real (small) waits: retries in these tests must not take the default second or more.
FAST = RetryPolicy(max_attempts=3, initial=0.01, max=1.0, jitter=False)
# Server time and the client's clock are both time.monotonic(): only rounding separates them.
EPS = 0.005


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


async def wait_until(predicate: Callable[[], bool], within: float = 5.0) -> None:
    """Poll ``predicate`` (server counters, which have no event) until it holds; fail after
    ``within`` seconds."""
    with anyio.fail_after(within):
        while not predicate():  # noqa: ASYNC110
            await anyio.sleep(0.005)


@pytest.fixture(autouse=True, scope="module")
def _warm_openai_sdk() -> None:
    """Import the SDK's chat resources before any test's event loop runs.

    Otherwise the first chat call of the process imports them on the event loop (see the xfail
    test below), stalling every coroutine for up to a second: a 0.2 s task timeout or the rpm
    spacing at the server would measure that stall instead of crewflow.
    """
    import openai.resources.chat.completions  # noqa: F401


def has_tool_result(request: ReceivedRequest) -> bool:
    return any(m.get("role") == "tool" for m in request.messages if isinstance(m, dict))


# -- concurrency -----------------------------------------------------------------------------------


async def test_max_concurrency_is_exactly_what_the_server_sees(server: OpenAIServer) -> None:
    server.latency = 0.05
    agent = agent_on(server)
    tasks = [Task(f"Job {i}", agent=agent, name=f"job_{i}") for i in range(9)]
    crew = Crew(tasks=tasks, process="parallel", max_concurrency=3)

    result = await crew.kickoff()

    assert server.count == 9
    assert server.max_in_flight == 3
    assert [o.task for o in result.outputs] == [f"job_{i}" for i in range(9)]
    for i in range(9):
        assert f"Job {i}" in result[f"job_{i}"].text
    assert result.usage.requests == 9


async def test_a_model_concurrency_limit_holds_across_two_concurrent_crews(
    server: OpenAIServer,
) -> None:
    server.latency = 0.05
    limits = Limits({f"openai/{MODEL}": Limit(concurrency=2)})

    def crew(label: str) -> Crew:
        # Each crew has its own agent and client: only the process-wide registry is shared.
        agent = agent_on(server, role=f"Worker {label}")
        tasks = [Task(f"{label} job {i}", agent=agent) for i in range(4)]
        return Crew(tasks=tasks, process="parallel", max_concurrency=4, limits=limits)

    crews = {"A": crew("A"), "B": crew("B")}
    results = {}

    async def kickoff(label: str) -> None:
        results[label] = await crews[label].kickoff()

    with capture_events() as captured:
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


async def test_a_429_retry_after_pauses_the_model_for_every_caller() -> None:
    retry_after = 0.3
    names = ("Alpha", "Beta", "Gamma", "Delta")
    first_arrived: set[str] = set()
    all_arrived = asyncio.Event()
    sent_429: list[ReceivedRequest] = []

    async def respond(request: ReceivedRequest) -> Reply:
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
        # The others come back for a second call 0.1 s later: inside Alpha's pause.
        return Slow(0.1, ToolCalls([ToolCall("lookup", {"term": name})]))

    async with OpenAIServer(responder=respond) as server:
        agent = agent_on(server, tools=[lookup])
        tasks = [Task(f"Work on {n}", agent=agent, name=n.lower()) for n in names]
        crew = Crew(tasks=tasks, process="parallel", retry=FAST)

        with capture_events() as captured:
            result = await crew.kickoff()

    assert [o.text for o in result.outputs] == [f"{n} done" for n in names]
    (limited,) = sent_429
    assert limited.status == 429
    assert limited.finished_at is not None
    answered_at = limited.finished_at
    later = [r for r in server.requests if r.received_at > answered_at]
    # Alpha's retry and its tool round trip, and every other task's tool round trip.
    assert len(later) == server.count - len(names) == 5
    assert {n for r in later for n in names if n in r.last_user_message} == set(names)
    for request in later:
        assert request.received_at >= answered_at + retry_after - EPS, (
            f"request {request.index} arrived {request.received_at - answered_at:.3f} s after "
            f"the 429, inside its Retry-After of {retry_after} s"
        )
    # The callers that never saw the 429 waited for the pause too.
    paused = {
        w.task
        for w in captured.of_type(ev.LimiterWait)
        if any("retry_after:" in r for r in w.reasons)
    }
    assert {"beta", "gamma", "delta"} <= paused


async def test_an_rpm_limit_spaces_requests_at_the_server(server: OpenAIServer) -> None:
    llm = OpenAIChat(MODEL, base_url=server.base_url, api_key="k")
    agent = Agent(role="Worker", goal="Answer", llm=llm)
    tasks = [Task(f"Job {i}", agent=agent) for i in range(5)]
    limits = Limits({f"openai/{MODEL}": Limit(rpm=600, burst=1)})
    crew = Crew(tasks=tasks, process="parallel", limits=limits)

    # Held open, the client (and its kept-alive connection) outlives the warm-up run, so the
    # first rate-limited request pays no first-call or connect cost the others do not: the
    # gaps below measure the limiter, not those.
    async with llm:
        await Crew(tasks=[Task("Warm up", agent=agent)]).kickoff()
        server.reset_counters()
        result = await crew.kickoff()

    assert len(result.outputs) == 5
    arrivals = sorted(r.received_at for r in server.requests)
    assert len(arrivals) == 5
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    # A request's trip to the server varies by a few ms: allow that much below 0.1 s.
    assert all(gap >= 0.1 - 0.015 for gap in gaps), gaps
    assert arrivals[-1] - arrivals[0] >= 0.4 - 0.015


COLD_RPM_SCRIPT = """
import asyncio, contextlib, json, time
from crewflow import Agent, Crew, Limit, Limits, Task
from crewflow.llm import OpenAIChat
from crewflow.testing import OpenAIServer

async def main():
    first_task: list[float] = []
    ticks: list[float] = []

    def on_event(event):
        if event.kind == "task_started" and not first_task:
            first_task.append(time.monotonic())

    async def tick():
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.005)

    async with OpenAIServer() as server:
        llm = OpenAIChat("model-x", base_url=server.base_url, api_key="k")
        agent = Agent(role="Worker", goal="Answer", llm=llm)
        crew = Crew(
            tasks=[Task(f"Job {i}", agent=agent) for i in range(5)],
            process="parallel",
            limits=Limits({"openai/model-x": Limit(rpm=600, burst=1)}),
            on_event=on_event,
        )
        ticker = asyncio.create_task(tick())
        await crew.kickoff()
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
        arrivals = sorted(r.received_at for r in server.requests)
    # The longest the event loop went without running the ticker once tasks had started
    # (clients are opened before that).
    after = [first_task[0], *(t for t in ticks if t > first_task[0])]
    print(json.dumps({
        "stall": max(b - a for a, b in zip(after, after[1:])),
        "gaps": [b - a for a, b in zip(arrivals, arrivals[1:])],
    }))

asyncio.run(main())
"""


@pytest.mark.slow
async def test_the_first_calls_of_a_process_neither_stall_the_loop_nor_bunch_up() -> None:
    env = {**os.environ, "CREWFLOW_FORBID_REAL_LLM_CALLS": "1"}
    with anyio.fail_after(120):
        done = await anyio.run_process([sys.executable, "-c", COLD_RPM_SCRIPT], env=env)
    measured = json.loads(done.stdout)
    assert len(measured["gaps"]) == 4
    # Warm, the loop never stalls for more than a few ms here; cold it stalls for 0.4-1 s.
    assert measured["stall"] < 0.1, measured
    # Half the 0.1 s interval: what an rpm=600, burst=1 limit must at least keep between sends.
    assert min(measured["gaps"]) >= 0.05, measured


# -- retries and timeouts --------------------------------------------------------------------------


async def test_5xx_is_retried_over_http_while_other_branches_run(server: OpenAIServer) -> None:
    server.enqueue_for("Flaky", Error(500), Error(503))
    agent = agent_on(server)
    crew = Crew(
        tasks=[Task("Flaky job", agent=agent, name="flaky"), Task("Steady job", agent=agent)],
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
    server.enqueue_for("Slowpoke", Slow(5, Text("too late")))
    agent = agent_on(server)
    crew = Crew(
        tasks=[
            Task("Slowpoke job", agent=agent, name="slow", timeout=0.2, retry=FAST),
            Task("Quick job", agent=agent, name="quick"),
        ],
        process="parallel",
    )

    with anyio.fail_after(4):  # generous: the Slow reply would take 5 s
        result = await crew.kickoff()

    assert "Slowpoke job" in result["slow"].text
    assert result["slow"].text != "too late"
    first, second = result.timeline[0].attempts
    assert first.status == TaskStatus.FAILED
    assert first.error_type == "TaskTimeout"
    assert first.duration >= 0.2 - EPS
    assert second.status == TaskStatus.COMPLETED
    assert server.count_for("Slowpoke") == 2
    # The timed-out attempt's HTTP request was aborted, not left running.
    timed_out = next(r for r in server.requests if "Slowpoke" in r.last_user_message)
    await wait_until(lambda: timed_out.disconnected)
    assert timed_out.status is None
    assert server.disconnects == 1
    # The aborted request was sent (and may be billed): it counts.
    assert result["slow"].usage.requests == server.count_for("Slowpoke") == 2
    assert result.usage.requests == server.count == 3


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
                Task("Summarise", agent=primary, fallback_agent=backup, name="summary"),
                Task("Also summarise", agent=backup, name="direct"),
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

    limits = Limits(breaker=Breaker(failures=2, cooldown=60))
    retry = RetryPolicy(max_attempts=5, initial=0.01, jitter=False)
    async with OpenAIServer(responder=respond) as server:

        def to_x() -> int:
            return sum(1 for r in server.requests if r.model == MODEL)

        opener = Crew(tasks=[Task("Open it", agent=agent_on(server))], limits=limits, retry=retry)
        with pytest.raises(TaskFailed, match="circuit open") as caught:
            await opener.kickoff()

        # Two 500s opened the circuit; the third call never left the process.
        assert to_x() == 2
        cause = caught.value.cause
        assert isinstance(cause, LLMError)
        assert not cause.retryable

        x_agent = agent_on(server, role="X")
        y_agent = agent_on(server, OTHER, role="Y")
        crew = Crew(
            tasks=[
                *(Task(f"X job {i}", agent=x_agent, name=f"x{i}") for i in range(3)),
                Task("Y job", agent=y_agent, name="y"),
            ],
            process="parallel",
            on_failure="continue",
            limits=limits,
            retry=retry,
        )
        with anyio.fail_after(5), pytest.raises(CrewPartialFailure) as partial:
            await crew.kickoff()

    assert to_x() == 2  # nothing more reached the server for model-x
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
    server.enqueue(Slow(5, Text("never sent")))
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


async def test_pause_lets_the_request_in_flight_finish_and_starts_nothing_until_resume(
    server: OpenAIServer,
) -> None:
    server.enqueue(Slow(0.2, Text("first answer")))
    agent = agent_on(server)
    tasks = [Task(f"Job {i}", agent=agent, name=f"job_{i}") for i in range(3)]
    crew = Crew(tasks=tasks, process="parallel", max_concurrency=1)

    handle = crew.start()
    async with aclosing(handle.events()) as stream:
        await wait_until(lambda: server.count == 1)
        handle.pause()
        assert handle.status == "paused"
        with anyio.fail_after(5):
            async for event in stream:
                if isinstance(event, ev.TaskFinished):
                    finished = event
                    break
    assert finished.task == "job_0"
    assert server.requests[0].status == 200
    # Paused: the freed slot is not handed out, so nothing new reaches the server.
    await anyio.sleep(0.2)
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
            return Slow(5, Text("beta never finishes"))
        await beta_arrived.wait()  # fail only once Beta's request is on the server
        return Error(400, "alpha is malformed")

    async with OpenAIServer(responder=respond) as server:
        agent = agent_on(server)
        crew = Crew(
            tasks=[
                Task("Alpha job", agent=agent, name="alpha"),
                Task("Beta job", agent=agent, name="beta"),
            ],
            process="parallel",
            on_failure="stop",
            retry=FAST,
        )
        with anyio.fail_after(4), pytest.raises(TaskFailed) as caught:
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
            Task("Alpha job", agent=agent, name="alpha"),
            Task("Beta job", agent=agent, name="beta"),
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
    async with OpenAIServer(responder=respond, latency=0.05) as server:
        crew = Crew(tasks=[Task("Topic: {topic}", agent=agent_on(server))])

        results = await crew.kickoff_for_each([{"topic": t} for t in topics], concurrency=2)

    assert [r.output.text for r in results] == [f"about {t}" for t in topics]
    assert server.count == 6
    assert server.max_in_flight <= 2
    assert server.max_in_flight == 2  # and the two kickoffs did overlap
