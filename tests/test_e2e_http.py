"""Whole crews over a real socket: the openai and litellm clients against the loopback server."""

from __future__ import annotations

import json
from typing import Literal

import pytest
import structlog
from pydantic import BaseModel

from crewflow import Agent, Crew, Task, tool
from crewflow.exceptions import ConfigurationError, CredentialsError, LLMError, TaskFailed
from crewflow.llm import LiteLLM, OpenAIChat
from crewflow.testing import (
    Error,
    FakeClock,
    OpenAIServer,
    Text,
    ToolCall,
    ToolCalls,
    capture_events,
)
from tests import canary

CANARY = canary.KEY  # the session's canary: every use of it is scanned (tests/canary.py)


class Verdict(BaseModel):
    label: Literal["good", "bad"]
    score: int


@tool
async def lookup(term: str) -> str:
    """Look a term up.

    Args:
        term: What to look up.
    """
    return f"definition of {term}"


def agent_on(server: OpenAIServer, **kwargs: object) -> Agent:
    llm = OpenAIChat("loop-model", base_url=server.base_url, api_key=CANARY)
    return Agent(role="Researcher", goal="Find facts", llm=llm, **kwargs)  # type: ignore[arg-type]


async def test_a_sequential_crew_runs_over_http_with_context_chained(
    server: OpenAIServer,
) -> None:
    agent = agent_on(server)
    crew = Crew(tasks=[Task("First about {topic}", agent=agent), Task("Second", agent=agent)])

    result = await crew.kickoff(inputs={"topic": "tides"})

    assert server.count == 2
    first, second = server.requests
    assert first.messages[0]["role"] == "system"
    assert "First about tides" in first.messages[-1]["content"]
    # The second task's prompt carries the first task's answer as context.
    assert result["task_1"].text in second.messages[-1]["content"]
    assert result.usage.requests == 2
    assert result.usage.prompt_tokens > 0


async def test_tool_calls_round_trip_over_http(server: OpenAIServer) -> None:
    server.enqueue(ToolCalls([ToolCall("lookup", {"term": "ebb"})]), Text("ebb is outgoing"))
    crew = Crew(tasks=[Task("Define ebb", agent=agent_on(server, tools=[lookup]))])

    result = await crew.kickoff()

    assert result.output.text == "ebb is outgoing"
    assert server.requests[0].tools is not None
    assert server.requests[0].tools[0]["function"]["name"] == "lookup"
    tool_message = server.requests[1].messages[-1]
    assert tool_message["role"] == "tool"
    assert tool_message["content"] == "definition of ebb"


async def test_structured_output_uses_the_json_schema_response_format(
    server: OpenAIServer,
) -> None:
    crew = Crew(tasks=[Task("Judge it", agent=agent_on(server), output_model=Verdict)])

    result = await crew.kickoff()

    assert isinstance(result.output.data, Verdict)
    response_format = server.requests[0].response_format
    assert response_format is not None
    assert response_format["type"] == "json_schema"
    assert response_format["json_schema"]["schema"]["properties"]["label"]["enum"] == [
        "good",
        "bad",
    ]


async def test_429_with_retry_after_is_waited_out_then_retried(
    server: OpenAIServer, fake_clock: FakeClock
) -> None:
    server.enqueue(Error(429, retry_after=4.0), Text("after the pause"))
    crew = Crew(tasks=[Task("Go", agent=agent_on(server))])

    result = await crew.kickoff()

    assert result.output.text == "after the pause"
    assert server.count == 2
    assert len(fake_clock.sleeps) == 1
    assert fake_clock.sleeps[0] >= 4.0
    assert result.timeline[0].attempts[0].llm_retries == 1
    assert result.usage.requests == 2


async def test_5xx_is_retried_with_backoff(server: OpenAIServer, fake_clock: FakeClock) -> None:
    server.enqueue(Error(500), Error(503), Text("third time lucky"))
    crew = Crew(tasks=[Task("Go", agent=agent_on(server))])

    result = await crew.kickoff()

    assert result.output.text == "third time lucky"
    assert server.count == 3
    assert len(fake_clock.sleeps) == 2


