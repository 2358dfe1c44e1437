"""`Comparison` (`Report.compare`): two runs side by side, tasks matched by name, with the change
of each task's time, tokens and cost, which outputs changed and a line diff of each change."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import pytest

from crewflow.report import (
    MAX_DIFF_LINES,
    MAX_OUTPUT,
    Comparison,
    DiffLine,
    OutputChange,
    Report,
)
from crewflow.store import MemoryStore
from crewflow.testing import run_virtual
from tests.report.crews import HOSTILE, hostile_crew, stored_run, varied_crew, versioned_crew
from tests.report.page import parse

if TYPE_CHECKING:
    from pathlib import Path


def two_versions(first: int = 1, second: int = 2) -> Comparison:
    """Version ``first`` then version ``second`` of the versioned crew, run in virtual time into
    one store, compared."""
    store = MemoryStore()

    async def run() -> Comparison:
        a = await versioned_crew(store, first).kickoff()
        b = await versioned_crew(store, second).kickoff()
        return await Comparison.from_store(store, a.run_id, b.run_id)

    return run_virtual(run)


def with_outputs(report: Report, **outputs: str) -> Report:
    """``report`` with some tasks' outputs replaced."""
    tasks = tuple(
        dataclasses.replace(task, output=outputs.get(task.name, task.output))
        for task in report.tasks
    )
    return dataclasses.replace(report, tasks=tasks)


def cells(html: str, row: str) -> list[str]:
    """The texts of the cells of the table row that starts with ``row``."""
    start = html.index(row)
    texts = parse(html[start : html.index("</tr>", start)]).texts
    return [text.strip() for text in texts if text.strip()]


def test_a_slower_task_a_changed_output_and_an_added_task() -> None:
    comparison = two_versions()
    by_name = {task.name: task for task in comparison.tasks}

    assert [task.name for task in comparison.tasks] == ["extra", "draft", "plan", "check"]
    draft = by_name["draft"]
    assert (draft.seconds_a, draft.seconds_b) == (pytest.approx(2.0), pytest.approx(5.0))
    assert draft.seconds_delta == pytest.approx(3.0)
    assert draft.ratio == pytest.approx(2.5)
    assert draft.change_text() == "+3.00 s, 2.50× slower"
    assert draft.tokens_delta == (150 + 30) - (100 + 20)
    assert draft.cost_delta is None  # the scripted model has no price
    assert draft.output is OutputChange.CHANGED
    assert draft.diff() == (
        [
            DiffLine("@", "@@ -1,4 +1,4 @@"),
            DiffLine(" ", " intro"),
            DiffLine("-", "-line two"),
            DiffLine("+", "+line 2, rewritten"),
            DiffLine(" ", " line three"),
            DiffLine(" ", " conclusion"),
        ],
        0,
    )
    extra = by_name["extra"]
    assert extra.a is None
    assert extra.b is not None
    assert extra.seconds_b == pytest.approx(0.25)
    assert (extra.seconds_delta, extra.tokens_delta) == (None, None)
    assert extra.output is OutputChange.ONLY_B
    assert extra.change_text() == "only in B"
    for same in ("plan", "check"):
        assert by_name[same].output is OutputChange.IDENTICAL
        assert by_name[same].change_text() == "same"
        assert by_name[same].tokens_delta == 0
    assert comparison.seconds_a == pytest.approx(3.5)
    assert comparison.seconds_b == pytest.approx(6.75)


def test_the_page_shows_the_numbers_the_totals_and_the_diff() -> None:
    comparison = two_versions()
    html = comparison.html()
    page = parse(html)

    assert cells(html, '<tr data-task="draft">') == [
        "draft", "completed", "completed", "2.00 s", "5.00 s", "+3.00 s, 2.50× slower",
        "1", "1", "120", "180", "+60", "–", "–", "–", "changed",
    ]  # fmt: skip
    assert cells(html, '<tr data-task="extra">') == [
        "extra", "absent", "completed", "250 ms", "only in B", "1", "5", "–", "only in B",
    ]  # fmt: skip
    assert cells(html, '<tr data-total="took">') == [
        "took", "3.50 s", "6.75 s", "+3.25 s, 1.93× slower",
    ]  # fmt: skip
    diff = [e.attrs.get("class", "") for e in page.tags("span")]
    assert [kind for kind in diff if kind.startswith("d-")] == [
        "d-hunk", "d-ctx", "d-del", "d-add", "d-ctx", "d-ctx",
    ]  # fmt: skip
    assert "line 2, rewritten" in page.text
    assert "line diff: 1 added, 1 removed" in page.text
    assert "Identical in both runs: plan, check." in page.text
    assert not page.tags("script")


def test_a_changed_crew_is_said_at_the_top_and_still_compared_by_name() -> None:
    comparison = two_versions()

    assert not comparison.same_crew
    assert comparison.crew_note == (
        "The crew 'versioned' changed between these runs (its tasks, agents or models differ); "
        "their tasks are compared by name."
    )
    [note] = [e for e in parse(comparison.html()).elements if e.attrs.get("id") == "crew-note"]
    assert note.tag == "p"


