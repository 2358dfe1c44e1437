"""The page tables: rendering between markers, reading back, comparing outcomes only."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from tests.reliability import from_tests
from tests.reliability.provider_matrix import describe
from tests.reliability.table import Section, committed_outcomes, differences, update

if TYPE_CHECKING:
    from pathlib import Path

PAGE = """# Page

<!-- reliability:demo:start -->
old table
<!-- reliability:demo:end -->

after
"""


def section(*rows: tuple[str, ...]) -> Section:
    return Section("demo", "Demo", ("fault", "outcome", "time"), frozenset({"time"}), rows)


def test_update_replaces_only_the_sections_span_and_reads_back() -> None:
    page = update(PAGE, section(("a | b", "completed", "0.10 s")))

    assert page.startswith("# Page\n\n<!-- reliability:demo:start -->\n| fault |")
    assert page.endswith("<!-- reliability:demo:end -->\n\nafter\n")
    assert "old table" not in page
    # A pipe in a cell is escaped in the table and comes back whole.
    assert committed_outcomes(page, section()) == [("a | b", "completed")]


def test_varying_columns_are_not_compared_but_outcomes_are() -> None:
    page = update(PAGE, section(("429", "completed", "0.10 s")))

    assert differences(page, section(("429", "completed", "9.99 s"))) == []
    diff = differences(page, section(("429", "TaskFailed", "0.10 s")))
    assert "-429 | completed" in diff
    assert "+429 | TaskFailed" in diff


def test_a_page_without_the_markers_or_with_other_columns_is_an_error() -> None:
    with pytest.raises(ValueError, match="no <!-- reliability:demo:start -->"):
        update("# Page\n", section())
    other = update(PAGE, Section("demo", "Demo", ("fault", "time")))
    with pytest.raises(ValueError, match="columns"):
        committed_outcomes(other, section())


@pytest.mark.parametrize(
    ("requests", "retries", "text", "expected"),
    [
        (1, 0, "ok", "completed"),
        (2, 1, "ok", "completed after 1 retry"),
        (3, 2, "ok", "completed after 2 retries"),
        (2, 0, "ok", "completed in 2 requests"),
        (1, 0, "", "completed with empty text"),
    ],
)
def test_describe_says_how_a_run_completed(
    requests: int, retries: int, text: str, expected: str
) -> None:
    assert describe(None, requests, retries, text) == expected


def test_a_tests_row_must_be_on_the_page_unless_the_page_is_being_regenerated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    page = tmp_path / "reliability.md"
    page.write_text(update(PAGE, section(("429", "completed", "0.10 s"))), encoding="utf-8")
    monkeypatch.setattr(from_tests, "PAGE", page)
    monkeypatch.delenv(from_tests.ROWS_TO, raising=False)

    from_tests.on_page(section(), ("429", "completed", "9.99 s"))  # times are not compared
    with pytest.raises(AssertionError, match=r"lacks this outcome: 429 \| TaskFailed"):
        from_tests.on_page(section(), ("429", "TaskFailed", "0.10 s"))
    with pytest.raises(ValueError, match="needs 3 cells"):
        from_tests.on_page(section(), ("429", "completed"))

    collected = tmp_path / "rows.jsonl"
    monkeypatch.setenv(from_tests.ROWS_TO, str(collected))
    from_tests.on_page(section(), ("500", "TaskFailed", "0.20 s"))
    assert json.loads(collected.read_text(encoding="utf-8")) == {
        "section": "demo",
        "row": ["500", "TaskFailed", "0.20 s"],
    }
