"""Logging: quiet by default for applications that never configured structlog, through structlog
with the run's context when they did."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import pytest
import structlog
from structlog.testing import capture_logs

from crewflow import Agent, Crew, RetryPolicy, Task
from crewflow._logging import LEVEL_ENV, _level, get_logger
from crewflow.events import RunStarted
from crewflow.exceptions import TaskFailed
from crewflow.testing import Error, ScriptedLLM, capture_events

if TYPE_CHECKING:
    from collections.abc import Iterator

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
