"""Sections whose rows are earned by ordinary tests, one row per test case.

Some parts of the suite are many small pytest cases with fixtures of their own (cancellation
points, store faults). Each case ends by calling `on_page` with the row it earned:

- in a normal test run, the row's outcome cells must be on the committed page, so the page
  cannot drift from what the code does;
- when the page is regenerated, `rows_from_tests` runs those tests in a child pytest with
  ``CREWFLOW_RELIABILITY_ROWS`` naming a file, and `on_page` appends the row there instead.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from tests.reliability.table import PAGE, Row, Section, committed_outcomes

if TYPE_CHECKING:
    from collections.abc import Sequence

ROWS_TO = "CREWFLOW_RELIABILITY_ROWS"
"""The environment variable naming the file where `on_page` collects rows for the page."""

ROOT = PAGE.parents[1]


def on_page(section: Section, row: Row) -> None:
    """Check that the page shows ``row`` (its outcome cells) in ``section``; or, while the page
    is being regenerated, record the row for it."""
    if len(row) != len(section.columns):
        raise ValueError(f"a row of {section.key!r} needs {len(section.columns)} cells: {row}")
    collect = os.environ.get(ROWS_TO)
    if collect:
        with Path(collect).open("a", encoding="utf-8") as rows:
            rows.write(json.dumps({"section": section.key, "row": row}) + "\n")
        return
    shown = committed_outcomes(PAGE.read_text(encoding="utf-8"), section)
    (earned,) = dataclasses.replace(section, rows=[row]).outcomes()
    assert earned in shown, (
        f"docs/reliability.md's {section.key!r} table lacks this outcome: {' | '.join(earned)}\n"
        "(run `python scripts/reliability.py --section "
        f"{section.key}` and review the page's diff)"
    )


async def rows_from_tests(section: Section, *tests: str) -> Section:
    """Run ``tests`` (pytest node ids, from the repository's root) in a child pytest and return
    ``section`` with the rows they earned, in the order they ran.

    Raises:
        AssertionError: A test failed; its output is in the message.
    """
    with tempfile.TemporaryDirectory() as tmp:
        collected = Path(tmp) / "rows.jsonl"
        done = await anyio.run_process(
            [sys.executable, "-m", "pytest", "-q", "-x", *tests],
            cwd=ROOT,
            env={**os.environ, ROWS_TO: str(collected)},
            check=False,
        )
        if done.returncode != 0:
            output = done.stdout.decode(errors="replace")[-4000:]
            raise AssertionError(f"the tests of {section.key!r} failed:\n{output}")
        lines = collected.read_text(encoding="utf-8").splitlines() if collected.exists() else []
    rows: Sequence[Row] = [
        tuple(entry["row"]) for entry in map(json.loads, lines) if entry["section"] == section.key
    ]
    return dataclasses.replace(section, rows=rows)
