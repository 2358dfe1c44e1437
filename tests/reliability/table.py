"""The tables of ``docs/reliability.md``: sections of rows, rendered between markers.

Each part of the reliability suite contributes a `Section`, made by one async function listed
in `tests.reliability.generate.SECTIONS`. A section's table sits in the page between
``<!-- reliability:KEY:start -->`` and ``<!-- reliability:KEY:end -->``; regenerating it replaces
only that span. Its ``varying`` columns (times, counts that depend on timing) differ from run to
run and are left out when a fresh run is compared with the committed page."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

Row = tuple[str, ...]

PAGE = Path(__file__).resolve().parents[2] / "docs" / "reliability.md"
"""The page the tables are on."""


@dataclass(frozen=True)
class Section:
    """One table of the reliability page.

    Attributes:
        key: Names the section's markers in the page (``provider-matrix``).
        title: What the table shows.
        columns: The column headings.
        varying: Columns left out of comparisons (times, counts that depend on timing): they
            vary between runs.
        rows: The rows, one cell per column.
    """

    key: str
    title: str
    columns: Row
    varying: frozenset[str] = field(default_factory=frozenset)
    rows: Sequence[Row] = ()

    def outcomes(self) -> list[Row]:
        """The rows without their varying columns."""
        return [_outcome_cells(self.columns, self.varying, row) for row in self.rows]


def markers(key: str) -> tuple[str, str]:
    """The comment lines that open and close a section's table in the page."""
    return f"<!-- reliability:{key}:start -->", f"<!-- reliability:{key}:end -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(section: Section) -> str:
    """The section's table as Markdown."""
    lines = [
        "| " + " | ".join(section.columns) + " |",
        "|" + "|".join("---" for _ in section.columns) + "|",
    ]
    lines += ["| " + " | ".join(_cell(cell) for cell in row) + " |" for row in section.rows]
    return "\n".join(lines)


def update(page: str, section: Section) -> str:
    """Return the page with the section's table replaced.

    Raises:
        ValueError: The page lacks the section's markers.
    """
    start, end = markers(section.key)
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if not pattern.search(page):
        raise ValueError(f"the page has no {start} ... {end} markers for its table")
    return pattern.sub(lambda _: f"{start}\n{render(section)}\n{end}", page, count=1)


def committed_outcomes(page: str, section: Section) -> list[Row]:
    """Read the section's rows back from the page, without their varying columns.

    Raises:
        ValueError: The page lacks the section's markers, or its table has other columns.
    """
    start, end = markers(section.key)
    found = re.search(re.escape(start) + r"(.*?)" + re.escape(end), page, re.DOTALL)
    if found is None:
        raise ValueError(f"the page has no {start} ... {end} markers for its table")
    lines = [line for line in found.group(1).strip().splitlines() if line.startswith("|")]
    columns = _split(lines[0]) if lines else ()
    if columns != section.columns:
        raise ValueError(f"the page's table has columns {columns}, not {section.columns}")
    return [_outcome_cells(columns, section.varying, _split(line)) for line in lines[2:]]


def _split(line: str) -> Row:
    cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))
    return tuple(cell.strip().replace("\\|", "|") for cell in cells)


def _outcome_cells(columns: Row, varying: frozenset[str], row: Row) -> Row:
    return tuple(cell for name, cell in zip(columns, row, strict=True) if name not in varying)


def differences(page: str, section: Section) -> list[str]:
    """The outcome rows that differ between the page and a fresh run, as a unified diff."""
    committed = [" | ".join(row) for row in committed_outcomes(page, section)]
    fresh = [" | ".join(row) for row in section.outcomes()]
    return list(
        difflib.unified_diff(committed, fresh, "docs/reliability.md", "fresh run", lineterm="")
    )
