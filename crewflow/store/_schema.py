"""The SQLite schema and its forward migrations.

``MIGRATIONS[i]`` takes a database from version ``i`` to ``i + 1``; a new version appends a
function and never edits an old one. Each runs inside the ``BEGIN IMMEDIATE`` transaction that
also updates ``schema_version``, so a migration is applied entirely or not at all, once, even
when several processes open the database at the same moment.

Datetimes are stored twice: as ISO 8601 text with their offset (what is read back) and as
epoch seconds in ``*_ts`` columns (what is sorted, and for runs indexed). JSON columns are TEXT.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import sqlite3

__all__ = ["MIGRATIONS", "Migration"]

Migration = Callable[["sqlite3.Connection"], None]


def _v1(conn: sqlite3.Connection) -> None:
    statements = (
        """CREATE TABLE runs (
            run_id TEXT PRIMARY KEY NOT NULL,
            crew TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            source TEXT,                -- JSON object or NULL
            process TEXT NOT NULL,
            process_reason TEXT NOT NULL,
            inputs TEXT NOT NULL,       -- JSON object
            status TEXT NOT NULL,
            started TEXT NOT NULL,
            started_ts REAL NOT NULL,
            ended TEXT,
            usage TEXT NOT NULL         -- JSON object
        )""",
        "CREATE INDEX runs_by_crew ON runs (crew, started_ts DESC)",
        "CREATE INDEX runs_by_start ON runs (started_ts DESC)",
        """CREATE TABLE attempts (
            run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
            task TEXT NOT NULL,
            attempt INTEGER NOT NULL,
            agent TEXT NOT NULL,
            start TEXT NOT NULL,
            start_ts REAL NOT NULL,
            "end" TEXT,
            status TEXT NOT NULL,
            error_type TEXT,
            error TEXT,
            model TEXT NOT NULL,
            requests INTEGER NOT NULL,
            prompt_tokens INTEGER NOT NULL,
            completion_tokens INTEGER NOT NULL,
            cost REAL,
            cache_hit INTEGER NOT NULL,
            llm_retries INTEGER NOT NULL,
            limit_wait REAL NOT NULL,
            PRIMARY KEY (run_id, task, attempt)
        )""",
        "CREATE INDEX attempts_by_run ON attempts (run_id, start_ts)",
        """CREATE TABLE outputs (
            run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
            task TEXT NOT NULL,
            text TEXT NOT NULL,
            data TEXT,                  -- JSON, NULL when the task has no structured output
            agent TEXT NOT NULL,
            model TEXT NOT NULL,
            finished_at TEXT NOT NULL,
            finished_ts REAL NOT NULL,
            PRIMARY KEY (run_id, task)
        )""",
        "CREATE INDEX outputs_by_run ON outputs (run_id, finished_ts)",
        """CREATE TABLE cache (
            key TEXT PRIMARY KEY NOT NULL,
            value TEXT NOT NULL,
            created_ts REAL NOT NULL
        )""",
    )
    for statement in statements:
        conn.execute(statement)


def _v2(conn: sqlite3.Connection) -> None:
    # What the optimizer and resume need: the task graph and concurrency of each run, how
    # often it was resumed, and which limits each attempt waited for.
    statements = (
        "ALTER TABLE runs ADD COLUMN graph TEXT NOT NULL DEFAULT '{}'",  # JSON object
        "ALTER TABLE runs ADD COLUMN max_concurrency INTEGER",
        "ALTER TABLE runs ADD COLUMN resumed INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE attempts ADD COLUMN limit_waits TEXT NOT NULL DEFAULT '{}'",  # JSON
    )
    for statement in statements:
        conn.execute(statement)


def _v3(conn: sqlite3.Connection) -> None:
    # Every finished task writes an attempt and an output row, and each index is one more
    # B-tree to update in that commit: these two cost a third of it. A run's rows are found by
    # the primary keys' run_id prefix just as well, and sorting one run's rows is cheap.
    conn.execute("DROP INDEX IF EXISTS attempts_by_run")
    conn.execute("DROP INDEX IF EXISTS outputs_by_run")


def _v4(conn: sqlite3.Connection) -> None:
    # Graphs that grow while they run: the tasks a process adds (and its questions) with their
    # spec hashes, so that a resumed run replays them; the structured fingerprint (a hash per
    # task, the crew key without the process, the process's configuration), the process a
    # choosing process picked, whether a run was paused; cache hits counted, not flagged; an
    # attempt's own duration; and a JSON ``details`` column per run and per attempt for fields
    # that are never queried, so later features need no migration of their own.
    statements = (
        "ALTER TABLE runs ADD COLUMN crew_key TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE runs ADD COLUMN task_hashes TEXT NOT NULL DEFAULT '{}'",  # JSON object
        "ALTER TABLE runs ADD COLUMN process_config TEXT NOT NULL DEFAULT '{}'",  # JSON object
        "ALTER TABLE runs ADD COLUMN chosen TEXT",
        "ALTER TABLE runs ADD COLUMN paused INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE runs ADD COLUMN details TEXT NOT NULL DEFAULT '{}'",  # JSON object
        "CREATE INDEX runs_by_key ON runs (crew_key, started_ts DESC)",
        "ALTER TABLE attempts RENAME COLUMN cache_hit TO cache_hits",
        "ALTER TABLE attempts ADD COLUMN duration REAL",  # NULL: from start and end
        "ALTER TABLE attempts ADD COLUMN details TEXT NOT NULL DEFAULT '{}'",  # JSON object
        """CREATE TABLE tasks (
            run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
            name TEXT NOT NULL,
            kind TEXT NOT NULL,
            step TEXT NOT NULL,
            agent TEXT NOT NULL,
            depends_on TEXT NOT NULL,   -- JSON list of task names
            spec_hash TEXT NOT NULL,
            added TEXT NOT NULL,
            added_ts REAL NOT NULL,
            PRIMARY KEY (run_id, name)
        )""",
    )
    for statement in statements:
        conn.execute(statement)


def _v5(conn: sqlite3.Connection) -> None:
    # The lease of the process executing a run. Its own table, not columns of ``runs`` nor
    # JSON in ``details``: a run renews it every 20 s, and each renewal rewrites one small row
    # here instead of the run's (which holds its whole graph and task hashes); a resume that
    # takes a run over compares its token and replaces it under the write lock; and a finished
    # run holds none, so the table only ever has a row per run in progress. Runs left
    # ``running`` by earlier versions have no lease: they read as interrupted.
    conn.execute(
        """CREATE TABLE leases (
            run_id TEXT PRIMARY KEY NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
            token TEXT NOT NULL,
            host TEXT NOT NULL,
            boot_id TEXT,
            pid INTEGER NOT NULL,
            process_start TEXT,
            expires TEXT NOT NULL,
            expires_ts REAL NOT NULL
        )"""
    )


def _v6(conn: sqlite3.Connection) -> None:
    # The tasks in flight, for live views (a JSON list of task names): on the lease row, which
    # a run rewrites anyway, at most once a second while the set changes.
    conn.execute("ALTER TABLE leases ADD COLUMN running TEXT NOT NULL DEFAULT '[]'")


def _v7(conn: sqlite3.Connection) -> None:
    # Each LLM call of an attempt (`CallRecord`), a JSON array in a column of the attempt's own
    # row: written in the same statement as the attempt, for the chart of requests in flight
    # and waits per model. A table of their own (a row per call) cost a statement per
    # checkpoint, 7 % more instructions per task of a chain; a query per call reads them with
    # ``json_each(attempts.calls)``.
    conn.execute("ALTER TABLE attempts ADD COLUMN calls TEXT NOT NULL DEFAULT '[]'")


def _v8(conn: sqlite3.Connection) -> None:
    # The decisions a run made about its own course (`DecisionRecord`): a condition's result, a
    # router's choice, a map's items, a loop's rounds, a task skipped and why. Replayed on
    # resume; a few per run, written only by crews that branch, map or loop (or skip).
    conn.execute(
        """CREATE TABLE decisions (
            run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
            key TEXT NOT NULL,
            kind TEXT NOT NULL,
            task TEXT NOT NULL,
            value TEXT NOT NULL,        -- JSON
            reason TEXT NOT NULL,
            at TEXT NOT NULL,
            at_ts REAL NOT NULL,
            PRIMARY KEY (run_id, key)
        )"""
    )


def _v9(conn: sqlite3.Connection) -> None:
    # Batches (`BatchRecord`, ``crewflow batch``): one row per batch, one per input with the run
    # id it was given before any run started (so a resumed batch resumes that run).
    conn.execute(
        """CREATE TABLE batches (
            batch_id TEXT PRIMARY KEY NOT NULL,
            crew TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            inputs_hash TEXT NOT NULL,
            created TEXT NOT NULL,
            details TEXT NOT NULL DEFAULT '{}',     -- JSON object
            created_ts REAL NOT NULL
        )"""
    )
    conn.execute(
        """CREATE TABLE batch_items (
            batch_id TEXT NOT NULL REFERENCES batches (batch_id) ON DELETE CASCADE,
            idx INTEGER NOT NULL,
            run_id TEXT NOT NULL,
            status TEXT NOT NULL,
            PRIMARY KEY (batch_id, idx)
        )"""
    )


MIGRATIONS: list[Migration] = [_v1, _v2, _v3, _v4, _v5, _v6, _v7, _v8, _v9]
