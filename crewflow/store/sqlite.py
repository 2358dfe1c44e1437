"""`SQLiteStore`: run records in one SQLite file, safe for several processes at once.

How it stays correct, off the event loop and cheap enough to record every task:

- **WAL with ``synchronous=NORMAL``.** Readers never block the writer; a commit is durable
  against the process dying at any instant (``kill -9``), which is what a checkpoint needs. (An
  OS crash or power cut may lose the last commits; ``FULL`` would fsync every commit for that.)
- **``BEGIN IMMEDIATE`` for every write** takes the write lock up front, so two processes never
  both read-then-write and deadlock; waiting for the lock is bounded by the busy timeout.
- **One thread per store owns the connection.** Every SQLite call runs in that thread, never
  on the event loop. Callers put their operation on a queue and await an asyncio future that
  the thread resolves through ``call_soon_threadsafe`` (one wake-up per loop and batch): a
  round trip of about 55 us against about 190 us for `anyio.to_thread.run_sync`, which was
  the largest part of recording a task, hence plain asyncio here. Each call carries its own
  loop, so one store serves several ``anyio.run`` calls and several threads. The thread is a
  daemon (it never keeps the interpreter alive), stops after ``close()`` or some idle
  seconds, and the next call starts it again.
- **Group commit.** The thread takes every write waiting in the queue and commits them in one
  transaction: the concurrent ``save_task`` calls of a parallel crew share one ``BEGIN
  IMMEDIATE … COMMIT`` and one multi-row ``INSERT`` per table. Should that insert fail, and
  for every other kind of write, each write runs in its own savepoint, so one that fails (an
  unknown run) is undone alone and fails only its own caller. Every caller hears back only
  after the ``COMMIT``.
- **Checkpoints in the background.** Every few dozen commits a helper thread runs a
  ``PASSIVE`` WAL checkpoint on its own connection (it neither waits for nor blocks the
  store's), so that SQLite's automatic checkpoint, which runs inside a commit and must first
  sync the whole WAL to disk, finds little left to do.
- **Not abandoned on cancellation.** A cancelled caller waits until its operation has committed
  or rolled back before it sees the cancellation, as with ``anyio.to_thread.run_sync``: nothing
  is ever left half-written, and when the call ends its outcome is settled.
- **Opened lazily.** Nothing touches the disk until the first call; ``close()`` releases the
  connection, and a later call opens it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import sqlite3
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

import anyio
from pydantic_core import to_jsonable_python

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
    from collections.abc import Callable, Iterable, Iterator, Sequence
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

_IDLE_SECONDS = 10.0  # an idle store's thread stops after this long (the next call restarts it)
_MAX_BATCH = 256  # writes committed together at most, so the first of them is not held long
_CHECKPOINT_EVERY = 64  # commits between two checkpoints in the background (~400 pages)

_Kind = Literal["read", "write", "close"]
_INHERITED: list[sqlite3.Connection | None] = []  # connections a forked child must not close


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
        self._calls: queue.SimpleQueue[_Call] = queue.SimpleQueue()
        self._thread_lock = threading.Lock()  # guards starting and stopping self._thread
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None  # used only by self._thread
        self._commits = 0  # since the last background checkpoint (self._thread's)
        self._checkpointer: threading.Thread | None = None  # started by self._thread
        self._pid = os.getpid()

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"

    async def start_run(self, record: RunRecord) -> None:
        values = _run_values(record)

        def insert(conn: sqlite3.Connection) -> None:
            if _run_exists(conn, record.run_id):
                raise DuplicateRunError(record.run_id)
            conn.execute(
                f"INSERT INTO runs ({_RUN_COLUMNS}, started_ts) VALUES ({_RUN_MARKS})", values
            )

        await self._call(insert, "write")

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
        values = (checked["status"], checked["ended"], _json(checked["usage"]), run_id)

        def update(conn: sqlite3.Connection) -> None:
            cursor = conn.execute(
                "UPDATE runs SET status = ?, ended = ?, usage = ? WHERE run_id = ?", values
            )
            if cursor.rowcount == 0:
                raise UnknownRunError(run_id)

        await self._call(update, "write")

    async def reopen_run(self, run_id: str) -> None:
        def update(conn: sqlite3.Connection) -> None:
            cursor = conn.execute(
                "UPDATE runs SET status = ?, ended = NULL, resumed = resumed + 1 WHERE run_id = ?",
                (RunStatus.RUNNING.value, run_id),
            )
            if cursor.rowcount == 0:
                raise UnknownRunError(run_id)

        await self._call(update, "write")

    async def record_attempt(self, row: AttemptRow) -> None:
        await self._call(_TaskRows(None, (row,)), "write")

    async def save_output(self, row: OutputRow) -> None:
        await self._call(_TaskRows(row, ()), "write")

    async def save_task(self, output: OutputRow, attempts: Sequence[AttemptRow] = ()) -> None:
        # One hop to the store's thread for the whole task, in a transaction shared with every
        # other write waiting at the time.
        await self._call(_TaskRows(output, attempts), "write")

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
            conn.execute(
                "INSERT OR REPLACE INTO cache (key, value, created_ts) VALUES (?, ?, ?)",
                (key, value, time.time()),
            )

        await self._call(insert, "write")

    async def cache_clear(self) -> int:
        def delete(conn: sqlite3.Connection) -> int:
            return conn.execute("DELETE FROM cache").rowcount

        return await self._call(delete, "write")

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
        """Close the connection once every call made before has finished, and stop the store's
        thread. The store stays usable: a later call opens the database again."""
        if self._thread is None and self._conn is None:
            return
        await self._call(_no_operation, "close")

    # -- the store's thread ---------------------------------------------------------------------

    async def _call(
        self, operation: Callable[[sqlite3.Connection], _T], kind: _Kind = "read"
    ) -> _T:
        if self._pid != os.getpid():
            self._forget_parent()
        call = _Call(operation, kind, asyncio.get_running_loop())
        with self._thread_lock:
            self._calls.put(call)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._serve, name=f"crewflow-store {self.path.name}", daemon=True
                )
                self._thread.start()
        try:
            return await call.future  # type: ignore[no-any-return]
        except asyncio.CancelledError:
            if not call.settled:
                # Like anyio.to_thread.run_sync: the cancellation is seen once the operation
                # has committed or rolled back, never while it may still be running.
                call.future = call.loop.create_future()
                with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                    await call.future
            raise

    def _forget_parent(self) -> None:
        """In a forked child: the parent's thread is not here, its lock may be held forever,
        and SQLite forbids using a connection across fork. Start afresh, and keep the
        inherited connection unclosed (closing it could touch the parent's locks)."""
        _INHERITED.append(self._conn)
        self._pid = os.getpid()
        self._calls = queue.SimpleQueue()
        self._thread_lock = threading.Lock()
        self._thread = None
        self._conn = None
        self._checkpointer = None

    def _serve(self) -> None:
        """The thread's loop: take every call waiting, run them (writes in one transaction),
        until the store is closed or idle."""
        while True:
            try:
                batch = [self._calls.get(timeout=_IDLE_SECONDS)]
            except queue.Empty:
                batch = []
            else:
                with contextlib.suppress(queue.Empty):
                    while len(batch) < _MAX_BATCH:
                        batch.append(self._calls.get_nowait())
                try:
                    closed = self._run(batch)
                except BaseException as exc:  # a bug here must not leave a caller waiting
                    closed = False
                    for call in batch:
                        call.outcome = call.outcome or _Outcome(error=exc)
                _reply(batch)
                if not closed:
                    continue
            with self._thread_lock:  # no call can be queued while the thread decides to stop
                if self._calls.empty():
                    self._thread = None
                    return

    def _run(self, batch: list[_Call]) -> bool:
        """Run a batch in order: each run of consecutive writes in one transaction, reads and
        closing on their own. True when the batch closed the connection."""
        writes: list[_Call] = []
        closed = False
        for call in batch:
            if call.kind == "write":
                writes.append(call)
                continue
            if writes:
                self._commit(writes)
                writes = []
            self._run_alone(call)
            closed = call.kind == "close"
        if writes:
            self._commit(writes)
            closed = False
        return closed

    def _run_alone(self, call: _Call) -> None:
        if call.kind == "close":
            if self._checkpointer is not None:  # a closed store leaves no thread behind
                self._checkpointer.join()
            conn, self._conn = self._conn, None
            outcome = _Outcome() if conn is None else _Outcome.of(conn.close)
        else:
            outcome = _Outcome.of(lambda: call.operation(self._connection()))
        call.outcome = self._wrapped(outcome)

    def _commit(self, calls: list[_Call]) -> None:
        """Run ``calls`` in one transaction; each call's outcome is known once it has committed
        (or failed). Consecutive task checkpoints are inserted together, a few statements for
        the whole group (each statement lets go of the GIL, and getting it back from a busy
        event loop is what costs); other writes, or a group that fails, run one by one, each in
        its own savepoint when there are several, so that a failing write is undone alone."""
        try:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
        except BaseException as exc:
            for call in calls:
                call.outcome = self._wrapped(_Outcome(error=exc))
            return
        ran: list[tuple[_Call, _Outcome]] = []
        for start, group in _groups(calls):
            if len(group) > 1:
                outcomes = _insert_together(conn, group)
            elif len(calls) > 1:
                outcomes = [_run_in_savepoint(conn, group[0])]
            else:
                outcomes = [_run_in(conn, group[0])]
            if not conn.in_transaction:
                again = self._settle_lost(list(zip(group, outcomes, strict=True)))
                rest = [call for call, _ in ran] + again + calls[start + len(group) :]
                if rest:
                    self._commit(rest)
                return
            ran.extend(zip(group, outcomes, strict=True))
        committed = _Outcome.of(lambda: conn.execute("COMMIT"))
        if committed.error is not None:
            _roll_back(conn)
        for call, outcome in ran:
            undone = outcome.error is None and committed.error is not None
            call.outcome = self._wrapped(committed if undone else outcome)
        if committed.error is None:
            self._checkpoint_soon()

    def _checkpoint_soon(self) -> None:
        """Every few dozen commits, checkpoint the WAL from a helper thread (own connection).

        A checkpoint first syncs the WAL to disk, which is what makes it slow (about 16 ms per
        1,000 pages on the benchmark machine), and SQLite runs one inside a commit every 1,000
        pages: every ~160 tasks recorded one by one (~6 pages a commit), far more rarely per
        task when they share commits. A ``PASSIVE`` checkpoint elsewhere neither waits for nor
        blocks this connection and leaves the automatic one little to do; it writes nothing
        SQLite would not write itself."""
        self._commits += 1
        if self._commits < _CHECKPOINT_EVERY or str(self.path) == ":memory:":
            return
        if self._checkpointer is None or not self._checkpointer.is_alive():
            self._commits = 0
            self._checkpointer = threading.Thread(
                target=_checkpoint,
                args=(self.path,),
                name=f"crewflow-store-checkpoint {self.path.name}",
                daemon=True,
            )
            self._checkpointer.start()

    def _settle_lost(self, group: list[tuple[_Call, _Outcome]]) -> list[_Call]:
        """A failure in ``group`` ended the whole transaction (e.g. disk full), undoing every
        write before it too. The writes that failed keep their outcome; those that succeeded
        are returned, to run again (all fail when none did: the cause is unknown)."""
        failed = [(call, outcome) for call, outcome in group if outcome.error is not None]
        if not failed:
            lost = StoreError(f"the run database {self.path} ended a transaction unexpectedly")
            failed = [(call, _Outcome(error=lost)) for call, _ in group]
        for call, outcome in failed:
            call.outcome = self._wrapped(outcome)
        return [call for call, _ in group if call.outcome is None]

    def _wrapped(self, outcome: _Outcome) -> _Outcome:
        if isinstance(outcome.error, sqlite3.Error):
            error = StoreError(f"the run database {self.path} failed: {outcome.error}")
            error.__cause__ = outcome.error
            return _Outcome(error=error)
        return outcome

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = self._open()
        return self._conn

    def _open(self) -> sqlite3.Connection:
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
            conn.execute("PRAGMA foreign_keys = ON")
            _migrate(conn, str(self.path))
        except BaseException:
            conn.close()
            raise
        return conn


class _Outcome:
    """What an operation returned, or the exception it raised."""

    __slots__ = ("error", "result")

    def __init__(self, result: Any = None, error: BaseException | None = None) -> None:
        self.result = result
        self.error = error

    @classmethod
    def of(cls, function: Callable[[], Any]) -> _Outcome:
        try:
            return cls(function())
        except BaseException as exc:  # handed to the caller, whatever it is
            return cls(error=exc)


class _Call:
    """One operation handed to a store's thread, and the future its caller awaits."""

    __slots__ = ("future", "kind", "loop", "operation", "outcome", "settled")

    def __init__(
        self,
        operation: Callable[[sqlite3.Connection], Any],
        kind: _Kind,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.operation = operation
        self.kind = kind
        self.loop = loop
        self.future: asyncio.Future[Any] = loop.create_future()
        self.outcome: _Outcome | None = None  # set by the store's thread, then read on the loop
        self.settled = False  # read and written on the caller's loop only


def _reply(batch: list[_Call]) -> None:
    """Hand each caller its outcome on its own loop: one wake-up per loop for the batch."""
    by_loop: dict[asyncio.AbstractEventLoop, list[_Call]] = {}
    for call in batch:
        by_loop.setdefault(call.loop, []).append(call)
    for loop, calls in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            loop.call_soon_threadsafe(_settle, calls)


def _settle(calls: list[_Call]) -> None:
    for call in calls:
        call.settled = True
        if call.future.done():  # the caller was cancelled and waits on a new future
            continue
        outcome = call.outcome or _Outcome(error=StoreError("the store's thread gave no answer"))
        if outcome.error is None:
            call.future.set_result(outcome.result)
        else:
            call.future.set_exception(outcome.error)


def _run_in(conn: sqlite3.Connection, call: _Call) -> _Outcome:
    """Run a write alone in the open transaction; roll the transaction back if it fails."""
    outcome = _Outcome.of(lambda: call.operation(conn))
    if outcome.error is not None:
        _roll_back(conn)
    return outcome


def _run_in_savepoint(conn: sqlite3.Connection, call: _Call) -> _Outcome:
    """Run one write of a batch; if it fails, undo only its own changes."""
    outcome = _Outcome.of(lambda: conn.execute("SAVEPOINT write"))
    if outcome.error is None:
        outcome = _Outcome.of(lambda: call.operation(conn))
        try:
            if outcome.error is not None and conn.in_transaction:
                conn.execute("ROLLBACK TO write")
            if conn.in_transaction:
                conn.execute("RELEASE write")
        except sqlite3.Error:
            _roll_back(conn)  # the whole batch is run again without this write
    return outcome


def _roll_back(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def _checkpoint(path: Path) -> None:
    """Checkpoint as much of the WAL as no reader or writer holds up (a helper thread's work:
    it is an optimisation, so a busy or failing database just skips it)."""
    with contextlib.suppress(sqlite3.Error):
        conn = sqlite3.connect(path, timeout=1.0, isolation_level=None)
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        finally:
            conn.close()


def _no_operation(conn: sqlite3.Connection) -> None:
    pass


class _TaskRows:
    """The write of a task's attempts and output, as values; rows are turned into values on
    the caller's side, so that a row JSON cannot hold fails there. Called with a connection,
    it inserts them alone; `_insert_together` inserts many at once."""

    __slots__ = ("attempts", "output")

    def __init__(self, output: OutputRow | None, attempts: Iterable[AttemptRow]) -> None:
        self.attempts = [_attempt_values(row) for row in attempts]
        self.output = None if output is None else _output_values(output)

    def __call__(self, conn: sqlite3.Connection) -> None:
        # The foreign keys refuse a row of an unknown run; only then look for which.
        try:
            _ATTEMPTS.insert(conn, self.attempts)
            _OUTPUTS.insert(conn, [] if self.output is None else [self.output])
        except sqlite3.IntegrityError:
            run_ids = {values[0] for values in self.attempts}
            if self.output is not None:
                run_ids.add(self.output[0])
            for run_id in sorted(run_ids):
                _require_run(conn, run_id)
            raise


class _Insert:
    """``INSERT OR REPLACE`` of many rows into one table, as few statements as SQLite allows."""

    def __init__(self, table: str, columns: str) -> None:
        self.width = len(columns.split(","))
        self.head = f"INSERT OR REPLACE INTO {table} ({columns}) VALUES "
        self.per_statement = min(100, 999 // self.width)  # 999: SQLite's lowest bound limit
        self._sql: dict[int, str] = {}

    def insert(self, conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
        for start in range(0, len(rows), self.per_statement):
            chunk = rows[start : start + self.per_statement]
            conn.execute(self._statement(len(chunk)), [value for row in chunk for value in row])

    def _statement(self, rows: int) -> str:
        found = self._sql.get(rows)
        if found is None:
            marks = "(" + ", ".join("?" * self.width) + ")"
            found = self._sql[rows] = self.head + ", ".join([marks] * rows)
        return found


_ATTEMPTS = _Insert("attempts", _ATTEMPT_COLUMNS + ", start_ts")
_OUTPUTS = _Insert("outputs", _OUTPUT_COLUMNS + ", finished_ts")


def _groups(calls: list[_Call]) -> Iterator[tuple[int, list[_Call]]]:
    """``calls`` in order, as (index, group): consecutive task checkpoints together, every
    other write alone."""
    group: list[_Call] = []
    for index, call in enumerate(calls):
        if not isinstance(call.operation, _TaskRows):
            if group:
                yield index - len(group), group
                group = []
            yield index, [call]
        else:
            group.append(call)
    if group:
        yield len(calls) - len(group), group


def _insert_together(conn: sqlite3.Connection, group: list[_Call]) -> list[_Outcome]:
    """Insert several task checkpoints at once; if that fails, insert each alone."""
    rows = [cast("_TaskRows", call.operation) for call in group]
    try:
        conn.execute("SAVEPOINT rows")
        try:
            _ATTEMPTS.insert(conn, [values for row in rows for values in row.attempts])
            _OUTPUTS.insert(conn, [row.output for row in rows if row.output is not None])
        except sqlite3.Error:
            if not conn.in_transaction:
                raise
            conn.execute("ROLLBACK TO rows")
            conn.execute("RELEASE rows")
        else:
            conn.execute("RELEASE rows")
            return [_Outcome() for _ in group]
    except sqlite3.Error as exc:
        _roll_back(conn)
        return [_Outcome(error=exc) for _ in group]
    # E.g. a row of an unknown run: each write alone tells which one fails.
    return [_run_in_savepoint(conn, call) for call in group]


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


def _run_exists(conn: sqlite3.Connection, run_id: str) -> bool:
    return conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is not None


def _require_run(conn: sqlite3.Connection, run_id: str) -> None:
    if not _run_exists(conn, run_id):
        raise UnknownRunError(run_id)


def _names(columns: str) -> list[str]:
    return [name.strip().strip('"') for name in columns.split(",")]


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False)


# Rows are written from their fields directly (a model_dump costs more than the insert), with
# the same text as a model_dump in JSON mode: datetimes through pydantic's own serialiser.
_when = to_jsonable_python


def _run_values(record: RunRecord) -> tuple[Any, ...]:
    data = record.model_dump(mode="json")
    for name in ("inputs", "usage", "graph"):
        data[name] = _json(data[name])
    data["source"] = None if record.source is None else _json(data["source"])
    return (*(data[name] for name in _names(_RUN_COLUMNS)), record.started.timestamp())


def _attempt_values(row: AttemptRow) -> tuple[Any, ...]:
    return (
        row.run_id,
        row.task,
        row.attempt,
        row.agent,
        _when(row.start),
        None if row.end is None else _when(row.end),
        row.status.value,
        row.error_type,
        row.error,
        row.model,
        row.requests,
        row.prompt_tokens,
        row.completion_tokens,
        row.cost,
        row.cache_hit,
        row.llm_retries,
        row.limit_wait,
        _json(row.limit_waits) if row.limit_waits else "{}",
        row.start.timestamp(),
    )


def _output_values(row: OutputRow) -> tuple[Any, ...]:
    return (
        row.run_id,
        row.task,
        row.text,
        None if row.data is None else _json(row.data),
        row.agent,
        row.model,
        _when(row.finished_at),
        row.finished_at.timestamp(),
    )


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
