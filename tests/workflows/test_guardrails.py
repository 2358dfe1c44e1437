"""Guardrails: a task's output is checked before it is accepted; a rejected one is asked for
again with the reason (a guardrail round), until the rounds are spent.

Each behaviour runs under ``sequential`` and ``parallel``: the rounds belong to the runtime,
not to a process.
"""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING, Any

import pytest
from rich.text import Text
from typer.testing import CliRunner

from crewflow import Agent, Crew, RetryPolicy, Task, TaskOutput, TaskStatus, cli
from crewflow.events import Event, GuardrailFailed, RunStarted, TaskRetrying
from crewflow.exceptions import (
    ConfigurationError,
    CrewPartialFailure,
    OutputValidationError,
    RunCancelled,
    TaskFailed,
    TaskTimeout,
)
from crewflow.store import MemoryStore, SQLiteStore, Store
from crewflow.testing import (
    Error,
    ScriptedLLM,
    Slow,
    VirtualTimeLoop,
    capture_events,
    run_virtual,
)

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from crewflow._records import AttemptRecord

PROCESSES = pytest.mark.parametrize("process", ["sequential", "parallel"])


def no_drafts(output: TaskOutput) -> str | None:
    """Rejects an output that says it is a draft."""
    return "it is still a draft" if "draft" in output.text else None


def writer(llm: ScriptedLLM) -> Agent:
    return Agent(role="Writer", goal="Write", llm=llm)


def write_task(llm: ScriptedLLM, **task: Any) -> Task:
    task.setdefault("guardrail", no_drafts)
    return Task("Write the post", agent=writer(llm), name="write", **task)


def last_user_message(llm: ScriptedLLM, call: int) -> str:
    content = llm.requests[call].messages[-1].content
    assert content is not None
    return content


async def stored_attempts(store: Store, run_id: str) -> list[AttemptRecord]:
    return [row for row in await store.attempts(run_id) if row.task == "write"]


# -- passing on a later try ----------------------------------------------------------------------


@PROCESSES
async def test_a_guardrail_that_passes_on_the_second_try_asks_again_with_the_reason(
    process: str, tmp_path: Path
) -> None:
    llm = ScriptedLLM(["a draft", "the post"])
    store = SQLiteStore(tmp_path / "runs.db")
    crew = Crew(tasks=[write_task(llm)], process=process, store=store)

    with capture_events() as events:
        result = await crew.kickoff()

    assert result.output.text == "the post"
    assert len(llm.requests) == 2
    assert "it is still a draft" not in last_user_message(llm, 0)
    assert "Your previous answer was rejected: it is still a draft" in last_user_message(llm, 1)
    assert last_user_message(llm, 1).startswith(last_user_message(llm, 0))
    (record,) = result.timeline
    first, second = record.attempts
    assert (first.kind, first.status, first.error_type) == (
        "task",
        TaskStatus.FAILED,
        "OutputValidationError",
    )
    assert (second.kind, second.status) == ("guardrail", TaskStatus.COMPLETED)
    assert [(e.task, e.attempt, e.round, e.reason) for e in events.of_type(GuardrailFailed)] == [
        ("write", 1, 1, "it is still a draft")
    ]
    assert not events.of_type(TaskRetrying)  # a round is not a retry
    # The kind is stored (in the attempt's details) and read back as the field.
    stored = await stored_attempts(store, result.run_id)
    assert [(row.number, row.kind) for row in stored] == [(1, "task"), (2, "guardrail")]
    assert all("kind" not in row.details for row in stored)
    # The output's usage is every attempt's.
    assert result.output.usage.requests == 2


@PROCESSES
async def test_an_async_guardrail_is_awaited(process: str) -> None:
    seen: list[str] = []

    async def checked(output: TaskOutput) -> bool | str:
        await asyncio.sleep(0)
        seen.append(output.text)
        return output.text == "the post" or "not the post"

    llm = ScriptedLLM(["nope", "the post"])
    crew = Crew(tasks=[write_task(llm, guardrail=checked)], process=process, store=MemoryStore())

    result = await crew.kickoff()

    assert result.output.text == "the post"
    assert seen == ["nope", "the post"]
    assert "not the post" in last_user_message(llm, 1)


