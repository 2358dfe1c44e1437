"""`SQLiteStore`: run records in one SQLite file, safe for several processes at once.

How it stays correct, never waits on the event loop, and is cheap enough to record every task:

- **WAL with ``synchronous=NORMAL``.** Readers never block the writer; a commit is durable
  against the process dying at any instant (``kill -9``), which is what a checkpoint needs. (An
  OS crash or power cut may lose the last commits; ``FULL`` would fsync every commit for that.)
- **``BEGIN IMMEDIATE`` for every write** takes the write lock up front, so two processes never
  both read-then-write and deadlock; waiting for the lock is bounded by the busy timeout.
- **Checkpoints commit on the event loop's thread.** A write (a task's checkpoint, the run's
  end, any other) runs as one small ``BEGIN IMMEDIATE … COMMIT`` right where it is awaited,
  with the connection's busy timeout at 0: a commit on the loop never waits for a lock. In a
  500-task chain on an instant model it takes about 85 us (``BEGIN IMMEDIATE`` 19, the lease
  check 7, two inserts 27, ``COMMIT`` 35); handing it to a thread and waking the loop again
  made ``save_task`` awaited alone cost 182 us, now 80 (``benchmarks/store.py``), and the chain
  ~390 us per task, now ~270 (~90 with ``store=None``; minimum of 7 kickoffs). Only when
  that cannot be done without waiting does the write go to the store's thread: another
  process holds the write lock (SQLite answers ``SQLITE_BUSY`` at once; nothing was written),
  or the store's checkpointer has fallen behind. Writes made while calls are queued there wait
  for them on the loop (so writes keep their order: the run's end never commits before a
  checkpoint still queued), and commit on the loop once the thread has run them.
- **One thread per store waits for the rest.** Reads, the first write (which opens and
  migrates the database) and writes that must wait run in the store's thread, with the
  busy timeout set to the store's ``timeout``. Callers put their operation on a queue and
  await an asyncio future that the thread resolves through ``call_soon_threadsafe`` (one
  wake-up per loop and batch). Both use one connection, taken in turn under a lock that the
  loop only ever tries (never waits for). Each call carries its own loop, so one store serves
  several ``anyio.run`` calls and several threads. The thread is a daemon (it never keeps the
  interpreter alive), stops after ``close()`` or some idle seconds, and the next call starts
  it again; a forked child opens its own connection and thread.
- **Group commit, on the loop and in the thread.** The writes of one event loop iteration (the
  checkpoints of a parallel crew's tasks finishing together) commit together on the loop, in
  one ``BEGIN IMMEDIATE … COMMIT`` scheduled by ``loop.call_soon``; the iteration's first
  write commits at once unless the loop's latest iterations had several, so a chain pays
  nothing for it. The thread likewise takes every write waiting in its queue: those queued
  behind another process's lock share one transaction. Either way, consecutive ``save_task``
  calls are one multi-row ``INSERT`` per table; should that insert fail, and for every other
  kind of write, each write runs in its own savepoint, so one that fails (an unknown run) is
  undone alone and fails only its own caller. Every caller hears back only after the
  ``COMMIT`` (a task's dependants never start before its checkpoint is durable). On either
  path, whatever a write raises rolls that write back and leaves the connection usable. A
  parallel 10,000-task DAG on an instant model commits its 10,002 writes on the loop in 125
  transactions, at 0.266 ms per task (0.303 when every write made while the thread had work
  went there, 0.17 with ``store=None``); 1,000 ``save_task`` calls at once cost
  46 us each, were 67 (``benchmarks/store.py``, medians of 5 alternating runs).
- **The WAL kept short by one thread** (``crewflow.store._checkpointer``): SQLite's automatic
  checkpoint, which runs inside a commit and syncs the whole log to disk first, is off; every
  32 commits wake a long-lived thread with its own connection, which runs a ``PASSIVE``
  checkpoint, and a ``TRUNCATE`` once the log passes 1,000 pages. Over 10,000 checkpoints
  while another process keeps reading, the log peaked at 5.6-7.4 MB in five runs (4.3-10.5 MB
  with SQLite's own checkpoint inside the commit; the test asserts < 12.4 MB). Commits that
  outrun the thread are held back in the store's thread, never on the loop.
- **Not abandoned on cancellation.** A commit on the loop is synchronous, so no cancellation
  can reach it halfway. A cancelled caller whose write went to the thread waits until it has
  committed or rolled back before it sees the cancellation, as with
  ``anyio.to_thread.run_sync``: nothing is ever left half-written, and when the call ends its
  outcome is settled.
- **Opened lazily.** Nothing touches the disk until the first call; ``close()`` releases the
  connection, and a later call opens it again.
- **Read-only when asked** (``read_only=True``, what ``crewflow runs``, ``show`` and
  ``optimize`` use): ``mode=ro``, never migrated, so a database on a read-only filesystem can be
  read. In WAL mode even a reader needs the shared-memory file beside the database; when that
  cannot be made (a read-only directory), the file is opened ``immutable=1`` instead, which
  reads without any lock and so may miss, or misread, what a concurrent writer commits.
"""

