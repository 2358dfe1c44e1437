"""A run whose model has no credentials fails before it is recorded or announced; a key refused
before any task finished ends the run with the same `CredentialsError`; once tasks finished, a
refused key fails its task and the outputs stay (the run can be resumed with a valid key).

No real key is ever set: the values are fakes, and every client talks to the loopback server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from crewflow import Agent, Crew, Task
from crewflow.exceptions import (
    ConfigurationError,
    CredentialsError,
    CrewPartialFailure,
    TaskFailed,
)
from crewflow.llm import LiteLLM, OpenAIChat
from crewflow.llm._guard import reset, set_forbidden
from crewflow.store import MemoryStore, RunStatus
from crewflow.testing import Error, OpenAIServer, Text, capture_events

if TYPE_CHECKING:
    from collections.abc import Iterator

    from crewflow.llm._base import LLM
    from crewflow.testing import FakeClock

pytestmark = pytest.mark.asyncio

FAKE = "sk-fake-7d0c2b9e41aa"
NOWHERE = "http://127.0.0.1:9/v1"  # loopback (allowed by the test guard), never called


@pytest.fixture(autouse=True)
def no_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def real_calls_allowed() -> Iterator[None]:
    """For OpenAI's own API: without a key its client cannot even be built, so nothing is
    sent; the switch only has to let `open` get that far."""
    token = set_forbidden(False)
    yield
    reset(token)


def crew_on(llm: LLM, store: MemoryStore, count: int = 2, **kwargs: object) -> Crew:
    agent = Agent(role="Writer", goal="Write", llm=llm)
    tasks = [Task(f"Part {n}", agent=agent, name=f"part{n}", context=[]) for n in range(count)]
    return Crew(tasks=tasks, store=store, **kwargs)  # type: ignore[arg-type]


# -- a missing key ------------------------------------------------------------------------------


@pytest.mark.usefixtures("real_calls_allowed")
@pytest.mark.parametrize(
    "llm",
    [
        pytest.param(lambda: OpenAIChat("gpt-4o-mini"), id="openai"),
        pytest.param(
            lambda: LiteLLM("anthropic/claude-sonnet-4-20250514", api_base=NOWHERE),
            id="litellm",
        ),
    ],
)
async def test_a_missing_key_fails_the_kickoff_before_the_run_is_recorded_or_announced(
    llm: object,
) -> None:
    store = MemoryStore()
    crew = crew_on(llm(), store)  # type: ignore[operator]

    with capture_events() as captured, pytest.raises(CredentialsError) as info:
        await crew.kickoff()

    assert isinstance(info.value, ConfigurationError)
    assert str(info.value).startswith("no API key for ")
    assert await store.list_runs() == []
    assert captured.events == []


async def test_a_missing_key_of_a_fallback_agent_is_found_before_the_run_too() -> None:
    store = MemoryStore()
    backup = Agent(role="Backup", goal="Write", llm=LiteLLM("anthropic/claude-x", api_base=NOWHERE))
    task = Task("Write", agent=Agent(role="Writer", goal="Write"), fallback_agent=backup)
    crew = Crew(tasks=[task], store=store)

    with pytest.raises(CredentialsError, match="'anthropic/claude-x'"):
        await crew.kickoff()

    assert await store.list_runs() == []


async def test_a_missing_key_of_a_hierarchical_manager_is_found_before_the_run_too() -> None:
    store = MemoryStore()
    manager = Agent(
        role="Manager", goal="Plan", llm=LiteLLM("anthropic/claude-x", api_base=NOWHERE)
    )
    writer = Agent(role="Writer", goal="Write")
    crew = Crew(
        tasks=[Task("Write", agent=writer)], process="hierarchical", manager=manager, store=store
    )

    with pytest.raises(CredentialsError, match="'anthropic/claude-x'"):
        await crew.kickoff()

    assert await store.list_runs() == []


async def test_resuming_without_the_key_leaves_the_record_as_it_was(
    server: OpenAIServer, monkeypatch: pytest.MonkeyPatch, fake_clock: FakeClock
) -> None:
    store = MemoryStore()
    crew = crew_on(LiteLLM("openai/test-model", api_base=server.base_url), store)
    monkeypatch.setenv("OPENAI_API_KEY", FAKE)
    server.enqueue(Text("one"), Error(400, "bad request"))
    with pytest.raises(TaskFailed) as failed:
        await crew.kickoff()
    run_id = failed.value.run_id
    assert run_id is not None
    before = await store.get_run(run_id)
    monkeypatch.delenv("OPENAI_API_KEY")

    with pytest.raises(CredentialsError, match="OPENAI_API_KEY"):
        await crew.resume(run_id)

    assert await store.get_run(run_id) == before  # not reopened, not ended again
    assert server.count == 2


async def test_a_started_run_without_a_key_fails_its_handle_with_nothing_recorded() -> None:
    store = MemoryStore()
    crew = crew_on(LiteLLM("anthropic/claude-x", api_base=NOWHERE), store)

    handle = crew.start()
    with pytest.raises(CredentialsError):
        await handle.result()

    assert handle.status == RunStatus.FAILED
    assert await store.list_runs() == []


# -- a refused key ------------------------------------------------------------------------------


async def test_a_key_refused_on_the_first_call_ends_the_run_as_the_credentials_error(
    server: OpenAIServer, fake_clock: FakeClock
) -> None:
    server.enqueue(Error(401, "Incorrect API key provided"))
    store = MemoryStore()
    crew = crew_on(OpenAIChat("test-model", base_url=server.base_url, api_key=FAKE), store)

    with pytest.raises(CredentialsError) as info:
        await crew.kickoff()

    error = info.value
    assert isinstance(error, ConfigurationError)
    assert str(error).startswith("the API key for 'openai/test-model' was refused (HTTP 401")
    assert (error.status_code, dict(error.outputs)) == (401, {})
    # The call was made, so the run is recorded as it went: failed, with its refused attempt.
    (record,) = await store.list_runs()
    assert (record.run_id, record.status) == (error.run_id, RunStatus.FAILED)
    (attempt,) = await store.attempts(record.run_id)
    assert attempt.error_type == "CredentialsError"
    assert server.count == 1  # never retried


async def test_a_key_refused_after_a_task_finished_fails_the_task_and_keeps_the_output(
    server: OpenAIServer, fake_clock: FakeClock
) -> None:
    server.enqueue(Text("first part"), Error(401, "key revoked"))
    crew = crew_on(OpenAIChat("m", base_url=server.base_url, api_key=FAKE), MemoryStore())

    with pytest.raises(TaskFailed) as info:
        await crew.kickoff()

    assert isinstance(info.value.cause, CredentialsError)
    assert list(info.value.outputs) == ["part0"]


async def test_with_on_failure_continue_every_task_refused_is_the_credentials_error(
    server: OpenAIServer, fake_clock: FakeClock
) -> None:
    server.enqueue(Error(401), Error(401))
    llm = OpenAIChat("m", base_url=server.base_url, api_key=FAKE)
    crew = crew_on(llm, MemoryStore(), process="parallel", on_failure="continue")

    with pytest.raises(CredentialsError):
        await crew.kickoff()


async def test_a_refusal_beside_another_failure_stays_a_partial_failure(
    server: OpenAIServer, fake_clock: FakeClock
) -> None:
    server.enqueue(Error(401), Error(400))
    llm = OpenAIChat("m", base_url=server.base_url, api_key=FAKE)
    crew = crew_on(llm, MemoryStore(), process="parallel", on_failure="continue")

    with pytest.raises(CrewPartialFailure) as info:
        await crew.kickoff()

    causes = sorted(type(failure.cause).__name__ for failure in info.value.failures.values())
    assert causes == ["CredentialsError", "LLMError"]
