"""The provider fault matrix: one-task crews against the loopback server, one fault per case.

Each case scripts the server's replies for its requests, runs a crew of one task through a real
client (`OpenAIChat`, and `LiteLLM`'s ``openai/`` route where that costs little), and reports
what happened in the same words as what was expected, with the requests the server received and
the time the run took. Waits are kept short (Retry-After of a fraction of a second, client
timeouts of 1 s, backoff from 0.05 s), so that the whole matrix runs in seconds.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel

from crewflow import Agent, Crew, Task, tool
from crewflow.events import LLMCallRetrying, TaskRetrying
from crewflow.exceptions import CrewflowError, LLMError, TaskFailed
from crewflow.llm import LLM, LiteLLM, OpenAIChat
from crewflow.retry import RetryPolicy
from crewflow.testing import (
    Cut,
    Disconnect,
    Error,
    Malformed,
    OpenAIServer,
    Reply,
    Slow,
    Text,
    ToolCall,
    ToolCalls,
    capture_events,
    reset_limits,
)
from tests import canary
from tests.reliability.table import Section

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

Client = Literal["openai", "litellm"]

API_KEY = canary.KEY  # the session's canary: no row, report or record may show it
# A call that stalls times out after this many seconds: short, yet far above what a loopback
# reply takes on a loaded machine, so that only the stalled call times out.
CLIENT_TIMEOUT = 1.0
RETRY = RetryPolicy(max_attempts=3, initial=0.05, max=2.0, jitter=False)
VALID = '{"label": "good", "score": 3}'
TRUNCATED = '{"label": "go'
NEVER_VALID = '{"label": "unsure", "score": "high"}'


class Verdict(BaseModel):
    """The structured output of the cases that ask for one."""

    label: Literal["good", "bad"]
    score: int


@tool
def lookup(term: str) -> str:
    """Look a term up.

    Args:
        term: What to look up.
    """
    return f"definition of {term}"


def _in_a_second() -> Reply:
    # An HTTP date has whole seconds: a second from now waits between 0 and 1 s.
    return Error(429, retry_after=datetime.now(UTC) + timedelta(seconds=1))


@dataclass(frozen=True)
class Case:
    """One fault: the replies the server gives, and the outcome crewflow must reach.

    Attributes:
        name: What the fault is, as the table shows it.
        replies: The scripted replies, in order (a callable is called when the case runs);
            requests past them get the server's default reply.
        expected: The outcome, in the words `describe` uses.
        stream: Whether the task streams its answer.
        structured: Whether the task asks for a `Verdict`.
        tools: Whether the agent has the ``lookup`` tool.
        timeout: The client's timeout in seconds.
        refused: Whether nothing listens at the base URL (a connection refused).
        clients: The clients the case runs through.
        litellm: What `LiteLLM` is expected to do where it differs from `OpenAIChat`.
    """

    name: str
    replies: Sequence[Reply | Callable[[], Reply]]
    expected: str
    stream: bool = False
    structured: bool = False
    tools: bool = False
    timeout: float = 10.0
    refused: bool = False
    clients: tuple[Client, ...] = ("openai", "litellm")
    litellm: str | None = None

    def expected_of(self, client: Client) -> str:
        """The outcome expected through ``client``."""
        return self.litellm if client == "litellm" and self.litellm is not None else self.expected


WARM_UP = Case("no fault", [], "completed")
CASES: tuple[Case, ...] = (
    Case("429 without Retry-After", [Error(429)], "completed after 1 retry"),
    Case("429, Retry-After: 1 (seconds)", [Error(429, retry_after=1)], "completed after 1 retry"),
    Case("429, retry-after-ms: 200", [Error(429, retry_after_ms=200)], "completed after 1 retry"),
    Case("429, Retry-After as an HTTP date", [_in_a_second], "completed after 1 retry"),
    Case("408 request timeout", [Error(408)], "completed after 1 retry"),
    Case("409 conflict", [Error(409)], "completed after 1 retry"),
    Case("500 internal error", [Error(500)], "completed after 1 retry"),
    Case("502 bad gateway", [Error(502)], "completed after 1 retry"),
    Case("503 unavailable", [Error(503)], "completed after 1 retry"),
    Case("529 overloaded", [Error(529)], "completed after 1 retry"),
    Case("500 on every request", [Error(500)] * 3, "TaskFailed: LLMError 500 after 3 tries"),
    Case("connection refused", [], "TaskFailed: LLMError (no status) after 3 tries", refused=True),
    Case("connection dropped before a reply", [Disconnect()], "completed after 1 retry"),
    Case(
        "connection reset mid-reply",
        [Cut(Text("a reply that breaks off"), keep=40, then="reset")],
        "completed after 1 retry",
    ),
    Case(
        "connection reset mid-stream",
        [Cut(Text("a reply that breaks off"), keep=3, then="reset")],
        "completed after 1 retry",
        stream=True,
    ),
    Case(
        "plain reply never completes",
        [Cut(Text("a reply that never ends"), keep=40, then="stall")],
        "completed after 1 retry",
        timeout=CLIENT_TIMEOUT,
    ),
    Case(
        "no reply at all",
        [Slow(60, Text("too late"))],
        "completed after 1 retry",
        timeout=CLIENT_TIMEOUT,
    ),
    Case(
        "stream stalls",
        [Cut(Text("a stream that stalls"), keep=3, then="stall")],
        "completed after 1 retry",
        stream=True,
        timeout=CLIENT_TIMEOUT,
    ),
    Case(
        "truncated SSE stream (no finish, no [DONE])",
        [Cut(Text("a stream cut short"), keep=3, then="end")],
        "completed after 1 retry",
        stream=True,
    ),
    Case("malformed JSON body", [Malformed()], "completed after 1 retry"),
    Case("malformed SSE event", [Malformed()], "completed after 1 retry", stream=True),
    Case(
        "invalid tool-call arguments",
        [ToolCalls([ToolCall("lookup", '{"term": ')]), Text("answered after the tool error")],
        "completed in 2 requests",
        tools=True,
    ),
    Case(
        "structured output invalid once",
        [Text(NEVER_VALID), Text(VALID)],
        "completed in 2 requests",
        structured=True,
    ),
    Case(
        "structured output never validates",
        [Text(NEVER_VALID)] * 3,
        "TaskFailed: OutputValidationError after 3 requests",
        structured=True,
    ),
    Case(
        "finish_reason=length cuts structured output",
        [Text(TRUNCATED, finish_reason="length")] * 3,
        "TaskFailed: OutputValidationError after 3 requests",
        structured=True,
    ),
    Case(
        "refusal of structured output",
        [Text("", refusal="I can't help with that.")] * 3,
        "TaskFailed: OutputValidationError after 3 requests",
        structured=True,
    ),
    Case(
        "content filter",
        [Text("", finish_reason="content_filter")],
        "completed with empty text",
    ),
    Case("400 bad request", [Error(400)], "TaskFailed: LLMError 400, not retried"),
    Case("401 invalid key", [Error(401)], "CredentialsError 401, not retried"),
)


@dataclass
class Outcome:
    """What one case did.

    Attributes:
        happened: The outcome, in the words of `Case.expected`.
        requests: Chat requests the server received.
        seconds: How long the kickoff took.
        detail: The error message, if the run failed (for a reader, never compared).
    """

    happened: str
    requests: int
    seconds: float
    detail: str = field(default="")


def describe(error: BaseException | None, requests: int, retries: int, text: str = "x") -> str:
    """Say what a run did, in the words the cases expect.

    Args:
        error: What the kickoff raised, None if it completed.
        requests: Chat requests the server received.
        retries: Provider calls retried (`LLMCallRetrying` events) and task attempts retried.
        text: The answer of a completed run.
    """
    if error is None:
        if retries:
            done = f"completed after {_plural(retries, 'retry', 'retries')}"
        else:
            done = f"completed in {requests} requests" if requests > 1 else "completed"
        return done if text else done + " with empty text"
    cause = error.cause if isinstance(error, TaskFailed) else error
    prefix = "TaskFailed: " if isinstance(error, TaskFailed) else ""
    name = type(cause).__name__
    if isinstance(cause, LLMError):
        status = str(cause.status_code) if cause.status_code is not None else "(no status)"
        if not retries:
            return f"{prefix}{name} {status}, not retried"
        return f"{prefix}{name} {status} after {retries + 1} tries"
    return f"{prefix}{name} after {requests} requests"


def _plural(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def _closed_port() -> int:
    # Bound and closed again: nothing listens there, so a connection is refused.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _llm(client: Client, base_url: str, timeout: float) -> LLM:
    if client == "openai":
        return OpenAIChat("matrix-model", base_url=base_url, api_key=API_KEY, timeout=timeout)
    return LiteLLM("openai/matrix-model", api_base=base_url, api_key=API_KEY, timeout=timeout)


def _crew(case: Case, llm: LLM) -> Crew:
    tools = [lookup] if case.tools else []
    agent = Agent(role="Analyst", goal="Answer", llm=llm, tools=tools, stream=case.stream)
    output_model = Verdict if case.structured else None
    task = Task("Judge the report", agent=agent, output_model=output_model, retry=RETRY)
    return Crew(tasks=[task], store=None)


async def run_case(case: Case, client: Client) -> Outcome:
    """Run one case through one client against a fresh loopback server."""
    reset_limits()  # Breakers and Retry-After pauses are per process: each case starts clean.
    async with OpenAIServer() as server:
        server.enqueue(*(reply() if callable(reply) else reply for reply in case.replies))
        base_url = f"http://127.0.0.1:{_closed_port()}/v1" if case.refused else server.base_url
        crew = _crew(case, _llm(client, base_url, case.timeout))
        error: BaseException | None = None
        text = ""
        with capture_events() as captured:
            started = time.perf_counter()
            try:
                text = (await crew.kickoff()).output.text
            except CrewflowError as exc:
                error = exc
            seconds = time.perf_counter() - started
        retries = len(captured.of_type(LLMCallRetrying)) + len(captured.of_type(TaskRetrying))
        happened = describe(error, server.count, retries, text)
        return Outcome(happened, server.count, seconds, "" if error is None else str(error))


CLIENT_NAMES: dict[Client, str] = {"openai": "OpenAIChat", "litellm": "LiteLLM"}


async def provider_matrix(clients: Sequence[Client] = ("openai", "litellm")) -> Section:
    """Run every case through every client it names; one row per case and client."""
    for client in clients:
        # Unreported: the first call imports the client's SDK, which no case should pay for.
        await run_case(WARM_UP, client)
    rows = []
    for case in CASES:
        for client in case.clients:
            if client not in clients:
                continue
            outcome = await run_case(case, client)
            rows.append(
                (
                    case.name,
                    CLIENT_NAMES[client],
                    case.expected_of(client),
                    outcome.happened,
                    str(outcome.requests),
                    f"{outcome.seconds:.2f} s",
                )
            )
    return Section(
        key="provider-matrix",
        title="Provider fault matrix",
        columns=("fault", "client", "expected", "what happened", "requests", "time"),
        varying=frozenset({"time"}),
        rows=rows,
    )
