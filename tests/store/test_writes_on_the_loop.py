"""A `SQLiteStore` commits a write on the event loop's own thread when that needs no wait, and
hands it to its thread otherwise: while another process holds the write lock, and while writes
are queued there (so writes keep their order). The WAL stays short over many commits."""

from __future__ import annotations

import subprocess
import sys
import threading
from typing import TYPE_CHECKING

import anyio
import pytest

from crewflow.llm._types import Usage
from crewflow.store import RunStatus, SQLiteStore
from crewflow.store import _checkpointer as checkpointer_module
from tests.store.conftest import at, run_record
from tests.store.test_sqlite import _WriteLock, attempt, output, stored_tasks

if TYPE_CHECKING:
    import sqlite3
    from pathlib import Path


def committing_threads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The thread of each COMMIT the stores' connections run from now on."""
    import sqlite3

    seen: list[int] = []

    class Watched(sqlite3.Connection):
        def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
            if sql == "COMMIT":
                seen.append(threading.get_ident())
            return super().execute(sql, *args)  # type: ignore[arg-type]

    real_connect = sqlite3.connect
    monkeypatch.setattr(sqlite3, "connect", lambda *a, **k: real_connect(*a, factory=Watched, **k))
    return seen


async def test_a_checkpoint_commits_on_the_loop_thread_when_nothing_holds_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commits = committing_threads(monkeypatch)
    async with SQLiteStore(tmp_path / "runs.db") as store:
        await store.start_run(run_record())  # opens the connection, in the store's thread
        del commits[:]
        await store.save_task(output("t"), [attempt("t")])
        await store.finish_run("run-1", RunStatus.COMPLETED, at(2), Usage())

    assert commits == [threading.get_ident()] * 2
    assert stored_tasks(tmp_path / "runs.db") == {"t"}


async def test_an_in_memory_database_commits_every_checkpoint_on_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # No log to checkpoint: its checkpointer is never behind, so no write waits for it.
    commits = committing_threads(monkeypatch)
    async with SQLiteStore(":memory:") as store:
        await store.start_run(run_record())
        del commits[:]
        count = 2 * checkpointer_module.BEHIND
        for index in range(count):
            await store.save_task(output(f"t{index}"), [attempt(f"t{index}")])
        assert len(await store.outputs("run-1")) == count
    assert commits == [threading.get_ident()] * count


async def test_a_write_waits_for_another_process_lock_in_the_store_thread_not_on_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "runs.db"
    commits = committing_threads(monkeypatch)
    async with SQLiteStore(path) as store:
        await store.start_run(run_record())
        del commits[:]
        lock = _WriteLock(path)
        done = anyio.Event()

        async def save() -> None:
            await store.save_task(output("t"), [attempt("t")])
            done.set()

        async with anyio.create_task_group() as group:
            group.start_soon(save)
            await anyio.wait_all_tasks_blocked()  # the loop runs on while the write waits
            assert not done.is_set()
            lock.release()
        # The lock-holder's commit (the test's thread), then the store thread's.
        assert len(commits) == 2
        assert commits[1] != threading.get_ident()
        assert stored_tasks(path) == {"t"}


async def test_writes_queued_in_the_store_thread_keep_later_writes_behind_them(
    tmp_path: Path,
) -> None:
    path = tmp_path / "runs.db"
    async with SQLiteStore(path) as store:
        await store.start_run(run_record())
        reading, release = threading.Event(), threading.Event()

        def slow_read(conn: sqlite3.Connection) -> None:
            reading.set()
            release.wait(30)

        order: list[str] = []

        async def write(name: str) -> None:
            if name == "save":
                await store.save_task(output("t"), [attempt("t")])
            else:
                await store.finish_run("run-1", RunStatus.COMPLETED, at(2), Usage())
            order.append(name)

        async with anyio.create_task_group() as group:
            group.start_soon(store._writer.call, slow_read)
            await anyio.to_thread.run_sync(reading.wait, 30)
            group.start_soon(write, "save")
            await anyio.wait_all_tasks_blocked()
            group.start_soon(write, "finish")
            await anyio.wait_all_tasks_blocked()
            # Nothing committed on the loop past the queue, though no lock stood in the way.
            assert stored_tasks(path) == set()
            assert order == []
            release.set()

        assert order == ["save", "finish"]
        assert stored_tasks(path) == {"t"}
        found = await store.get_run("run-1")
        assert found is not None
        assert found.status is RunStatus.COMPLETED


def test_threads_sharing_a_store_never_use_its_connection_at_once(tmp_path: Path) -> None:
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
    assert len(anyio.run(store.attempts, "run-1")) == 200
    anyio.run(store.close)


_READER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], timeout=30)
print("reading", flush=True)
while True:
    conn.execute("SELECT count(*) FROM outputs").fetchone()
"""

WAL_LIMIT = 3 * checkpointer_module.TRUNCATE_PAGES * 4120  # pages of 4 KiB and their headers


@pytest.mark.slow
def test_the_wal_stays_short_over_10000_tasks_while_another_process_reads(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    wal = path.with_name("runs.db-wal")
    sizes: list[int] = []
    store = SQLiteStore(path)

    async def save_tasks() -> None:
        for index in range(10_000):
            await store.save_task(output(f"t{index}"), [attempt(f"t{index}")])
            if index % 100 == 0:
                sizes.append(wal.stat().st_size)

    anyio.run(store.start_run, run_record())
    with subprocess.Popen(
        [sys.executable, "-c", _READER, str(path)], stdout=subprocess.PIPE, text=True
    ) as reader:
        try:
            assert reader.stdout is not None
            assert reader.stdout.readline() == "reading\n"
            anyio.run(save_tasks)
            assert reader.poll() is None  # it read all along
        finally:
            reader.kill()
    assert len(anyio.run(store.outputs, "run-1")) == 10_000
    anyio.run(store.close)
    assert max(sizes) < WAL_LIMIT, f"the WAL grew to {max(sizes)} bytes"
