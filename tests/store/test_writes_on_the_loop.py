"""A `SQLiteStore` commits writes on the event loop's own thread when that needs no wait, those
of one loop iteration together, and hands them to its thread while another process holds the
write lock; writes made while calls are queued there wait for them (so writes keep their order),
then commit on the loop. The WAL stays short over many commits."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
import threading
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from crewflow.llm._types import Usage
from crewflow.store import (
    DuplicateRunError,
    RunStatus,
    SQLiteStore,
    StoreError,
    UnknownRunError,
)
from crewflow.store import _checkpointer as checkpointer_module
from tests.store.conftest import at, run_record
from tests.store.test_sqlite import _WriteLock, attempt, output, stored_tasks

if TYPE_CHECKING:
    from collections.abc import Coroutine
    from pathlib import Path


class Trace:
    """The thread of each COMMIT the stores' connections run, and whether a thread other than
    the test's has begun a transaction (the store's thread waiting for a lock)."""

    def __init__(self) -> None:
        self.commits: list[int] = []
        self.began_elsewhere = threading.Event()


def traced(monkeypatch: pytest.MonkeyPatch) -> Trace:
    """A `Trace` of what the stores' connections run from now on."""
    trace = Trace()
    test_thread = threading.get_ident()

    class Watched(sqlite3.Connection):
        def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
            if sql == "COMMIT":
                trace.commits.append(threading.get_ident())
            elif sql == "BEGIN IMMEDIATE" and threading.get_ident() != test_thread:
                trace.began_elsewhere.set()
            return super().execute(sql, *args)  # type: ignore[arg-type]

    real_connect = sqlite3.connect
    monkeypatch.setattr(sqlite3, "connect", lambda *a, **k: real_connect(*a, factory=Watched, **k))
    return trace


def committing_threads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The thread of each COMMIT the stores' connections run from now on."""
    return traced(monkeypatch).commits


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


