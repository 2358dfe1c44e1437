"""The commands that read the run database: ``runs``, ``show``, ``cache clear``, ``optimize``.

They never create the database, and import nothing beyond the store and rich (``crewflow runs``
must stay fast); ``optimize`` loads the optimizer when it runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import anyio
from rich.console import Console
from rich.text import Text

from crewflow.cli._common import EXIT_OK, database_path, exit_code, print_json, read_store
from crewflow.cli._render import show_details, show_runs
from crewflow.exceptions import UnknownRunError
from crewflow.store import MemoryStore

if TYPE_CHECKING:
    from pathlib import Path

    from crewflow.store import AddedTaskRecord, AttemptRecord, OutputRow, RunRecord, Store


@dataclass(frozen=True)
class RunDetails:
    """What ``crewflow show`` shows: the run's record, the tasks its process added, its
    attempts and its outputs."""

    run: RunRecord
    added: list[AddedTaskRecord]
    attempts: list[AttemptRecord]
    outputs: dict[str, OutputRow]

    def to_json(self) -> str:
        """``{"run": ..., "added": [...], "attempts": [...], "outputs": {task: ...}}``,
        indented."""
        return json.dumps(
            {
                "run": self.run.model_dump(mode="json"),
                "added": [task.model_dump(mode="json") for task in self.added],
                "attempts": [row.model_dump(mode="json") for row in self.attempts],
                "outputs": {
                    name: row.model_dump(mode="json") for name, row in self.outputs.items()
                },
            },
            indent=2,
            ensure_ascii=False,
        )


async def _details(store: Store, *, run_id: str) -> RunDetails:
    run = await store.get_run(run_id)
    if run is None:
        raise UnknownRunError(run_id)
    return RunDetails(
        run,
        await store.added_tasks(run_id),
        await store.attempts(run_id),
        await store.outputs(run_id),
    )


def list_runs(
    *, crew: str | None = None, limit: int = 20, as_json: bool = False, db: Path | None = None
) -> int:
    """What ``crewflow runs`` does; returns the exit code."""
    out, err = Console(highlight=False), Console(stderr=True, highlight=False)
    path = database_path(db)
    try:
        found = read_store(path, partial(_list, crew=crew, limit=limit)) if path.exists() else []
    except (Exception, KeyboardInterrupt) as exc:
        return exit_code(err, exc)
    if as_json:
        print_json(out, json.dumps([run.model_dump(mode="json") for run in found], indent=2))
    elif not found:
        of = f" of crew {crew!r}" if crew is not None else ""
        out.print(Text(f"no runs{of} recorded yet (database: {path})"), soft_wrap=True)
    else:
        show_runs(out, found)
    return EXIT_OK


async def _list(store: Store, *, crew: str | None, limit: int) -> list[RunRecord]:
    return await store.list_runs(crew=crew, limit=limit)


def show_run(
    run_id: str, *, as_json: bool = False, full: bool = False, db: Path | None = None
) -> int:
    """What ``crewflow show`` does; returns the exit code."""
    out, err = Console(highlight=False), Console(stderr=True, highlight=False)
    path = database_path(db)
    try:
        if not path.exists():
            raise UnknownRunError(run_id)
        details = read_store(path, partial(_details, run_id=run_id))
    except (Exception, KeyboardInterrupt) as exc:
        return exit_code(err, exc)
    if as_json:
        print_json(out, details.to_json())
    else:
        show_details(out, details, full=full)
    return EXIT_OK


def clear_cache(*, db: Path | None = None) -> int:
    """What ``crewflow cache clear`` does; returns the exit code."""
    out, err = Console(highlight=False), Console(stderr=True, highlight=False)
    path = database_path(db)
    try:
        removed = read_store(path, _clear) if path.exists() else 0
    except (Exception, KeyboardInterrupt) as exc:
        return exit_code(err, exc)
    plural = "y" if removed == 1 else "ies"
    out.print(Text(f"removed {removed:,} cached repl{plural} (database: {path})"), soft_wrap=True)
    return EXIT_OK


async def _clear(store: Store) -> int:
    return await store.cache_clear()


def optimize_runs(
    *, crew: str | None = None, runs: int = 100, as_json: bool = False, db: Path | None = None
) -> int:
    """What ``crewflow optimize`` does; returns the exit code."""
    from crewflow.optimizer import Report, analyze, render  # only this command needs it

    out, err = Console(highlight=False), Console(stderr=True, highlight=False)
    path = database_path(db)

    async def report(store: Store) -> Report:
        return await analyze(store, crew, runs=runs)

    try:
        # Without a database the report is the empty one: "no runs recorded".
        found = read_store(path, report) if path.exists() else anyio.run(report, MemoryStore())
    except (Exception, KeyboardInterrupt) as exc:
        return exit_code(err, exc)
    if as_json:
        print_json(out, found.model_dump_json(indent=2))
    else:
        render(found, out)
    return EXIT_OK
