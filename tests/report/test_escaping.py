"""Whatever a run holds is text on the page, never markup: task names, agents' roles, outputs,
tool errors and error messages with ``<script>``, ``<img onerror>``, ``</style>`` in them."""

from __future__ import annotations

from crewflow import Agent, Crew, Task
from crewflow.report import MAX_OUTPUT, Report
from crewflow.testing import ScriptedLLM
from tests.report.crews import HOSTILE, hostile_crew, stored_run
from tests.report.page import Page, parse

# The page's own elements that could run or load something: one script, nothing else.
SVG_IDS = {"gantt", "resources", "graph"}


def assert_nothing_injected(page: Page) -> None:
    tags = {e.tag for e in page.elements}
    assert len(page.tags("script")) == 1
    assert not tags & {"img", "iframe", "object", "embed", "textarea", "link", "base", "form"}
    assert not [(e.tag, k) for e in page.elements for k in e.attrs if k.startswith("on")]
    assert {e.attrs.get("id") for e in page.tags("svg") if "id" in e.attrs} == SVG_IDS
    assert len(page.tags("style")) == 1
    assert not [e for e in page.elements for k in ("src", "href") if k in e.attrs]


async def test_markup_in_a_stored_run_is_shown_as_text() -> None:
    store, run_id = await stored_run(hostile_crew)
    html = (await Report.from_store(store, run_id)).html()
    page = parse(html)

    assert_nothing_injected(page)
    for text in HOSTILE:
        assert text in page.text  # shown, as text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    tips = " ".join(e.attrs["data-tip"] for e in page.having("data-tip"))
    assert HOSTILE[2] in tips  # in an attribute, it is the attribute's text


async def test_unicode_nul_and_a_megabyte_output_render_and_are_cut() -> None:
    store, run_id = await stored_run(hostile_crew)
    report = await Report.from_store(store, run_id)
    [big] = [task for task in report.tasks if task.name == HOSTILE[3]]
    assert big.output is not None
    assert len(big.output) > 1_000_000

    html = report.html()

    assert "ünïcødé 🚀" in html
    assert "\ufffd" in html  # the NUL and the lone surrogate, as the store kept them
    assert "\x00" not in html
    assert len(html) < 6 * MAX_OUTPUT + 200_000  # the output and its reply cut, not a megabyte
    assert f"crewflow show {run_id} --full" in parse(html).text


async def test_markup_in_a_result_without_a_store_is_shown_as_text() -> None:
    agent = Agent(role=HOSTILE[1], goal="g", llm=ScriptedLLM(["\n".join(HOSTILE)]))
    crew = Crew(tasks=[Task(HOSTILE[0], agent=agent, name=HOSTILE[2])], name=HOSTILE[4], store=None)
    result = await crew.kickoff()

    page = parse(result.report().html())

    assert_nothing_injected(page)
    assert all(text in page.text for text in HOSTILE)
    assert [e.attrs["data-attempt"] for e in page.having("data-attempt")] == [f"{HOSTILE[2]}#1"]
