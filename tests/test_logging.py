"""Logging: quiet by default for applications that never configured structlog, through structlog
with the run's context when they did."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest
import structlog
from structlog.testing import capture_logs

from crewflow import Agent, Crew, RetryPolicy, Task, tool
from crewflow._logging import LEVEL_ENV, _level, get_logger
from crewflow.events import RunStarted
from crewflow.exceptions import TaskFailed, ToolError
from crewflow.testing import Error, ScriptedLLM, ToolCall, ToolCalls, capture_events

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from crewflow.testing import FakeClock


@pytest.fixture(autouse=True)
def unconfigured_structlog() -> Iterator[None]:
    """Each test starts with structlog as an application that never configured it leaves it."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


def crew(*script: object, verbose: bool = False, retry: RetryPolicy | None = None) -> Crew:
    agent = Agent(role="Researcher", goal="G", llm=ScriptedLLM(list(script)))  # type: ignore[arg-type]
    return Crew(
        tasks=[Task("Find facts", agent=agent, name="facts")],
        verbose=verbose,
        retry=retry or RetryPolicy(),
    )


async def test_a_failing_task_logs_an_error_line_to_stderr(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with capture_events() as captured, pytest.raises(TaskFailed):
        await crew(Error(400)).kickoff()

    run_id = captured.of_type(RunStarted)[0].run_id
    lines = capsys.readouterr().err.splitlines()
    errors = [line for line in lines if "task failed" in line]
    assert len(errors) == 1
    assert "[error" in errors[0]
    assert f"run_id={run_id}" in errors[0]
    assert "task=facts" in errors[0]
    assert "agent=Researcher" in errors[0]
    assert "HTTP 400" in errors[0]
    assert not any("task started" in line for line in lines)


async def test_an_unconfigured_successful_run_writes_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    await crew("ok").kickoff()

    captured = capsys.readouterr()
    assert captured.err == ""
    assert captured.out == ""
    assert not structlog.is_configured()  # crewflow never configures structlog itself


async def test_verbose_writes_progress_at_info(capsys: pytest.CaptureFixture[str]) -> None:
    result = await crew("ok", verbose=True).kickoff()

    err = capsys.readouterr().err
    for message in ("run started", "task started", "task finished", "run finished"):
        assert message in err
    assert f"run_id={result.run_id}" in err
    assert "[info" in err


async def test_the_level_variable_turns_info_on(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(LEVEL_ENV, "info")

    await crew("ok").kickoff()

    assert "task started" in capsys.readouterr().err


async def test_the_level_variable_can_quiet_warnings_but_not_errors(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, fake_clock: FakeClock
) -> None:
    monkeypatch.setenv(LEVEL_ENV, "ERROR")
    flaky = RetryPolicy(retry_on=(ValueError,), max_attempts=2)

    with pytest.raises(TaskFailed):
        await crew(ValueError("one"), ValueError("two"), retry=flaky).kickoff()

    err = capsys.readouterr().err
    assert "retrying" not in err
    assert "task failed" in err


async def test_retries_are_warnings_by_default(
    capsys: pytest.CaptureFixture[str], fake_clock: FakeClock
) -> None:
    flaky = RetryPolicy(retry_on=(ValueError,), max_attempts=2)

    await crew(ValueError("flaky"), "ok", retry=flaky).kickoff()

    err = capsys.readouterr().err
    assert "task attempt failed, retrying" in err
    assert "ValueError: flaky" in err
    assert "task started" not in err


async def test_a_configured_structlog_receives_every_line_with_the_run_bound(
    capsys: pytest.CaptureFixture[str], fake_clock: FakeClock
) -> None:
    with capture_logs() as entries:
        result = await crew(Error(503), "ok").kickoff()

    assert capsys.readouterr().err == ""
    events = [entry["event"] for entry in entries]
    assert events[0] == "run started"
    assert "llm call retrying" in events
    assert events[-1] == "run finished"
    assert {entry["run_id"] for entry in entries} == {result.run_id}
    assert {entry["crew"] for entry in entries} == {"test_logging"}  # named after this file
    retry = next(entry for entry in entries if entry["event"] == "llm call retrying")
    assert (retry["task"], retry["status_code"], retry["log_level"]) == ("facts", 503, "info")
    started = next(entry for entry in entries if entry["event"] == "task started")
    assert (started["task"], started["agent"], started["attempt"]) == ("facts", "Researcher", 1)


@pytest.mark.parametrize(
    ("env", "verbose", "level"),
    [
        (None, False, logging.WARNING),
        (None, True, logging.INFO),
        ("DEBUG", False, logging.DEBUG),
        ("error", False, logging.ERROR),
        ("ERROR", True, logging.INFO),
        ("15", False, 15),
        ("LOUD", False, logging.WARNING),
        ("  ", True, logging.INFO),
    ],
)
def test_the_fallback_level_comes_from_verbose_and_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: str | None, verbose: bool, level: int
) -> None:
    if env is not None:
        monkeypatch.setenv(LEVEL_ENV, env)

    assert _level(verbose) == level


def test_the_fallback_logger_filters_below_its_level(capsys: pytest.CaptureFixture[str]) -> None:
    log = get_logger(run_id="r1")

    log.info("quiet")
    log.warning("loud", task="t")

    err = capsys.readouterr().err
    assert "quiet" not in err
    assert "loud" in err
    assert "run_id=r1" in err
    assert "task=t" in err


# -- failed tool calls --------------------------------------------------------------------------

SECRET_ARGUMENT = "an-argument-value-nobody-may-read"


@tool
def lookup(key: str) -> str:
    """Look KEY up."""
    raise KeyError("no such entry")


def tool_crew() -> Crew:
    script = [ToolCalls([ToolCall("lookup", {"key": SECRET_ARGUMENT})]), "gave up"]
    agent = Agent(role="Researcher", goal="G", llm=ScriptedLLM(script), tools=[lookup])
    return Crew(tasks=[Task("Find facts", agent=agent, name="facts")], store=None)


async def test_a_failed_tool_call_is_a_warning_with_its_traceback_and_no_locals(
    capsys: pytest.CaptureFixture[str],
) -> None:
    result = await tool_crew().kickoff()

    err = capsys.readouterr().err
    line = next(line for line in err.splitlines() if "tool call failed" in line)
    assert "[warning" in line
    for field in (f"run_id={result.run_id}", "task=facts", "attempt=1", "tool=lookup"):
        assert field in line
    assert "error_type=KeyError" in line
    # The traceback of what the tool raised, then of the ToolError the model was told...
    assert "Traceback (most recent call last)" in err
    assert "KeyError: 'no such entry'" in err
    assert "ToolError: tool 'lookup' raised KeyError" in err
    # ...without the frames' local variables, which hold the arguments.
    assert SECRET_ARGUMENT not in err


async def test_a_configured_structlog_gets_the_failed_tool_call_with_its_exception() -> None:
    with capture_logs() as entries:
        result = await tool_crew().kickoff()

    (entry,) = [entry for entry in entries if entry["event"] == "tool call failed"]
    assert entry["log_level"] == "warning"
    assert (entry["run_id"], entry["task"], entry["agent"], entry["tool"]) == (
        result.run_id,
        "facts",
        "Researcher",
        "lookup",
    )
    assert isinstance(entry["exc_info"], ToolError)
    assert isinstance(entry["exc_info"].__cause__, KeyError)


async def test_an_agent_run_outside_a_crew_logs_a_failed_tool_call_too() -> None:
    script = [ToolCalls([ToolCall("lookup", {"key": "k"})]), "gave up"]
    agent = Agent(role="Researcher", goal="G", tools=[lookup])

    with capture_logs() as entries:
        await agent.run("Find it", llm=ScriptedLLM(script))

    (entry,) = entries
    assert (entry["event"], entry["log_level"], entry["tool"]) == (
        "tool call failed",
        "warning",
        "lookup",
    )
    assert isinstance(entry["exc_info"], ToolError)


async def test_a_call_of_a_tool_the_agent_lacks_is_a_warning_without_a_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    script = [ToolCalls([ToolCall("nowhere", {})]), "gave up"]
    agent = Agent(role="Researcher", goal="G", llm=ScriptedLLM(script), tools=[lookup])

    await Crew(tasks=[Task("Find facts", agent=agent)], store=None).kickoff()

    err = capsys.readouterr().err
    assert "tool call failed" in err
    assert "error_type=ToolError" in err
    assert "Traceback" not in err  # it would only show crewflow's own frames


# -- what the unconfigured path loads ------------------------------------------------------------

UNCONFIGURED_RUN = """
import sys
from crewflow import Agent, Crew, Task
from crewflow.llm.offline import OfflineLLM

agent = Agent(role="Researcher", goal="G", llm=OfflineLLM())
Crew(tasks=[Task("Find facts", agent=agent)], verbose=True).kickoff_sync()
print(sorted({"structlog", "rich", "colorama"} & set(sys.modules)))
"""


def test_an_unconfigured_run_logs_without_importing_structlog_or_rich(tmp_path: Path) -> None:
    # An application that never imported structlog has not configured it; importing it would
    # import rich (and colorama) as well, a first kickoff's cost for nothing.
    env = {**os.environ, "CREWFLOW_HOME": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", UNCONFIGURED_RUN], capture_output=True, text=True, env=env
    )

    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    assert "run finished" in out.stderr  # verbose lines are written all the same
    assert "[info     ] run started" in out.stderr
