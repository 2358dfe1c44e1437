"""`PostgresStore`: run records in a PostgreSQL database that many machines share.

Install with ``pip install 'crewflow[postgres]'``; name it by URL anywhere a store is named:
``Crew(store="postgresql://user@host/db")``, ``CREWFLOW_STORE=postgresql://...``, or ``--db``.

**Why psycopg 3 (not asyncpg).** psycopg 3 has a native asyncio API, binary wheels for every
platform we support, and pipeline mode, so the task checkpoints committed together go to the
server in two round trips (see group commit below); it also has a synchronous API that tools
and scripts can use on the same URL, and pytest-postgresql builds on it. asyncpg is faster per
query but async only, with its own placeholder style and type codecs; the store's cost per task
is its round trips to the server, which both libraries pay alike. psycopg is imported when a
`PostgresStore` first connects, never by ``import crewflow``.

How it keeps the `Store` contract:

- **One connection per event loop**, opened on first use, in autocommit mode; each operation
  is one transaction (``BEGIN … COMMIT``), taken in turn under an asyncio lock. The
  transaction is shielded from cancellation: once started, a write commits or rolls back, as
  with `SQLiteStore`, and a cancelled caller sees the cancellation after. A loop's connection
  is closed when the loop is let go (each ``anyio.run``, each ``kickoff_sync``), or by the
  next connection made after the loop closed.
- **Group commit.** A task's checkpoint (its attempts and output) waits for the lock; when it
  gets it, it commits every checkpoint waiting by then (up to 256) in one pipelined
  transaction of two round trips, and each caller returns once its own is committed, so a
  dependant still starts only after it. Measured with ``benchmarks/postgres_store.py``
  (``OfflineLLM(latency=0)``, local server with ``fsync`` off, medians of 3 alternating runs
  of 7 kickoffs each against the branch point, on a loaded 2-core machine): a 200-task
  fan-out records at 1.42 ms per task, was 4.15 (0.99 ms over no store, was 3.70; SQLite
  0.66); a 50-task chain, which has one checkpoint in flight at a time, at 4.67, was 5.10
  (within the noise). A connection pool (``psycopg_pool``) was not tried: a batch needs one
  connection, and one loop's writes going in turn keeps each run's writes in order.
- **Fencing.** A write that carries a lease token locks the run's row (``SELECT … FOR
  UPDATE``) and then reads the lease in a statement of its own, so it sees any take-over that
  committed before it got the lock; `take_lease` takes the same lock before it replaces the
  lease. A write whose token is no longer the run's lease fails with `LeaseLost` and changes
  nothing; in a group commit, each checkpoint is checked against its own run's lease (the
  runs locked in order, so that two batches never deadlock), and one refused writes nothing
  while the others commit.
- **Text.** PostgreSQL text cannot hold NUL, and UTF-8 holds no lone surrogate: every string is
  repaired to U+FFFD on the way in, as for SQLite (`crewflow._text`); JSON never holds NaN.
- **version()** is the server's ``pg_current_snapshot()``, as text: it moves whenever a
  transaction that wrote anything ends, by this process or another (on any database of the
  server, so a view may read again when nothing of its own changed, never the reverse), and
  stays still while nothing writes.
- **Schema.** A new database gets the baseline at schema version 8 in one transaction, under an
  advisory lock so that two processes opening it at once create it once (the schema's own
  module says how its types match SQLite's).
- **Credentials.** The URL's password and secret query values never reach a repr, a log, an
  error message, an event or a record: the store is shown by its URL without them, and every
  error text is scrubbed of them.
"""

from __future__ import annotations

