"""`Report`: built from a stored run or a result in hand, rendered as one self-contained page."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import pytest

import crewflow
from crewflow import Agent, Crew, Task
from crewflow.exceptions import UnknownRunError
from crewflow.report import MAX_OUTPUT, Report
from crewflow.report._timeline import Axis, CallSpan, resource_panels
from crewflow.store import MemoryStore, TaskKind, TaskStatus
from crewflow.testing import ScriptedLLM, ScriptedManager
from tests.report.crews import varied_report
from tests.report.page import parse

if TYPE_CHECKING:
    from pathlib import Path


def looks(html: str) -> dict[str, str]:
    """Each Gantt bar's look, by its attempt ("task#n")."""
    return {
        e.attrs["data-attempt"]: e.attrs["class"].removeprefix("bar look-")
        for e in parse(html).having("data-attempt")
    }


async def test_a_stored_run_has_one_bar_per_attempt_each_looking_as_it_ended() -> None:
    report = await varied_report()

    assert looks(report.html()) == {
        "facts#1": "ok",
        "flaky#1": "failed",
        "flaky#2": "ok",
        "saved#1": "failed",
        "saved#2": "failed",
        "saved#3": "fallback",
        "doomed#1": "failed",
        "doomed#2": "failed",
        "draft#1": "ok",
    }
    page = parse(report.html())
    assert [e.attrs["data-skipped"] for e in page.having("data-skipped")] == ["after_doomed"]
    assert [e.attrs["data-node"] for e in page.having("data-node")] == [
        "facts", "flaky", "saved", "doomed", "after_doomed", "draft"
    ]  # fmt: skip


async def test_a_stored_run_reads_statuses_dependencies_outputs_and_tool_calls() -> None:
    report = await varied_report()
    tasks = {task.name: task for task in report.tasks}

    assert report.stored
    assert tasks["after_doomed"].status == TaskStatus.SKIPPED
    assert tasks["doomed"].status == TaskStatus.FAILED
    assert tasks["draft"].depends_on == ("facts", "flaky", "saved")
    assert tasks["draft"].output == "the draft"
    assert [call.tool for call in tasks["facts"].attempts[0].tool_calls] == ["lookup"]
    assert tasks["facts"].attempts[0].prompts  # read from the store's prompts
    text = parse(report.html()).text
    assert "found x" in text  # the tool's result, in the folded prompts
    assert "bad 2" in text  # a failed attempt's error


async def test_a_stored_run_shows_the_optimizer_recommendations_or_that_it_has_none() -> None:
    report = await varied_report()

    assert report.recommendations == ()
    assert "no recommendation for this crew" in parse(report.html()).text


async def test_a_run_id_no_store_holds_is_an_unknown_run() -> None:
    with pytest.raises(UnknownRunError):
        await Report.from_store(MemoryStore(), "nope")


async def test_result_report_works_without_a_store_and_writes_the_page(tmp_path: Path) -> None:
    writer = Agent(role="Writer", goal="g", llm="offline")
    first = Task("One", agent=writer, name="one")
    crew = Crew(tasks=[first, Task("Two", agent=writer, name="two", context=[first])], store=None)
    result = await crew.kickoff()

    report = result.report(tmp_path / "run.html")

    assert (tmp_path / "run.html").read_text("utf-8") == report.html()
    assert not report.stored
    assert report.recommendations is None
    page = parse(report.html())
    assert "No history" in page.text
    assert set(looks(report.html())) == {"one#1", "two#1"}
    assert [t.depends_on for t in report.tasks] == [(), ("one",)]
    assert result.report() == report  # no path: nothing written, the same report


async def test_internal_steps_look_apart_from_the_crew_tasks() -> None:
    worker = Agent(role="Worker", goal="g", llm=ScriptedLLM(["done"] * 4))
    crew = Crew(
        tasks=[Task("A", name="a", agent=worker)],
        agents=[worker],
        process="hierarchical",
        manager=Agent(role="Manager", goal="Lead", llm=ScriptedManager()),
        store=None,
    )
    result = await crew.kickoff()

    report = result.report()

    internal = {t.name for t in report.tasks if t.kind == TaskKind.INTERNAL}
    assert internal  # the plan, its steps, the review
    bars = looks(report.html())
    assert {bars[f"{name}#1"] for name in internal} == {"internal"}
    nodes = parse(report.html()).having("data-node")
    assert {e.attrs["data-node"] for e in nodes if "internal" in e.attrs["class"]} == internal


