"""The report's task graph marks the workflow's decisions as the run made them: a skipped task
says why in its tooltip (an SVG ``<title>``), a condition task carries ``?`` and whether it
held, a router task ``⑂`` with the branch it chose drawn as chosen. A stored run's report reads
them from the store's decisions, a result's from the result: both say the same."""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

import pytest
from pydantic import BaseModel

from crewflow import Agent, Crew, Task, optional
from crewflow.report import Report
from crewflow.store import MemoryStore, Store, TaskStatus
from crewflow.testing import FunctionLLM

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

    from crewflow import TaskOutput
    from crewflow.llm import LLMRequest


class Triage(BaseModel):
    category: Literal["bug", "idea"]


def answer(request: LLMRequest) -> object:
    word = (request.messages[1].content or "").split()[0]
    return Triage(category="bug") if word == "triage" else f"{word} done"


def never(outputs: Mapping[str, TaskOutput]) -> bool:
    return False


def always(outputs: Mapping[str, TaskOutput]) -> bool:
    return True


def marked_crew(store: Store | None, process: str) -> Crew:
    """triage routes to fix (chosen) or plan (skipped); reply joins both as optional; page's
    condition is false (skipped), log's holds."""
    agent = Agent(role="Desk", goal="Help", llm=FunctionLLM(answer))
    fix = Task("fix it", name="fix", context=["triage"])
    plan = Task("plan it", name="plan", context=["triage"])
    triage = Task(
        "triage it",
        name="triage",
        context=[],
        output_model=Triage,
        router={"bug": fix, "idea": plan},
    )
    reply = Task("reply now", name="reply", context=[optional(fix), optional(plan)])
    page = Task("page someone", name="page", context=[triage], condition=never)
    log = Task("log it", name="log", context=[triage], condition=always)
    return Crew(
        tasks=[triage, fix, plan, reply, page, log],
        agents=[agent],
        process=process,
        store=store,
        name="desk",
    )


def graph_svg(report: Report) -> str:
    page = report.html()
    return page[page.index('<svg id="graph"') : page.index("</svg>", page.index('<svg id="graph"'))]


def node_tips(svg: str) -> dict[str, str]:
    """Each node's tooltip (its ``<title>``), by task name."""
    found = re.findall(r'data-node="([^"]*)">\s*<title>(.*?)</title>', svg, flags=re.S)
    return {html.unescape(name): html.unescape(tip) for name, tip in found}


def node_classes(svg: str) -> dict[str, set[str]]:
    found = re.findall(r'<g class="([^"]*)" data-node="([^"]*)"', svg)
    return {html.unescape(name): set(classes.split()) for classes, name in found}


@pytest.mark.parametrize("process", ["sequential", "parallel"])
async def test_a_stored_run_marks_conditions_routers_and_skips_from_its_decisions(
    process: str,
) -> None:
    store = MemoryStore()
    result = await marked_crew(store, process).kickoff()

    report = await Report.from_store(store, result.run_id)

    tasks = {task.name: task for task in report.tasks}
    assert tasks["triage"].chose == ("fix",)
    assert (tasks["page"].condition, tasks["log"].condition) == (False, True)
    assert tasks["fix"].chose is tasks["fix"].condition is None
    svg = graph_svg(report)
    classes = node_classes(svg)
    assert {"router", "st-completed"} <= classes["triage"]
    assert {"condition", "st-skipped"} <= classes["page"]
    assert {"condition", "st-completed"} <= classes["log"]
    assert not classes["fix"] & {"router", "condition"}
    tips = node_tips(svg)
    assert "skipped: not chosen by the router of 'triage'" in tips["plan"].splitlines()
    assert "skipped: condition false" in tips["page"].splitlines()
    assert "condition: false" in tips["page"].splitlines()
    assert "condition: held" in tips["log"].splitlines()
    assert "router chose: fix" in tips["triage"].splitlines()
    chosen = re.findall(r'<path class="edge chosen"[^>]*><title>([^<]*)</title>', svg)
    assert [html.unescape(tip) for tip in chosen] == ["triage → fix: chosen by the router"]
    assert svg.count('class="edge"') == 5  # triage→plan, fix→reply, plan→reply, →page, →log
    assert ">?</text>" in svg
    assert ">⑂</text>" in svg