@PROCESSES
async def test_a_sync_guardrail_runs_in_a_worker_thread(process: str) -> None:
    threads: list[threading.Thread] = []

    def checked(output: TaskOutput) -> bool:
        threads.append(threading.current_thread())
        return True

    crew = Crew(
        tasks=[write_task(ScriptedLLM(["ok"]), guardrail=checked)],
        process=process,
        store=MemoryStore(),
    )

    await crew.kickoff()

    assert threads
    assert threads[0] is not threading.main_thread()


# -- never passing -------------------------------------------------------------------------------


@PROCESSES
async def test_a_guardrail_that_never_passes_fails_the_task_with_every_reason(
    process: str,
) -> None:
    reasons = iter(["too short", "too vague", "off topic"])

    def picky(output: TaskOutput) -> str:
        return next(reasons)

    llm = ScriptedLLM(["one", "two", "three"])
    store = MemoryStore()
    # The retry policy would allow 5 attempts: guardrail rounds must not use them.
    task = write_task(llm, guardrail=picky, retry=RetryPolicy(max_attempts=5))
    crew = Crew(tasks=[task], process=process, store=store)

    with capture_events() as events, pytest.raises(TaskFailed) as caught:
        await crew.kickoff()

    error = caught.value.cause
    assert isinstance(error, OutputValidationError)
    assert error.reasons == ("too short", "too vague", "off topic")
    assert error.output is not None
    assert error.output.text == error.text == "three"
    assert error.guardrail == f"{__name__}.{picky.__qualname__}"
    assert error.guardrail in str(error)
    assert len(llm.requests) == 3  # the first try and guardrail_retries=2 rounds
    assert "too vague" in last_user_message(llm, 2)
    assert "too short" not in last_user_message(llm, 2)  # only the last reason: lean
    run_id = events.of_type(RunStarted)[0].run_id
    stored = await stored_attempts(store, run_id)
    assert [(row.number, row.kind, row.status) for row in stored] == [
        (1, "task", TaskStatus.FAILED),
        (2, "guardrail", TaskStatus.FAILED),
        (3, "guardrail", TaskStatus.FAILED),
    ]
    assert not events.of_type(TaskRetrying)
    assert [e.round for e in events.of_type(GuardrailFailed)] == [1, 2, 3]


@PROCESSES
async def test_false_rejects_and_zero_rounds_fail_at_the_first_rejection(process: str) -> None:
    llm = ScriptedLLM(["one"])
    task = write_task(llm, guardrail=lambda output: False, guardrail_retries=0)
    crew = Crew(tasks=[task], process=process, store=MemoryStore())

    with pytest.raises(TaskFailed) as caught:
        await crew.kickoff()

    error = caught.value.cause
    assert isinstance(error, OutputValidationError)
    assert len(error.reasons) == 1
    assert "no reason" in error.reasons[0]
    assert len(llm.requests) == 1


@PROCESSES
async def test_a_failed_guardrail_under_continue_is_a_failed_task_like_any_other(
    process: str,
) -> None:
    llm = ScriptedLLM(["a draft", "a draft", "a draft"])
    other = Task("Other", agent=writer(ScriptedLLM(["fine"])), name="other", context=[])
    crew = Crew(
        tasks=[write_task(llm, context=[]), other],
        process=process,
        on_failure="continue",
        store=MemoryStore(),
    )

    with pytest.raises(CrewPartialFailure) as caught:
        await crew.kickoff()

    assert set(caught.value.failures) == {"write"}
    assert caught.value.outputs["other"].text == "fine"


# -- a broken guardrail --------------------------------------------------------------------------


def broken(output: TaskOutput) -> bool:
    raise KeyError("score")


@PROCESSES
async def test_a_raising_guardrail_fails_the_task_at_once_naming_it(process: str) -> None:
    llm = ScriptedLLM(["one", "two"])
    store = MemoryStore()
    task = write_task(llm, guardrail=broken, retry=RetryPolicy(max_attempts=3))
    crew = Crew(tasks=[task], process=process, store=store)

    with capture_events() as events, pytest.raises(TaskFailed) as caught:
        await crew.kickoff()

    assert isinstance(caught.value.cause, KeyError)
    assert f"guardrail '{__name__}.broken' raised KeyError" in str(caught.value)
    assert len(llm.requests) == 1  # neither a guardrail round nor a retry
    assert not events.of_type(GuardrailFailed)
    (attempt,) = await stored_attempts(store, events.of_type(RunStarted)[0].run_id)
    assert attempt.error_type == "KeyError"
    assert attempt.error is not None
    assert "broken" in attempt.error