def visible(path: Path, task: str) -> bool:
    """Whether another connection sees ``task``'s output (its write has committed)."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute("SELECT 1 FROM outputs WHERE task = ?", (task,)).fetchone() is not None


async def test_the_writes_of_one_loop_iteration_share_one_commit_and_each_awaits_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "runs.db"
    commits = committing_threads(monkeypatch)
    not_visible: list[str] = []
    async with SQLiteStore(path) as store:
        await store.start_run(run_record())
        del commits[:]

        async def save(task: str) -> None:
            await store.save_task(output(task), [attempt(task)])
            if not visible(path, task):
                not_visible.append(task)

        async with anyio.create_task_group() as group:
            for index in range(50):  # all start in one iteration of the loop
                group.start_soon(save, f"t{index}")

    assert not_visible == []
    # The first commits at once, alone; the 49 written after it in that iteration, together.
    assert commits == [threading.get_ident()] * 2
    assert stored_tasks(path) == {f"t{index}" for index in range(50)}


async def test_a_failing_write_in_a_loop_batch_fails_only_its_caller(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "runs.db"
    commits = committing_threads(monkeypatch)
    failures: dict[str, BaseException] = {}
    async with SQLiteStore(path) as store:
        await store.start_run(run_record())
        del commits[:]

        async def write(name: str, operation: Coroutine[Any, Any, object]) -> None:
            try:
                await operation
            except StoreError as exc:
                failures[name] = exc

        async with anyio.create_task_group() as group:
            group.start_soon(write, "first", store.save_output(output("first")))
            for index in range(10):
                group.start_soon(write, f"a{index}", store.save_task(output(f"a{index}")))
            unknown = store.save_task(output("u", run_id="nope"), [attempt("u")])
            group.start_soon(write, "unknown", unknown)
            group.start_soon(write, "duplicate", store.start_run(run_record()))
            group.start_soon(write, "attempt", store.record_attempt("run-1", attempt("b")))
            for index in range(10):
                group.start_soon(write, f"c{index}", store.save_output(output(f"c{index}")))

        assert set(failures) == {"unknown", "duplicate"}
        assert isinstance(failures["unknown"], UnknownRunError)
        assert isinstance(failures["duplicate"], DuplicateRunError)
        assert commits == [threading.get_ident()] * 2  # "first" alone, then everything else
        assert stored_tasks(path) == {"first"} | {f"{p}{i}" for p in "ac" for i in range(10)}
        assert [row.task for row in await store.attempts("run-1")] == ["b"]
        await store.save_output(output("after"))  # the connection is still usable
    assert "after" in stored_tasks(path)


async def test_a_loop_batch_meeting_another_process_lock_goes_to_the_store_thread_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "runs.db"
    trace = traced(monkeypatch)
    commits = trace.commits
    order: list[str] = []
    locks: list[_WriteLock] = []
    async with SQLiteStore(path) as store:
        await store.start_run(run_record())
        del commits[:]

        async def save(task: str) -> None:
            await store.save_task(output(task), [attempt(task)])
            order.append(task)

        async def finish() -> None:
            await store.finish_run("run-1", RunStatus.COMPLETED, at(2), Usage())
            order.append("finish")

        async def take_lock() -> None:
            locks.append(_WriteLock(path))

        async with anyio.create_task_group() as group:
            group.start_soon(save, "t0")  # commits at once, and opens the iteration's batch
            group.start_soon(take_lock)  # before the batch commits
            for index in range(1, 10):
                group.start_soon(save, f"t{index}")
            group.start_soon(finish)
            await anyio.to_thread.run_sync(trace.began_elsewhere.wait, 30)
            await anyio.wait_all_tasks_blocked()
            assert stored_tasks(path) == {"t0"}  # the batch waits in the store's thread
            assert order == ["t0"]
            locks[0].release()

        assert order == [f"t{index}" for index in range(10)] + ["finish"]
        # t0 on the loop; the lock-holder's commit (the test's thread); the batch in the
        # store's thread, in one transaction.
        assert commits[:2] == [threading.get_ident()] * 2
        assert len(commits) == 3
        assert commits[2] != threading.get_ident()
        found = await store.get_run("run-1")
        assert found is not None
        assert found.status is RunStatus.COMPLETED
    assert stored_tasks(path) == {f"t{index}" for index in range(10)}


async def test_writes_behind_a_queued_call_commit_on_the_loop_once_the_thread_is_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # They wait for it, in order, and the loop commits them: the store's thread having had
    # something to do does not send every later write there.
    path = tmp_path / "runs.db"
    commits = committing_threads(monkeypatch)
    async with SQLiteStore(path) as store:
        await store.start_run(run_record())
        del commits[:]
        reading, release = threading.Event(), threading.Event()

        def slow_read(conn: sqlite3.Connection) -> None:
            reading.set()
            release.wait(30)

        async with anyio.create_task_group() as group:
            group.start_soon(store._writer.call, slow_read)
            await anyio.to_thread.run_sync(reading.wait, 30)
            for index in range(10):
                group.start_soon(store.save_task, output(f"t{index}"), [attempt(f"t{index}")])
            await anyio.wait_all_tasks_blocked()
            assert stored_tasks(path) == set()
            release.set()

        assert stored_tasks(path) == {f"t{index}" for index in range(10)}
        assert commits == [threading.get_ident()]  # all ten in one transaction, on the loop


async def test_a_caller_cancelled_while_its_write_waits_in_a_batch_returns_once_it_committed(
    tmp_path: Path,
) -> None:
    path = tmp_path / "runs.db"
    async with SQLiteStore(path) as store:
        await store.start_run(run_record())
        stored_on_return: list[bool] = []
        scope = anyio.CancelScope()

        async def save(task: str) -> None:
            await store.save_task(output(task), [attempt(task)])

        async def cancelled() -> None:
            with scope:
                await store.save_task(output("c"), [attempt("c")])
            stored_on_return.append(visible(path, "c"))

        async def cancel() -> None:
            scope.cancel()

        async with anyio.create_task_group() as group:
            group.start_soon(save, "first")  # commits at once, and opens the batch
            group.start_soon(cancelled)  # joins the batch
            group.start_soon(cancel)  # before the batch commits

    assert scope.cancelled_caught
    assert stored_on_return == [True]


async def test_a_parallel_crew_commits_its_checkpoints_on_the_loop_in_shared_transactions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The thread opens the database; once it has, no checkpoint goes there again (none waits
    # behind another's), and tasks finishing together share a transaction.
    from crewflow import Agent, Crew, Task
    from crewflow.llm.offline import OfflineLLM

    commits = committing_threads(monkeypatch)
    agent = Agent(role="Worker", goal="work", llm=OfflineLLM(latency=0))
    tasks: list[Task] = []
    for index in range(200):  # a binary tree: t0 first, then ever more tasks at once
        context = [tasks[(index - 1) // 2]] if index else []
        tasks.append(Task(f"Task {index}", agent=agent, name=f"t{index}", context=context))
    path = tmp_path / "runs.db"
    result = await Crew(tasks=tasks, process="parallel", store=path).kickoff()

    loop_thread = threading.get_ident()
    first = commits.index(loop_thread)
    assert set(commits[first:]) == {loop_thread}
    assert len(commits) < 100  # 200 checkpoints, the run's start and end
    assert stored_tasks(path) == {f"t{index}" for index in range(200)}
    found = await SQLiteStore(path, read_only=True).get_run(result.run_id)
    assert found is not None
    assert found.status is RunStatus.COMPLETED
