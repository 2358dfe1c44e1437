"""Whatever a write of a `SQLiteStore` raises, that write is undone and the store stays usable:
for the next write in the process, and for other connections to the file. Each test runs with
writes committed on the event loop's thread (the usual path) and in the store's thread (where
they go while another process holds the write lock)."""

from __future__ import annotations

import sqlite3
import threading
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from crewflow.llm._types import Usage
from crewflow.store import AddedTaskRecord, Lease, RunStatus, SQLiteStore, TaskKind
from crewflow.store._writer import Writer
from tests.store.conftest import at, run_record
from tests.store.test_sqlite import _WriteLock, attempt, output, stored_tasks

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

_CONTROL = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE", "PRAGMA")


class Injected(Exception):
    """Not an `sqlite3.Error`: what a bug, or a value SQLite cannot bind, raises."""


class Faults:
    """Makes the stores' connections raise `Injected` from a statement in a transaction: the
    next one once armed, or each whose values hold ``marker``."""

    def __init__(self) -> None:
        self.armed = False
        self.marker = "\N{COLLISION SYMBOL}boom"
        self.began = threading.Event()
        self.threads: list[int] = []  # where each injected failure was raised

    def fails(self, conn: sqlite3.Connection, sql: str, args: tuple[Any, ...]) -> bool:
        if sql.startswith("BEGIN"):
            self.began.set()
        if not conn.in_transaction or sql.startswith(_CONTROL):
            return False
        if self.armed:
            self.armed = False
        elif not any(self.marker in str(value) for values in args for value in values):
            return False
        self.threads.append(threading.get_ident())
        return True


@pytest.fixture(autouse=True, params=["loop", "thread"])
def write_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Where the tests' writes commit: on the loop's thread, or all in the store's thread."""
    if request.param == "thread":
        monkeypatch.setattr(Writer, "_on_caller_thread", lambda self: False)
    return str(request.param)


@pytest.fixture
def faults(monkeypatch: pytest.MonkeyPatch) -> Faults:
    found = Faults()

    class Failing(sqlite3.Connection):
        def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
            if found.fails(self, sql, args):
                raise Injected(sql)
            return super().execute(sql, *args)

    real_connect = sqlite3.connect
    monkeypatch.setattr(sqlite3, "connect", lambda *a, **k: real_connect(*a, factory=Failing, **k))
    return found


def assert_usable(path: Path) -> None:
    """Another connection can take the write lock at once: no transaction was left open."""
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
    finally:
        other.close()


def _added() -> list[AddedTaskRecord]:
    return [AddedTaskRecord(name="plan", kind=TaskKind.INTERNAL, added=at(1))]


WRITES: dict[str, Callable[[SQLiteStore], Awaitable[object]]] = {
    "start_run": lambda s: s.start_run(run_record("run-2")),
    "finish_run": lambda s: s.finish_run("run-1", RunStatus.COMPLETED, at(2), Usage()),
    "reopen_run": lambda s: s.reopen_run("run-1"),
    "take_lease": lambda s: s.take_lease("run-1", Lease.new(), replacing=None),
    "renew_lease": lambda s: s.renew_lease("run-1", "token", at(3)),
    "record_choice": lambda s: s.record_choice("run-1", "parallel", "why", {"k": 1}),
    "record_pause": lambda s: s.record_pause("run-1"),
    "add_tasks": lambda s: s.add_tasks("run-1", _added()),
    "record_attempt": lambda s: s.record_attempt("run-1", attempt("a")),
    "save_output": lambda s: s.save_output(output("o")),
    "save_task": lambda s: s.save_task(output("t"), [attempt("t")]),
    "cache_put": lambda s: s.cache_put("key", "value"),
    "cache_clear": lambda s: s.cache_clear(),
}


@pytest.mark.parametrize("name", WRITES)
async def test_a_write_that_raises_anything_is_undone_and_the_store_stays_usable(
    tmp_path: Path, faults: Faults, name: str, write_path: str
) -> None:
    path = tmp_path / "runs.db"
    async with SQLiteStore(path) as store:
        await store.start_run(run_record())
        faults.armed = True
        with pytest.raises(Injected):
            await WRITES[name](store)
        assert not faults.armed
        on_loop = faults.threads == [threading.get_ident()]
        assert on_loop == (write_path == "loop")

        assert_usable(path)
        await store.save_task(output("after"), [attempt("after")])  # a later write commits
        assert stored_tasks(path) == {"after"}
        assert [a.task for a in await store.attempts("run-1")] == ["after"]
        assert (await store.get_run("run-1")).status is RunStatus.RUNNING  # type: ignore[union-attr]
        assert await store.added_tasks("run-1") == []


async def test_a_checkpoint_that_raises_in_a_shared_transaction_fails_alone(
    tmp_path: Path, faults: Faults
) -> None:
    path = tmp_path / "runs.db"
    failed: list[str] = []
    async with SQLiteStore(path) as store:
        await store.start_run(run_record())
        lock = _WriteLock(path)
        faults.began.clear()

        async def save(task: str, text: str = "x") -> None:
            try:
                await store.save_task(output(task, text=text), [attempt(task)])
            except Injected:
                failed.append(task)

        async with anyio.create_task_group() as group:
            # The first checkpoint waits for the lock; the others queue up behind it and are
            # inserted together, where one of them raises.
            group.start_soon(save, "first")
            await anyio.to_thread.run_sync(faults.began.wait, 30)
            for task in ("a", "b"):
                group.start_soon(save, task)
            group.start_soon(save, "bad", faults.marker)
            group.start_soon(save, "c")
            await anyio.wait_all_tasks_blocked()
            lock.release()

        assert failed == ["bad"]
        assert stored_tasks(path) == {"first", "a", "b", "c"}
        assert_usable(path)
        await store.save_output(output("after"))
        assert "after" in stored_tasks(path)


async def test_a_read_never_leaves_a_transaction_open(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    async with SQLiteStore(path) as store:
        await store.start_run(run_record())

        def careless(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            raise Injected("a read that began a transaction")

        with pytest.raises(Injected):
            await store._writer.call(careless)

        assert_usable(path)
        await store.save_output(output("after"))
        assert stored_tasks(path) == {"after"}