@PROCESSES
async def test_a_guardrail_returning_neither_ok_nor_a_reason_fails_the_task(process: str) -> None:
    llm = ScriptedLLM(["one"])
    crew = Crew(
        tasks=[write_task(llm, guardrail=lambda output: 0.5)], process=process, store=MemoryStore()
    )

    with pytest.raises(TaskFailed) as caught:
        await crew.kickoff()

    assert isinstance(caught.value.cause, TypeError)
    assert "returned 0.5 (float)" in str(caught.value)
    assert "<lambda>" in str(caught.value)


# -- the timeout covers the guardrail ------------------------------------------------------------

TIMEOUT = 30.0  # virtual seconds: reached only when the test moves the clock past it


class Blocking:
    """A sync guardrail that blocks its worker thread until released, and tells the loop when
    it is entered."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def __call__(self, output: TaskOutput) -> bool:
        assert self.loop is not None
        assert self.entered is not None
        self.loop.call_soon_threadsafe(self.entered.set)
        self.release.wait(10)  # a guard: only reached when the test is broken
        return True


@pytest.fixture
def blocking() -> Iterator[Blocking]:
    guard = Blocking()
    yield guard
    guard.release.set()


@PROCESSES
def test_a_sync_guardrail_that_blocks_past_the_timeout_ends_in_a_task_timeout(
    process: str, blocking: Blocking
) -> None:
    llm = ScriptedLLM(["one"])
    task = write_task(llm, guardrail=blocking, timeout=TIMEOUT, retry=RetryPolicy(max_attempts=1))
    crew = Crew(tasks=[task], process=process, store=MemoryStore())

    async def main() -> Any:
        blocking.loop = asyncio.get_running_loop()
        blocking.entered = asyncio.Event()
        handle = crew.start()
        await blocking.entered.wait()
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualTimeLoop)
        loop.advance(TIMEOUT)
        return await handle.result()

    with pytest.raises(TaskFailed) as caught:
        run_virtual(main)

    assert isinstance(caught.value.cause, TaskTimeout)
    assert not blocking.release.is_set()  # it ended while the guardrail still blocked


# -- the cache -----------------------------------------------------------------------------------


@PROCESSES
async def test_a_cached_reply_the_guardrail_rejected_is_not_served_to_the_round(
    process: str,
) -> None:
    store = MemoryStore()
    first = ScriptedLLM(["a draft", "the post"])
    crew = Crew(tasks=[write_task(first)], process=process, store=store, cache=True)
    await crew.kickoff()

    # The same crew again: its first request is served the cached draft, which the guardrail
    # rejects; the round's request (it carries the reason) must reach the model.
    second = ScriptedLLM(["the second post"])
    again = Crew(tasks=[write_task(second)], process=process, store=store, cache=True)
    result = await again.kickoff()

    (record,) = result.timeline
    assert [row.cache_hits for row in record.attempts] == [1, 0]
    assert len(second.requests) == 1
    assert "it is still a draft" in last_user_message(second, 0)
    assert result.output.text == "the second post"


# -- resume --------------------------------------------------------------------------------------


@PROCESSES
async def test_a_run_stopped_in_a_guardrail_round_resumes_from_the_first_attempt(
    process: str,
) -> None:
    store = MemoryStore()

    class Stops:
        """Rejects the first output; the run is cancelled during the round that follows."""

        calls = 0

        def __call__(self, output: TaskOutput) -> str | None:
            self.calls += 1
            return "it is still a draft" if self.calls == 1 else None

    guard = Stops()
    rejected = asyncio.Event()
    llm = ScriptedLLM(["a draft", Slow(3600, "never")])
    task = write_task(llm, guardrail=guard)

    def on_event(event: Event) -> None:
        if isinstance(event, GuardrailFailed):
            rejected.set()

    crew = Crew(tasks=[task], process=process, store=store, on_event=on_event)

    with capture_events() as events:
        handle = crew.start()
        async with handle:
            await rejected.wait()  # the round's request is now in flight
            handle.cancel()
            with pytest.raises(RunCancelled):
                await handle.result()
    run_id = events.of_type(RunStarted)[0].run_id

    resumed = ScriptedLLM(["the post"])
    again = Crew(tasks=[write_task(resumed, guardrail=guard)], process=process, store=store)
    result = await again.resume(run_id)

    assert result.output.text == "the post"
    assert "rejected" not in last_user_message(resumed, 0)  # its first attempt again
    (record,) = result.timeline
    assert [(row.number, row.kind) for row in record.attempts] == [(3, "task")]


# -- construction and identity -------------------------------------------------------------------


def test_a_guardrail_that_is_not_callable_is_refused_at_construction() -> None:
    with pytest.raises(ConfigurationError, match="guardrail must be a function of the TaskOutput"):
        Task("Write", guardrail="no drafts")


def test_a_guardrail_that_takes_no_single_argument_is_refused_saying_how_to_fix_it() -> None:
    def two(output: TaskOutput, strict: bool) -> bool:
        return True

    with pytest.raises(ConfigurationError, match=r"must take one argument.*def check\(output"):
        Task("Write", guardrail=two)
    with pytest.raises(ConfigurationError, match="guardrail_retries"):
        Task("Write", guardrail=no_drafts, guardrail_retries=-1)


def also_no_drafts(output: TaskOutput) -> str | None:
    return no_drafts(output)


def test_the_guardrail_is_part_of_the_crews_fingerprint_by_qualified_name() -> None:
    def key(**task: Any) -> str:
        crew = Crew(tasks=[Task("Write", name="write", agent=writer(ScriptedLLM([])), **task)])
        return crew.fingerprint().crew_key

    unguarded = key()
    assert key(guardrail=no_drafts) != unguarded
    assert key(guardrail=also_no_drafts) != key(guardrail=no_drafts)  # renamed: another key
    assert key(guardrail=no_drafts) == key(guardrail=no_drafts)
    assert key(guardrail=no_drafts, guardrail_retries=5) != key(guardrail=no_drafts)
    assert key(guardrail_retries=5) == unguarded  # without a guardrail, nothing changes


# -- what shows them -----------------------------------------------------------------------------


@pytest.fixture
def guarded_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A run in the default database whose task passed its guardrail on the second try."""
    monkeypatch.setenv("CREWFLOW_HOME", str(tmp_path / "home"))
    llm = ScriptedLLM(["a draft", "the post"])
    crew = Crew(tasks=[write_task(llm)], store=SQLiteStore(tmp_path / "home" / "runs.db"))
    return crew.kickoff_sync().run_id