from __future__ import annotations

import errno
import sqlite3
import time
import urllib.parse
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic_core import to_jsonable_python

from crewflow._records import AttemptRecord, RunStatus
from crewflow._text import valid_text, valid_values
from crewflow.store._base import (
    DuplicateRunError,
    SchemaVersionError,
    Store,
    StoreError,
    UnknownRunError,
    check_limit,
    default_store_path,
)
from crewflow.store._lease import Lease, observed
from crewflow.store._rows import (
    ATTEMPT_SELECT,
    BATCH_COLUMNS,
    DECISION_COLUMNS,
    DECISIONS,
    LEASE_WRITE,
    OUTPUT_COLUMNS,
    PROMPTS_JSON,
    RUN_COLUMNS,
    RUN_MARKS,
    SELECT_RUNS,
    TASK_COLUMNS,
    TASKS,
    TaskRows,
    attempt_from_row,
    batch_from_rows,
    batch_item_values,
    batch_values,
    check_lease,
    decision_from_row,
    decision_values,
    finish_values,
    lease_values,
    output_from_row,
    output_values,
    prompts_from_row,
    run_exists,
    run_from_row,
    run_values,
    task_from_row,
    task_values,
    to_json,
    valid_status,
)
from crewflow.store._schema import MIGRATIONS
from crewflow.store._writer import Writer

if TYPE_CHECKING:
    import os
    from collections.abc import Coroutine, Mapping, Sequence

    from pydantic import JsonValue

    from crewflow._records import PromptRecord
    from crewflow._usage import Usage
    from crewflow.store._base import FinishedOutput
    from crewflow.store._records import (
        AddedTaskRecord,
        BatchRecord,
        BatchStatus,
        DecisionRecord,
        OutputRow,
        RunRecord,
    )

__all__ = ["SQLiteStore"]