def test_two_runs_of_one_crew_have_no_note_and_identical_outputs() -> None:
    comparison = two_versions(1, 1)

    assert comparison.same_crew
    assert comparison.crew_note is None
    assert {task.output for task in comparison.tasks} == {OutputChange.IDENTICAL}
    assert "crew-note" not in comparison.html()


async def test_runs_of_different_crews_are_compared_by_task_name_with_a_note() -> None:
    store, first = await stored_run(varied_crew)
    _, second = await stored_run(hostile_crew, store)

    comparison = (await Report.from_store(store, first)).compare(
        await Report.from_store(store, second)
    )

    assert comparison.crew_note == (
        f"These runs are of different crews ('varied' and {HOSTILE[4]!r}); "
        "their tasks are compared by name."
    )
    assert len(comparison.tasks) == 6 + 3
    assert all(task.a is None or task.b is None for task in comparison.tasks)
    assert HOSTILE[4] in parse(comparison.html()).text


def test_a_long_diff_and_a_long_output_are_cut_with_a_note() -> None:
    comparison = two_versions(1, 1)
    many = MAX_DIFF_LINES + 50
    a = with_outputs(comparison.a, draft="\n".join(f"a{i}" for i in range(many)))
    b = with_outputs(comparison.b, draft="\n".join(f"b{i}" for i in range(many)))
    a = with_outputs(a, plan="same start " + "x" * MAX_OUTPUT + "A")
    b = with_outputs(b, plan="same start " + "x" * MAX_OUTPUT + "B")

    cut = a.compare(b)
    by_name = {task.name: task for task in cut.tasks}
    lines, left_out = by_name["draft"].diff()
    page = parse(cut.html()).text

    assert len(lines) == MAX_DIFF_LINES
    assert left_out == 1 + 2 * many - MAX_DIFF_LINES  # one hunk line, every line out and in
    assert f"Cut: {left_out:,} more lines of the diff not shown ({MAX_DIFF_LINES} shown)." in page
    plan = by_name["plan"]
    assert plan.output is OutputChange.CHANGED  # the texts differ past what is compared
    assert plan.diff_cut_input
    assert plan.diff() == ([], 0)
    assert f"Only the first {MAX_OUTPUT:,} characters of each output are compared." in page


def test_markup_in_names_and_outputs_and_diffs_is_text() -> None:
    store = MemoryStore()

    async def run() -> tuple[Report, Report]:
        _, first = await stored_run(hostile_crew, store)
        _, second = await stored_run(hostile_crew, store)
        return await Report.from_store(store, first), await Report.from_store(store, second)

    a, b = run_virtual(run)
    b = with_outputs(b, **{HOSTILE[0]: "\n".join(reversed(HOSTILE))})
    html = a.compare(b).html()
    page = parse(html)

    tags = {e.tag for e in page.elements}
    assert not tags & {"script", "img", "iframe", "object", "embed", "textarea", "link", "svg"}
    assert not [(e.tag, k) for e in page.elements for k in e.attrs if k.startswith("on")]
    assert len(page.tags("style")) == 1
    assert not [e for e in page.elements for k in ("src", "href") if k in e.attrs]
    for text in HOSTILE:
        assert text in page.text
    assert '<span class="d-add">&lt;/textarea&gt;&lt;/pre&gt;&lt;/title&gt;' in html  # the diff
    assert "&lt;script&gt;alert(1)&lt;/script&gt;</span>" in html
    [row] = [e for e in page.elements if e.attrs.get("data-task") == HOSTILE[0]]
    assert row.tag == "tr"


def test_it_shows_itself_in_a_notebook_framed_and_saves(tmp_path: Path) -> None:
    comparison = two_versions()

    framed = comparison._repr_html_()
    written = comparison.save(tmp_path / "c.html")

    assert framed.startswith("<iframe")
    assert "sandbox" in framed
    assert written.read_text("utf-8") == comparison.html()
    assert repr(comparison) == (
        f"Comparison(a={comparison.a.run_id!r}, b={comparison.b.run_id!r}, tasks=4, "
        "outputs_differing=2)"
    )


def test_two_results_in_hand_compare_without_a_store() -> None:
    async def run() -> Comparison:
        first = await versioned_crew(None, 1).kickoff()
        second = await versioned_crew(None, 2).kickoff()
        return first.report().compare(second.report())

    comparison = run_virtual(run)

    assert comparison.crew_note is None  # one name; no store, so no crew keys to tell apart
    assert [task.name for task in comparison.tasks] == ["extra", "draft", "plan", "check"]
    assert comparison.tasks[1].change_text() == "+3.00 s, 2.50× slower"
    assert "crewflow report RUN_ID" not in parse(comparison.html()).text  # neither is stored