async def test_401_fails_at_once_and_the_key_never_leaks(
    server: OpenAIServer, fake_clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    # The body echoes the key, as OpenAI's 401 does.
    server.enqueue(Error(401, message=f"Incorrect API key provided: {CANARY}"))
    agent = agent_on(server)
    done = Task("Fine", agent=Agent(role="Local", goal="Answer"))
    crew = Crew(tasks=[done, Task("Go", agent=agent)], agents=[agent])

    with capture_events() as captured, pytest.raises(TaskFailed) as caught:
        await crew.kickoff()

    error = caught.value
    assert server.count == 1
    assert fake_clock.sleeps == []
    assert isinstance(error.cause, LLMError)
    assert error.cause.status_code == 401
    assert not error.cause.retryable
    assert list(error.outputs) == ["task_1"]
    seen = [
        str(error),
        repr(error),
        str(error.cause),
        repr(agent),
        repr(agent.llm),
        repr(crew),
        capsys.readouterr().err,
        json.dumps([event.model_dump(mode="json") for event in captured.events]),
        repr(server.requests),
    ]
    assert all(CANARY not in text for text in seen)
    assert not any("canary" in text for text in seen)


async def test_the_key_is_not_logged_when_the_application_configured_structlog(
    server: OpenAIServer, fake_clock: FakeClock
) -> None:
    server.enqueue(Error(500, message=CANARY), Error(401, message=CANARY))
    crew = Crew(tasks=[Task("Go", agent=agent_on(server))], verbose=True)

    # Refused before anything finished: the run ends as the configuration problem it is.
    with structlog.testing.capture_logs() as logs, pytest.raises(CredentialsError):
        await crew.kickoff()

    assert logs  # the retry and the failure were logged
    assert CANARY not in repr(logs)


async def test_litellm_client_runs_a_crew_over_http(server: OpenAIServer) -> None:
    server.enqueue(
        ToolCalls([ToolCall("lookup", {"term": "flood"})]),
        Text("flood is incoming"),
    )
    llm = LiteLLM("openai/loop-model", api_base=server.base_url, api_key=CANARY)
    agent = Agent(role="Researcher", goal="Find facts", llm=llm, tools=[lookup])

    result = await Crew(tasks=[Task("Define flood", agent=agent)]).kickoff()

    assert result.output.text == "flood is incoming"
    assert server.count == 2
    assert server.requests[1].messages[-1]["content"] == "definition of flood"


async def test_litellm_429_is_retried_by_the_runtime(
    server: OpenAIServer, fake_clock: FakeClock
) -> None:
    server.enqueue(Error(429, retry_after=2.0), Text("done"))
    llm = LiteLLM("openai/loop-model", api_base=server.base_url, api_key=CANARY)
    agent = Agent(role="Researcher", goal="Find facts", llm=llm)

    result = await Crew(tasks=[Task("Go", agent=agent)]).kickoff()

    assert result.output.text == "done"
    assert server.count == 2
    assert fake_clock.sleeps
    assert fake_clock.sleeps[0] >= 2.0


async def test_kickoff_llm_override_sends_every_agent_to_the_given_model(
    server: OpenAIServer,
) -> None:
    offline = Agent(role="Writer", goal="Write")
    crew = Crew(tasks=[Task("One", agent=offline), Task("Two", agent=offline)])

    override = OpenAIChat("override-model", base_url=server.base_url, api_key=CANARY)
    result = await crew.kickoff(llm=override)

    assert server.count == 2
    assert {r.model for r in server.requests} == {"override-model"}
    assert result.output.model == "openai/override-model"


async def test_forbidden_real_calls_fail_at_kickoff_before_any_task_runs() -> None:
    local = Agent(role="Local", goal="Answer")
    remote = Agent(role="Remote", goal="Answer", llm="openai/gpt-4o-mini")
    crew = Crew(tasks=[Task("First", agent=local), Task("Second", agent=remote)])

    with capture_events() as captured, pytest.raises(ConfigurationError, match="forbidden"):
        await crew.kickoff()

    assert "task_started" not in captured.kinds
