"""What only `SQLiteStore` promises: a real file, WAL, migrations, durability, many processes,
and never a blocking call on the event loop."""

from __future__ import annotations

import gc
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import warnings
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import anyio
import pytest

from crewflow.llm._types import Usage
from crewflow.store import (
    AddedTaskRecord,
    AttemptRecord,
    CallRecord,
    DuplicateRunError,
    OutputRow,
    RunStatus,
    SchemaVersionError,
    SQLiteStore,
    StoreError,
    TaskStatus,
    ToolCallRecord,
    UnknownRunError,
    _schema,
)
from crewflow.store import _checkpointer as checkpointer_module
from crewflow.store import _writer as writer_module
from crewflow.store._checkpointer import Checkpointer
from tests.store.conftest import at, run_record

LATEST = len(_schema.MIGRATIONS)

REPO = Path(__file__).resolve().parents[2]


def tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        found = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    conn.close()
    return {name for (name,) in found}


def version_rows(path: Path) -> list[tuple[int]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT version FROM schema_version").fetchall()
    finally:
        conn.close()


async def test_wal_normal_sync_busy_timeout_and_foreign_keys_are_in_effect(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "runs.db", timeout=12.5) as store:
        pragmas = await store.pragmas()

    assert pragmas == {
        "journal_mode": "wal",
        "synchronous": 1,  # NORMAL
        "busy_timeout": 12500,
        "foreign_keys": 1,
    }
    # WAL is a property of the file: a fresh connection sees it too.
    conn = sqlite3.connect(tmp_path / "runs.db")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        conn.close()


async def test_records_survive_closing_and_reopening_the_file(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    attempt = AttemptRecord(
        task="t", number=1, start=at(1), end=at(2), duration=1.0, status="completed"
    )
    output = OutputRow(run_id="run-1", task="t", text="done", data={"k": 1}, finished_at=at(2))
    async with SQLiteStore(path) as store:
        await store.start_run(run_record())
        await store.record_attempt("run-1", attempt)
        await store.save_output(output)
        await store.finish_run("run-1", RunStatus.COMPLETED, at(3), Usage(requests=1))
        await store.cache_put("key", "value")

    async with SQLiteStore(path) as reopened:
        run = await reopened.get_run("run-1")
        assert run is not None
        assert run.status is RunStatus.COMPLETED
        assert await reopened.attempts("run-1") == [attempt]
        assert await reopened.outputs("run-1") == {"t": output}
        assert await reopened.cache_get("key") == "value"


async def test_an_output_is_committed_when_save_output_returns(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    async with SQLiteStore(path) as store:
        await store.start_run(run_record())
        await store.save_output(OutputRow(run_id="run-1", task="t", text="x", finished_at=at(1)))

        # Another connection (as another process would) sees it while the store is still open.
        conn = sqlite3.connect(path)
        try:
            assert conn.execute("SELECT task, text FROM outputs").fetchall() == [("t", "x")]
        finally:
            conn.close()


async def test_an_empty_file_is_migrated_to_the_latest_version(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    path.touch()

    async with SQLiteStore(path) as store:
        assert await store.schema_version() == LATEST

    assert version_rows(path) == [(LATEST,)]
    assert {"schema_version", "runs", "attempts", "outputs", "cache", "tasks"} <= tables(path)


async def test_a_version_0_database_with_other_tables_is_migrated_and_keeps_them(
    tmp_path: Path,
) -> None:
    path = tmp_path / "runs.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (text TEXT)")
    conn.execute("INSERT INTO notes VALUES ('keep me')")
    conn.commit()
    conn.close()

    async with SQLiteStore(path) as store:
        await store.start_run(run_record())

    assert version_rows(path) == [(LATEST,)]
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT text FROM notes").fetchall() == [("keep me",)]
    finally:
        conn.close()


async def test_opening_a_migrated_database_again_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    async with SQLiteStore(path) as store:
        await store.start_run(run_record())
    schema_before = _schema_sql(path)

    for _ in range(2):
        async with SQLiteStore(path) as store:
            assert await store.get_run("run-1") is not None

    assert version_rows(path) == [(LATEST,)]
    assert _schema_sql(path) == schema_before


async def test_an_appended_migration_upgrades_an_existing_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "runs.db"
    async with SQLiteStore(path) as store:
        await store.start_run(run_record())

    def later(conn: sqlite3.Connection) -> None:
        conn.execute("ALTER TABLE runs ADD COLUMN note TEXT NOT NULL DEFAULT 'later'")

    monkeypatch.setattr(_schema, "MIGRATIONS", [*_schema.MIGRATIONS, later])
    monkeypatch.setattr("crewflow.store.sqlite.MIGRATIONS", _schema.MIGRATIONS)
    async with SQLiteStore(path) as store:
        assert await store.schema_version() == LATEST + 1
        assert await store.get_run("run-1") is not None

    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT note FROM runs").fetchall() == [("later",)]
    finally:
        conn.close()
    assert version_rows(path) == [(LATEST + 1,)]


async def test_a_version_1_database_keeps_its_runs_and_gains_the_version_2_columns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "runs.db"
    monkeypatch.setattr("crewflow.store.sqlite.MIGRATIONS", _schema.MIGRATIONS[:1])
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    _schema.MIGRATIONS[0](conn)
    conn.execute("INSERT INTO schema_version VALUES (1)")
    conn.execute(
        "INSERT INTO runs (run_id, crew, fingerprint, source, process, process_reason, inputs, "
        "status, started, started_ts, ended, usage) VALUES ('old', 'c', 'f', NULL, 'sequential', "
        "'', '{}', 'completed', '2026-01-01T00:00:00+00:00', 1767225600, NULL, '{}')"
    )
    conn.close()
    monkeypatch.undo()

    async with SQLiteStore(path) as store:
        assert await store.schema_version() == LATEST
        old = await store.get_run("old")

    assert old is not None
    assert (old.crew, old.graph, old.max_concurrency, old.resumed) == ("c", {}, None, 0)
    assert (old.crew_key, old.chosen, old.paused, old.details) == ("", None, False, {})


async def test_version_3_attempts_are_read_back_as_finished_attempts(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    for migration in _schema.MIGRATIONS[:3]:
        migration(conn)
    conn.execute("INSERT INTO schema_version VALUES (3)")
    conn.execute(
        "INSERT INTO runs (run_id, crew, fingerprint, source, process, process_reason, inputs, "
        "status, started, started_ts, ended, usage) VALUES ('run-1', 'c', 'f', NULL, "
        "'sequential', '', '{}', 'running', ?, ?, NULL, '{}')",
        (at(0).isoformat(), at(0).timestamp()),
    )
    columns = (
        'run_id, task, attempt, agent, start, start_ts, "end", status, error_type, error, model, '
        "requests, prompt_tokens, completion_tokens, cost, cache_hit, llm_retries, limit_wait, "
        "limit_waits"
    )
    rows = [  # one that ended (from the cache), and one its process never ended (killed)
        ("run-1", "facts", 1, "R", at(0).isoformat(), at(0).timestamp(), at(2.5).isoformat(),
         "completed", None, None, "m", 1, 10, 5, 0.25, 1, 0, 0.5, '{"rpm:m": 0.5}'),
        ("run-1", "draft", 1, "W", at(3).isoformat(), at(3).timestamp(), None,
         "running", None, None, "m", 0, 0, 0, None, 0, 0, 0.0, "{}"),
    ]  # fmt: skip
    conn.executemany(f"INSERT INTO attempts ({columns}) VALUES ({', '.join('?' * 19)})", rows)
    conn.close()

    async with SQLiteStore(path) as store:
        assert await store.schema_version() == LATEST
        ended, killed = await store.attempts("run-1")

    assert ended == AttemptRecord(
        task="facts",
        number=1,
        agent="R",
        start=at(0),
        end=at(2.5),
        duration=2.5,  # from its start and end: version 3 kept no duration
        status=TaskStatus.COMPLETED,
        model="m",
        usage=Usage(requests=1, prompt_tokens=10, completion_tokens=5, cost=0.25),
        cache_hits=1,
        limit_wait=0.5,
        limit_waits={"rpm:m": 0.5},
    )
    # Recorded as running by an older crewflow and never ended: it died with its process.
    assert (killed.task, killed.status, killed.end, killed.duration) == (
        "draft",
        TaskStatus.CANCELLED,
        at(3),
        0.0,
    )


async def test_a_database_from_a_newer_crewflow_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    conn.execute("INSERT INTO schema_version VALUES (99)")
    conn.commit()
    conn.close()

    store = SQLiteStore(path)
    with pytest.raises(SchemaVersionError, match="schema version 99") as caught:
        await store.get_run("x")
    await store.close()

    assert (caught.value.found, caught.value.supported) == (99, LATEST)


async def test_a_file_that_is_not_a_database_fails_with_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    path.write_bytes(b"this is not sqlite" * 100)

    store = SQLiteStore(path)
    with pytest.raises(StoreError, match=str(path)):
        await store.list_runs()
    await store.close()


async def test_list_runs_and_per_run_lookups_use_indexes(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    async with SQLiteStore(path) as store:
        await store.start_run(run_record())

    # Listing runs (all, a crew's, a crew key's) never sorts the table; a run's added tasks,
    # attempts and outputs are found through the primary key's run_id prefix and only that
    # run's rows are sorted.
    queries = {
        "SELECT * FROM runs WHERE crew = 'c' ORDER BY started_ts DESC, rowid DESC LIMIT 20": (
            "runs_by_crew",
            False,
        ),
        "SELECT * FROM runs ORDER BY started_ts DESC, rowid DESC LIMIT 20": (
            "runs_by_start",
            False,
        ),
        "SELECT * FROM runs WHERE crew_key = 'k' ORDER BY started_ts DESC, rowid DESC LIMIT 50": (
            "runs_by_key",
            False,
        ),
        "SELECT * FROM tasks WHERE run_id = 'r' ORDER BY added_ts, rowid": (
            "sqlite_autoindex_tasks_1 (run_id=?)",
            True,
        ),
        "SELECT * FROM attempts WHERE run_id = 'r' ORDER BY start_ts, task, attempt": (
            "sqlite_autoindex_attempts_1 (run_id=?)",
            True,
        ),
        "SELECT * FROM outputs WHERE run_id = 'r' ORDER BY finished_ts, rowid": (
            "sqlite_autoindex_outputs_1 (run_id=?)",
            True,
        ),
    }
    conn = sqlite3.connect(path)
    try:
        for query, (index, sorts) in queries.items():
            plan = " | ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {query}"))
            assert f"USING INDEX {index}" in plan, plan
            assert ("TEMP B-TREE FOR ORDER BY" in plan) == sorts, plan
    finally:
        conn.close()


async def test_a_task_checkpoint_updates_no_secondary_index(tmp_path: Path) -> None:
    # Each index is one more B-tree written by every task's commit: only the primary keys.
    path = tmp_path / "runs.db"
    async with SQLiteStore(path) as store:
        await store.start_run(run_record())

    conn = sqlite3.connect(path)
    try:
        found = conn.execute(
            "SELECT tbl_name, name FROM sqlite_master WHERE type = 'index' "
            "AND tbl_name IN ('attempts', 'outputs') AND sql IS NOT NULL"
        ).fetchall()
    finally:
        conn.close()
    assert found == []


async def test_nothing_touches_the_disk_before_first_use(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "runs.db"

    store = SQLiteStore(path)
    assert not path.parent.exists()

    async with store:
        await store.list_runs()
    assert path.exists()


async def test_no_sqlite_call_on_the_event_loop_thread_can_wait_for_a_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Writes commit on the loop's thread, but only with a busy timeout of 0; the connection is
    # opened, migrated, read and closed in the store's thread.
    loop_thread = threading.get_ident()
    callers: list[tuple[str, int]] = []
    waits_on_loop: list[int] = []

    def noting(name: str) -> Any:
        def method(self: Any, *args: Any, **kwargs: Any) -> Any:
            callers.append((name, threading.get_ident()))
            real = super(type(self), self)
            if threading.get_ident() == loop_thread:
                waits_on_loop.append(real.execute("PRAGMA busy_timeout").fetchone()[0])
            return getattr(real, name)(*args, **kwargs)

        return method

    watched = ("execute", "executemany", "executescript", "commit", "rollback", "close", "cursor")
    checking = type("CheckingConnection", (sqlite3.Connection,), {n: noting(n) for n in watched})
    real_connect = sqlite3.connect

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        callers.append(("connect", threading.get_ident()))
        return real_connect(*args, factory=checking, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", connect)

    store = SQLiteStore(tmp_path / "runs.db")
    await store.start_run(run_record())
    await store.record_attempt("run-1", attempt("t"))
    await store.save_output(OutputRow(run_id="run-1", task="t", text="x", finished_at=at(1)))
    await store.save_task(
        OutputRow(run_id="run-1", task="u", text="y", finished_at=at(2)), [attempt("u")]
    )
    await store.record_choice("run-1", "parallel", "wide")
    await store.record_pause("run-1")
    await store.add_tasks("run-1", [AddedTaskRecord(name="plan", added=at(1))])
    await store.finish_run("run-1", RunStatus.COMPLETED, at(2), Usage())
    await store.reopen_run("run-1")
    await store.get_run("run-1")
    await store.outputs("run-1")
    await store.attempts("run-1")
    await store.added_tasks("run-1")
    await store.list_runs(crew="research")
    await store.runs_of_key("key")
    await store.cache_put("k", "v")
    await store.cache_get("k")
    await store.cache_clear()
    await store.close()

    names = {name for name, _ in callers}
    assert {"connect", "execute", "close"} <= names, "the check must have seen the calls"
    on_loop = {name for name, thread in callers if thread == loop_thread}
    assert on_loop == {"execute"}
    assert set(waits_on_loop) == {0}


async def test_closing_leaves_no_resource_warning(tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        store = SQLiteStore(tmp_path / "runs.db")
        await store.start_run(run_record())
        await store.close()
        del store
        gc.collect()

    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []


_WRITER = """
import sys
from datetime import UTC, datetime

import anyio

from crewflow.llm._types import Usage
from crewflow.store import AttemptRecord, RunRecord, SQLiteStore

path, index, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
print("ready", flush=True)
sys.stdin.readline()  # every writer starts at once


async def main() -> None:
    run_id = f"run-{index}"
    async with SQLiteStore(path) as store:
        await store.start_run(RunRecord(run_id=run_id, crew="load", started=datetime.now(UTC)))
        for number in range(1, count + 1):
            now = datetime.now(UTC)
            await store.record_attempt(
                run_id,
                AttemptRecord(
                    task=f"task-{number % 7}", number=number, start=now, end=now, duration=0.0,
                    status="completed", usage=Usage(prompt_tokens=number),
                ),
            )


anyio.run(main)
print("done", flush=True)
"""


@pytest.mark.slow
def test_writers_in_separate_processes_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "fresh" / "runs.db"  # not created yet: the writers also race to migrate
    writers, count = 4, 200
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(path), str(index), str(count)],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for index in range(writers)
    ]
    try:
        for process in processes:
            assert process.stdout is not None
            assert process.stdout.readline() == "ready\n"
        for process in processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        results = [process.communicate(timeout=120) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()

    for process, (out, err) in zip(processes, results, strict=True):
        assert (process.returncode, out, err) == (0, "done\n", "")

    async def check() -> None:
        async with SQLiteStore(path) as store:
            runs = await store.list_runs(crew="load", limit=None)
            assert sorted(run.run_id for run in runs) == [f"run-{i}" for i in range(writers)]
            for run in runs:
                attempts = await store.attempts(run.run_id)
                assert sorted(row.number for row in attempts) == list(range(1, count + 1))
            assert await store.schema_version() == LATEST

    anyio.run(check)


def _schema_sql(path: Path) -> list[tuple[str]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall()
    finally:
        conn.close()


# -- the store's thread: group commit, loops, threads, cancellation, closing ---------------------


def output(task: str, run_id: str = "run-1", text: str = "x") -> OutputRow:
    return OutputRow(run_id=run_id, task=task, text=text, finished_at=at(1))


def attempt(task: str) -> AttemptRecord:
    return AttemptRecord(
        task=task, number=1, start=at(0), end=at(1), duration=1.0, status="completed"
    )


def stored_tasks(path: Path) -> set[str]:
    """The tasks with an output in the file, as another process would see them."""
    conn = sqlite3.connect(path)
    try:
        return {task for (task,) in conn.execute("SELECT task FROM outputs")}
    finally:
        conn.close()


class _WriteLock:
    """Holds the database's write lock from another connection (as another process would) until
    released, so that the store's writes queue up behind it."""

    def __init__(self, path: Path) -> None:
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute("BEGIN IMMEDIATE")

    def release(self) -> None:
        self._conn.execute("COMMIT")
        self._conn.close()


class Transactions:
    """What a store's thread runs on its connection: the COMMITs it runs, and its latest
    ``BEGIN IMMEDIATE``, which waits while another connection holds the write lock."""

    def __init__(self) -> None:
        self.commits: list[int] = []
        self.began = threading.Event()

    async def wait_for_begin(self) -> None:
        """Wait until the store's thread has begun a transaction (since the last call)."""
        began = await anyio.to_thread.run_sync(self.began.wait, 30)
        assert began, "the store's thread began no transaction"
        self.began.clear()


@pytest.fixture
def transactions(monkeypatch: pytest.MonkeyPatch) -> Transactions:
    """Watches the connections of the stores' threads (the test's own connections, on the test's
    thread, are not counted)."""
    seen = Transactions()
    test_thread = threading.get_ident()

    class Watched(sqlite3.Connection):
        def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
            if threading.get_ident() != test_thread:
                if sql == "COMMIT":
                    seen.commits.append(threading.get_ident())
                elif sql == "BEGIN IMMEDIATE":
                    seen.began.set()
            return super().execute(sql, *args)

    real_connect = sqlite3.connect

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        return real_connect(*args, factory=Watched, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", connect)
    return seen


async def test_checkpoints_waiting_together_share_a_commit_and_each_is_visible_when_it_returns(
    tmp_path: Path, transactions: Transactions
) -> None:
    path = tmp_path / "runs.db"
    count = 200
    not_visible: list[str] = []
    async with SQLiteStore(path) as store:
        await store.start_run(run_record())
        checker = sqlite3.connect(path)
        # Another process holds the write lock: the first checkpoint waits for it in the store's
        # thread, and every other one queues up meanwhile.
        lock = _WriteLock(path)
        transactions.began.clear()
        before = len(transactions.commits)

        async def save(index: int) -> None:
            task = f"t{index}"
            await store.save_task(output(task), [attempt(task)])
            found = checker.execute("SELECT 1 FROM outputs WHERE task = ?", (task,)).fetchone()
            if found is None:
                not_visible.append(task)

        async with anyio.create_task_group() as group:
            group.start_soon(save, 0)
            await transactions.wait_for_begin()
            for index in range(1, count):
                group.start_soon(save, index)
            await anyio.wait_all_tasks_blocked()  # every checkpoint is queued
            lock.release()
        checker.close()
        assert not_visible == []
        assert len(await store.outputs("run-1")) == count
        assert len(await store.attempts("run-1")) == count
        # The first alone, then all the others that had queued behind it in one transaction.
        assert len(transactions.commits) - before == 2


async def test_a_failing_write_in_a_shared_transaction_fails_only_its_caller(
    tmp_path: Path, transactions: Transactions
) -> None:
    path = tmp_path / "runs.db"
    failures: dict[str, BaseException] = {}
    async with SQLiteStore(path) as store:
        await store.start_run(run_record())
        lock = _WriteLock(path)
        transactions.began.clear()

        async def write(name: str, operation: Any) -> None:
            try:
                await operation
            except StoreError as exc:
                failures[name] = exc

        async with anyio.create_task_group() as group:
            # The first write waits for the lock; every other one queues behind it and they
            # are committed together once the lock is released.
            group.start_soon(write, "first", store.save_output(output("first")))
            await transactions.wait_for_begin()
            before = len(transactions.commits)
            for index in range(10):
                group.start_soon(write, f"a{index}", store.save_task(output(f"a{index}")))
            # Its attempt is written with its output, in its savepoint: undone too.
            unknown = store.save_task(output("u", run_id="nope"), [attempt("u")])
            group.start_soon(write, "unknown", unknown)
            group.start_soon(write, "duplicate", store.start_run(run_record()))
            group.start_soon(write, "attempt", store.record_attempt("run-1", attempt("b")))
            for index in range(10):
                group.start_soon(write, f"c{index}", store.save_output(output(f"c{index}")))
            await anyio.wait_all_tasks_blocked()  # every write is queued
            lock.release()

        assert set(failures) == {"unknown", "duplicate"}
        assert isinstance(failures["unknown"], UnknownRunError)
        assert failures["unknown"].run_id == "nope"
        assert isinstance(failures["duplicate"], DuplicateRunError)
        assert len(transactions.commits) - before == 2  # "first" alone, then everything else
        assert stored_tasks(path) == {"first"} | {f"{p}{i}" for p in "ac" for i in range(10)}
        assert [row.task for row in await store.attempts("run-1")] == ["b"]


async def test_a_cancelled_caller_returns_only_once_its_write_has_committed(
    tmp_path: Path, transactions: Transactions
) -> None:
    path = tmp_path / "runs.db"
    async with SQLiteStore(path) as store:
        await store.start_run(run_record())
        lock = _WriteLock(path)
        transactions.began.clear()
        scope = anyio.CancelScope()
        stored_on_return: list[set[str]] = []

        async def save() -> None:
            with scope:
                await store.save_task(output("t"), [attempt("t")])
            stored_on_return.append(stored_tasks(path))

        async with anyio.create_task_group() as group:
            group.start_soon(save)
            await transactions.wait_for_begin()  # the write waits for the lock
            scope.cancel()
            await anyio.wait_all_tasks_blocked()  # the cancellation has reached the caller...
            assert stored_on_return == []  # ...which still waits for its write
            lock.release()

        assert scope.cancelled_caught
        assert stored_on_return == [{"t"}]
        assert [row.task for row in await store.attempts("run-1")] == ["t"]


def test_one_store_serves_successive_event_loops(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "runs.db")

    async def first() -> None:
        await store.start_run(run_record())
        await store.save_output(output("a"))

    async def second() -> list[str]:
        await store.save_output(output("b"))
        return list(await store.outputs("run-1"))

    anyio.run(first)
    assert anyio.run(second) == ["a", "b"]
    anyio.run(store.close)


def test_one_store_serves_several_threads_at_once(tmp_path: Path) -> None:
    # Each thread's loop commits on its own thread when it can: they share the connection,
    # never at once.
    store = SQLiteStore(tmp_path / "runs.db")
    anyio.run(store.start_run, run_record())
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def worker(index: int) -> None:
        async def write() -> None:
            start.wait(30)
            for number in range(50):
                task = f"w{index}-{number}"
                await store.save_task(output(task), [attempt(task)])

        try:
            anyio.run(write)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(index,)) for index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    assert len(anyio.run(store.outputs, "run-1")) == 200
    assert len(anyio.run(store.attempts, "run-1")) == 200
    anyio.run(store.close)


def store_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("crewflow-store")]


async def wait_for_no_store_thread() -> None:
    def join() -> None:
        for thread in store_threads():
            thread.join(timeout=5)

    await anyio.to_thread.run_sync(join)
    assert store_threads() == []


async def test_close_stops_the_thread_and_a_later_call_opens_the_file_again(
    tmp_path: Path,
) -> None:
    store = SQLiteStore(tmp_path / "runs.db")
    await store.start_run(run_record())
    await store.close()
    await wait_for_no_store_thread()
    await store.close()  # closing twice is harmless

    await store.save_output(output("again"))
    assert list(await store.outputs("run-1")) == ["again"]
    await store.close()
    await wait_for_no_store_thread()


async def test_an_idle_store_stops_its_thread_and_starts_it_again_when_called(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer_module, "_IDLE_SECONDS", 0.05)
    async with SQLiteStore(tmp_path / "runs.db") as store:
        await store.start_run(run_record())
        await wait_for_no_store_thread()

        await store.save_output(output("later"))
        assert list(await store.outputs("run-1")) == ["later"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_uses_the_store_with_its_own_thread_and_connection(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "runs.db")
    anyio.run(store.start_run, run_record())  # the parent's thread and connection are live

    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        signal.alarm(20)  # a child left waiting for the parent's thread dies instead
        code = 1
        try:
            anyio.run(store.save_output, output("child"))
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)

    assert os.waitstatus_to_exitcode(status) == 0
    anyio.run(store.save_output, output("parent"))
    assert set(anyio.run(store.outputs, "run-1")) == {"child", "parent"}
    anyio.run(store.close)


async def test_the_wal_is_checkpointed_in_the_background_and_close_waits_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "runs.db"
    checkpoints: list[str] = []
    closing = threading.Event()
    real_checkpoint = checkpointer_module.checkpoint

    def checkpoint(conn: sqlite3.Connection) -> None:
        closing.wait(30)  # still running when the store is closed
        real_checkpoint(conn)
        checkpoints.append(threading.current_thread().name)

    monkeypatch.setattr(checkpointer_module, "checkpoint", checkpoint)
    monkeypatch.setattr(checkpointer_module, "CHECKPOINT_EVERY", 4)
    store = SQLiteStore(path)
    await store.start_run(run_record())
    for index in range(3):
        await store.save_task(output(f"t{index}"), [attempt(f"t{index}")])
    done_on_close: list[str] = []

    async def close() -> None:
        await store.close()
        done_on_close.extend(checkpoints)

    async with anyio.create_task_group() as group:
        group.start_soon(close)
        await anyio.wait_all_tasks_blocked()  # close() waits...
        closing.set()  # ...and the checkpoint can end

    assert done_on_close == ["crewflow-store-checkpoint runs.db"]
    assert len(stored_tasks(path)) == 3


async def test_closing_a_store_before_its_checkpointer_woke_up_still_checkpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The commit that wakes the checkpointer starts its thread; a close() that came before the
    # thread had seen that wake-up used to stop it with the checkpoint not done.
    checkpoints: list[str] = []
    real_checkpoint, real_serve = checkpointer_module.checkpoint, Checkpointer._serve
    started = threading.Event()

    def checkpoint(conn: sqlite3.Connection) -> None:
        real_checkpoint(conn)
        checkpoints.append(threading.current_thread().name)

    def serve_late(self: Checkpointer) -> None:
        started.wait(30)  # the thread runs only once the store is closing
        real_serve(self)

    monkeypatch.setattr(checkpointer_module, "checkpoint", checkpoint)
    monkeypatch.setattr(checkpointer_module, "CHECKPOINT_EVERY", 4)
    monkeypatch.setattr(Checkpointer, "_serve", serve_late)
    store = SQLiteStore(tmp_path / "runs.db")
    await store.start_run(run_record())
    for index in range(3):  # the 4th commit wakes the checkpointer
        await store.save_task(output(f"t{index}"), [attempt(f"t{index}")])

    async with anyio.create_task_group() as group:
        group.start_soon(store.close)
        await anyio.wait_all_tasks_blocked()  # close() waits for the thread...
        started.set()  # ...which only now sees its wake-up, and the close

    assert checkpoints == ["crewflow-store-checkpoint runs.db"]


async def test_one_checkpointer_thread_serves_every_checkpoint_of_a_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Not a thread and a connection started afresh for each checkpoint.
    monkeypatch.setattr(checkpointer_module, "CHECKPOINT_EVERY", 2)
    done = threading.Semaphore(0)
    seen: list[tuple[int, int]] = []
    real_checkpoint = checkpointer_module.checkpoint

    def checkpoint(conn: sqlite3.Connection) -> None:
        real_checkpoint(conn)
        seen.append((threading.get_ident(), id(conn)))
        done.release()

    monkeypatch.setattr(checkpointer_module, "checkpoint", checkpoint)
    async with SQLiteStore(tmp_path / "runs.db") as store:
        await store.start_run(run_record())
        for index in range(1, 8):  # ending on a wake-up: closing then needs no checkpoint more
            await store.save_output(output(f"t{index}"))
            if index % 2 == 1:  # the start and this one: a wake-up; wait for its checkpoint
                assert await anyio.to_thread.run_sync(done.acquire, True, 30)
    assert len(seen) == 4
    assert len(set(seen)) == 1


_UNCLOSED = """
import sys
import anyio
from crewflow.store import SQLiteStore, _writer
from tests.store.conftest import run_record

# An idle thread that kept the interpreter alive would now keep it alive for an hour.
_writer._IDLE_SECONDS = 3600.0
store = SQLiteStore(sys.argv[1])
anyio.run(store.start_run, run_record())
"""


@pytest.mark.slow
def test_an_unclosed_store_does_not_keep_the_interpreter_alive(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-c", _UNCLOSED, str(tmp_path / "runs.db")],
        cwd=REPO,
        check=True,
        timeout=60,  # raises TimeoutExpired if the interpreter did not exit
    )

    async def check() -> None:
        async with SQLiteStore(tmp_path / "runs.db") as store:
            assert await store.get_run("run-1") is not None

    anyio.run(check)


async def test_rows_are_stored_as_their_json_dump(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    moments = [
        datetime(2026, 3, 1, 12, 0, tzinfo=UTC),
        datetime(2026, 3, 1, 12, 0, 0, 5, tzinfo=UTC),
        datetime(2026, 3, 1, 12, 0, 0, 120000, tzinfo=timezone(timedelta(hours=-5, minutes=-30))),
        datetime(2026, 7, 1, 12, 0, tzinfo=ZoneInfo("Europe/Paris")),
        datetime(2026, 3, 1, 12, 0, tzinfo=timezone(timedelta(seconds=30))),
    ]
    attempts = [
        AttemptRecord(
            task=f"t{index}",
            number=1,
            agent="Chercheur",
            start=moment,
            end=moment + timedelta(seconds=1.5 * (index % 2)),
            duration=1.5 * (index % 2),
            status="failed" if index % 2 else "completed",
            error_type="LLMError" if index % 2 else None,
            error="trop de requêtes 🔋" if index % 2 else None,
            model="m",
            usage=Usage(requests=index, prompt_tokens=10 * index, cost=None if index % 2 else 0.25),
            cache_hits=index,
            limit_wait=1.5 * index,
            limit_waits={"rpm:m": 1.5 * index} if index else {},
            details={"tools": ["search"], "note": "é"} if index % 2 else {},
            tool_calls=[ToolCallRecord(tool="search", ok=False, duration=0.5, error="é")]
            if index % 3
            else [],
            calls=[
                CallRecord(start=0.25 * call, wait=0.5, end=1.5, prompt_tokens=call)
                for call in range(index % 3)
            ],
        )
        for index, moment in enumerate(moments)
    ]
    outputs = [
        OutputRow(
            run_id="run-1",
            task=f"t{index}",
            text="réponse",
            data=None if index % 2 else {"k": [1, 2.5, None, "é"], "n": {"x": True}},
            agent="Chercheur",
            model="m",
            finished_at=moment,
        )
        for index, moment in enumerate(moments)
    ]
    async with SQLiteStore(path) as store:
        await store.start_run(run_record())
        await store.save_task(outputs[0], attempts[:1])  # alone
        async with anyio.create_task_group() as group:  # and together
            for row, tried in zip(outputs[1:], attempts[1:], strict=True):
                group.start_soon(store.save_task, row, [tried])
        assert len(await store.attempts("run-1")) == len(attempts)

    def dumped(row: AttemptRecord | OutputRow) -> dict[str, Any]:
        data = row.model_dump(mode="json")
        if isinstance(row, AttemptRecord):  # a column per usage field; the run id and number
            data |= {"run_id": "run-1", "attempt": data.pop("number"), **data.pop("usage")}
            # Tool calls and prompts (none here) are in the details, without their Nones; the
            # calls are a JSON array of their own.
            del data["tool_calls"], data["prompts"]
            # The kind, when not "task", is in the details too.
            if (kind := data.pop("kind")) != "task":
                data["details"] |= {"kind": kind}
            if row.tool_calls:
                calls = [call.model_dump(mode="json", exclude_none=True) for call in row.tool_calls]
                data["details"] |= {"tool_calls": calls}
        for name in ("limit_waits", "calls", "details", "data"):
            if name in data and data[name] is not None:
                data[name] = json.dumps(data[name], ensure_ascii=False, allow_nan=False)
        return data

    def parsed(row: dict[str, Any]) -> dict[str, Any]:
        return row | {name: json.loads(row[name]) for name in ("details", "calls") if name in row}

    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        for table, rows in (("attempts", attempts), ("outputs", outputs)):
            stored = {r["task"]: dict(r) for r in conn.execute(f"SELECT * FROM {table}")}
            for row in rows:
                expected = dumped(row)
                found = {name: stored[row.task][name] for name in expected}
                assert parsed(found) == parsed(expected)
        assert sum(len(row.calls) for row in attempts) > 0
    finally:
        conn.close()


# -- read-only -------------------------------------------------------------------------------------


async def written(path: Path) -> None:
    async with SQLiteStore(path) as store:
        await store.start_run(run_record("r1"))


async def test_a_read_only_store_reads_and_never_writes_the_file(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    await written(path)
    before, stamp = path.read_bytes(), path.stat().st_mtime_ns

    async with SQLiteStore(path, read_only=True) as store:
        assert [run.run_id for run in await store.list_runs()] == ["r1"]
        with pytest.raises(StoreError, match="readonly"):
            await store.start_run(run_record("r2"))

    assert path.read_bytes() == before
    assert path.stat().st_mtime_ns == stamp


async def test_a_read_only_store_creates_no_database(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "runs.db"

    store = SQLiteStore(path, read_only=True)
    with pytest.raises(StoreError, match="unable to open database file"):
        await store.list_runs()
    await store.close()

    assert not path.parent.exists()


async def test_a_read_only_store_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    conn.execute("INSERT INTO schema_version VALUES (99)")
    conn.commit()
    conn.close()

    store = SQLiteStore(path, read_only=True)
    with pytest.raises(SchemaVersionError, match="only knows versions up to"):
        await store.list_runs()
    await store.close()


async def test_a_read_only_store_says_a_file_without_a_schema_is_no_run_database(
    tmp_path: Path,
) -> None:
    path = tmp_path / "runs.db"
    sqlite3.connect(path).close()

    store = SQLiteStore(path, read_only=True)
    with pytest.raises(StoreError, match="is not a crewflow run database"):
        await store.list_runs()
    await store.close()