import asyncio
import json
import time
import weakref
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from crewflow._records import AttemptRecord, RunStatus
from crewflow._text import valid_text, valid_values
from crewflow.llm._redact import public_url, scrub, url_secrets
from crewflow.store._base import (
    DuplicateRunError,
    LeaseLost,
    SchemaVersionError,
    Store,
    StoreError,
    UnknownRunError,
    check_limit,
)
from crewflow.store._lease import Lease, LeaseOwner, observed
from crewflow.store._pg_schema import BASELINE, PG_MIGRATIONS
from crewflow.store._rows import (
    ATTEMPT_COLUMNS,
    BATCH_COLUMNS,
    DECISION_COLUMNS,
    LEASE_COLUMNS,
    OUTPUT_COLUMNS,
    RUN_COLUMNS,
    TASK_COLUMNS,
    TaskRows,
    attempt_from_row,
    batch_from_rows,
    batch_item_values,
    batch_values,
    decision_from_row,
    decision_values,
    finish_values,
    lease_values,
    output_from_row,
    run_from_row,
    run_values,
    task_from_row,
    task_values,
    to_json,
    valid_status,
)
from crewflow.store._schema import MIGRATIONS

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping, Sequence

    import psycopg
    from pydantic import JsonValue

    from crewflow._records import PromptRecord
    from crewflow._usage import Usage
    from crewflow.store._records import (
        AddedTaskRecord,
        BatchRecord,
        BatchStatus,
        DecisionRecord,
        OutputRow,
        RunRecord,
    )

__all__ = ["PostgresStore"]

_T = TypeVar("_T")
_SCHEMA_LOCK = 0x63726577  # the advisory lock taken while a database is created or upgraded
_PROMPTS = "prompts"


def _upsert(table: str, columns: str, key: str) -> str:
    """``INSERT … ON CONFLICT (key) DO UPDATE`` of every column: SQLite's ``INSERT OR
    REPLACE`` (a row written again also takes a new ``seq``, when the table has one)."""
    names = [name.strip() for name in columns.split(",")]
    keys = {name.strip() for name in key.split(",")}
    marks = ", ".join(["%s"] * len(names))
    updates = [f"{name} = EXCLUDED.{name}" for name in names if name not in keys]
    if table in ("runs", "outputs", "tasks", "decisions"):
        updates.append("seq = DEFAULT")
    return (
        f"INSERT INTO {table} ({columns}) VALUES ({marks}) "
        f"ON CONFLICT ({key}) DO UPDATE SET {', '.join(updates)}"
    )


_RUN_INSERT = f"INSERT INTO runs ({RUN_COLUMNS}, started_ts) VALUES ({', '.join(['%s'] * 21)})"
_LEASE_WRITE = _upsert("leases", f"run_id, {LEASE_COLUMNS}, expires_ts", "run_id")
_ATTEMPT_WRITE = _upsert("attempts", f"{ATTEMPT_COLUMNS}, start_ts", "run_id, task, attempt")
_OUTPUT_WRITE = _upsert("outputs", f"{OUTPUT_COLUMNS}, finished_ts", "run_id, task")
_TASK_WRITE = _upsert("tasks", f"{TASK_COLUMNS}, added_ts", "run_id, name")
_DECISION_WRITE = _upsert("decisions", f"{DECISION_COLUMNS}, at_ts", "run_id, key")
_LEASE_READ = "SELECT token, host, boot_id, pid, process_start FROM leases WHERE run_id = %s"
_LOCK_RUNS = "SELECT run_id FROM runs WHERE run_id = ANY(%s) ORDER BY run_id FOR UPDATE"
_LEASES_READ = (
    "SELECT run_id, token, host, boot_id, pid, process_start FROM leases WHERE run_id = ANY(%s)"
)
_MAX_BATCH = 256  # checkpoints committed together at most, so the first is not held long
_SELECT_RUNS = f"SELECT {RUN_COLUMNS}, {LEASE_COLUMNS} FROM runs LEFT JOIN leases USING (run_id)"


class _Checkpoint:
    """One task write waiting for a commit (`PostgresStore._save`), and how it ended."""

    __slots__ = ("done", "error", "rows")

    def __init__(self, rows: TaskRows) -> None:
        self.rows = rows
        self.done = False
        self.error: BaseException | None = None

    def check(self, present: set[str], held: Mapping[str, tuple[Any, ...]]) -> None:
        """Refuse it (``error``) unless its run is ``present`` and, when it carries a lease,
        its run's lease (``held``) is that one."""
        run_id, token = self.rows.run_id, self.rows.lease
        try:
            if run_id not in present:
                raise UnknownRunError(run_id)
            if token is not None:
                _holds(run_id, token, held.get(run_id))
        except StoreError as exc:
            self.error = exc


