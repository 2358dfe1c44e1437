"""Everything that reads records works from a PostgreSQL URL as from a SQLite file: a crew
records into PostgreSQL, then `crewflow report`, `crewflow dashboard` and `crewflow optimize`
(``--db postgresql://...``) and the adaptive process's history read it back. The URL's password
shows in none of their output."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from typer.testing import CliRunner

from crewflow import Agent, Crew, Task, cli
from crewflow.cli import _dashboard as _dashboard_cli
from crewflow.report._dashboard import COOKIE
from crewflow.store import read_history
from crewflow.store.postgres import PostgresStore
from crewflow.testing import FunctionLLM
from tests.stores import close_default_stores

if TYPE_CHECKING:
    from pathlib import Path

    from click.testing import Result

    from crewflow import CrewResult
    from crewflow.llm import LLMRequest

PASSWORD = "pg-v1ews-canary"  # made up: the test server trusts loopback, so it is sent nowhere
TOKEN = "t" * 32


@pytest.fixture
def url(postgres_url: str) -> str:
    """The test database's URL, with a password in it to look for."""
    return postgres_url.replace("postgres@", f"postgres:{PASSWORD}@", 1)


def answer(request: LLMRequest) -> str:
    """Each task's reply names the task (its description is its name)."""
    return f"notes on {request.messages[-1].content.split()[0]}"


def recorded(url: str, *, process: str = "parallel", runs: int = 1) -> list[CrewResult]:
    """Kick off a small fan-in crew ``runs`` times, recording into the database at ``url``."""
    agent = Agent(role="Writer", goal="Write", llm=FunctionLLM(answer))
    left = Task("left side", agent=agent, name="left", context=[])
    right = Task("right side", agent=agent, name="right", context=[])
    join = Task("join both", agent=agent, name="join", context=[left, right])
    crew = Crew(tasks=[left, right, join], process=process, store=url, name="views")
    results = [crew.kickoff_sync() for _ in range(runs)]
    close_default_stores()
    return results


def invoke(*args: str, width: int = 80) -> Result:
    result = CliRunner().invoke(cli.app, list(args), env={"COLUMNS": str(width)})
    assert PASSWORD not in result.output
    return result


@pytest.mark.parametrize("width", [60, 80, 120])
def test_the_report_of_a_run_recorded_in_postgresql_holds_its_tasks_and_outputs(
    url: str, tmp_path: Path, width: int
) -> None:
    (result,) = recorded(url)
    page = tmp_path / "report.html"

    written = invoke("report", result.run_id[:8], "--db", url, "-o", str(page), width=width)

    assert written.exit_code == 0, written.output
    html = page.read_text()
    for task in ("left", "right", "join"):
        assert f"notes on {task}" in html
    assert result.run_id in html
    assert PASSWORD not in html


@pytest.mark.parametrize("width", [60, 80, 120])
def test_optimize_reads_the_runs_recorded_in_postgresql(url: str, width: int) -> None:
    recorded(url, runs=2)

    table = invoke("optimize", "--db", url, width=width)
    as_json = invoke("optimize", "--db", url, "--json", width=width)

    assert (table.exit_code, as_json.exit_code) == (0, 0), table.output
    report = json.loads(as_json.stdout)
    assert [(p["crew"], p["process"], p["runs"]) for p in report["processes"]] == [
        ("views", "parallel", 2)
    ]
    assert sorted((t["task"], t["runs"]) for t in report["tasks"]) == [
        ("join", 2),
        ("left", 2),
        ("right", 2),
    ]
    assert "views" in table.output


@pytest.mark.parametrize("width", [60, 80, 120])
def test_the_dashboard_serves_the_runs_recorded_in_postgresql(
    url: str, monkeypatch: pytest.MonkeyPatch, width: int
) -> None:
    import httpx
    import uvicorn

    (result,) = recorded(url)
    pages: dict[str, httpx.Response] = {}

    class Fetching:
        """Stands in for uvicorn's server: asks the dashboard's app for its pages, then stops
        (the command's own store, opened on the URL, answers them)."""

        def __init__(self, config: uvicorn.Config) -> None:
            self.app: Any = config.app
            self.started = False
            self.should_exit = False

        async def serve(self) -> None:
            transport = httpx.ASGITransport(app=self.app)
            base = "http://127.0.0.1:8765"
            async with httpx.AsyncClient(transport=transport, base_url=base) as client:
                client.cookies.set(COOKIE, TOKEN)
                pages["runs"] = await client.get("/")
                pages["run"] = await client.get(f"/runs/{result.run_id}")
            self.should_exit = True

    monkeypatch.setattr(uvicorn, "Server", Fetching)
    monkeypatch.setattr(_dashboard_cli.secrets, "token_urlsafe", lambda size: TOKEN)

    served = invoke("dashboard", "--db", url, "--port", "0", width=width)

    assert served.exit_code == 0, served.output
    assert pages["runs"].status_code == pages["run"].status_code == 200
    assert result.run_id[:8] in pages["runs"].text
    assert "views" in pages["runs"].text
    for task in ("left", "right", "join"):
        assert task in pages["run"].text
    assert all(PASSWORD not in page.text for page in pages.values())


def test_the_adaptive_process_learns_from_the_history_kept_in_postgresql(url: str) -> None:
    first, second = recorded(url, process="adaptive", runs=2)

    async def history() -> Any:
        async with PostgresStore(url) as store:
            run = await store.get_run(second.run_id)
            assert run is not None
            return await read_history(store, run.crew_key)

    found = anyio.run(history)

    assert found.runs == 2
    assert set(found.task_seconds) == {"left", "right", "join"}
    assert first.process_choice is not None
    assert second.process_choice is not None
    # The first choice rests on the graph alone; the second on the first run's measured tasks.
    assert {p.unit for p in first.process_choice.predictions} == {"task units"}
    assert {p.unit for p in second.process_choice.predictions} == {"s"}
