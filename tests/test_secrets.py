"""Secrets never leave the process: an API key, and credentials in the base URL, appear in no
record, CLI output, log line, event or exception, whatever the provider echoes back."""

from __future__ import annotations

import json
import logging
import traceback
from typing import TYPE_CHECKING

import anyio
import pytest
import structlog
from typer.testing import CliRunner

from crewflow import Agent, Crew, Limit, Limits, Task, cli
from crewflow.exceptions import LLMError, TaskFailed
from crewflow.llm import LiteLLM, LLMRequest, Message, OpenAIChat
from crewflow.llm._redact import public_url, redact, scrub, url_secrets
from crewflow.store import default_store_path
from crewflow.testing import Error, OpenAIServer, Text, capture_events

if TYPE_CHECKING:
    from crewflow.testing import FakeClock

KEY = "sk-canary-key-4c1d9e7a2b"
URL_SECRET = "canary-url-password-8f2e6b"


def chain(error: BaseException) -> list[BaseException]:
    """``error`` and every exception reachable from it as cause or context."""
    found: list[BaseException] = []
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is None or any(current is seen for seen in found):
            continue
        found.append(current)
        pending += [current.__cause__, current.__context__]
        pending += [getattr(current, name, None) for name in ("cause",)]
    return found


def exposed(error: BaseException) -> str:
    """Everything an exception shows: each chained error's str, repr and public attributes,
    and the formatted traceback."""
    parts = ["".join(traceback.format_exception(error))]
    for each in chain(error):
        parts += [str(each), repr(each)]
        parts += [repr(value) for name, value in vars(each).items() if not name.startswith("__")]
    return "\n".join(parts)


async def cli_output(*args: str) -> str:
    """What a ``crewflow`` command prints (run in a thread: the CLI starts its own loop)."""
    runner = CliRunner()
    result = await anyio.to_thread.run_sync(
        lambda: runner.invoke(cli.app, list(args), env={"COLUMNS": "120"})
    )
    assert result.exit_code == 0, result.output
    return result.output


