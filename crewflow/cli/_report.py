"""``crewflow report RUN_ID``: write a stored run's report (`crewflow.Report`) as one HTML file,
and open it in a browser with ``--open``."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from rich.console import Console
from rich.text import Text

from crewflow.cli._common import EXIT_OK, database_path, exit_code, find_run, read_store
from crewflow.exceptions import UnknownRunError

if TYPE_CHECKING:
    from pathlib import Path

    from crewflow.report import Report
    from crewflow.store import Store


def default_file(run_id: str) -> str:
    """The file a report is written to without ``-o``: in the current directory."""
    return f"crewflow-report-{run_id}.html"


def write_report(
    run_id: str, *, output: Path | None = None, open_it: bool = False, db: Path | None = None
) -> int:
    """What ``crewflow report`` does; returns the exit code."""
    from pathlib import Path

    out, err = Console(highlight=False), Console(stderr=True, highlight=False)
    path = database_path(db)
    try:
        if not path.exists():
            raise UnknownRunError(run_id)
        report = read_store(path, partial(_read, run_id=run_id), read_only=True)
        target = report.save(output if output is not None else Path(default_file(report.run_id)))
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