@pytest.mark.parametrize("width", [60, 80, 120])
def test_show_marks_the_guardrail_rounds_at_any_width(guarded_run: str, width: int) -> None:
    env = {"COLUMNS": str(width), "TTY_COMPATIBLE": "1", "TERM": "xterm-256color"}

    result = CliRunner().invoke(cli.app, ["show", guarded_run], env=env)

    assert result.exit_code == 0, result.output
    assert result.exception is None
    shown = " ".join(Text.from_ansi(result.stdout).plain.split())
    assert "write: attempt 1 failed: OutputValidationError: guardrail" in shown
    assert "write: attempt 2 (guardrail round) completed" in shown


def test_the_reports_timeline_marks_a_guardrail_round() -> None:
    llm = ScriptedLLM(["a draft", "the post"])
    result = Crew(tasks=[write_task(llm)], store=MemoryStore()).kickoff_sync()

    html = result.report().html()

    assert "write · attempt 2 (guardrail round)" in html
    assert "write · attempt 1 · " in html


@PROCESSES
async def test_a_task_that_passed_its_guardrail_is_restored_on_resume_unchecked(
    process: str,
) -> None:
    store = MemoryStore()
    checked: list[str] = []

    def counted(output: TaskOutput) -> str | None:
        checked.append(output.text)
        return no_drafts(output)

    def crew_of(write_llm: ScriptedLLM, next_llm: ScriptedLLM) -> Crew:
        write = write_task(write_llm, guardrail=counted)
        after = Task("Publish it", agent=writer(next_llm), name="publish", context=[write])
        return Crew(tasks=[write, after], process=process, store=store)

    with capture_events() as events, pytest.raises(TaskFailed):
        await crew_of(
            ScriptedLLM(["a draft", "the post"]), ScriptedLLM([Error(400, "bad request")])
        ).kickoff()
    run_id = events.of_type(RunStarted)[0].run_id

    write_llm = ScriptedLLM([])
    result = await crew_of(write_llm, ScriptedLLM(["published"])).resume(run_id)

    assert result["write"].text == "the post"
    assert result.output.text == "published"
    assert write_llm.requests == []
    assert checked == ["a draft", "the post"]  # not checked again
