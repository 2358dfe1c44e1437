"""``crewflow report RUN_ID``: write a stored run's report (`crewflow.Report`) as one HTML file,
and open it in a browser with ``--open``; with ``--compare RUN_B``, the two runs side by side
(`crewflow.report.Comparison`)."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from rich.console import Console
from rich.text import Text

from crewflow.cli._common import (
    EXIT_OK,
    database_exists,
    database_path,
    exit_code,
    find_run,
    read_store,
)
from crewflow.exceptions import UnknownRunError

if TYPE_CHECKING:
    from pathlib import Path

    from crewflow.cli._common import Database
    from crewflow.report import Comparison, Report
    from crewflow.store import Store


def default_file(run_id: str) -> str:
    """The file a report is written to without ``-o``: in the current directory."""
    return f"crewflow-report-{run_id}.html"


def compare_file(run_a: str, run_b: str) -> str:
    """The file a comparison is written to without ``-o``: in the current directory, named by
    the runs' ids' first 8 characters."""
    return f"crewflow-compare-{run_a[:8]}-{run_b[:8]}.html"


def write_report(
    run_id: str,
    *,
    output: Path | None = None,
    open_it: bool = False,
    db: Database | None = None,
    compare: str | None = None,
) -> int:
    """What ``crewflow report`` does; returns the exit code."""
    from pathlib import Path

    out, err = Console(highlight=False), Console(stderr=True, highlight=False)
    path = database_path(db)
    try:
        if not database_exists(path):
            raise UnknownRunError(run_id)
        if compare is None:
            report = read_store(path, partial(_read, run_id=run_id), read_only=True)
            target = report.save(output or Path(default_file(report.run_id)))
        else:
            read = partial(_compare, run_a=run_id, run_b=compare)
            both = read_store(path, read, read_only=True)
            target = both.save(output or Path(compare_file(both.a.run_id, both.b.run_id)))
    except (Exception, KeyboardInterrupt) as exc:
        return exit_code(err, exc)
    written = target.resolve()
    out.print(Text(str(written)), soft_wrap=True)
    if open_it:
        import webbrowser

        webbrowser.open(written.as_uri())
    return EXIT_OK


async def _read(store: Store, *, run_id: str) -> Report:
    from crewflow.report import Report

    run = await find_run(store, run_id)
    if run is None:
        raise UnknownRunError(run_id)
    return await Report.from_store(store, run.run_id)


async def _compare(store: Store, *, run_a: str, run_b: str) -> Comparison:
    from crewflow.report import Comparison

    first, second = await find_run(store, run_a), await find_run(store, run_b)
    if first is None or second is None:
        raise UnknownRunError(run_a if first is None else run_b)
    return await Comparison.from_store(store, first.run_id, second.run_id)
