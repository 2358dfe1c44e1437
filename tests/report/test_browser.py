"""The report in a real browser: the system's Chromium, driven by Playwright for Python
(``executable_path``; never ``playwright install``, which downloads one).

Chromium runs headless with fixed flags and a fresh profile, and every request that is not the
page's own file is aborted and counted: the page must need none. Locally these tests skip when
Chromium is missing; with ``CREWFLOW_REQUIRE_BROWSER=1`` (CI) they fail instead.
"""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from crewflow.report import Report
from tests.report.crews import HOSTILE, hostile_crew, stored_run, varied_crew

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("CREWFLOW_CHROMIUM", "/usr/bin/chromium")
FLAGS = [
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
]


def _missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    return None


def require_browser() -> None:
    """Skip the test when Chromium or Playwright is missing, or fail it under
    ``CREWFLOW_REQUIRE_BROWSER=1`` (CI), where the browser tests must run."""
    missing = _missing()
    if missing is not None:
        if os.environ.get("CREWFLOW_REQUIRE_BROWSER") == "1":
            pytest.fail(f"CREWFLOW_REQUIRE_BROWSER=1 but {missing}")
        pytest.skip(missing)


def assert_nothing_injected(page: Any, *, scripts: int, tags: str) -> None:
    """The page runs ``scripts`` scripts (its own), has none of ``tags`` (CSS selectors an
    injection would add) and no element with an ``on*`` handler."""
    assert page.evaluate("document.scripts.length") == scripts
    assert page.evaluate(f"[...document.querySelectorAll('{tags}')].length") == 0
    with_handlers = page.evaluate(
        "[...document.querySelectorAll('*')].filter("
        "e => [...e.attributes].some(a => a.name.startsWith('on'))).length"
    )
    assert with_handlers == 0


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A headless Chromium with a fresh profile, that aborts and records any request for
    something other than a local file (``.blocked``)."""
    require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=CHROMIUM,
            headless=True,
            args=FLAGS,
            viewport={"width": 1200, "height": 900},
        )
        context.blocked = []

        def route(route: Any) -> None:
            if route.request.url.startswith("file://"):
                route.continue_()
            else:
                context.blocked.append(route.request.url)
                route.abort()

        context.route("**/*", route)
        yield context
        context.close()


class Opened:
    """A report page open in the browser, with what it said and asked for."""

    def __init__(self, context: Any, path: Path) -> None:
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.page = context.new_page()
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on("dialog", self._dialog)
        self.page.goto(path.as_uri())
        self.page.wait_for_load_state("load")

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()


def write(tmp_path: Path, crew_of: Any) -> tuple[Report, Path]:
    async def make() -> Report:
        store, run_id = await stored_run(crew_of)
        return await Report.from_store(store, run_id)

    # In a thread of its own: Playwright's sync API keeps an event loop running in this one.
    with ThreadPoolExecutor(1) as thread:
        report = thread.submit(anyio.run, make).result()
    return report, report.save(tmp_path / "report.html")


def test_the_page_loads_offline_with_a_bar_per_attempt_and_a_node_per_task(
    browser: Any, tmp_path: Path
) -> None:
    report, path = write(tmp_path, varied_crew)
    opened = Opened(browser, path)
    page = opened.page

    attempts = sum(len(task.attempts) for task in report.tasks)
    assert page.locator("#gantt [data-attempt]").count() == attempts == 9
    assert page.locator("#graph [data-node]").count() == len(report.tasks) == 6
    assert page.locator("#resources path.flight").count() == 1
    assert opened.errors == []
    assert browser.blocked == []


def test_a_skipped_task_is_drawn_skipped_with_its_reason(browser: Any, tmp_path: Path) -> None:
    report, path = write(tmp_path, varied_crew)
    page = Opened(browser, path).page
    [skipped] = [task for task in report.tasks if task.status == "skipped"]

    node = page.locator(f'#graph [data-node="{skipped.name}"]')

    assert "st-skipped" in (node.get_attribute("class") or "")
    box = node.locator("rect")
    assert box.evaluate("e => getComputedStyle(e).strokeDasharray") not in ("", "none")
    tip = node.locator("title").text_content() or ""
    assert tip.startswith(f"{skipped.name} · skipped")
    assert "skipped: needs 'doomed', which failed" in tip.splitlines()
    assert skipped.reason == "needs 'doomed', which failed"


def test_hovering_a_bar_shows_its_times(browser: Any, tmp_path: Path) -> None:
    report, path = write(tmp_path, varied_crew)
    page = Opened(browser, path).page
    [draft] = [task.attempts[0] for task in report.tasks if task.name == "draft"]
    tip = page.locator("#tip")
    assert tip.is_hidden()

    page.hover('[data-attempt="draft#1"]')

    assert tip.is_visible()
    text = tip.text_content() or ""
    assert text.startswith("draft · attempt 1 · completed")
    assert f"start {draft.start:%H:%M:%S}" in text
    assert f"end {draft.end:%H:%M:%S}" in text
    assert "duration " in text
    assert "wait " in text
    page.hover("h1")
    assert tip.is_hidden()


def test_markup_in_a_run_runs_nothing_in_the_browser(browser: Any, tmp_path: Path) -> None:
    report, path = write(tmp_path, hostile_crew)
    opened = Opened(browser, path)
    page = opened.page
    for bar in page.locator("[data-attempt]").all():
        bar.hover(force=True)  # a tooltip shows the error messages, as text

    assert opened.dialogs == []
    assert opened.errors == []
    assert browser.blocked == []
    assert_nothing_injected(page, scripts=1, tags="img, iframe, object, embed, textarea")
    assert HOSTILE[0] in (page.text_content("main") or "")
    assert len(report.tasks) == page.locator("#graph [data-node]").count()