class SQLiteStore(Store):
    """Records runs in a SQLite database file (the default store).

    Args:
        path: The database file; default `default_store_path()` (``runs.db`` in
            ``CREWFLOW_HOME`` or the user data directory). Its directory is created on first use.
        timeout: Seconds a call waits for another process's write lock before failing.
        read_only: Only read: open the file (which must exist) with SQLite's ``mode=ro``, or
            ``immutable=1`` when its directory is read-only, which may miss what another
            process writes meanwhile; never create, migrate or write it. A write raises
            `StoreError`, and a database whose schema is older than this crewflow's raises
            `SchemaVersionError` (the first store that writes to it upgrades it).

    Every string is stored as valid UTF-8 without NUL (lone surrogates and NUL become U+FFFD);
    a key a method is given (a run id, a cache key) is repaired the same way, so that it finds
    what was stored under it.

    Example:
        ```python
        async with SQLiteStore("runs.db") as store:
            run = await store.get_run(run_id)
        ```
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        timeout: float = 30.0,
        read_only: bool = False,
    ) -> None:
        self.path = Path(path) if path is not None else default_store_path()
        self.timeout = timeout
        self.read_only = read_only
        self._writer = Writer(self.path, self._open, timeout=timeout, direct=not read_only)

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"

    async def start_run(self, record: RunRecord) -> None:
        values = run_values(record)
        lease = None if record.lease is None else lease_values(record.run_id, record.lease)

        def insert(conn: sqlite3.Connection) -> None:
            if run_exists(conn, record.run_id):
                raise DuplicateRunError(record.run_id)
            conn.execute(
                f"INSERT INTO runs ({RUN_COLUMNS}, started_ts) VALUES ({RUN_MARKS})", values
            )
            if lease is not None:
                conn.execute(LEASE_WRITE, lease)

        await self._writer.write(insert)

    async def finish_run(
        self,
        run_id: str,
        status: RunStatus,
        ended: datetime,
        usage: Usage,
        *,
        lease: str | None = None,
    ) -> None:
        run_id = valid_text(run_id)
        values = finish_values(run_id, status, ended, usage)

        def finish(conn: sqlite3.Connection) -> None:
            check_lease(conn, run_id, lease)
            statement = "UPDATE runs SET status = ?, ended = ?, usage = ? WHERE run_id = ?"
            if conn.execute(statement, values).rowcount == 0:
                raise UnknownRunError(run_id)
            conn.execute("DELETE FROM leases WHERE run_id = ?", (run_id,))

        await self._writer.write(finish)

    async def reopen_run(self, run_id: str, *, lease: str | None = None) -> None:
        await self._update(
            run_id,
            "status = ?, ended = NULL, resumed = resumed + 1",
            (RunStatus.RUNNING.value,),
            lease,
        )

    async def take_lease(self, run_id: str, lease: Lease, *, replacing: str | None) -> bool:
        run_id = valid_text(run_id)
        values = lease_values(run_id, lease)

        def take(conn: sqlite3.Connection) -> bool:
            # Under the transaction's write lock: nobody takes or renews it in between.
            held = conn.execute("SELECT token FROM leases WHERE run_id = ?", (run_id,)).fetchone()
            if held is None and not run_exists(conn, run_id):
                raise UnknownRunError(run_id)
            if (None if held is None else held[0]) != replacing:
                return False
            conn.execute(LEASE_WRITE, values)
            return True

        return await self._writer.write(take)

    async def renew_lease(
        self,
        run_id: str,
        token: str,
        expires: datetime,
        *,
        running: Sequence[str] | None = None,
    ) -> bool:
        listed = None if running is None else to_json(list(running))
        values = valid_values(
            (to_jsonable_python(expires), expires.timestamp(), listed, run_id, token)
        )

        def renew(conn: sqlite3.Connection) -> bool:
            statement = (
                "UPDATE leases SET expires = ?, expires_ts = ?, running = coalesce(?, running) "
                "WHERE run_id = ? AND token = ?"
            )
            return conn.execute(statement, values).rowcount == 1

        return await self._writer.write(renew)

    async def record_choice(
        self,
        run_id: str,
        process: str,
        reason: str,
        details: Mapping[str, JsonValue] | None = None,
        *,
        lease: str | None = None,
    ) -> None:
        await self._update(
            run_id,
            "chosen = ?, process_reason = ?, details = json_patch(details, ?)",
            (process, reason, to_json(dict(details or {}))),
            lease,
        )

    async def record_health(
        self,
        run_id: str,
        health: Mapping[str, JsonValue] | None,
        *,
        lease: str | None = None,
    ) -> None:
        if health is None:
            await self._update(run_id, "details = json_remove(details, '$.health')", (), lease)
            return
        await self._update(
            run_id,
            "details = json_set(details, '$.health', json(?))",
            (to_json(dict(health)),),
            lease,
        )

    async def record_pause(self, run_id: str, *, lease: str | None = None) -> None:
        await self._update(run_id, "paused = 1", (), lease)

    async def add_tasks(
        self, run_id: str, tasks: Sequence[AddedTaskRecord], *, lease: str | None = None
    ) -> None:
        run_id = valid_text(run_id)
        values = [task_values(run_id, task) for task in tasks]

        def insert(conn: sqlite3.Connection) -> None:
            if not run_exists(conn, run_id):
                raise UnknownRunError(run_id)
            check_lease(conn, run_id, lease)
            TASKS.insert(conn, values)

        await self._writer.write(insert)

    async def record_decisions(
        self, run_id: str, decisions: Sequence[DecisionRecord], *, lease: str | None = None
    ) -> None:
        run_id = valid_text(run_id)
        values = [decision_values(run_id, decision) for decision in decisions]

        def insert(conn: sqlite3.Connection) -> None:
            if not run_exists(conn, run_id):
                raise UnknownRunError(run_id)
            check_lease(conn, run_id, lease)
            DECISIONS.insert(conn, values)

        await self._writer.write(insert)

    async def decisions(self, run_id: str) -> list[DecisionRecord]:
        run_id = valid_text(run_id)

        def select(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
            return conn.execute(
                f"SELECT {DECISION_COLUMNS} FROM decisions WHERE run_id = ? ORDER BY at_ts, rowid",
                (run_id,),
            ).fetchall()

        return [decision_from_row(found) for found in await self._writer.call(select)]

    async def start_batch(self, batch: BatchRecord) -> None:
        row = batch_values(batch)
        items = batch_item_values(row[0], batch.items)

        def insert(conn: sqlite3.Connection) -> None:
            if conn.execute("SELECT 1 FROM batches WHERE batch_id = ?", row[:1]).fetchone():
                raise StoreError(f"a batch {row[0]!r} is already in the store")
            conn.execute(
                f"INSERT INTO batches ({BATCH_COLUMNS}, created_ts) VALUES (?, ?, ?, ?, ?, ?, ?)",
                row,
            )
            conn.executemany("INSERT INTO batch_items VALUES (?, ?, ?, ?)", items)

        await self._writer.write(insert)

    async def get_batch(self, batch_id: str) -> BatchRecord | None:
        batch_id = valid_text(batch_id)

        def select(conn: sqlite3.Connection) -> BatchRecord | None:
            found = conn.execute(
                f"SELECT {BATCH_COLUMNS} FROM batches WHERE batch_id = ?", (batch_id,)
            ).fetchone()
            if found is None:
                return None
            items = conn.execute(
                "SELECT idx, run_id, status FROM batch_items WHERE batch_id = ? ORDER BY idx",
                (batch_id,),
            ).fetchall()
            return batch_from_rows(found, items)

        return await self._writer.call(select)

    async def set_batch_status(self, batch_id: str, statuses: Mapping[int, BatchStatus]) -> None:
        batch_id = valid_text(batch_id)
        rows = [(valid_status(status), batch_id, index) for index, status in statuses.items()]

        def update(conn: sqlite3.Connection) -> None:
            for row in rows:
                changed = conn.execute(
                    "UPDATE batch_items SET status = ? WHERE batch_id = ? AND idx = ?", row
                ).rowcount
                if not changed:
                    raise StoreError(f"no input {row[2]} of a batch {batch_id!r} in the store")

        await self._writer.write(update)

    async def added_tasks(self, run_id: str) -> list[AddedTaskRecord]:
        run_id = valid_text(run_id)

        def select(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
            return conn.execute(
                f"SELECT {TASK_COLUMNS} FROM tasks WHERE run_id = ? ORDER BY added_ts, rowid",
                (run_id,),
            ).fetchall()

        return [task_from_row(found) for found in await self._writer.call(select)]

    async def record_attempt(
        self, run_id: str, attempt: AttemptRecord, *, lease: str | None = None
    ) -> None:
        await self._writer.write(TaskRows(run_id, None, (attempt,), lease))

    async def save_output(self, row: OutputRow, *, lease: str | None = None) -> None:
        await self._writer.write(TaskRows(row.run_id, row, (), lease))

    async def save_task(
        self,
        output: OutputRow,
        attempts: Sequence[AttemptRecord] = (),
        *,
        lease: str | None = None,
    ) -> None:
        # One transaction for the whole task: on the loop's thread, or in the store's thread
        # (shared with every other write waiting there) when it must wait.
        await self._writer.write(TaskRows(output.run_id, output, attempts, lease))

    def _save_finished(
        self,
        run_id: str,
        output: FinishedOutput,
        attempts: Sequence[AttemptRecord],
        *,
        lease: str | None,
    ) -> Coroutine[Any, Any, None]:
        # Not a coroutine itself: the rows are made now, and only the write waits for the
        # commit, holding them (with many checkpoints waiting at once, each object they hold
        # is one more for the garbage collector to count and walk).
        if type(self).save_task is not SQLiteStore.save_task:  # a subclass's own comes first
            return super()._save_finished(run_id, output, attempts, lease=lease)
        # The row's values from the output's fields: no OutputRow is built to be taken apart.
        values = output_values(
            run_id, output.task, output.text, None, output.agent, output.model, output.finished_at
        )
        return self._writer.write(TaskRows(run_id, values, attempts, lease))

    async def _update(
        self, run_id: str, assignments: str, values: tuple[Any, ...], lease: str | None
    ) -> None:
        """``UPDATE runs SET <assignments>`` for one run that must exist (held by ``lease``,
        when given)."""
        statement = f"UPDATE runs SET {assignments} WHERE run_id = ?"
        run_id = valid_text(run_id)
        values = valid_values((*values, run_id))

        def update(conn: sqlite3.Connection) -> None:
            check_lease(conn, run_id, lease)
            if conn.execute(statement, values).rowcount == 0:
                raise UnknownRunError(run_id)

        await self._writer.write(update)

    async def get_run(self, run_id: str) -> RunRecord | None:
        run_id = valid_text(run_id)

        def select(conn: sqlite3.Connection) -> tuple[Any, ...] | None:
            query = f"{SELECT_RUNS} WHERE run_id = ?"
            result: tuple[Any, ...] | None = conn.execute(query, (run_id,)).fetchone()
            return result

        found = await self._writer.call(select)
        return None if found is None else observed(run_from_row(found))

    async def run_ids_starting(self, prefix: str, limit: int = 2) -> list[str]:
        prefix = valid_text(prefix)
        check_limit(limit)
        # A range on the primary key's index, not LIKE (which would scan every run).
        upper = prefix[:-1] + chr(ord(prefix[-1]) + 1) if prefix else None

        def select(conn: sqlite3.Connection) -> list[str]:
            if upper is None:
                rows = conn.execute("SELECT run_id FROM runs ORDER BY run_id LIMIT ?", (limit,))
            else:
                rows = conn.execute(
                    "SELECT run_id FROM runs WHERE run_id >= ? AND run_id < ? "
                    "ORDER BY run_id LIMIT ?",
                    (prefix, upper, limit),
                )
            return [row[0] for row in rows]

        return await self._writer.call(select)

    async def outputs(self, run_id: str) -> dict[str, OutputRow]:
        run_id = valid_text(run_id)

        def select(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
            return conn.execute(
                f"SELECT {OUTPUT_COLUMNS} FROM outputs WHERE run_id = ? "
                "ORDER BY finished_ts, rowid",
                (run_id,),
            ).fetchall()

        rows = [output_from_row(found) for found in await self._writer.call(select)]
        return {row.task: row for row in rows}

    async def attempts(self, run_id: str) -> list[AttemptRecord]:
        run_id = valid_text(run_id)

        def select(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
            return conn.execute(
                f"SELECT {ATTEMPT_SELECT} FROM attempts WHERE run_id = ? "
                "ORDER BY start_ts, task, attempt",
                (run_id,),
            ).fetchall()

        return [attempt_from_row(found) for found in await self._writer.call(select)]

    async def prompts(self, run_id: str) -> dict[tuple[str, int], list[PromptRecord]]:
        run_id = valid_text(run_id)

        def select(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
            return conn.execute(
                f"SELECT task, attempt, {PROMPTS_JSON} FROM attempts "
                f"WHERE run_id = ? AND {PROMPTS_JSON} IS NOT NULL "
                "ORDER BY start_ts, task, attempt",
                (run_id,),
            ).fetchall()

        return dict(prompts_from_row(found) for found in await self._writer.call(select))

    async def version(self) -> str | None:
        # PRAGMA data_version moves when another connection commits; total_changes counts the
        # rows this connection changed; the connection's id tells a reopened one apart.
        def read(conn: sqlite3.Connection) -> str:
            (other,) = conn.execute("PRAGMA data_version").fetchone()
            return f"{id(conn)}:{other}:{conn.total_changes}"

        return await self._writer.call(read)

    async def list_runs(self, crew: str | None = None, limit: int | None = 20) -> list[RunRecord]:
        crew = None if crew is None else valid_text(crew)
        check_limit(limit)
        params: list[str | int] = [] if crew is None else [crew]
        where = "" if crew is None else "WHERE crew = ?"
        query = f"{SELECT_RUNS} {where} ORDER BY started_ts DESC, runs.rowid DESC LIMIT ?"
        params.append(-1 if limit is None else limit)

        def select(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
            return conn.execute(query, params).fetchall()

        return _observed(await self._writer.call(select))

    async def runs_of_key(self, crew_key: str, limit: int | None = 50) -> list[RunRecord]:
        crew_key = valid_text(crew_key)
        check_limit(limit)
        query = (
            f"{SELECT_RUNS} WHERE crew_key = ? ORDER BY started_ts DESC, runs.rowid DESC LIMIT ?"
        )
        params = (crew_key, -1 if limit is None else limit)

        def select(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
            return conn.execute(query, params).fetchall()

        return _observed(await self._writer.call(select))

    async def cache_get(self, key: str) -> str | None:
        key = valid_text(key)

        def select(conn: sqlite3.Connection) -> str | None:
            found = conn.execute("SELECT value FROM cache WHERE key = ?", (key,)).fetchone()
            return None if found is None else str(found[0])

        return await self._writer.call(select)

    async def cache_put(self, key: str, value: str) -> None:
        values = valid_values((key, value, time.time()))

        def insert(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR REPLACE INTO cache (key, value, created_ts) VALUES (?, ?, ?)", values
            )

        await self._writer.write(insert)

    async def cache_clear(self) -> int:
        def delete(conn: sqlite3.Connection) -> int:
            return conn.execute("DELETE FROM cache").rowcount

        return await self._writer.write(delete)

    async def pragmas(self) -> dict[str, Any]:
        """The connection's settings that matter for safety: journal mode, synchronous level
        (1 is NORMAL), busy timeout in milliseconds, foreign keys; for diagnostics and tests."""

        def read(conn: sqlite3.Connection) -> dict[str, Any]:
            names = ("journal_mode", "synchronous", "busy_timeout", "foreign_keys")
            return {name: conn.execute(f"PRAGMA {name}").fetchone()[0] for name in names}

        return await self._writer.call(read)

    async def schema_version(self) -> int:
        """The database's schema version (``len(MIGRATIONS)`` once opened)."""
        return await self._writer.call(_read_version)

    async def close(self) -> None:
        """Close the connection once every call made before has finished, and stop the store's
        thread. The store stays usable: a later call opens the database again."""
        await self._writer.close()

    def _open(self) -> sqlite3.Connection:
        """A new connection, set up and migrated (called in the store's thread)."""
        if self.read_only:
            return _open_read_only(self.path, self.timeout)
        if str(self.path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self.path,
            timeout=self.timeout,
            isolation_level=None,  # autocommit: transactions are explicit BEGIN IMMEDIATE
            check_same_thread=False,  # a restarted store thread takes the connection over
            cached_statements=256,  # room for the multi-row inserts of every batch size
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            _enable_wal(conn, self.timeout)
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA wal_autocheckpoint = 0")  # the store's Checkpointer does it
            conn.execute("PRAGMA foreign_keys = ON")
            _migrate(conn, str(self.path))
        except BaseException:
            conn.close()
            raise
        return conn


def _observed(rows: list[tuple[Any, ...]]) -> list[RunRecord]:
    """The runs of ``rows`` as a reader sees them now (`observed`)."""
    now = datetime.now(UTC)
    return [observed(run_from_row(found), now) for found in rows]


def _enable_wal(conn: sqlite3.Connection, timeout: float) -> None:
    # Switching a fresh file to WAL needs an exclusive lock, and a switch racing another
    # process's can report "locked" without waiting out the busy timeout: retry within it. This
    # runs in the store's thread, so the short sleeps never hold up the event loop.
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


def _open_read_only(path: Path, timeout: float) -> sqlite3.Connection:
    """A connection that can only read ``path``: ``mode=ro``, else ``immutable=1`` when SQLite
    cannot make the WAL's shared-memory file (a read-only directory or filesystem)."""
    if path.is_dir():  # SQLite would only say "disk I/O error"
        raise IsADirectoryError(
            errno.EISDIR, "unable to open database file: it is a directory", str(path)
        )
    try:
        conn, found = _connect_read_only(path, "mode=ro", timeout)
    except sqlite3.OperationalError as exc:
        cannot_share = "readonly" in str(exc) or "unable to open" in str(exc)
        if not cannot_share or not path.is_file():
            raise
        conn, found = _connect_read_only(path, "immutable=1", timeout)
    target = len(MIGRATIONS)
    if found == target:
        return conn
    conn.close()
    if found == 0:
        raise StoreError(f"{path} is not a crewflow run database: it holds no schema version")
    raise SchemaVersionError(str(path), found, target)


def _connect_read_only(path: Path, mode: str, timeout: float) -> tuple[sqlite3.Connection, int]:
    """A connection to ``path`` opened with the URI parameter ``mode``, and the schema version
    it reads (reading is what makes SQLite open the file for real)."""
    uri = f"file:{urllib.parse.quote(str(path.expanduser().absolute()))}?{mode}"
    conn = sqlite3.connect(
        uri, uri=True, timeout=timeout, isolation_level=None, check_same_thread=False
    )
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
        return conn, _read_version(conn)
    except BaseException:
        conn.close()
        raise


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
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Read again under the write lock: another process may have migrated meanwhile.
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        found = _read_version(conn)
        if found > target:
            raise SchemaVersionError(path, found, target)
        for migration in MIGRATIONS[found:]:
            migration(conn)
        conn.execute("DELETE FROM schema_version")
        conn.execute("INSERT INTO schema_version (version) VALUES (?)", (target,))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
