"""The provider fault matrix: every fault ends as expected, and the page's table says so."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import pytest

from tests.reliability.provider_matrix import CASES, provider_matrix
from tests.reliability.table import PAGE, differences

if TYPE_CHECKING:
    from tests.reliability.table import Section

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def matrix() -> Section:
    """One run of the whole matrix (about 20 s), shared by the tests of this module."""
    return anyio.run(provider_matrix)


def test_every_fault_ends_as_expected(matrix: Section) -> None:
    unexpected = [
        f"{fault} via {client}: expected {expected!r}, got {happened!r}"
        for fault, client, expected, happened, *_ in matrix.rows
        if happened != expected
    ]
    assert unexpected == []
    assert len(matrix.rows) == sum(len(case.clients) for case in CASES)


def test_the_committed_table_matches_a_fresh_run(matrix: Section) -> None:
    diff = differences(PAGE.read_text(encoding="utf-8"), matrix)
    assert diff == [], "run `python scripts/reliability.py` and commit docs/reliability.md"
