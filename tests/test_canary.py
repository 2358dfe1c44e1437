"""The session's secrets canary (`tests.canary`) sees a secret wherever one would leak: a log
call below the level filter, an event, a run error, a CLI output, a store file. Each test here
watches for a decoy of its own, so that the session's canary stays clean."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import pytest
from typer.testing import CliRunner

from crewflow import Agent, Crew, Task, cli
from crewflow.exceptions import TaskFailed
from crewflow.llm import OpenAIChat
from crewflow.testing import FunctionLLM, OpenAIServer, capture_events
from tests import canary

if TYPE_CHECKING:
    from pathlib import Path

DECOY = "sk-decoy-never-a-real-key-51f0"


def leaking_crew(tmp_path: Path) -> Crew:
    def reply(*_: object) -> str:
        raise RuntimeError(f"the provider echoed {DECOY}")

    agent = Agent(role="R", goal="G", llm=FunctionLLM(reply))
    return Crew(tasks=[Task("Say hi", agent=agent)], store=None)


async def test_a_run_error_and_its_events_that_echo_a_secret_are_found(tmp_path: Path) -> None:
    watcher = canary.Canary((DECOY,))

    with watcher.install(), capture_events(), pytest.raises(TaskFailed):
        await leaking_crew(tmp_path).kickoff()

    places = "\n".join(watcher.findings)
    assert "error TaskFailed" in places
    assert "event task_failed" in places or "event task_retried" in places


def test_a_log_call_below_the_level_filter_is_read() -> None:
    import crewflow._runtime.run

    watcher = canary.Canary((DECOY,))

    with watcher.install():
        # Unconfigured structlog drops debug calls: the canary reads them before the filter.
        crewflow._runtime.run.get_logger(run_id="r").debug("calling", key=DECOY)
        logging.getLogger("some.library").warning("sent %s", DECOY)

    assert [finding.split(": ", 1)[1].split(" holds")[0] for finding in watcher.findings] == [
        "log call debug",
        "log record of some.library",
    ]


def test_cli_outputs_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    watcher = canary.Canary((DECOY,))

    with watcher.install():
        CliRunner().invoke(cli.app, ["show", DECOY])

    assert any("CLI output" in finding for finding in watcher.findings)


def test_store_files_are_read_byte_by_byte(tmp_path: Path) -> None:
    watcher = canary.Canary((DECOY,))
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "runs.db-wal").write_bytes(b"\x00\x01" + DECOY.encode() + b"\xff")
    (tmp_path / "crew.py").write_text(f"KEY = {DECOY!r}")  # a test's own source is no store

    watcher.check_files(tmp_path)

    assert len(watcher.findings) == 1
    assert "runs.db-wal" in watcher.findings[0]


def test_the_canary_is_unique_to_the_session_and_reaches_the_servers_clients() -> None:
    assert canary.KEY.startswith("sk-canary-")
    assert canary.KEY not in os.environ.get("OPENAI_API_KEY", "")
    url = canary.with_userinfo("http://127.0.0.1:8000/v1")
    assert url == f"http://crew:{canary.URL_SECRET}@127.0.0.1:8000/v1"


async def test_clients_of_the_server_fixture_run_with_the_canary(server: OpenAIServer) -> None:
    agent = Agent(role="R", goal="G", llm=OpenAIChat("loop-model"))  # configured from the env
    crew = Crew(tasks=[Task("Say hi", agent=agent)], store=None)

    result = await crew.kickoff()

    assert result.output.text
    assert os.environ["OPENAI_API_KEY"] == canary.KEY
    assert canary.URL_SECRET in os.environ["OPENAI_BASE_URL"]
    assert [request.has_auth for request in server.requests] == [True]
