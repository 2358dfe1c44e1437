"""The per-LLM-call layer: provider errors retried inside the conversation, usage, LLM events."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from pydantic import BaseModel

from crewflow import Agent, Crew, Limit, Limits, RetryPolicy, Task, tool
from crewflow import events as ev
from crewflow._runtime import limiter
from crewflow._runtime.limiter import LimitRegistry, Permit
from crewflow.exceptions import LLMError, OutputValidationError, TaskFailed
from crewflow.testing import (
    Error,
    FunctionLLM,
    ScriptedLLM,
    ToolCall,
    ToolCalls,
    capture_events,
)

if TYPE_CHECKING:
    from crewflow.llm import LLM, LLMRequest
    from crewflow.testing import EventCapture, FakeClock


def one_task_crew(llm: LLM, *, retry: RetryPolicy | None = None, **agent: object) -> Crew:
    researcher = Agent(role="Researcher", goal="Find facts", llm=llm, **agent)  # type: ignore[arg-type]
    return Crew(
        tasks=[Task("Find facts", agent=researcher, name="facts")],
        retry=retry or RetryPolicy(),
    )


async def test_a_provider_error_is_retried_inside_the_conversation(fake_clock: FakeClock) -> None:
    calls: list[str] = []

    @tool
    def lookup(query: str) -> str:
        """Look QUERY up."""
        calls.append(query)
        return f"result for {query}"

    llm = ScriptedLLM([ToolCalls([ToolCall("lookup", {"query": "owls"})]), Error(500), "final"])

    result = await one_task_crew(llm, tools=[lookup]).kickoff()

    assert result.output.text == "final"
    assert calls == ["owls"]  # the tool was not run again
    # The retried call repeats the same conversation, tool result included.
    assert llm.requests[2].messages == llm.requests[1].messages
    assert llm.requests[2].messages[-1].content == "result for owls"
    assert len(fake_clock.sleeps) == 1
    record = result.timeline[0]
    assert len(record.attempts) == 1
    assert record.attempts[0].llm_retries == 1


async def test_provider_retries_back_off_exponentially(fake_clock: FakeClock) -> None:
    llm = ScriptedLLM([Error(500), Error(503), Error(502), "ok"])
    policy = RetryPolicy(max_attempts=4, initial=0.5, jitter=False)

    result = await one_task_crew(llm, retry=policy).kickoff()

    assert result.output.text == "ok"
    assert fake_clock.sleeps == [0.5, 1.0, 2.0]


async def test_provider_retries_back_off_with_jitter_within_bounds(fake_clock: FakeClock) -> None:
    llm = ScriptedLLM([Error(500), Error(500), "ok"])

    await one_task_crew(llm, retry=RetryPolicy(initial=1.0)).kickoff()

    first, second = fake_clock.sleeps
    assert 0.5 <= first <= 1.0
    assert 1.0 <= second <= 2.0


async def test_a_429_waits_at_least_its_retry_after(fake_clock: FakeClock) -> None:
    llm = ScriptedLLM([Error(429, retry_after=7), "ok"])

    result = await one_task_crew(llm).kickoff()

    assert result.output.text == "ok"
    assert len(fake_clock.sleeps) == 1
    assert 7.0 <= fake_clock.sleeps[0] <= RetryPolicy().max


async def test_a_429_pauses_its_model_before_its_permit_goes_back(
    fake_clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With limits shared by Ray workers, a slot given back before the pause would let another
    # worker's call take it and reach the provider within the Retry-After.
    order: list[str] = []

    class Recording(LimitRegistry):
        def pause(self, limit_key: str, seconds: float) -> None:
            order.append("pause")
            super().pause(limit_key, seconds)

        def _release(
            self, permit: Permit, tokens: int | None, ok: bool | None, request: str | None
        ) -> None:
            order.append("release")
            super()._release(permit, tokens, ok, request)

    recording = Recording()
    monkeypatch.setattr(limiter, "_REGISTRY", recording)
    llm = ScriptedLLM([Error(429, retry_after=7), "ok"])
    recording.configure(Limits({llm.limit_key: Limit(concurrency=1)}))

    await one_task_crew(llm).kickoff()

    assert order == ["pause", "release", "release"]


async def test_a_429_retry_after_is_capped_at_the_policy_max(fake_clock: FakeClock) -> None:
    llm = ScriptedLLM([Error(429, retry_after=120), "ok"])

    await one_task_crew(llm, retry=RetryPolicy(max=5.0)).kickoff()

    assert fake_clock.sleeps == [5.0]


async def test_a_non_retryable_provider_error_fails_at_once(fake_clock: FakeClock) -> None:
    llm = ScriptedLLM([Error(400), "never used"])

    with pytest.raises(TaskFailed) as caught:
        await one_task_crew(llm).kickoff()

    assert len(llm.requests) == 1
    assert fake_clock.sleeps == []
    assert isinstance(caught.value.cause, LLMError)
    assert caught.value.cause.status_code == 400


async def test_exhausted_provider_retries_fail_the_task(fake_clock: FakeClock) -> None:
    llm = ScriptedLLM([Error(500), Error(500), Error(500), "never used"])

    with pytest.raises(TaskFailed) as caught:
        await one_task_crew(llm, retry=RetryPolicy(max_attempts=3)).kickoff()

    error = caught.value
    assert len(llm.requests) == 3
    assert len(fake_clock.sleeps) == 2
    assert error.task == "facts"
    assert error.attempts == 1  # provider errors were retried per call, not per task
    assert isinstance(error.cause, LLMError)
    assert error.cause.retryable
    assert error.__cause__ is error.cause
    assert "facts" in str(error)


async def test_a_call_rides_out_more_429s_than_max_attempts(fake_clock: FakeClock) -> None:
    # A 429 says "not now": a storm of them is waited out under the default policy.
    llm = ScriptedLLM([Error(429, retry_after=0.5)] * 5 + ["ok"])

    result = await one_task_crew(llm).kickoff()

    assert result.output.text == "ok"
    assert len(llm.requests) == 6
    assert len(fake_clock.sleeps) == 5
    assert all(sleep >= 0.5 for sleep in fake_clock.sleeps)
    assert result.timeline[0].attempts[0].llm_retries == 5


async def test_429s_spend_their_own_budget_and_other_errors_max_attempts(
    fake_clock: FakeClock,
) -> None:
    # Two 500s and two 429s in between: the 429s do not bring the third 500 any closer.
    llm = ScriptedLLM([Error(500), Error(429), Error(429), Error(500), Error(500), "never"])

    with pytest.raises(TaskFailed) as caught:
        await one_task_crew(llm, retry=RetryPolicy(max_attempts=3)).kickoff()

    assert len(llm.requests) == 5
    assert isinstance(caught.value.cause, LLMError)
    assert caught.value.cause.status_code == 500


async def test_a_call_gives_up_after_rate_limit_attempts_429s(fake_clock: FakeClock) -> None:
    llm = ScriptedLLM([Error(429, retry_after=1)] * 4 + ["never"])

    with pytest.raises(TaskFailed) as caught:
        await one_task_crew(llm, retry=RetryPolicy(rate_limit_attempts=4)).kickoff()

    assert len(llm.requests) == 4
    assert isinstance(caught.value.cause, LLMError)
    assert caught.value.cause.status_code == 429


async def test_retry_on_can_turn_provider_retries_off(fake_clock: FakeClock) -> None:
    llm = ScriptedLLM([Error(503), "never used"])
    policy = RetryPolicy(retry_on=lambda error: False)

    with pytest.raises(TaskFailed):
        await one_task_crew(llm, retry=policy).kickoff()

    assert len(llm.requests) == 1


async def test_usage_counts_failed_requests(fake_clock: FakeClock) -> None:
    llm = ScriptedLLM([Error(500), Error(429), "ok"])

    result = await one_task_crew(llm).kickoff()

    assert result.usage.requests == 3
    assert result.output.usage.requests == 3
    attempt = result.timeline[0].attempts[0]
    assert attempt.usage.requests == 3
    assert attempt.llm_retries == 2
    # Tokens come only from the answer that arrived.
    assert result.usage.completion_tokens == result.output.usage.completion_tokens > 0


async def test_llm_events_tell_the_story_of_a_retried_call(fake_clock: FakeClock) -> None:
    llm = ScriptedLLM([Error(503, retry_after=2), "ok"])

    with capture_events() as captured:
        result = await one_task_crew(llm, retry=RetryPolicy(jitter=False)).kickoff()

    llm_events = [e for e in captured if e.kind.startswith("llm_")]
    assert [e.kind for e in llm_events] == [
        "llm_call_started",
        "llm_call_finished",
        "llm_call_retrying",
        "llm_call_started",
        "llm_call_finished",
    ]
    started, failed, retrying, _, finished = llm_events
    assert isinstance(started, ev.LLMCallStarted)
    assert (started.task, started.model, started.attempt) == ("facts", "scripted", 1)
    assert isinstance(failed, ev.LLMCallFinished)
    assert failed.error is not None
    assert "503" in failed.error
    assert isinstance(retrying, ev.LLMCallRetrying)
    assert (retrying.call_attempt, retrying.status_code, retrying.delay) == (1, 503, 2.0)
    assert isinstance(finished, ev.LLMCallFinished)
    assert finished.error is None
    assert finished.prompt_tokens == result.output.usage.prompt_tokens
    assert finished.completion_tokens == result.output.usage.completion_tokens
    assert all(e.run_id == result.run_id for e in llm_events)


async def test_an_unexpected_exception_from_the_llm_is_not_retried_but_accounted(
    fake_clock: FakeClock,
) -> None:
    llm = ScriptedLLM([RuntimeError("client bug"), "never used"])

    with capture_events() as captured, pytest.raises(TaskFailed) as caught:
        await one_task_crew(llm).kickoff()

    assert len(llm.requests) == 1
    assert isinstance(caught.value.cause, RuntimeError)
    finished = captured.of_type(ev.LLMCallFinished)
    assert len(finished) == len(captured.of_type(ev.LLMCallStarted)) == 1
    assert finished[0].error == "RuntimeError: client bug"


async def test_the_agent_sees_the_wrapped_llm_capabilities() -> None:
    from pydantic import BaseModel

    class Answer(BaseModel):
        value: int

    llm = ScriptedLLM([{"value": 3}], supports_output_schema=False)
    agent = Agent(role="R", goal="G", llm=llm)
    crew = Crew(tasks=[Task("Count", agent=agent, output_model=Answer)])

    result = await crew.kickoff()

    assert result.output.data == Answer(value=3)
    # No native schema support: the schema was asked for in the prompt instead.
    assert llm.requests[0].output is None
    assert "JSON schema" in (llm.requests[0].messages[1].content or "")


def test_the_wrapped_llm_shares_the_limit_key_of_the_inner_one() -> None:
    from crewflow._runtime.calls import AttemptBuilder, ManagedLLM
    from crewflow._runtime.run import Run
    from crewflow.processes.sequential import Sequential

    inner = ScriptedLLM([], model="provider/model")
    crew = one_task_crew(inner)
    run = Run(graph=crew.graph, process=Sequential(), crew_name="c", inputs={}, retry=RetryPolicy())

    attempt = AttemptBuilder("facts", 1, "Researcher", inner.model, RetryPolicy())
    managed = ManagedLLM(inner, run, attempt)

    assert managed.limit_key == inner.limit_key == "provider/model"
    assert managed.model == "provider/model"


# -- streamed text across retries and turns --------------------------------------------------------


def streamed_since_last_reset(captured: EventCapture, task: str) -> str:
    """What a listener that drops its text on each `TokenDeltaReset` ends up showing."""
    shown = ""
    for event in captured:
        if isinstance(event, ev.TokenDeltaReset) and event.task == task:
            shown = ""
        elif isinstance(event, ev.TokenDelta) and event.task == task:
            shown += event.text
    return shown


def cut_once(full: str, cut: str) -> FunctionLLM:
    """A streaming model whose first stream is cut after ``cut`` (a retryable error), and
    whose later streams send ``full``."""

    async def stream(request: LLMRequest) -> str:
        if len(llm.requests) == 1:
            assert request.on_delta is not None
            await request.on_delta(cut)
            raise LLMError("scripted: connection reset mid-stream", model="cut", retryable=True)
        return full

    llm = FunctionLLM(stream, model="cut")
    return llm


async def test_a_stream_cut_and_retried_resets_the_streamed_text(fake_clock: FakeClock) -> None:
    llm = cut_once("The whole answer, at last.", "The whole")

    with capture_events() as captured:
        result = await one_task_crew(llm, stream=True).kickoff()

    kinds = [e.kind for e in captured if e.kind.startswith("token_delta")]
    assert kinds[0] == "token_delta"  # the cut stream's text
    assert kinds[1] == "token_delta_reset"
    assert kinds.count("token_delta_reset") == 1
    [reset] = captured.of_type(ev.TokenDeltaReset)
    assert (reset.task, reset.model, reset.reason) == ("facts", "cut", "retry")
    assert streamed_since_last_reset(captured, "facts") == result.output.text
    assert result.output.text == "The whole answer, at last."
    assert result.timeline[0].attempts[0].llm_retries == 1


async def test_the_reset_comes_before_the_retried_calls_events(fake_clock: FakeClock) -> None:
    llm = cut_once("again", "once")

    with capture_events() as captured:
        await one_task_crew(llm, stream=True).kickoff()

    kinds = [e.kind for e in captured]
    reset = kinds.index("token_delta_reset")
    assert kinds.index("llm_call_retrying") < reset
    assert reset < kinds.index("llm_call_started", kinds.index("llm_call_retrying"))


async def test_a_retried_attempt_resets_what_the_failed_attempt_streamed(
    fake_clock: FakeClock,
) -> None:
    class Facts(BaseModel):
        count: int

    llm = ScriptedLLM(["not json at all", '{"count":3}'])
    researcher = Agent(role="Researcher", goal="Find facts", llm=llm, stream=True, output_retries=0)
    task = Task("Count facts", agent=researcher, name="facts", output_model=Facts)
    policy = RetryPolicy(retry_on=(OutputValidationError,))

    with capture_events() as captured:
        result = await Crew(tasks=[task], retry=policy).kickoff()

    [reset] = captured.of_type(ev.TokenDeltaReset)
    assert reset.reason == "retry"
    assert streamed_since_last_reset(captured, "facts") == result.output.text == '{"count":3}'


async def test_text_streamed_beside_tool_calls_is_reset_before_the_next_call(
    fake_clock: FakeClock,
) -> None:
    @tool
    def lookup(query: str) -> str:
        """Look QUERY up."""
        return "found"

    llm = ScriptedLLM(
        [ToolCalls([ToolCall("lookup", {"query": "owls"})], content="Let me look."), "Owls hoot."]
    )

    with capture_events() as captured:
        result = await one_task_crew(llm, tools=[lookup], stream=True).kickoff()

    [reset] = captured.of_type(ev.TokenDeltaReset)
    assert reset.reason == "next_call"
    assert streamed_since_last_reset(captured, "facts") == result.output.text == "Owls hoot."


async def test_nothing_is_reset_when_nothing_was_streamed_before_a_call(
    fake_clock: FakeClock,
) -> None:
    @tool
    def lookup(query: str) -> str:
        """Look QUERY up."""
        return "found"

    llm = ScriptedLLM([Error(503), ToolCalls([ToolCall("lookup", {"query": "owls"})]), "Hoot."])

    with capture_events() as captured:
        result = await one_task_crew(llm, tools=[lookup], stream=True).kickoff()

    assert captured.of_type(ev.TokenDeltaReset) == []
    assert "".join(d.text for d in captured.of_type(ev.TokenDelta)) == result.output.text


# -- the calls an attempt records ------------------------------------------------------------------


def test_each_call_is_recorded_with_its_wait_times_tokens_and_outcome() -> None:
    """Two tasks at once on a model that takes one call at a time, each a retried request: every
    request is a call of its own, the second task's first call waited for the first's."""
    from crewflow import Limit, Limits
    from crewflow.testing import run_virtual

    failed: set[str] = set()

    async def answer(request: LLMRequest) -> object:
        import anyio

        name = request.messages[-1].content.split()[0]
        await anyio.sleep(2)  # virtual seconds
        if name not in failed:
            failed.add(name)
            return Error(503)
        return f"{name} done"

    llm = FunctionLLM(answer, model="fn/one-at-a-time")
    agent = Agent(role="Worker", goal="Work", llm=llm)
    crew = Crew(
        tasks=[
            Task("alpha", agent=agent, name="alpha", context=[]),
            Task("beta", agent=agent, name="beta", context=[]),
        ],
        process="parallel",
        retry=RetryPolicy(initial=1.0, jitter=False),
        limits=Limits({"fn/one-at-a-time": Limit(concurrency=1)}),
    )

    result = run_virtual(crew.kickoff)

    calls = {record.task: record.attempts[0].calls for record in result.timeline}
    # alpha: sent at once, failed after 2 s; retried 1 s later, waited for beta's call (2 s).
    assert [(c.start, c.wait, c.end, c.outcome, c.status_code) for c in calls["alpha"]] == [
        (0.0, 0.0, 2.0, "failed", 503),
        (3.0, 1.0, 6.0, "completed", None),
    ]
    # beta: waited 2 s for alpha's first call, failed; its retry waited for alpha's second.
    assert [(c.start, c.wait, c.end, c.outcome, c.status_code) for c in calls["beta"]] == [
        (0.0, 2.0, 4.0, "failed", 503),
        (5.0, 1.0, 8.0, "completed", None),
    ]
    for record in result.timeline:
        (attempt,) = record.attempts
        assert sum(c.prompt_tokens for c in attempt.calls) == attempt.usage.prompt_tokens > 0
        assert attempt.limit_wait == sum(c.wait for c in attempt.calls)


async def test_a_cached_reply_and_a_cancelled_call_are_calls_too() -> None:
    import anyio

    from crewflow.exceptions import RunCancelled
    from crewflow.store import MemoryStore

    store = MemoryStore()
    agent = Agent(role="Researcher", goal="Find facts", llm=ScriptedLLM(["cached", "unused"]))
    crew = Crew(tasks=[Task("Find facts", agent=agent, name="facts")], store=store, cache=True)
    await crew.kickoff()
    again = await crew.kickoff()
    (call,) = again.timeline[0].attempts[0].calls
    assert (call.outcome, call.wait, call.prompt_tokens, call.completion_tokens) == (
        "cached",
        0.0,
        0,
        0,
    )

    started = anyio.Event()

    async def never(request: LLMRequest) -> str:
        started.set()
        await anyio.sleep_forever()
        raise AssertionError("cancelled first")

    waiting = Agent(role="Researcher", goal="Find facts", llm=FunctionLLM(never))
    stuck = Crew(tasks=[Task("Find facts", agent=waiting, name="facts")], store=store)
    handle = stuck.start()
    await started.wait()
    handle.cancel()
    with pytest.raises(RunCancelled):
        await handle.result()
    (attempt,) = await store.attempts(handle.run_id)
    (call,) = attempt.calls
    assert (attempt.status, call.outcome, call.status_code) == ("cancelled", "cancelled", None)
    assert call.end >= call.start + call.wait
