"""The local dashboard's app (`crewflow.report._dashboard`): who it answers, what it shows, and
its event streams, over real stores; the app is driven in-process by Starlette's test client."""

from __future__ import annotations

import json
import sys
from html.parser import HTMLParser
from typing import TYPE_CHECKING, Any

import anyio
import pytest

pytest.importorskip("starlette", reason="the dashboard extra is not installed")

from starlette.testclient import TestClient
from typer.testing import CliRunner

from crewflow import cli
from crewflow._records import RunStatus
from crewflow.cli import _dashboard as _dashboard_cli
from crewflow.report._dashboard import COOKIE, changes, create_app, run_state
from crewflow.store import Lease, MemoryStore, SQLiteStore
from tests.report.crews import HOSTILE, stored_run, varied_crew
from tests.test_cli_store import attempt, output, record

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from click.testing import Result

    from crewflow.store import Store

TOKEN = "the-token"
STALLED = {
    "status": "stalled",
    "issues": [
        {
            "kind": "stalled",
            "subject": "draft",
            "detail": "task 'draft' has made no progress for 300 s",
            "since": 300.0,
        }
    ],
    "recorded": "2026-03-01T12:05:00+00:00",
}


class Elements(HTMLParser):
    """Every element of a page, with its attributes, and its text."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


async def two_runs(store: Store) -> None:
    """A completed run of crew "research" and a running run of a crew with markup in its name,
    whose lease has task "draft" in flight."""
    graph = {"facts": [], "draft": ["facts"], "notes": ["facts"]}
    await store.start_run(record("done", crew="research", graph=graph))
    live = record(
        "live", crew=HOSTILE[0], status=RunStatus.RUNNING, seconds=None, graph=graph, minute=1
    )
    assert live.lease is not None
    lease = live.lease.model_copy(update={"running": ("draft",)})
    await store.start_run(live.model_copy(update={"lease": lease}))
    await store.save_task(output("live", "facts", "five facts", 2), [attempt("facts", 1, 0, 2)])
    await store.record_health("live", STALLED)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    path = tmp_path / "runs.db"

    async def fill() -> None:
        async with SQLiteStore(path) as writer:
            await two_runs(writer)

    anyio.run(fill)
    reader = SQLiteStore(path, read_only=True)
    yield reader
    anyio.run(reader.close)


@pytest.fixture
def client(store: SQLiteStore) -> Iterator[TestClient]:
    with TestClient(create_app(store, token=TOKEN), base_url="http://127.0.0.1:8765") as client:
        client.cookies.set(COOKIE, TOKEN)
        yield client


def test_without_the_token_every_page_is_refused(store: SQLiteStore) -> None:
    with TestClient(create_app(store, token=TOKEN), base_url="http://localhost:8765") as client:
        for path in ("/", "/api/runs", "/events", "/runs/done", "/runs/done/report"):
            refused = client.get(path)
            assert refused.status_code == 403, path
            assert "token" in refused.text
            assert "five facts" not in refused.text
        assert client.get("/", params={"token": "a-guess"}).status_code == 403
        client.cookies.set(COOKIE, "a-guess")
        assert client.get("/").status_code == 403


def test_the_token_in_the_url_sets_a_strict_cookie_and_leaves_the_url(store: SQLiteStore) -> None:
    with TestClient(create_app(store, token=TOKEN), base_url="http://localhost:8765") as client:
        entered = client.get(
            "/", params={"token": TOKEN, "crew": "research"}, follow_redirects=False
        )

        assert entered.status_code == 303
        assert entered.headers["location"] == "/?crew=research"  # the token left, the rest kept
        cookie = entered.headers["set-cookie"]
        assert cookie.startswith(f"{COOKIE}={TOKEN};")
        assert "HttpOnly" in cookie
        assert "SameSite=Strict" in cookie
        assert client.get("/").status_code == 200  # the cookie carries it from now on


@pytest.mark.parametrize("host", ["evil.example", "127.0.0.1.evil.example", "192.168.1.9"])
def test_a_request_for_another_host_is_refused_even_with_the_token(
    store: SQLiteStore, host: str
) -> None:
    with TestClient(create_app(store, token=TOKEN), base_url=f"http://{host}:8765") as client:
        client.cookies.set(COOKIE, TOKEN)
        refused = client.get("/")

    assert refused.status_code == 400
    assert "five facts" not in refused.text


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_nothing_writes(client: TestClient, method: str) -> None:
    for path in ("/", "/api/runs", "/runs/done", "/runs/live/events"):
        assert client.request(method, path).status_code == 405


def test_the_runs_page_lists_the_runs_as_text_filtered_by_crew_and_status(
    client: TestClient,
) -> None:
    page = client.get("/")

    assert page.status_code == 200
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "unsafe-eval" not in policy
    parsed = Elements(page.text)
    assert [attrs["data-run"] for tag, attrs in parsed.elements if "data-run" in attrs] == [
        "live",
        "done",
    ]
    # The crew named with markup is text: no script element but the page's own.
    assert [attrs.get("src") for tag, attrs in parsed.elements if tag == "script"] == [
        "/dashboard.js"
    ]
    assert HOSTILE[0] in "".join(parsed.text)
    assert "draft" in "".join(parsed.text)  # in flight

    only = Elements(client.get("/", params={"crew": "research"}).text)
    assert [attrs["data-run"] for tag, attrs in only.elements if "data-run" in attrs] == ["done"]
    running = client.get("/api/runs", params={"status": "running"}).json()
    assert [(row["run_id"], row["running"]) for row in running] == [("live", ["draft"])]
    assert client.get("/api/runs", params={"status": "failed"}).json() == []


def test_a_run_page_shows_each_task_running_finished_or_pending(client: TestClient) -> None:
    state = client.get("/api/runs/live").json()

    assert state["run"]["status"] == "running"
    assert [(task["name"], task["status"]) for task in state["tasks"]] == [
        ("facts", "completed"),
        ("draft", "running"),
        ("notes", "pending"),
    ]
    page = client.get("/runs/live")
    assert page.status_code == 200
    elements = Elements(page.text).elements
    assert [attrs["data-task"] for _, attrs in elements if "data-task" in attrs] == [
        "facts",
        "draft",
        "notes",
    ]
    missing = client.get("/runs/<b>nope</b>")
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("text/plain")
    assert missing.headers["x-content-type-options"] == "nosniff"  # shown as text, never HTML
    assert page.headers["referrer-policy"] == "no-referrer"
    assert client.get("/api/runs/nope").status_code == 404
    assert client.get("/runs/nope/report").status_code == 404


def test_a_run_page_frames_its_report(client: TestClient) -> None:
    page = Elements(client.get("/runs/done").text)
    (frame,) = [attrs for tag, attrs in page.elements if tag == "iframe"]
    assert frame["src"] == "/runs/done/report"

    report = client.get("/runs/done/report")
    assert report.status_code == 200
    assert "<svg" in report.text
    assert "Content-Security-Policy" in report.text  # the report's own, as a meta tag
    script = client.get("/dashboard.js")
    assert script.headers["content-type"].startswith("text/javascript")
    assert "innerHTML" not in script.text  # text goes in as text


async def test_a_task_of_a_real_run_reads_running_while_in_flight(tmp_path: Path) -> None:
    store = MemoryStore()
    run_store, run_id = await stored_run(varied_crew, store)
    state = await run_state(run_store, run_id)
    assert state is not None
    statuses = {task["name"]: task["status"] for task in state["tasks"]}
    assert statuses == {
        "facts": "completed",
        "flaky": "completed",
        "saved": "completed",
        "doomed": "failed",
        "after_doomed": "skipped",
        "draft": "completed",
    }
    assert state["run"]["status"] == "failed"


async def test_an_event_stream_sends_the_state_then_each_change_another_process_commits(
    tmp_path: Path,
) -> None:
    path = tmp_path / "runs.db"
    async with SQLiteStore(path) as writer:
        await two_runs(writer)
        reader = SQLiteStore(path, read_only=True)

        async def snapshot() -> Any:
            return await run_state(reader, "live")

        def tasks(event: str) -> dict[str, str]:
            assert event.startswith("data: ")
            assert event.endswith("\n\n")
            state = json.loads(event[len("data: ") :])
            return {task["name"]: task["status"] for task in state["tasks"]}

        stream = changes(reader, snapshot, poll=0.001)
        with anyio.fail_after(10):
            first = await anext(stream)
            assert tasks(first) == {"facts": "completed", "draft": "running", "notes": "pending"}
            # Another connection (as another process would) finishes "draft".
            lease = (await writer.get_run("live")).lease  # type: ignore[union-attr]
            assert lease is not None
            await writer.renew_lease("live", lease.token, lease.expires, running=[])
            await writer.save_task(
                output("live", "draft", "the draft", 4), [attempt("draft", 1, 2, 4)]
            )
            second = await anext(stream)
        assert tasks(second) == {"facts": "completed", "draft": "completed", "notes": "pending"}
        await stream.aclose()
        await reader.close()


async def test_a_store_that_cannot_tell_its_version_is_read_each_time_and_sends_changes_only() -> (
    None
):
    store = MemoryStore()
    assert await store.version() is None
    states = iter([1, 1, 1, 2])
    stream = changes(store, lambda: _value(next(states)), poll=0)
    with anyio.fail_after(10):
        assert await anext(stream) == "data: 1\n\n"
        assert await anext(stream) == "data: 2\n\n"  # the two reads of 1 between sent nothing
    await stream.aclose()


async def test_a_stream_reads_the_records_only_when_the_stores_version_moved() -> None:
    class Versioned(MemoryStore):
        """A store whose version stands still for four looks, then moves once."""

        def __init__(self) -> None:
            super().__init__()
            self.looks = 0

        async def version(self) -> str | None:
            self.looks += 1
            return "v1" if self.looks <= 4 else "v2"

    store = Versioned()
    reads = 0

    async def snapshot() -> int:
        nonlocal reads
        reads += 1
        return reads

    stream = changes(store, snapshot, poll=0)
    with anyio.fail_after(10):
        assert await anext(stream) == "data: 1\n\n"  # the first look reads
        assert await anext(stream) == "data: 2\n\n"  # the next read waited for the move

    assert (store.looks, reads) == (5, 2)  # three looks at "v1" read nothing
    await stream.aclose()


async def _value(value: int) -> int:
    return value


async def test_a_stores_version_moves_with_its_own_writes_and_another_connections(
    tmp_path: Path,
) -> None:
    path = tmp_path / "runs.db"
    async with SQLiteStore(path) as first, SQLiteStore(path) as second:
        await first.start_run(record("one"))
        mine, theirs = await first.version(), await second.version()
        assert mine == await first.version()  # nothing changed: the same token
        assert theirs == await second.version()

        two = record("two", status=RunStatus.RUNNING)
        await first.start_run(two)

        assert await first.version() != mine
        assert await second.version() != theirs
        mine = await first.version()
        assert two.lease is not None
        assert await second.take_lease("two", Lease.new(), replacing=two.lease.token)
        assert await first.version() != mine  # another connection's write


# -- the command ---------------------------------------------------------------------------


def dashboard(*args: str, width: int = 80) -> Result:
    return CliRunner().invoke(cli.app, ["dashboard", *args], env={"COLUMNS": str(width)})


@pytest.fixture
def serving(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, int, str]]:
    """What the command served (path, host, port, token), instead of serving it: it prints its
    address as though it were ready, and returns."""
    served: list[tuple[str, str, int, str]] = []

    async def serve(path: Path, host: str, port: int, token: str, ready: Any) -> None:
        served.append((str(path), host, port, token))
        ready(f"http://localhost:{port or 41234}")

    monkeypatch.setattr(_dashboard_cli, "_serve", serve)
    return served


@pytest.mark.parametrize("width", [60, 80, 120])
def test_the_command_prints_its_address_with_a_fresh_token(
    tmp_path: Path, serving: list[tuple[str, str, int, str]], width: int
) -> None:
    db = tmp_path / "runs.db"
    anyio.run(_create, db)

    first = dashboard("--db", str(db), "--port", "0", width=width)
    second = dashboard("--db", str(db), width=width)

    assert first.exit_code == second.exit_code == 0, first.output
    (_, host, port, token), (_, _, default_port, other) = serving
    assert (host, port, default_port) == ("127.0.0.1", 0, 8765)
    assert token != other  # a new token each time
    assert len(token) >= 32
    assert f"http://localhost:41234/?token={token}" in first.stdout.replace("\n", "")
    assert "warning" not in first.output


def test_another_host_is_served_with_a_warning_and_answers_that_host(
    tmp_path: Path, serving: list[tuple[str, str, int, str]]
) -> None:
    db = tmp_path / "runs.db"
    anyio.run(_create, db)

    result = dashboard("--db", str(db), "--host", "0.0.0.0", width=120)

    assert result.exit_code == 0
    assert "warning: the dashboard listens on 0.0.0.0" in result.stderr
    assert "prompt and output" in result.stderr
    assert serving[0][1] == "0.0.0.0"
    assert _dashboard_cli.allowed_hosts("0.0.0.0") == ["*"]
    assert _dashboard_cli.allowed_hosts("10.0.0.5") == ["10.0.0.5", "127.0.0.1", "localhost"]
    assert _dashboard_cli.allowed_hosts("127.0.0.1") == ["127.0.0.1", "localhost"]


def test_without_a_database_or_the_extra_the_command_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, serving: list[tuple[str, str, int, str]]
) -> None:
    missing = dashboard("--db", str(tmp_path / "none.db"))
    assert missing.exit_code == 2
    assert "no run database at" in missing.stderr
    assert "run a crew first" in missing.stderr

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if the extra were not installed
    no_extra = dashboard("--db", str(tmp_path / "none.db"))
    assert no_extra.exit_code == 2
    assert no_extra.stderr.strip().endswith("pip install 'crewflow[dashboard]'")
    assert len(no_extra.stderr.strip().splitlines()) == 1
    assert serving == []


async def _create(db: Path) -> None:
    async with SQLiteStore(db) as store:
        await store.list_runs()


def test_the_runs_list_shows_each_runs_last_health_with_its_issues(client: TestClient) -> None:
    rows = {row["run_id"]: row for row in client.get("/api/runs").json()}

    assert (rows["live"]["health"], rows["live"]["issues"]) == (
        "stalled",
        ["task 'draft' has made no progress for 300 s"],
    )
    assert (rows["done"]["health"], rows["done"]["issues"]) == ("", [])  # never watched
    page = Elements(client.get("/").text)
    badges = [attrs for _, attrs in page.elements if "h-stalled" in (attrs.get("class") or "")]
    assert [attrs["title"] for attrs in badges] == ["task 'draft' has made no progress for 300 s"]


def test_a_run_page_shows_its_health_and_what_is_wrong(client: TestClient) -> None:
    state = client.get("/api/runs/live").json()
    assert state["run"]["health"] == "stalled"

    page = Elements(client.get("/runs/live").text)
    text = "".join(page.text)
    assert "stalled" in text
    assert "task 'draft' has made no progress for 300 s" in text
    assert "not watched" in "".join(Elements(client.get("/runs/done").text).text)


def test_a_stalled_task_of_a_real_run_shows_on_its_page_while_it_goes() -> None:
    import httpx

    from crewflow import Agent, Crew, HealthPolicy, Task
    from crewflow.testing import FunctionLLM, run_virtual

    async def slow(request: object) -> str:
        await anyio.sleep(150)  # virtual seconds, with no event of the task meanwhile
        return "done"

    store = MemoryStore()
    agent = Agent(role="Worker", goal="Work", llm=FunctionLLM(slow))
    crew = Crew(
        tasks=[Task("Do slow", agent=agent, name="slow")],
        store=store,
        health=HealthPolicy(stall_after=100),
    )
    transport = httpx.ASGITransport(app=create_app(store, token=TOKEN))

    async def main() -> tuple[dict[str, Any], str, dict[str, Any]]:
        async with (
            httpx.AsyncClient(
                transport=transport, base_url="http://127.0.0.1", cookies={COOKIE: TOKEN}
            ) as client,
            crew.start() as handle,
        ):
            await anyio.sleep(120)
            going = (await client.get(f"/api/runs/{handle.run_id}")).json()
            page = (await client.get(f"/runs/{handle.run_id}")).text
            await handle.result()
            ended = (await client.get(f"/api/runs/{handle.run_id}")).json()
        return going, page, ended

    going, page, ended = run_virtual(main)

    assert (going["run"]["health"], going["run"]["issues"]) == (
        "stalled",
        ["task 'slow' has made no progress for 100 s"],
    )
    assert "task 'slow' has made no progress for 100 s" in "".join(Elements(page).text)
    assert (ended["run"]["status"], ended["run"]["health"]) == ("completed", "ok")
