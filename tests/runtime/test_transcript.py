"""Each attempt records its tool calls (name, outcome, duration, error; never the arguments) and
what each of its LLM calls sent and got back (bounded, valid UTF-8, without the client's key),
in the result's timeline and in the store."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
import pytest

from crewflow import Agent, Crew, RetryPolicy, Task, tool
from crewflow._runtime.transcript import (
    PROMPT_LIMIT,
    TOOL_ERROR_LIMIT,
    _shares,
    cut,
    valid_text,
)
from crewflow.events import ToolCalled
from crewflow.exceptions import TaskFailed
from crewflow.llm import Message, OpenAIChat
from crewflow.store import MemoryStore, PromptRecord, SQLiteStore
from crewflow.testing import (
    Error,
    OpenAIServer,
    ScriptedLLM,
    Slow,
    Text,
    ToolCall,
    ToolCalls,
    VirtualTimeLoop,
    capture_events,
    run_virtual,
)
from tests.held import Held

if TYPE_CHECKING:
    from pathlib import Path

    from crewflow import AttemptRecord, CrewResult

ARGUMENT = "do-not-record-this-argument"


@tool
def search(query: str) -> str:
    """Search for QUERY."""
    return f"found {len(query)} things"


@tool
def broken(query: str) -> str:
    """Always fails."""
    raise ValueError("the index is down")


def crew(
    llm: ScriptedLLM, *, tools: list[Any] | None = None, store: Any = None, **fields: Any
) -> Crew:
    agent = Agent(role="Researcher", goal="Find facts", llm=llm, tools=tools or [search, broken])
    return Crew(tasks=[Task("Find facts", agent=agent, name="facts")], store=store, **fields)


def only_attempt(result: CrewResult) -> AttemptRecord:
    (attempt,) = result.timeline[0].attempts
    return attempt


# -- tool calls ---------------------------------------------------------------------------------


async def test_each_tool_call_is_recorded_with_its_outcome_but_never_its_arguments() -> None:
    llm = ScriptedLLM(
        [
            ToolCalls(
                [ToolCall("search", {"query": ARGUMENT}), ToolCall("broken", {"query": "x"})]
            ),
            ToolCalls([ToolCall("nowhere", {"query": ARGUMENT})]),
            ToolCalls([ToolCall("search", {"limit": ARGUMENT})]),
            "done",
        ]
    )

    attempt = only_attempt(await crew(llm).kickoff())

    # The first two ran at once, so either may have ended first.
    calls = [*sorted(attempt.tool_calls[:2], key=lambda call: call.tool), *attempt.tool_calls[2:]]
    assert [(c.tool, c.ok, c.error_type) for c in calls] == [
        ("broken", False, "ValueError"),
        ("search", True, None),
        ("nowhere", False, "ToolError"),
        ("search", False, "ValidationError"),
    ]
    assert calls[0].error == "tool 'broken' raised ValueError: the index is down"
    assert calls[1].error is None
    assert calls[2].error == "unknown tool 'nowhere'; available tools: ['broken', 'search']"
    assert calls[3].error is not None
    assert calls[3].error.startswith("invalid arguments for tool 'search': query: Field required")
    assert all(call.duration >= 0 for call in calls)
    assert ARGUMENT not in "".join(call.model_dump_json() for call in attempt.tool_calls)


async def test_tool_calls_are_in_the_store_and_their_events_name_the_error_type(
    tmp_path: Path,
) -> None:
    llm = ScriptedLLM([ToolCalls([ToolCall("broken", {"query": "x"})]), "done"])
    path = tmp_path / "runs.db"

    with capture_events() as captured:
        result = await crew(llm, store=path).kickoff()

    async with SQLiteStore(path) as store:
        (stored,) = await store.attempts(result.run_id)
    assert stored.tool_calls == only_attempt(result).tool_calls
    (event,) = captured.of_type(ToolCalled)
    assert (event.tool, event.ok, event.error_type) == ("broken", False, "ValueError")
    assert event.error == "tool 'broken' raised ValueError: the index is down"


async def test_a_long_tool_error_is_cut_with_a_note() -> None:
    @tool
    def verbose() -> str:
        """Fails at length."""
        raise RuntimeError("x" * 10_000)

    llm = ScriptedLLM([ToolCalls([ToolCall("verbose", {})]), "done"])

    (call,) = only_attempt(await crew(llm, tools=[verbose]).kickoff()).tool_calls

    told = llm.requests[1].messages[-1].content
    assert told is not None
    assert len(told) > 10_000  # the model was told it all
    assert call.error == cut(told.removeprefix("Error: "), TOOL_ERROR_LIMIT)
    assert call.error.endswith(
        f"\n[… {len(told) - 7 - TOOL_ERROR_LIMIT:,} more characters not recorded]"
    )


async def test_tool_errors_holding_surrogates_and_nul_are_recorded_in_sqlite(
    tmp_path: Path,
) -> None:
    @tool
    def odd() -> str:
        """Fails oddly."""
        raise ValueError("half a pair \ud800 and a NUL \x00 here")

    llm = ScriptedLLM([ToolCalls([ToolCall("odd", {})]), "done"])
    path = tmp_path / "runs.db"

    result = await crew(llm, tools=[odd], store=path).kickoff()

    async with SQLiteStore(path) as store:
        (stored,) = await store.attempts(result.run_id)
    (call,) = stored.tool_calls
    assert call.error == "tool 'odd' raised ValueError: half a pair \ufffd and a NUL \ufffd here"


def test_a_tool_call_cut_short_by_the_tasks_timeout_is_recorded_as_cancelled() -> None:
    @tool
    async def hangs() -> str:
        """Never returns."""
        await anyio.sleep_forever()
        return "never"

    llm = ScriptedLLM([ToolCalls([ToolCall("hangs", {})])])
    agent = Agent(role="Researcher", goal="Find facts", llm=llm, tools=[hangs])
    task = Task("Find facts", agent=agent, name="facts", timeout=5)
    store = MemoryStore()
    slow = Crew(tasks=[task], store=store, retry=RetryPolicy(max_attempts=1))

    with pytest.raises(TaskFailed):
        run_virtual(slow.kickoff)

    (call,) = run_virtual(only_recorded_attempt, store).tool_calls
    assert (call.tool, call.ok, call.error_type) == ("hangs", False, "CancelledError")
    assert call.error is not None
    assert call.error.startswith("cancelled before the tool returned")


def test_a_sync_tool_call_abandoned_at_the_timeout_is_recorded_as_cancelled() -> None:
    held = Held()
    llm = ScriptedLLM([ToolCalls([ToolCall("fetch", {"url": "https://example.org"})])])
    agent = Agent(role="Fetcher", goal="Fetch", llm=llm, tools=[held.tool])
    store = MemoryStore()
    crew = Crew(
        tasks=[Task("Fetch", agent=agent, name="fetch", timeout=30)],
        store=store,
        retry=RetryPolicy(max_attempts=1),
    )

    async def main() -> None:
        handle = crew.start()
        await held.wait_started()
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualTimeLoop)
        loop.advance(30)  # past the timeout, while the tool's thread blocks
        await handle.result()

    try:
        with pytest.raises(TaskFailed):
            run_virtual(main)
        (call,) = run_virtual(only_recorded_attempt, store).tool_calls
    finally:
        held.settle()
    assert (call.tool, call.ok, call.error_type) == ("fetch", False, "CancelledError")


async def only_recorded_attempt(store: MemoryStore) -> AttemptRecord:
    (run,) = await store.list_runs()
    (attempt,) = await store.attempts(run.run_id)
    return attempt


# -- prompts ------------------------------------------------------------------------------------


async def test_each_llm_call_records_what_it_sent_and_what_came_back() -> None:
    llm = ScriptedLLM([ToolCalls([ToolCall("search", {"query": "tides"})]), "two facts"])

    result = await crew(llm).kickoff()

    first, second = only_attempt(result).prompts
    system, user = llm.requests[0].messages
    assert first.repeated == 0
    assert first.messages == (system, user)
    assert first.reply == Message("assistant", None, llm.requests[1].messages[2].tool_calls)
    assert first.tools == ("search", "broken")
    # The second call sends the first's messages and reply again: recorded once.
    assert second.repeated == 3
    assert second.messages == (llm.requests[1].messages[3],)
    assert second.messages[0].content == "found 5 things"
    assert second.reply == Message("assistant", "two facts")
    assert (second.cached, second.error, second.cut) == (False, None, 0)


async def test_record_prompts_false_records_none_and_keeps_the_fingerprint() -> None:
    llm = ScriptedLLM(["an answer"])
    quiet = crew(llm, record_prompts=False)

    result = await quiet.kickoff()

    assert only_attempt(result).prompts == ()
    assert quiet.fingerprint() == crew(ScriptedLLM([])).fingerprint()


async def test_a_failed_call_and_its_retry_are_both_recorded() -> None:
    llm = ScriptedLLM([Error(503, "busy"), "an answer"])

    result = await crew(llm, retry=RetryPolicy(max_attempts=2, initial=0, jitter=False)).kickoff()

    failed, retried = only_attempt(result).prompts
    assert failed.reply is None
    assert failed.error == "LLMError: scripted: HTTP 503: busy"
    assert (retried.repeated, retried.messages) == (2, ())
    assert retried.reply == Message("assistant", "an answer")


def test_a_call_cut_short_by_the_timeout_records_what_it_sent() -> None:
    llm = ScriptedLLM([Slow(60, "too late")])
    agent = Agent(role="Researcher", goal="Find facts", llm=llm)
    store = MemoryStore()
    slow = Crew(
        tasks=[Task("Find facts", agent=agent, name="facts", timeout=5)],
        store=store,
        retry=RetryPolicy(max_attempts=1),
    )

    with pytest.raises(TaskFailed):
        run_virtual(slow.kickoff)

    (call,) = run_virtual(only_recorded_prompts, store)
    assert call.messages == tuple(llm.requests[0].messages)
    assert call.reply is None
    assert call.error == (
        "CancelledError: cancelled before the reply (the attempt timed out or the run stopped)"
    )


async def only_recorded_prompts(store: MemoryStore) -> list[PromptRecord]:
    (run,) = await store.list_runs()
    ((_, prompts),) = (await store.prompts(run.run_id)).items()
    return prompts


async def test_a_reply_from_the_cache_is_recorded_as_cached() -> None:
    cached = crew(ScriptedLLM(["an answer"]), cache=True, store=MemoryStore())
    await cached.kickoff()

    result = await cached.kickoff()  # the script has no second answer: the cache has it

    (call,) = only_attempt(result).prompts
    assert call.cached
    assert call.reply == Message("assistant", "an answer")


async def test_a_huge_tool_result_is_cut_and_the_reply_kept_whole() -> None:
    @tool
    def dump() -> str:
        """A megabyte."""
        return "y" * 1_000_000

    llm = ScriptedLLM([ToolCalls([ToolCall("dump", {})]), "short answer"])

    result = await crew(llm, tools=[dump]).kickoff()

    _, second = only_attempt(result).prompts
    (sent,) = second.messages
    assert sent.content is not None
    kept, note = sent.content.split("\n")
    assert len(kept) == PROMPT_LIMIT - len("short answer")
    assert second.cut == 1_000_000 - len(kept)
    assert note == f"[… {second.cut:,} more characters not recorded]"
    assert second.reply == Message("assistant", "short answer")
    # What was sent is untouched: only the record is cut.
    assert llm.requests[1].messages[-1].content == "y" * 1_000_000


async def test_prompts_holding_surrogates_and_nul_are_recorded_in_sqlite(tmp_path: Path) -> None:
    @tool
    def odd() -> str:
        """Returns odd text."""
        return "half a pair \udfff, a NUL \x00, and 🔋"

    llm = ScriptedLLM(
        [ToolCalls([ToolCall("odd", {})], content="thinking \ud83d aloud \x00"), "done"]
    )
    path = tmp_path / "runs.db"

    result = await crew(llm, tools=[odd], store=path).kickoff()

    async with SQLiteStore(path) as store:
        prompts = await store.prompts(result.run_id)
    first, second = prompts[("facts", 1)]
    assert first.reply is not None
    assert first.reply.content == "thinking \ufffd aloud \ufffd"
    assert second.messages[0].content == "half a pair \ufffd, a NUL \ufffd, and 🔋"


async def test_the_clients_api_key_is_never_recorded(server: OpenAIServer, tmp_path: Path) -> None:
    canary = "sk-canary-9f8e7d6c5b4a3"

    @tool
    def leaky(query: str) -> str:
        """Fails, telling a key."""
        raise PermissionError(f"{canary} may not search for {query}")

    server.enqueue(ToolCalls([ToolCall("leaky", {"query": "q"})], content=f"I see {canary}"))
    server.enqueue(Text("done"))
    llm = OpenAIChat("m", base_url=server.base_url, api_key=canary)
    agent = Agent(role="W", goal="G", llm=llm, tools=[leaky])
    path = tmp_path / "runs.db"
    crew = Crew(tasks=[Task(f"Repeat {canary}", agent=agent, name="t")], store=path)

    result = await crew.kickoff()
    await crew.resolved_store().close()  # type: ignore[union-attr]

    attempt = only_attempt(result)
    first, second = attempt.prompts
    assert first.messages[1].content == "Repeat ***"
    assert first.reply is not None
    assert first.reply.content == "I see ***"
    assert second.messages[0].content == (
        "Error: tool 'leaky' raised PermissionError: *** may not search for q"
    )
    assert (
        attempt.tool_calls[0].error
        == "tool 'leaky' raised PermissionError: *** may not search for q"
    )
    assert await anyio.to_thread.run_sync(files_holding, tmp_path, canary) == []


def files_holding(directory: Path, text: str) -> list[str]:
    return [file.name for file in directory.iterdir() if text.encode() in file.read_bytes()]


# -- the pieces ---------------------------------------------------------------------------------


def test_valid_text_replaces_lone_surrogates_and_nul_only() -> None:
    assert valid_text("plain") == "plain"
    assert valid_text("a\x00b") == "a\ufffdb"
    assert valid_text("é \ud800 🔋 \udc00") == "é \ufffd 🔋 \ufffd"


def test_cut_keeps_short_text_and_notes_what_it_leaves_out() -> None:
    assert cut("abc", 3) == "abc"
    assert cut("abcdef", 2) == "ab\n[… 4 more characters not recorded]"


@pytest.mark.parametrize(
    ("lengths", "budget", "keeps"),
    [
        ([10, 20], 100, [10, 20]),
        ([10, 1000], 100, [10, 90]),
        ([1000, 10, 1000], 100, [45, 10, 45]),
        ([0, 0], 0, [0, 0]),
    ],
)
def test_shares_keep_short_texts_whole_and_split_the_rest_evenly(
    lengths: list[int], budget: int, keeps: list[int]
) -> None:
    assert _shares(lengths, budget) == keeps
