"""`SQLiteStore`: run records in one SQLite file, safe for several processes at once.

How it stays correct and off the event loop:

- **WAL with ``synchronous=NORMAL``.** Readers never block the writer; a commit is durable
  against the process dying at any instant (``kill -9``), which is what a checkpoint needs. (An
  OS crash or power cut may lose the last commits; ``FULL`` would fsync every commit for that.)
- **``BEGIN IMMEDIATE`` for every write** takes the write lock up front, so two processes never
  both read-then-write and deadlock; waiting for the lock is bounded by the busy timeout.
- **One connection per store, one thread at a time.** Every SQLite call runs in a worker
  thread (`anyio.to_thread.run_sync`), never on the event loop. sqlite3 connections are not safe
  to use from two threads at once, so the connection is opened with ``check_same_thread=False``
  and every use holds a `threading.Lock`. A lock rather than a dedicated thread: it needs no
  thread to start or stop, works from any event loop (one store may serve several ``anyio.run``
  calls), and a write already handed to a thread finishes even if its caller is cancelled.
- **Opened lazily.** Nothing touches the disk until the first call; ``close()`` releases the
  connection, and a later call opens it again.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio.to_thread

from crewflow.store._base import (
    DuplicateRunError,
    SchemaVersionError,
    Store,
    StoreError,
    UnknownRunError,
    check_limit,
    default_store_path,
)
from crewflow.store._records import AttemptRow, OutputRow, RunRecord, RunStatus, UsageRecord
from crewflow.store._schema import MIGRATIONS

if TYPE_CHECKING:
    import os
    from collections.abc import Callable, Iterator, Sequence
    from datetime import datetime

    from crewflow.llm._types import Usage

__all__ = ["SQLiteStore"]

_T = TypeVar("_T")

_RUN_COLUMNS = (
    "run_id, crew, fingerprint, source, process, process_reason, inputs, status, started, "
    "ended, usage, graph, max_concurrency, resumed"
)
_ATTEMPT_COLUMNS = (
    'run_id, task, attempt, agent, start, "end", status, error_type, error, model, requests, '
    "prompt_tokens, completion_tokens, cost, cache_hit, llm_retries, limit_wait, limit_waits"
)
_RUN_MARKS = ", ".join("?" * (len(_RUN_COLUMNS.split(",")) + 1))
_OUTPUT_COLUMNS = "run_id, task, text, data, agent, model, finished_at"
_INSERT_ATTEMPT = "INSERT OR REPLACE INTO attempts ({}, start_ts) VALUES ({})".format(
    _ATTEMPT_COLUMNS, ", ".join("?" * (len(_ATTEMPT_COLUMNS.split(",")) + 1))
)
_INSERT_OUTPUT = "INSERT OR REPLACE INTO outputs ({}, finished_ts) VALUES ({})".format(
    _OUTPUT_COLUMNS, ", ".join("?" * (len(_OUTPUT_COLUMNS.split(",")) + 1))
)


class SQLiteStore(Store):
    """Records runs in a SQLite database file (the default store).

    Args:
        path: The database file; default `default_store_path()` (``runs.db`` in
            ``CREWFLOW_HOME`` or the user data directory). Its directory is created on first use.
        timeout: Seconds a call waits for another process's write lock before failing.

    Example:
        ```python
        async with SQLiteStore("runs.db") as store:
            run = await store.get_run(run_id)
        ```
    """

    def __init__(
        self, path: str | os.PathLike[str] | None = None, *, timeout: float = 30.0
    ) -> None:
        self.path = Path(path) if path is not None else default_store_path()
        self.timeout = timeout
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"

    async def start_run(self, record: RunRecord) -> None:
        values = _run_values(record)

        def insert(conn: sqlite3.Connection) -> None:
            with _write(conn):
                if _run_exists(conn, record.run_id):
                    raise DuplicateRunError(record.run_id)
                conn.execute(
                    f"INSERT INTO runs ({_RUN_COLUMNS}, started_ts) VALUES ({_RUN_MARKS})",
                    values,
                )

        await self._call(insert)

    async def finish_run(
        self,
        run_id: str,
        status: RunStatus,
        ended: datetime,
        usage: Usage | UsageRecord,
    ) -> None:
        # Validate through the record so that a bad value fails here, as in MemoryStore.
        checked = RunRecord(
            run_id=run_id,
            crew="",
            started=ended,
            status=RunStatus(status),
            ended=ended,
            usage=UsageRecord.from_usage(usage),
        ).model_dump(mode="json")

        def update(conn: sqlite3.Connection) -> None:
            with _write(conn):
                cursor = conn.execute(
                    "UPDATE runs SET status = ?, ended = ?, usage = ? WHERE run_id = ?",
                    (checked["status"], checked["ended"], _json(checked["usage"]), run_id),
                )
                if cursor.rowcount == 0:
                    raise UnknownRunError(run_id)

        await self._call(update)

    async def reopen_run(self, run_id: str) -> None:
        def update(conn: sqlite3.Connection) -> None:
            with _write(conn):
                cursor = conn.execute(
                    "UPDATE runs SET status = ?, ended = NULL, resumed = resumed + 1 "
                    "WHERE run_id = ?",
                    (RunStatus.RUNNING.value, run_id),
                )
                if cursor.rowcount == 0:
                    raise UnknownRunError(run_id)

        await self._call(update)

    async def record_attempt(self, row: AttemptRow) -> None:
        values = _attempt_values(row)

        def insert(conn: sqlite3.Connection) -> None:
            with _write(conn):
                _require_run(conn, row.run_id)
                conn.execute(_INSERT_ATTEMPT, values)

        await self._call(insert)

    async def save_output(self, row: OutputRow) -> None:
        values = _output_values(row)

        def insert(conn: sqlite3.Connection) -> None:
            with _write(conn):
                _require_run(conn, row.run_id)
                conn.execute(_INSERT_OUTPUT, values)

        await self._call(insert)

    async def save_task(self, output: OutputRow, attempts: Sequence[AttemptRow] = ()) -> None:
        # One thread hop and one transaction for the whole task: the hop costs more than the
        # commit, and the runtime checkpoints every task.
        output_values = _output_values(output)
        attempt_values = [_attempt_values(row) for row in attempts]
        run_ids = dict.fromkeys([output.run_id, *(row.run_id for row in attempts)])

        def insert(conn: sqlite3.Connection) -> None:
            with _write(conn):
                for run_id in run_ids:
                    _require_run(conn, run_id)
                conn.executemany(_INSERT_ATTEMPT, attempt_values)
                conn.execute(_INSERT_OUTPUT, output_values)

        await self._call(insert)

    async def get_run(self, run_id: str) -> RunRecord | None:
        def select(conn: sqlite3.Connection) -> tuple[Any, ...] | None:
            query = f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id = ?"
            result: tuple[Any, ...] | None = conn.execute(query, (run_id,)).fetchone()
            return result

        found = await self._call(select)
        return None if found is None else _run_from_row(found)

    async def outputs(self, run_id: str) -> dict[str, OutputRow]:
        def select(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
            return conn.execute(
                f"SELECT {_OUTPUT_COLUMNS} FROM outputs WHERE run_id = ? "
                "ORDER BY finished_ts, rowid",
                (run_id,),
            ).fetchall()

        rows = [_output_from_row(found) for found in await self._call(select)]
        return {row.task: row for row in rows}

    async def attempts(self, run_id: str) -> list[AttemptRow]:
        def select(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
            return conn.execute(
                f"SELECT {_ATTEMPT_COLUMNS} FROM attempts WHERE run_id = ? "
                "ORDER BY start_ts, task, attempt",
                (run_id,),
            ).fetchall()

        return [_attempt_from_row(found) for found in await self._call(select)]

    async def list_runs(self, crew: str | None = None, limit: int | None = 20) -> list[RunRecord]:
        check_limit(limit)
        params: list[str | int] = [] if crew is None else [crew]
        where = "" if crew is None else "WHERE crew = ?"
        query = (
            f"SELECT {_RUN_COLUMNS} FROM runs {where} ORDER BY started_ts DESC, rowid DESC LIMIT ?"
        )
        params.append(-1 if limit is None else limit)

        def select(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
            return conn.execute(query, params).fetchall()

        return [_run_from_row(found) for found in await self._call(select)]

    async def cache_get(self, key: str) -> str | None:
        def select(conn: sqlite3.Connection) -> str | None:
            found = conn.execute("SELECT value FROM cache WHERE key = ?", (key,)).fetchone()
            return None if found is None else str(found[0])

        return await self._call(select)

    async def cache_put(self, key: str, value: str) -> None:
        def insert(conn: sqlite3.Connection) -> None:
            with _write(conn):
                conn.execute(
                    "INSERT OR REPLACE INTO cache (key, value, created_ts) VALUES (?, ?, ?)",
                    (key, value, time.time()),
                )

        await self._call(insert)

    async def cache_clear(self) -> int:
        def delete(conn: sqlite3.Connection) -> int:
            with _write(conn):
                return conn.execute("DELETE FROM cache").rowcount

        return await self._call(delete)

    async def pragmas(self) -> dict[str, Any]:
        """The connection's settings that matter for safety: journal mode, synchronous level
        (1 is NORMAL), busy timeout in milliseconds, foreign keys; for diagnostics and tests."""

        def read(conn: sqlite3.Connection) -> dict[str, Any]:
            names = ("journal_mode", "synchronous", "busy_timeout", "foreign_keys")
            return {name: conn.execute(f"PRAGMA {name}").fetchone()[0] for name in names}

        return await self._call(read)

    async def schema_version(self) -> int:
        """The database's schema version (``len(MIGRATIONS)`` once opened)."""
        return await self._call(_read_version)

    async def close(self) -> None:
        await anyio.to_thread.run_sync(self._close)

    def _close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()

    async def _call(self, operation: Callable[[sqlite3.Connection], _T]) -> _T:
        # Not abandoned on cancellation: a write handed to the thread commits or rolls back
        # as a whole before the caller sees the cancellation.
        return await anyio.to_thread.run_sync(self._locked, operation)

    def _locked(self, operation: Callable[[sqlite3.Connection], _T]) -> _T:
        with self._lock:
            try:
                if self._conn is None:
                    self._conn = self._open()
                return operation(self._conn)
            except sqlite3.Error as exc:
                raise StoreError(f"the run database {self.path} failed: {exc}") from exc

    def _open(self) -> sqlite3.Connection:
        if str(self.path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self.path,
            timeout=self.timeout,
            isolation_level=None,  # autocommit: transactions are explicit BEGIN IMMEDIATE
            check_same_thread=False,  # used from worker threads, one at a time (self._lock)
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            _enable_wal(conn, self.timeout)
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            _migrate(conn, str(self.path))
        except BaseException:
            conn.close()
            raise
        return conn


@contextmanager
def _write(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _enable_wal(conn: sqlite3.Connection, timeout: float) -> None:
    # Switching a fresh file to WAL needs an exclusive lock, and a switch racing another
    # process's can report "locked" without waiting out the busy timeout: retry within it. This
    # runs in a worker thread, so the short sleeps never hold up the event loop.
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL").fetchone()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.005)
        else:
            return


def _read_version(conn: sqlite3.Connection) -> int:
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone()
    if exists is None:
        return 0
    found = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
    return int(found or 0)


def _migrate(conn: sqlite3.Connection, path: str) -> None:
    target = len(MIGRATIONS)
    if _read_version(conn) == target:
        return
    with _write(conn):
        # Read again under the write lock: another process may have migrated meanwhile.
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        found = _read_version(conn)
        if found > target:
            raise SchemaVersionError(path, found, target)
        for migration in MIGRATIONS[found:]:
            migration(conn)
        conn.execute("DELETE FROM schema_version")
        conn.execute("INSERT INTO schema_version (version) VALUES (?)", (target,))


def _run_exists(conn: sqlite3.Connection, run_id: str) -> bool:
    return conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is not None


def _require_run(conn: sqlite3.Connection, run_id: str) -> None:
    if not _run_exists(conn, run_id):
        raise UnknownRunError(run_id)


def _names(columns: str) -> list[str]:
    return [name.strip().strip('"') for name in columns.split(",")]


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False)


def _run_values(record: RunRecord) -> tuple[Any, ...]:
    data = record.model_dump(mode="json")
    for name in ("inputs", "usage", "graph"):
        data[name] = _json(data[name])
    data["source"] = None if record.source is None else _json(data["source"])
    return (*(data[name] for name in _names(_RUN_COLUMNS)), record.started.timestamp())


def _attempt_values(row: AttemptRow) -> tuple[Any, ...]:
    data = row.model_dump(mode="json")
    data["limit_waits"] = _json(data["limit_waits"])
    return (*(data[name] for name in _names(_ATTEMPT_COLUMNS)), row.start.timestamp())


def _output_values(row: OutputRow) -> tuple[Any, ...]:
    data = row.model_dump(mode="json")
    data["data"] = None if row.data is None else _json(data["data"])
    return (*(data[name] for name in _names(_OUTPUT_COLUMNS)), row.finished_at.timestamp())


def _run_from_row(found: tuple[Any, ...]) -> RunRecord:
    data = dict(zip(_names(_RUN_COLUMNS), found, strict=True))
    for name in ("inputs", "usage", "graph"):
        data[name] = json.loads(data[name])
    data["source"] = None if data["source"] is None else json.loads(data["source"])
    return RunRecord.model_validate(data)


def _attempt_from_row(found: tuple[Any, ...]) -> AttemptRow:
    data = dict(zip(_names(_ATTEMPT_COLUMNS), found, strict=True))
    data["limit_waits"] = json.loads(data["limit_waits"])
    return AttemptRow.model_validate(data)


def _output_from_row(found: tuple[Any, ...]) -> OutputRow:
    data = dict(zip(_names(_OUTPUT_COLUMNS), found, strict=True))
    data["data"] = None if data["data"] is None else json.loads(data["data"])
    return OutputRow.model_validate(data)
