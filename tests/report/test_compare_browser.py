"""The comparison page in the system's Chromium (the report's browser fixture): it loads with
no console error and no request, runs nothing of the runs' markup, and folds and styles a
changed output's diff."""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from crewflow.report import Comparison, Report
from crewflow.store import MemoryStore
from crewflow.testing import run_virtual
from tests.report import test_browser
from tests.report.crews import HOSTILE, hostile_crew, stored_run, versioned_crew
from tests.report.test_browser import Opened, assert_nothing_injected

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.slow

chromium = test_browser.browser
"""The report tests' Chromium (the fixture), here under the name ``chromium``."""


def in_thread(function: Any) -> Any:
    # A thread of its own: Playwright's sync API keeps an event loop running in this one.
    with ThreadPoolExecutor(1) as thread:
        return thread.submit(function).result()


def versions() -> Comparison:
    store = MemoryStore()

    async def run() -> Comparison:
        a = await versioned_crew(store, 1).kickoff()
        b = await versioned_crew(store, 2).kickoff()
        return await Comparison.from_store(store, a.run_id, b.run_id)

    return in_thread(lambda: run_virtual(run))


def hostile() -> Comparison:
    async def run() -> Comparison:
        store, first = await stored_run(hostile_crew)
        _, second = await stored_run(hostile_crew, store)
        a, b = await Report.from_store(store, first), await Report.from_store(store, second)
        changed = tuple(
            dataclasses.replace(task, output="\n".join(reversed(HOSTILE)))
            if task.name == HOSTILE[0]
            else task
            for task in b.tasks
        )
        return a.compare(dataclasses.replace(b, tasks=changed))

    return in_thread(lambda: anyio.run(run))


def test_the_page_loads_offline_and_unfolds_a_styled_diff(chromium: Any, tmp_path: Path) -> None:
    path = versions().save(tmp_path / "compare.html")
    opened = Opened(chromium, path)
    page = opened.page
    diff = page.locator('[data-output="draft"] details.diff')
    added = diff.locator("span.d-add")
    assert added.is_hidden()  # folded

    diff.locator("summary").click()

    assert added.is_visible()
    assert added.text_content() == "line 2, rewritten"
    colours = page.evaluate(
        "['d-add', 'd-del', 'd-ctx'].map(k => getComputedStyle("
        "document.querySelector('span.' + k)).backgroundColor)"
    )
    assert len(set(colours)) == 3  # added, removed and unchanged lines each look different
    assert page.locator("#crew-note").is_visible()
    assert page.locator("#tasks tr[data-task]").count() == 4
    assert opened.errors == []
    assert chromium.blocked == []


def test_markup_in_two_runs_runs_nothing(chromium: Any, tmp_path: Path) -> None:
    path = hostile().save(tmp_path / "compare.html")
    opened = Opened(chromium, path)
    page = opened.page
    for summary in page.locator("summary").all():
        summary.click()  # every diff and output unfolded

    assert opened.dialogs == []
    assert opened.errors == []
    assert chromium.blocked == []
    assert_nothing_injected(page, scripts=0, tags="img, iframe, object, embed, textarea, svg")
    assert HOSTILE[0] in (page.text_content("main") or "")