async def test_credentials_in_the_base_url_and_the_key_appear_nowhere(
    server: OpenAIServer,
    fake_clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    base_url = server.base_url.replace("http://", f"http://crew:{URL_SECRET}@")
    monkeypatch.setenv("OPENAI_BASE_URL", base_url)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    caplog.set_level(logging.DEBUG)
    echo = f"rejected {KEY} from {base_url} (password {URL_SECRET})"
    # Every error echoes every secret; the rpm limit, declared under the URL as the user has
    # it, makes calls wait (recorded, under the endpoint's limit key).
    server.enqueue(Error(429, echo, retry_after=3.0), Error(500, echo), Text("facts"))
    server.enqueue(Error(400, echo))
    agent = Agent(role="Researcher", goal="Find facts", llm=OpenAIChat("loop-model"))
    crew = Crew(
        tasks=[Task("Collect facts", agent=agent), Task("Write", agent=agent, context=[])],
        limits=Limits({f"openai|{base_url}|loop-model": Limit(rpm=60, burst=1)}),
    )

    with (
        structlog.testing.capture_logs() as logs,
        capture_events() as events,
        pytest.raises(TaskFailed) as caught,
    ):
        await crew.kickoff()

    error = caught.value
    assert isinstance(error.cause, LLMError)
    assert error.cause.status_code == 400
    assert all(request.has_auth for request in server.requests)
    run = error.run_id
    record = json.loads(await cli_output("show", run, "--json", "--prompts"))
    waits = [wait for attempt in record["attempts"] for wait in attempt["limit_waits"]]
    assert f"rpm:openai|{server.base_url}|loop-model" in waits
    shown = [
        default_store_path().read_bytes().decode("utf-8", "replace"),
        json.dumps(record),
        await cli_output("show", run, "--full", "--prompts"),
        await cli_output("optimize"),
        await cli_output("optimize", "--json"),
        await cli_output("runs", "--json"),
        caplog.text,
        repr(logs),
        repr(events),
        exposed(error),
        repr(crew),
    ]
    for text in shown:
        assert KEY not in text
        assert URL_SECRET not in text


async def test_the_sdks_response_is_not_kept_in_the_error_chain(server: OpenAIServer) -> None:
    llm = OpenAIChat("loop-model", base_url=server.base_url, api_key=KEY)
    server.enqueue(Error(503, f"upstream said {KEY}"))

    with pytest.raises(LLMError) as caught:
        await llm.complete(LLMRequest([Message("user", "hi")]))

    error = caught.value
    assert error.status_code == 503
    assert error.__cause__ is None
    assert error.__context__ is None
    assert KEY not in exposed(error)


async def test_litellm_errors_keep_neither_the_sdks_exception_nor_the_key(
    server: OpenAIServer,
) -> None:
    # (A base URL with credentials cannot be used with LiteLLM: aiohttp refuses to send them
    # beside the key's header.)
    llm = LiteLLM("openai/loop-model", api_base=server.base_url, api_key=KEY, timeout=10)
    server.enqueue(Error(400, f"bad request with {KEY}"))

    with pytest.raises(LLMError) as caught:
        await llm.complete(LLMRequest([Message("user", "hi")]))

    error = caught.value
    assert error.status_code == 400
    assert (error.__cause__, error.__context__) == (None, None)
    assert KEY not in exposed(error)


# -- the helpers ------------------------------------------------------------------------------


def test_public_url_drops_userinfo_and_masks_secret_query_values() -> None:
    url = "https://me:p%40ss-word@proxy.example:8443/v1?API_KEY=abc123&v=2&sig=zz99"
    assert public_url(url) == "https://proxy.example:8443/v1?API_KEY=***&v=2&sig=***"
    assert public_url("http://127.0.0.1:8000/v1") == "http://127.0.0.1:8000/v1"
    assert public_url("https://TOKEN1234@host/v1") == "https://host/v1"


def test_url_secrets_are_the_password_or_lone_user_and_secret_query_values() -> None:
    url = "https://me:p%40ss-word@proxy.example/v1?token=t0k3n-value&v=2"
    assert set(url_secrets(url)) == {"p%40ss-word", "p@ss-word", "t0k3n-value"}
    assert url_secrets("https://TOKEN1234@host/v1") == ("TOKEN1234",)
    assert url_secrets("http://127.0.0.1:8000/v1") == ()
    assert url_secrets(None) == ()


def test_scrub_takes_credentials_out_of_any_url_in_a_text() -> None:
    text = "GET http://u:hunter22@h/v1?x=1&access_token=abcd failed"
    assert scrub(text, ()) == "GET http://h/v1?x=1&access_token=*** failed"


def test_recorded_text_loses_the_url_secrets_and_nothing_else() -> None:
    llm = OpenAIChat("m", base_url=f"http://user:{URL_SECRET}@h/v1", api_key=KEY)
    assert llm.redact(f"user {KEY} {URL_SECRET} sk-not-ours") == "user *** *** sk-not-ours"
    assert redact("nothing here", ()) == "nothing here"


def test_limit_keys_and_reprs_leave_the_credentials_out() -> None:
    openai = OpenAIChat("m", base_url=f"http://user:{URL_SECRET}@h/v1?api_key={KEY}")
    litellm = LiteLLM("openai/m", api_base=f"http://user:{URL_SECRET}@h:4000")
    assert openai.limit_key == "openai|http://h/v1?api_key=***|m"
    assert litellm.limit_key == "litellm|http://h:4000|openai/m"
    assert litellm.redact(URL_SECRET) == "***"
    for text in (repr(openai), repr(litellm)):
        assert URL_SECRET not in text
        assert KEY not in text


def test_limits_declared_under_a_url_with_credentials_apply_without_them() -> None:
    limits = Limits({f"openai|http://user:{URL_SECRET}@h/v1|m": Limit(rpm=60)})
    assert list(limits) == ["openai|http://h/v1|m"]
    assert URL_SECRET not in repr(limits)
    with pytest.raises(ValueError, match="given twice"):
        Limits({"openai|http://a:b1234@h/v1|m": Limit(), "openai|http://h/v1|m": Limit()})
