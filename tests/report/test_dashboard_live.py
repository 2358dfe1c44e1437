"""The dashboard, live, in a real browser: ``crewflow dashboard`` in one process, ``crewflow run``
in another against the loopback server, which holds one request in flight; the page shows that
task running, then finished once the request is released, without a reload.

Nothing sleeps: the test waits for the request to arrive (an event), and the browser waits for
the page to show each state (Playwright's waits, bounded)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import pytest

pytest.importorskip("starlette", reason="the dashboard extra is not installed")

from crewflow.store import SQLiteStore
from crewflow.testing import OpenAIServer, Text
from tests.report.test_browser import CHROMIUM, FLAGS, require_browser

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator
    from pathlib import Path

    from crewflow.testing.server import ReceivedRequest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX processes"),
]

CREW = """
from crewflow import Agent, Crew, Task

agent = Agent(role="Worker", goal="Work", llm="openai/loop-model")
first = Task("do first", agent=agent, name="first")
held = Task("do held", agent=agent, name="held", context=[first])
crew = Crew(tasks=[first, held], name="watched")
"""

T = TypeVar("T")

WAIT_MS = 30_000  # the bound of each wait in the browser, never reached when things work


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[Any]:
    """A headless Chromium with a fresh profile (see `tests.report.test_browser`)."""
    require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=FLAGS
        )
        yield context
        context.close()


def crewflow(*args: str) -> list[str]:
    return [sys.executable, "-m", "crewflow", *args]


def test_the_dashboard_shows_a_task_of_another_process_running_then_finished(
    tmp_path: Path, chromium: Any
) -> None:
    arrived, release = threading.Event(), threading.Event()

    async def respond(request: ReceivedRequest) -> Text:
        name = request.last_user_message.split("do ", 1)[1].split()[0].rstrip(":")
        if name == "held":
            arrived.set()
            await asyncio.get_running_loop().run_in_executor(None, release.wait)
        return Text(f"result of {name}")

    (tmp_path / "crew.py").write_text(textwrap.dedent(CREW))
    db = tmp_path / "runs.db"
    _off_thread(_create, db)  # sync Playwright runs a loop in this thread
    env = {**os.environ, "CREWFLOW_HOME": str(tmp_path), "OPENAI_API_KEY": "sk-test"}
    env.pop("CREWFLOW_FORBID_REAL_LLM_CALLS", None)  # the loopback server is no real provider
    dashboard = subprocess.Popen(
        crewflow("dashboard", "--port", "0", "--db", str(db)),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    run: subprocess.Popen[str] | None = None
    try:
        address = _address(dashboard)
        base = address.split("/?", 1)[0]
        with OpenAIServer(responder=respond).in_thread() as server:
            run = subprocess.Popen(
                crewflow("run", str(tmp_path / "crew.py")),
                env={**env, "OPENAI_BASE_URL": server.base_url},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            assert arrived.wait(60), "the held request never came"
            run_id = _off_thread(_only_run, db)

            page = chromium.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("console", lambda m: m.type == "error" and errors.append(m.text))
            outside: list[str] = []
            page.route("**/*", lambda route: _local_only(route, base, outside))
            page.goto(address)  # the token: a cookie, then the runs page
            row = page.locator(f'tr[data-run="{run_id}"]')
            row.wait_for(timeout=WAIT_MS)
            row.locator("a").click()
            page.wait_for_url(f"{base}/runs/{run_id}", timeout=WAIT_MS)
            page.evaluate("window.notReloaded = true")

            held = page.locator('tr[data-task="held"] .badge')
            _wait_text(page, held, "running")
            assert page.locator('tr[data-task="first"] .badge').inner_text() == "completed"
            assert page.locator("#run-status").inner_text() == "running"

            release.set()
            assert run.wait(60) == 0, run.stderr.read() if run.stderr else ""

            _wait_text(page, held, "completed")
            _wait_text(page, page.locator("#run-status"), "completed")
            assert page.evaluate("window.notReloaded") is True  # updated in place
            assert errors == []
            assert outside == []
    finally:
        release.set()
        for process in (run, dashboard):
            if process is None:
                continue
            if process.poll() is None:
                process.terminate()
                process.wait(30)
            for stream in (process.stdout, process.stderr):
                if stream is not None:
                    stream.close()


def _address(dashboard: subprocess.Popen[str]) -> str:
    """The address with its token that ``crewflow dashboard`` printed (its second line)."""
    assert dashboard.stdout is not None
    for line in dashboard.stdout:
        if "?token=" in line:
            return line.strip().replace("localhost", "127.0.0.1")
    raise AssertionError(dashboard.stderr.read() if dashboard.stderr else "no address")


def _local_only(route: Any, base: str, outside: list[str]) -> None:
    if route.request.url.startswith(base):
        route.continue_()
    else:
        outside.append(route.request.url)
        route.abort()


def _wait_text(page: Any, locator: Any, text: str) -> None:
    """Wait until ``locator`` (found anew each time: the page replaces its rows) reads
    ``text``."""
    from playwright.sync_api import expect

    expect(locator).to_have_text(text, timeout=WAIT_MS)


def _off_thread(function: Callable[[Path], Awaitable[T]], db: Path) -> T:
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(anyio.run, function, db).result()


async def _create(db: Path) -> None:
    async with SQLiteStore(db) as store:
        await store.list_runs()


async def _only_run(db: Path) -> str:
    async with SQLiteStore(db, read_only=True) as store:
        (run,) = await store.list_runs()
        return run.run_id