class PostgresStore(Store):
    """Records runs in a PostgreSQL database, for crews on many machines at once.

    Args:
        url: A libpq connection URL, ``postgresql://user:password@host:port/dbname``
            (``postgres://`` too). The database must exist; its tables are made on first use.

    Every string is stored as valid UTF-8 without NUL (lone surrogates and NUL become U+FFFD),
    as `SQLiteStore` stores it; a key a method is given is repaired the same way.

    Task checkpoints that arrive while another commits are committed with it, in one
    transaction, each fenced by its own run's lease (group commit): recording a 200-task
    parallel crew costs 0.99 ms per task over no store, was 3.70 before group commit; a
    50-task chain, 4.6 (``benchmarks/postgres_store.py``: offline model, a local server,
    medians of alternating runs on a loaded 2-core machine).

    Example:
        ```python
        async with PostgresStore("postgresql://crewflow@db.internal/runs") as store:
            for run in await store.list_runs(limit=5):
                print(run.run_id, run.status)
        ```
    """

    def __init__(self, url: str) -> None:
        if not url.startswith(("postgresql://", "postgres://")):
            raise ValueError(
                f"a PostgresStore URL starts with postgresql:// or postgres://, not "
                f"{public_url(url)!r}"
            )
        self._url = url
        self._secrets = url_secrets(url)
        self._public = public_url(url)
        self._open: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[psycopg.AsyncConnection[Any], asyncio.Lock]
        ] = weakref.WeakKeyDictionary()
        self._waiting: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list[_Checkpoint]] = (
            weakref.WeakKeyDictionary()
        )

    @property
    def url(self) -> str:
        """The database's URL without its credentials, as it may be shown."""
        return self._public

    def __repr__(self) -> str:
        return f"PostgresStore({self.url!r})"

    # -- connections -------------------------------------------------------------------------

    async def _connection(self) -> tuple[psycopg.AsyncConnection[Any], asyncio.Lock]:
        loop = asyncio.get_running_loop()
        found = self._open.get(loop)
        if found is not None and not found[0].closed:
            return found
        try:
            import psycopg
        except ImportError:  # pragma: no cover - the extra is installed where tests run
            raise StoreError(
                "PostgresStore needs psycopg: pip install 'crewflow[postgres]'"
            ) from None
        self._finish_closed_loops()
        try:
            conn = await psycopg.AsyncConnection.connect(self._url, autocommit=True)
        except psycopg.Error as exc:
            raise self._error(exc) from None
        try:
            await self._migrate(conn)
        except BaseException:
            await conn.close()
            raise
        # A loop let go without `close` (each `anyio.run`, each `kickoff_sync`) takes its
        # connection with it, rather than leaving it open to the garbage collector.
        weakref.finalize(loop, _finish, conn)
        found = self._open[loop] = (conn, asyncio.Lock())
        return found

    def _finish_closed_loops(self) -> None:
        """Close the connections of event loops that have closed (their socket only: the loop
        that could run the goodbye is gone)."""
        for loop in list(self._open):
            if loop.is_closed():
                _finish(self._open.pop(loop)[0])

    def _error(self, exc: BaseException) -> StoreError:
        """A psycopg error as ours, with no credential in its text (never chained: the
        driver's exception can hold the connection's parameters)."""
        text = scrub(str(exc).strip(), self._secrets) or type(exc).__name__
        return StoreError(f"PostgreSQL store {self.url}: {text}")

    async def _run(self, operation: Callable[[Any], Awaitable[_T]], *, write: bool = True) -> _T:
        """Run ``operation`` with a cursor, in one transaction, on this loop's connection."""
        import psycopg

        conn, lock = await self._connection()
        async with lock:
            with anyio.CancelScope(shield=True):  # a started transaction always ends
                try:
                    if not write:
                        async with conn.cursor() as cur:
                            result = await operation(cur)
                    else:
                        async with conn.transaction(), conn.cursor() as cur:
                            result = await operation(cur)
                except psycopg.Error as exc:
                    raise self._error(exc) from None
        return result

    async def _migrate(self, conn: psycopg.AsyncConnection[Any]) -> None:
        target = len(MIGRATIONS)
        async with conn.transaction(), conn.cursor() as cur:
            await cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            await cur.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"
            )
            row = await (await cur.execute("SELECT MAX(version) FROM schema_version")).fetchone()
            found = int(row[0] or 0) if row else 0
            if found > target:
                raise SchemaVersionError(self.url, found, target)
            if found == target:
                return
            for version in sorted(PG_MIGRATIONS):
                if version > found and (found or version == BASELINE):
                    for statement in PG_MIGRATIONS[version]:
                        await cur.execute(statement)
                    found = version  # a baseline, then each later version in turn
            await cur.execute("DELETE FROM schema_version")
            await cur.execute("INSERT INTO schema_version (version) VALUES (%s)", (target,))

    async def schema_version(self) -> int:
        """The database's schema version (``len(MIGRATIONS)`` once opened)."""

        async def read(cur: Any) -> int:
            row = await (await cur.execute("SELECT MAX(version) FROM schema_version")).fetchone()
            return int(row[0])

        return await self._run(read, write=False)

    async def close(self) -> None:
        """Close this loop's connection, and those of loops that have closed (the others close
        with their loops). The store stays usable: a later call connects again."""
        found = self._open.pop(asyncio.get_running_loop(), None)
        if found is not None:
            async with found[1]:
                await found[0].close()
        self._finish_closed_loops()

    # -- writes ------------------------------------------------------------------------------

    async def start_run(self, record: RunRecord) -> None:
        values = run_values(record)
        lease = None if record.lease is None else lease_values(record.run_id, record.lease)

        async def insert(cur: Any) -> None:
            await cur.execute(f"{_RUN_INSERT} ON CONFLICT DO NOTHING", values)
            if cur.rowcount == 0:
                raise DuplicateRunError(record.run_id)
            if lease is not None:
                await cur.execute(_LEASE_WRITE, lease)

        await self._run(insert)

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

        async def finish(cur: Any) -> None:
            await _check_lease(cur, run_id, lease)
            statement = "UPDATE runs SET status = %s, ended = %s, usage = %s WHERE run_id = %s"
            await cur.execute(statement, values)
            if cur.rowcount == 0:
                raise UnknownRunError(run_id)
            await cur.execute("DELETE FROM leases WHERE run_id = %s", (run_id,))

        await self._run(finish)

    async def reopen_run(self, run_id: str, *, lease: str | None = None) -> None:
        await self._update(
            run_id,
            "status = %s, ended = NULL, resumed = resumed + 1",
            (RunStatus.RUNNING.value,),
            lease,
        )

    async def take_lease(self, run_id: str, lease: Lease, *, replacing: str | None) -> bool:
        run_id = valid_text(run_id)
        values = lease_values(run_id, lease)

        async def take(cur: Any) -> bool:
            await _lock_run(cur, run_id)  # nobody takes or checks it until this commits
            held = await _lease_row(cur, run_id)
            if (None if held is None else held[0]) != replacing:
                return False
            await cur.execute(_LEASE_WRITE, values)
            return True

        return await self._run(take)

    async def renew_lease(
        self,
        run_id: str,
        token: str,
        expires: datetime,
        *,
        running: Sequence[str] | None = None,
    ) -> bool:
        listed = None if running is None else to_json(list(running))
        values = valid_values((_when(expires), expires.timestamp(), listed, run_id, token))

        async def renew(cur: Any) -> bool:
            await cur.execute(
                "UPDATE leases SET expires = %s, expires_ts = %s, "
                "running = coalesce(%s, running) WHERE run_id = %s AND token = %s",
                values,
            )
            return bool(cur.rowcount == 1)

        return await self._run(renew)

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
            "chosen = %s, process_reason = %s, details = (details::jsonb || %s::jsonb)::text",
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
            await self._update(run_id, "details = (details::jsonb - 'health')::text", (), lease)
            return
        await self._update(
            run_id,
            "details = jsonb_set(details::jsonb, '{health}', %s::jsonb)::text",
            (to_json(dict(health)),),
            lease,
        )

    async def record_pause(self, run_id: str, *, lease: str | None = None) -> None:
        await self._update(run_id, "paused = TRUE", (), lease)

    async def _update(
        self, run_id: str, assignments: str, values: tuple[Any, ...], lease: str | None
    ) -> None:
        run_id = valid_text(run_id)
        values = valid_values((*values, run_id))
        statement = f"UPDATE runs SET {assignments} WHERE run_id = %s"

        async def update(cur: Any) -> None:
            await _check_lease(cur, run_id, lease)
            await cur.execute(statement, values)
            if cur.rowcount == 0:
                raise UnknownRunError(run_id)

        await self._run(update)

    async def add_tasks(
        self, run_id: str, tasks: Sequence[AddedTaskRecord], *, lease: str | None = None
    ) -> None:
        run_id = valid_text(run_id)
        await self._insert_rows(run_id, _TASK_WRITE, [task_values(run_id, t) for t in tasks], lease)

    async def record_decisions(
        self, run_id: str, decisions: Sequence[DecisionRecord], *, lease: str | None = None
    ) -> None:
        run_id = valid_text(run_id)
        values = [decision_values(run_id, decision) for decision in decisions]
        await self._insert_rows(run_id, _DECISION_WRITE, values, lease)

    async def start_batch(self, batch: BatchRecord) -> None:
        row = batch_values(batch)
        items = batch_item_values(row[0], batch.items)

        async def insert(cur: Any) -> None:
            await cur.execute(
                f"INSERT INTO batches ({BATCH_COLUMNS}, created_ts) VALUES "
                "(%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (batch_id) DO NOTHING",
                row,
            )
            if cur.rowcount == 0:
                raise StoreError(f"a batch {row[0]!r} is already in the store")
            await cur.executemany("INSERT INTO batch_items VALUES (%s, %s, %s, %s)", items)

        await self._run(insert)

    async def get_batch(self, batch_id: str) -> BatchRecord | None:
        batch_id = valid_text(batch_id)

        async def select(cur: Any) -> BatchRecord | None:
            await cur.execute(
                f"SELECT {BATCH_COLUMNS} FROM batches WHERE batch_id = %s", (batch_id,)
            )
            found = await cur.fetchone()
            if found is None:
                return None
            await cur.execute(
                "SELECT idx, run_id, status FROM batch_items WHERE batch_id = %s ORDER BY idx",
                (batch_id,),
            )
            return batch_from_rows(found, await cur.fetchall())

        return await self._run(select, write=False)

    async def set_batch_status(self, batch_id: str, statuses: Mapping[int, BatchStatus]) -> None:
        batch_id = valid_text(batch_id)
        rows = [(valid_status(status), batch_id, index) for index, status in statuses.items()]

        async def update(cur: Any) -> None:
            for row in rows:
                await cur.execute(
                    "UPDATE batch_items SET status = %s WHERE batch_id = %s AND idx = %s", row
                )
                if cur.rowcount == 0:
                    raise StoreError(f"no input {row[2]} of a batch {batch_id!r} in the store")

        await self._run(update)

    async def _insert_rows(
        self, run_id: str, statement: str, rows: list[tuple[Any, ...]], lease: str | None
    ) -> None:
        async def insert(cur: Any) -> None:
            await _require_run(cur, run_id)
            await _check_lease(cur, run_id, lease)
            if rows:
                await cur.executemany(statement, rows)

        await self._run(insert)

    async def record_attempt(
        self, run_id: str, attempt: AttemptRecord, *, lease: str | None = None
    ) -> None:
        await self._save(TaskRows(run_id, None, (attempt,), lease))

    async def save_output(self, row: OutputRow, *, lease: str | None = None) -> None:
        await self._save(TaskRows(row.run_id, row, (), lease))

    async def save_task(
        self,
        output: OutputRow,
        attempts: Sequence[AttemptRecord] = (),
        *,
        lease: str | None = None,
    ) -> None:
        await self._save(TaskRows(output.run_id, output, attempts, lease))

    async def _save(self, rows: TaskRows) -> None:
        """A task's attempts and output, committed before this returns, with the other task
        writes that came while a commit was in flight (group commit): see `_Checkpoint`."""
        conn, lock = await self._connection()
        loop = asyncio.get_running_loop()
        waiting = self._waiting.setdefault(loop, [])
        mine = _Checkpoint(rows)
        waiting.append(mine)
        try:
            async with lock:
                while not mine.done:  # nobody took it along: commit it, and what came before
                    batch = waiting[:_MAX_BATCH]
                    del waiting[: len(batch)]
                    await self._commit(conn, batch)
        except BaseException:
            if not mine.done and mine in waiting:
                waiting.remove(mine)  # cancelled before any commit took it: never written
            raise
        if mine.error is not None:
            raise mine.error

    async def _commit(self, conn: psycopg.AsyncConnection[Any], batch: list[_Checkpoint]) -> None:
        """Commit ``batch`` in one transaction of two round trips (pipelined): lock the runs
        (in order, so two batches never deadlock), then read their leases in a statement of its
        own (as `_check_lease` does); then write every checkpoint whose run exists and whose
        writer's lease holds, and commit. The others are refused alone (`UnknownRunError`,
        `LeaseLost`), and write nothing."""
        import psycopg

        run_ids = sorted({checkpoint.rows.run_id for checkpoint in batch})
        failed: BaseException | None = None
        try:
            with anyio.CancelScope(shield=True):  # a started transaction always ends
                async with conn.pipeline(), conn.transaction(), conn.cursor() as cur:
                    locked, leases = conn.cursor(), conn.cursor()
                    await locked.execute(_LOCK_RUNS, (run_ids,))
                    await leases.execute(_LEASES_READ, (run_ids,))
                    present = {row[0] for row in await locked.fetchall()}
                    held = {row[0]: row[1:] for row in await leases.fetchall()}
                    attempts: list[tuple[Any, ...]] = []
                    outputs: list[tuple[Any, ...]] = []
                    for checkpoint in batch:
                        checkpoint.check(present, held)
                        if checkpoint.error is None:
                            attempts.extend(checkpoint.rows.attempts)
                            if checkpoint.rows.output is not None:
                                outputs.append(checkpoint.rows.output)
                    if attempts:
                        await cur.executemany(_ATTEMPT_WRITE, attempts)
                    if outputs:
                        await cur.executemany(_OUTPUT_WRITE, outputs)
        except psycopg.Error as exc:
            failed = self._error(exc)
        except BaseException as exc:  # told to every checkpoint of the batch, as its own
            failed = exc
        for checkpoint in batch:
            if failed is not None and checkpoint.error is None:
                checkpoint.error = failed
            checkpoint.done = True

    # -- reads -------------------------------------------------------------------------------

    async def _select(self, query: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        async def select(cur: Any) -> list[tuple[Any, ...]]:
            await cur.execute(query, params)
            found: list[tuple[Any, ...]] = await cur.fetchall()
            return found

        return await self._run(select, write=False)

    async def get_run(self, run_id: str) -> RunRecord | None:
        found = await self._select(f"{_SELECT_RUNS} WHERE run_id = %s", (valid_text(run_id),))
        return observed(run_from_row(found[0])) if found else None

    async def run_ids_starting(self, prefix: str, limit: int = 2) -> list[str]:
        prefix = valid_text(prefix)
        check_limit(limit)
        if not prefix:
            rows = await self._select(
                'SELECT run_id FROM runs ORDER BY run_id COLLATE "C" LIMIT %s', (limit,)
            )
        else:
            upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
            rows = await self._select(
                "SELECT run_id FROM runs "
                'WHERE run_id COLLATE "C" >= %s AND run_id COLLATE "C" < %s '
                'ORDER BY run_id COLLATE "C" LIMIT %s',
                (prefix, upper, limit),
            )
        return sorted(row[0] for row in rows)

    async def outputs(self, run_id: str) -> dict[str, OutputRow]:
        rows = await self._select(
            f"SELECT {OUTPUT_COLUMNS} FROM outputs WHERE run_id = %s ORDER BY finished_ts, seq",
            (valid_text(run_id),),
        )
        return {row.task: row for row in map(output_from_row, rows)}

    async def attempts(self, run_id: str) -> list[AttemptRecord]:
        rows = await self._select(
            f"SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE run_id = %s "
            'ORDER BY start_ts, task COLLATE "C", attempt',
            (valid_text(run_id),),
        )
        found = []
        for row in rows:
            details = json.loads(row[-1])
            details.pop(_PROMPTS, None)  # read by `prompts`, not here
            found.append(attempt_from_row((*row[:-1], json.dumps(details))))
        return found

    async def prompts(self, run_id: str) -> dict[tuple[str, int], list[PromptRecord]]:
        from crewflow.store._rows import prompts_from_row

        rows = await self._select(
            "SELECT task, attempt, details FROM attempts WHERE run_id = %s "
            'ORDER BY start_ts, task COLLATE "C", attempt',
            (valid_text(run_id),),
        )
        found = {}
        for task, number, text in rows:
            prompts = json.loads(text).get(_PROMPTS)
            if prompts:
                key, records = prompts_from_row((task, number, json.dumps(prompts)))
                found[key] = records
        return found

    async def added_tasks(self, run_id: str) -> list[AddedTaskRecord]:
        rows = await self._select(
            f"SELECT {TASK_COLUMNS} FROM tasks WHERE run_id = %s ORDER BY added_ts, seq",
            (valid_text(run_id),),
        )
        return [task_from_row(row) for row in rows]

    async def decisions(self, run_id: str) -> list[DecisionRecord]:
        rows = await self._select(
            f"SELECT {DECISION_COLUMNS} FROM decisions WHERE run_id = %s ORDER BY at_ts, seq",
            (valid_text(run_id),),
        )
        return [decision_from_row(row) for row in rows]

    async def version(self) -> str | None:
        rows = await self._select("SELECT pg_current_snapshot()::text", ())
        return str(rows[0][0])

    async def list_runs(self, crew: str | None = None, limit: int | None = 20) -> list[RunRecord]:
        check_limit(limit)
        where, params = ("", [])
        if crew is not None:
            crew = valid_text(crew)
            where, params = ("WHERE md5(crew) = md5(%s) AND crew = %s", [crew, crew])
        query = f"{_SELECT_RUNS} {where} ORDER BY started_ts DESC, runs.seq DESC LIMIT %s"
        return _observed(await self._select(query, [*params, limit]))

    async def runs_of_key(self, crew_key: str, limit: int | None = 50) -> list[RunRecord]:
        check_limit(limit)
        query = (
            f"{_SELECT_RUNS} WHERE md5(crew_key) = md5(%s) AND crew_key = %s "
            "ORDER BY started_ts DESC, runs.seq DESC LIMIT %s"
        )
        crew_key = valid_text(crew_key)
        return _observed(await self._select(query, (crew_key, crew_key, limit)))

    async def cache_get(self, key: str) -> str | None:
        rows = await self._select("SELECT value FROM cache WHERE key = %s", (valid_text(key),))
        return str(rows[0][0]) if rows else None

    async def cache_put(self, key: str, value: str) -> None:
        values = valid_values((key, value, time.time()))

        async def insert(cur: Any) -> None:
            await cur.execute(_upsert("cache", "key, value, created_ts", "key"), values)

        await self._run(insert)

    async def cache_clear(self) -> int:
        async def delete(cur: Any) -> int:
            await cur.execute("DELETE FROM cache")
            return int(cur.rowcount)

        return await self._run(delete)


def _finish(conn: psycopg.AsyncConnection[Any]) -> None:
    """Close a connection whose loop is gone: its socket only, since no loop can run the rest."""
    conn.pgconn.finish()


def _when(moment: datetime) -> Any:
    from pydantic_core import to_jsonable_python

    return to_jsonable_python(moment)


def _observed(rows: list[tuple[Any, ...]]) -> list[RunRecord]:
    now = datetime.now(UTC)
    return [observed(run_from_row(row), now) for row in rows]


async def _require_run(cur: Any, run_id: str) -> None:
    await cur.execute("SELECT 1 FROM runs WHERE run_id = %s", (run_id,))
    if await cur.fetchone() is None:
        raise UnknownRunError(run_id)


async def _lock_run(cur: Any, run_id: str) -> None:
    """Lock the run's row until the transaction ends (`UnknownRunError` when there is none)."""
    await cur.execute("SELECT 1 FROM runs WHERE run_id = %s FOR UPDATE", (run_id,))
    if await cur.fetchone() is None:
        raise UnknownRunError(run_id)


async def _lease_row(cur: Any, run_id: str) -> tuple[Any, ...] | None:
    await cur.execute(_LEASE_READ, (run_id,))
    found: tuple[Any, ...] | None = await cur.fetchone()
    return found


def _holds(run_id: str, token: str, found: tuple[Any, ...] | None) -> None:
    """Nothing when ``found`` (the run's lease row) is ``token``'s, else `LeaseLost`."""
    if found is not None and found[0] == token:
        return
    owner = None
    if found is not None:
        _, host, boot_id, pid, process_start = found
        owner = LeaseOwner(host=host, boot_id=boot_id, pid=pid, process_start=process_start)
    raise LeaseLost(run_id, owner)


async def _check_lease(cur: Any, run_id: str, token: str | None) -> None:
    """Refuse a write of run ``run_id`` whose writer's lease (``token``; ``None``: unchecked)
    no longer holds the run. The run's row is locked first, and the lease read after in a
    statement of its own: it sees every take-over committed before, and none comes after."""
    if token is None:
        return
    await _lock_run(cur, run_id)
    _holds(run_id, token, await _lease_row(cur, run_id))
