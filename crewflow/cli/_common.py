"""What every command shares: exit codes, the one-line error report, the run database.

Light on purpose (rich and the exception tree; the store only when a command opens it): the
store commands import this on the way to ``crewflow runs``, which must start fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias, TypeVar

from rich.text import Text

from crewflow.exceptions import (
    ConfigurationError,
    CrewChanged,
    CrewflowError,
    CrewPartialFailure,
    CrewRunError,
    StoreError,
    TaskFailed,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

    from rich.console import Console

    from crewflow.store import RunRecord, Store

EXIT_OK = 0
EXIT_RUN_FAILED = 1
EXIT_USAGE = 2
EXIT_CANCELLED = 130

_T = TypeVar("_T")


class UsageProblem(Exception):
    """A problem with the command line or the crew file (exit code 2)."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped a run: which one, so that the command can say how to finish it.

    Attributes:
        run_id: The run that was stopped (``None`` if it had not started).
    """

    def __init__(self, run_id: str | None) -> None:
        super().__init__(run_id)
        self.run_id = run_id


def format_seconds(value: float) -> str:
    """``1.23 s`` below ten seconds, ``12.3 s`` above."""
    return f"{value:.2f} s" if value < 10 else f"{value:.1f} s"


def print_error(console: Console, message: str) -> None:
    """``error: message`` in bold red: wrapped at words on a terminal, one line elsewhere (a
    log, a pipe to grep)."""
    # Text, not markup: messages hold brackets ("tasks: ['a']") that rich would swallow.
    console.print(Text(f"error: {message}", style="bold red"), soft_wrap=not console.is_terminal)


def show_failure(console: Console, error: CrewRunError) -> None:
    """Why the run failed, and which tasks had finished (their outputs are not lost)."""
    if isinstance(error, CrewPartialFailure):
        # Its own message speaks Python (".outputs", ".failures"); say it as a terminal would.
        failed = ", ".join(error.failures)
        print_error(console, f"run failed: {len(error.failures)} task(s) failed: {failed}")
        for name, failure in error.failures.items():
            cause = failure.cause
            why = f"{type(cause).__name__}: {cause}" if cause is not None else str(failure)
            console.print(Text(f"  {name}: {why}"), soft_wrap=True)
    else:
        print_error(console, f"run failed: {error}")
    if isinstance(error, TaskFailed):
        console.print(Text(f"failed task: {error.task}"), soft_wrap=True)
    if isinstance(error, CrewPartialFailure) and error.skipped:
        console.print(Text(f"skipped: {', '.join(error.skipped)}"), soft_wrap=True)
    finished = ", ".join(error.outputs) if error.outputs else "none"
    console.print(Text(f"finished before the failure: {finished}"), soft_wrap=True)


def exit_code(err: Console, exc: BaseException) -> int:
    """Report ``exc`` on ``err`` in one line (a run failure with its finished tasks); its code."""
    if isinstance(exc, KeyboardInterrupt):
        print_error(err, "cancelled")
        return EXIT_CANCELLED
    if isinstance(exc, CrewChanged):
        print_error(err, f"{exc.reason}; pass --force to {exc.action}")
        return EXIT_USAGE
    if isinstance(exc, UsageProblem | ConfigurationError | StoreError):
        print_error(err, str(exc))
        return EXIT_USAGE
    if isinstance(exc, CrewRunError):
        show_failure(err, exc)
        return EXIT_RUN_FAILED
    if isinstance(exc, CrewflowError):
        print_error(err, str(exc))
        return EXIT_RUN_FAILED
    print_error(err, f"unexpected {type(exc).__name__}: {exc}")
    return EXIT_RUN_FAILED


def print_json(out: Console, text: str) -> None:
    """``text`` and a newline, straight to ``out``'s file."""
    # Straight to the file: rich would wrap long lines and colour the JSON.
    out.file.write(text + "\n")
    out.file.flush()


# -- the run database ---------------------------------------------------------------------------


Database: TypeAlias = "Path | str"
"""A run database as the commands take it: a SQLite file, or a ``postgresql://`` URL (text)."""


def database_path(db: Database | None) -> Database:
    """``--db`` as given, else ``CREWFLOW_STORE``, else the default database (which may not
    exist yet): a SQLite file's path (``sqlite:///PATH`` too), or a PostgreSQL URL as it is."""
    import os

    from crewflow.store import default_store_path
    from crewflow.store._base import POSTGRES_SCHEMES, store_path

    given = db if db is not None else os.environ.get("CREWFLOW_STORE") or default_store_path()
    if isinstance(given, str) and given.startswith(POSTGRES_SCHEMES):
        return given
    try:
        return store_path(given)
    except ValueError as exc:
        raise UsageProblem(f"--db: {exc}") from None


def database_exists(path: Database) -> bool:
    """Whether there is a database to read at ``path`` (a server is asked when it is read)."""
    return isinstance(path, str) or path.exists()


def shown_database(path: Database) -> str:
    """``path`` as the commands print it: a URL without its credentials."""
    if isinstance(path, str):
        from crewflow.llm._redact import public_url

        return public_url(path)
    return str(path)


def read_store(
    path: Database, read: Callable[[Store], Awaitable[_T]], *, read_only: bool = False
) -> _T:
    """Open the database at ``path`` (which exists), ``read`` it, close it.

    ``read_only``: open a SQLite file so (see `SQLiteStore`), which works on a read-only
    filesystem; a database an older crewflow wrote is then opened writable to be upgraded, when
    it can be. A PostgreSQL database is read with the URL's own rights.
    """
    import anyio

    from crewflow.store import SchemaVersionError, SQLiteStore

    async def session(read_only: bool) -> _T:
        store: Store
        if isinstance(path, str):
            from crewflow.store.postgres import PostgresStore

            store = PostgresStore(path)
        else:
            store = SQLiteStore(path, read_only=read_only)
        async with store:
            return await read(store)

    try:
        return anyio.run(session, read_only)
    except SchemaVersionError as exc:
        if isinstance(path, str) or not read_only or exc.found > exc.supported:
            raise
        if not _writable(path):
            raise
    return anyio.run(session, False)


def _writable(path: Path) -> bool:
    import os

    return os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)


SHORT_ID = 4
"""The fewest characters of a run id the commands take for the whole (git-style)."""


async def find_run(store: Store, given: str) -> RunRecord | None:
    """The run called ``given``, else the only run whose id starts with it (at least `SHORT_ID`
    characters), else ``None``.

    Raises:
        UsageProblem: Several runs' ids start with ``given``.
    """
    record = await store.get_run(given)
    if record is not None or len(given) < SHORT_ID:
        return record
    found = await store.run_ids_starting(given, limit=3)
    if len(found) > 1:
        listed = ", ".join(found[:2]) + (", ..." if len(found) > 2 else "")
        raise UsageProblem(
            f"run id {given!r} is ambiguous: {listed} start with it; give more of it"
        )
    return await store.get_run(found[0]) if found else None
