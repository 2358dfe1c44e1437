"""Regenerate the tables of ``docs/reliability.md``, or check them against a fresh run.

Each part of the reliability suite adds one entry to `SECTIONS`: the key of its markers in the
page and an async function that runs that part and returns its `Section`. ``--check`` compares
only the outcome columns (a section's ``varying`` columns differ between runs).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING

import anyio

from tests.reliability.provider_matrix import provider_matrix
from tests.reliability.table import PAGE, Section, differences, update
from tests.runtime.test_store_faults import store_faults_section
from tests.test_cancel_points import cancellation_section
from tests.test_crash_loop import crash_loop_rows_section
from tests.test_soak import soak_section

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

SECTIONS: dict[str, Callable[[], Awaitable[Section]]] = {
    "provider-matrix": provider_matrix,
    "soak": soak_section,
    "crash-loop": crash_loop_rows_section,
    "cancellation": cancellation_section,
    "store-faults": store_faults_section,
}
"""Every section of the page, by the key of its markers."""


async def _run(keys: Sequence[str]) -> list[Section]:
    return [await SECTIONS[key]() for key in keys]


def main(argv: Sequence[str] | None = None) -> int:
    """Regenerate (or with ``--check``, compare) the page's tables; return the exit status."""
    parser = argparse.ArgumentParser(
        prog="python scripts/reliability.py",
        description="Regenerate the tables of docs/reliability.md from fresh runs.",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 when an outcome column differs from the page",
    )
    parser.add_argument(
        "--section",
        action="append",
        choices=sorted(SECTIONS),
        help="only this section (repeatable; default: all)",
    )
    args = parser.parse_args(argv)
    # The runs fail on purpose: their warnings are the outcomes, not news.
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    sections = anyio.run(_run, args.section or list(SECTIONS))
    page = PAGE.read_text(encoding="utf-8")
    if args.check:
        diff = [line for section in sections for line in differences(page, section)]
        sys.stdout.write("\n".join(diff) + "\n" if diff else "outcomes match the page\n")
        return 1 if diff else 0
    for section in sections:
        page = update(page, section)
    PAGE.write_text(page, encoding="utf-8")
    sys.stdout.write(f"wrote {len(sections)} section(s) to {PAGE}\n")
    return 0