@pytest.mark.parametrize("process", ["sequential", "parallel"])
async def test_a_result_in_hand_marks_the_same_as_its_stored_run(process: str) -> None:
    store = MemoryStore()
    result = await marked_crew(store, process).kickoff()

    stored = await Report.from_store(store, result.run_id)
    in_hand = result.report()

    def marks(report: Report) -> dict[str, tuple[object, ...]]:
        return {t.name: (t.status, t.reason, t.condition, t.chose) for t in report.tasks}

    assert marks(in_hand) == marks(stored)
    assert node_tips(graph_svg(in_hand)) == node_tips(graph_svg(stored))
    assert node_classes(graph_svg(in_hand)) == node_classes(graph_svg(stored))


async def test_a_result_without_a_store_still_marks_its_decisions() -> None:
    result = await marked_crew(None, "parallel").kickoff()

    tasks = {task.name: task for task in result.report().tasks}

    assert tasks["triage"].chose == ("fix",)
    assert tasks["plan"].status == TaskStatus.SKIPPED
    assert (tasks["page"].condition, tasks["log"].condition) == (False, True)


async def test_a_run_without_workflow_features_has_no_marks_and_no_legend_for_them() -> None:
    agent = Agent(role="Desk", goal="Help", llm=FunctionLLM(answer))
    crew = Crew(tasks=[Task("one"), Task("two")], agents=[agent], store=MemoryStore())
    result = await crew.kickoff()

    report = result.report()

    assert all(t.condition is None and t.chose is None for t in report.tasks)
    svg = graph_svg(report)
    assert "chosen" not in svg
    assert "badge-mark" not in svg
    assert "marks a condition" not in report.html()


async def test_the_dashboard_state_says_what_each_condition_and_router_decided() -> None:
    pytest.importorskip("starlette", reason="the dashboard extra is not installed")
    from crewflow.report._dashboard import run_state

    store = MemoryStore()
    result = await marked_crew(store, "parallel").kickoff()

    state = await run_state(store, result.run_id)

    assert state is not None
    shown = {t["name"]: (t["status"], t["reason"], t["decision"]) for t in state["tasks"]}
    assert shown == {
        "triage": ("completed", "", "chose fix"),
        "fix": ("completed", "", ""),
        "plan": ("skipped", "not chosen by the router of 'triage'", ""),
        "reply": ("completed", "", ""),
        "page": ("skipped", "condition false", "condition false"),
        "log": ("completed", "", "condition held"),
    }


def test_the_dashboard_page_shows_the_decisions_and_reasons(tmp_path: Path) -> None:
    pytest.importorskip("starlette", reason="the dashboard extra is not installed")
    import anyio
    from starlette.testclient import TestClient

    from crewflow.report._dashboard import COOKIE, create_app
    from crewflow.store import SQLiteStore

    path = tmp_path / "runs.db"

    async def fill() -> str:
        async with SQLiteStore(path) as store:
            return (await marked_crew(store, "parallel").kickoff()).run_id

    run_id = anyio.run(fill)
    reader = SQLiteStore(path, read_only=True)
    try:
        with TestClient(create_app(reader, token="t"), base_url="http://127.0.0.1:8765") as client:
            client.cookies.set(COOKIE, "t")
            page = client.get(f"/runs/{run_id}").text
    finally:
        anyio.run(reader.close)

    text = html.unescape(re.sub(r"\s+", " ", page))
    assert "<th>decided</th>" in text
    assert '<td>triage</td> <td><span class="badge s-completed" title="">' in text
    assert "chose fix</td>" in text
    assert "not chosen by the router of 'triage'</td>" in text
    assert "condition held</td>" in text


def test_the_views_of_a_stored_run_say_what_maps_and_loops_decided() -> None:
    from crewflow.report._status import decision_notes
    from crewflow.store import DecisionRecord

    at = datetime(2026, 12, 5, tzinfo=UTC)
    decisions = [
        DecisionRecord(key="map:each", kind="map", task="each", value=["a", "b", "c"], at=at),
        DecisionRecord(
            key="map:one", kind="map", task="one", value=["a"], reason="cut from 9", at=at
        ),
        DecisionRecord(key="loop:draft#1", kind="loop", task="draft", value=False, at=at),
        DecisionRecord(key="loop:draft#2", kind="loop", task="draft", value=True, at=at),
    ]

    assert decision_notes(decisions) == {
        "each": "mapped 3 items",
        "one": "mapped 1 item (cut from 9)",
        "draft": "round 1: again; round 2: done",
    }