async def test_a_cache_hit_looks_apart() -> None:
    store = MemoryStore()
    agent = Agent(role="Writer", goal="g", llm=ScriptedLLM(["once"]))
    crew = Crew(tasks=[Task("Same", agent=agent, name="same")], cache=True, store=store)
    await crew.kickoff()
    second = await crew.kickoff()  # answered from the cache: the script has no second reply

    assert looks(second.report().html()) == {"same#1": "cached"}


async def test_a_long_output_is_cut_with_a_note_pointing_to_crewflow_show() -> None:
    store = MemoryStore()
    agent = Agent(role="Writer", goal="g", llm=ScriptedLLM(["y" * (MAX_OUTPUT + 5000)]))
    result = await Crew(tasks=[Task("Long", agent=agent, name="long")], store=store).kickoff()
    stored = await Report.from_store(store, result.run_id)

    page = parse(stored.html())
    shown = [len(t) for t in page.texts if set(t) == {"y"}]
    assert shown == [MAX_OUTPUT, MAX_OUTPUT]  # the output, and the reply in its folded prompts
    assert f"crewflow show {result.run_id} --full" in page.text
    assert f"crewflow show {result.run_id} --full" in parse(result.report().html()).text
    agent = Agent(role="Writer", goal="g", llm=ScriptedLLM(["y" * (MAX_OUTPUT + 5000)]))
    unstored = await Crew(tasks=[Task("Long", agent=agent, name="long")], store=None).kickoff()
    assert 'result["long"].text holds it whole' in parse(unstored.report().html()).text


async def test_the_page_loads_nothing_and_allows_only_its_own_script() -> None:
    html = (await varied_report()).html()
    page = parse(html)

    [policy] = [e.attrs["content"] for e in page.tags("meta") if "http-equiv" in e.attrs]
    assert re.fullmatch(
        r"default-src 'none'; script-src 'sha256-[A-Za-z0-9+/=]+'; "
        r"style-src 'unsafe-inline'; img-src data:",
        policy,
    )
    assert len(page.tags("script")) == 1
    assert not [e for e in page.elements for k in ("src", "href") if k in e.attrs]
    assert "http://" not in html
    assert "https://" not in html


def test_the_resource_chart_counts_calls_in_flight_and_waiting_per_model() -> None:
    from datetime import UTC, datetime

    axis = Axis(datetime(2024, 1, 1, tzinfo=UTC), 10.0)
    spans = [
        CallSpan("a", 0.0, 2.0, 5.0, "completed"),
        CallSpan("a", 1.0, 3.0, 6.0, "completed"),
        CallSpan("a", 1.0, 1.0, 4.0, "failed"),
        CallSpan("b", 0.0, 0.0, 1.0, "completed"),
    ]

    panels = {panel.model: panel for panel in resource_panels(spans, axis)}

    assert (panels["a"].peak, panels["a"].peak_waiting) == (3, 2)
    assert (panels["b"].peak, panels["b"].peak_waiting, panels["b"].waiting) == (1, 0, "")
    assert list(panels) == ["a", "b"]  # the busiest first


async def test_the_resource_chart_draws_each_recorded_call_of_a_stored_run() -> None:
    from crewflow.report._timeline import axis_of, call_spans

    report = await varied_report()
    axis = axis_of(report)
    spans = call_spans(report.tasks, axis)
    facts = next(task for task in report.tasks if task.name == "facts")
    (attempt,) = facts.attempts

    # facts made two calls (a tool call, then its answer), each its own span, in order.
    assert [call.outcome for call in attempt.calls] == ["completed", "completed"]
    began = axis.offset(attempt.start)
    assert report.tasks[0] is facts  # the chart's spans come in the tasks' order
    assert [(s.start - began, s.wait_end - s.start, s.end - began) for s in spans[:2]] == [
        pytest.approx((call.start, call.wait, call.end)) for call in attempt.calls
    ]
    # Every recorded call that sent a request is on the chart; the page says none is derived.
    sent = sum(
        1 for task in report.tasks for a in task.attempts for c in a.calls if c.outcome != "cached"
    )
    assert len(spans) == sent
    assert "derived from each attempt" not in report.html()


def test_report_is_public_and_lazy() -> None:
    assert crewflow.Report is Report
    assert "Report" in crewflow.__all__


async def test_a_report_in_a_notebook_is_the_page_in_a_sandboxed_frame() -> None:
    report = await varied_report()

    [frame] = parse(report._repr_html_()).tags("iframe")

    assert frame.attrs["sandbox"] == "allow-scripts"
    assert frame.attrs["srcdoc"] == report.html()
