"""A `SQLiteStore`'s connection and the thread that waits for it (see `crewflow.store.sqlite`).

Writes commit on the caller's own thread, in transactions that never wait for a lock
(`Writer.write`), grouped per event loop iteration: a loop's first write of an iteration commits
at once (a chain, one write per iteration, pays nothing for grouping), the later ones join a
batch that one ``loop.call_soon`` commits in one ``BEGIN IMMEDIATE … COMMIT`` (one multi-row
insert per table for task checkpoints, a savepoint for each other write), and each caller
resumes once its write has committed. When a loop's latest iteration had several writes, its
first write joins the batch too: a parallel crew's loop then commits once per iteration.
Otherwise (the connection is not open yet, another process holds the write lock, the
checkpointer is behind) writes go to the thread's queue, and await asyncio futures; the thread
runs them, every write waiting at the time in one transaction (each in its own savepoint),
resolves the futures through ``call_soon_threadsafe``, stops when idle or closed, and starts
afresh in a forked child. A loop's batch commits after every call queued before it: it waits
for them (the thread wakes it once they have run) and commits on the loop, or, while the thread
waits for another process's lock, joins them there. Both paths count their commits for the
store's `Checkpointer`.

In a parallel 10,000-task DAG on an instant model (``random_deps(10000, 7)``), all 10,002 writes
commit on the loop, in 125 transactions; before, 320 to 5,100 of them committed on the loop one
by one and the rest went to the thread (in ~50-75 transactions), since every write made while
some were queued there went there too. The run costs 0.266 ms per task, was 0.303 (medians of
7, alternating; 0.17 with ``store=None``); 1,000 ``save_task`` calls at once cost 46 us each,
were 67; a 500-task chain and 500 independent tasks are unchanged (293 vs 295 and 360 vs 363 us
per task).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import sqlite3
import threading
import weakref
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

import anyio

from crewflow.store._base import StoreError, default_store_path
from crewflow.store._checkpointer import Checkpointer
from crewflow.store._rows import ATTEMPTS, OUTPUTS, TaskRows

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

_T = TypeVar("_T")

_IDLE_SECONDS = 10.0  # an idle store's thread stops after this long (the next call restarts it)
_MAX_BATCH = 256  # writes committed together at most, so the first of them is not held long
_CATCH_UP_SECONDS = 1.0  # the longest the thread waits for a checkpointer fallen behind

_Kind = Literal["read", "write", "close"]
_INHERITED: list[sqlite3.Connection | None] = []  # connections a forked child must not close


class Writer:
    """A store's thread and its connection: runs operations on the connection, in order.

    Args:
        path: The database file, for thread names, background checkpoints and error messages.
        open_connection: Opens and prepares the connection; called in the thread on first use
            (and again after ``close()``).
        timeout: Seconds the thread waits for another process's write lock (the connection's
            busy timeout while the thread holds it; 0 otherwise, so that a write on the caller's
            thread never waits).
        direct: Whether writes may commit on the caller's thread (not for a read-only store).
    """

    def __init__(
        self,
        path: Path,
        open_connection: Callable[[], sqlite3.Connection],
        *,
        timeout: float = 30.0,
        direct: bool = True,
    ) -> None:
        self.path = path
        self._open = open_connection
        self._wait = f"PRAGMA busy_timeout = {int(timeout * 1000)}"
        self._direct = direct
        self._calls: queue.SimpleQueue[_Call] = queue.SimpleQueue()
        self._thread_lock = threading.Lock()  # guards starting and stopping self._thread
        self._thread: threading.Thread | None = None
        # One connection, used by one thread at a time (whoever holds self._conn_lock): the
        # store's thread, or a caller committing on its own thread.
        self._conn: sqlite3.Connection | None = None
        self._conn_lock = threading.Lock()
        # Calls ever put on the queue, and run (both guarded by _thread_lock); loops whose batch
        # waits for the calls queued before it, with how many that is.
        self._put = 0
        self._done = 0
        self._locked_until = 0  # calls to run before a loop's batch no longer joins them
        self._waiting: list[tuple[int, asyncio.AbstractEventLoop]] = []
        self._batches: dict[asyncio.AbstractEventLoop, _Batch] = {}  # each loop's, not flushed
        # Loops whose latest iteration with a write had several: their next write waits for
        # the others of its iteration, to commit with them (one transaction per iteration).
        self._batching: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()
        self._checkpointer = Checkpointer(path)
        self._pid = os.getpid()

    async def write(self, operation: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run the write ``operation`` in a transaction and return what it returns, or raise
        what it raised (`sqlite3.Error` as `StoreError`); the write has committed, or rolled
        back, when this returns.

        The writes of one event loop iteration commit together, on the loop's thread, in one
        transaction that never waits for a lock (`_flush`). They go to the store's thread, as
        `call` does, which waits for the lock, when the connection is not open yet, when the
        store's checkpointer has fallen behind, or when that transaction cannot be had at once
        (another process holds the write lock)."""
        if self._pid != os.getpid():
            self._forget_parent()
        loop = asyncio.get_running_loop()
        batch = self._batches.get(loop)
        task = asyncio.current_task(loop)
        # The iteration's first write commits at once (and so do the next ones of the same
        # task, as long as no other task's write waits) unless the loop's latest iterations
        # had several writes each: a chain pays nothing for batching.
        if batch is None or (not batch.calls and batch.task is task):
            if not self._on_caller_thread():
                return await self._queued_write(operation, loop, batch, locked=False)
            at_once = batch is not None or loop not in self._batching
            if at_once and self._put == self._done and self._conn_lock.acquire(blocking=False):
                try:
                    # Again, holding the connection: the store's thread may have closed it.
                    outcome = self._commit_here(operation) if self._on_caller_thread() else None
                finally:
                    self._conn_lock.release()
                if outcome is None:  # another process holds the write lock
                    return await self._queued_write(operation, loop, batch, locked=True)
                if batch is None:  # for the iteration's later writes
                    self._batches[loop] = _Batch(self._put, task, committed=1)
                    loop.call_soon(self._flush, loop)
                if outcome.error is not None:
                    raise outcome.error
                return outcome.result  # type: ignore[no-any-return]
            if batch is None:
                # It commits after every call queued so far (the run's end never commits
                # before a checkpoint queued earlier).
                batch = self._batches[loop] = _Batch(self._put, task)
                # While the thread waits for another process's lock, the batch joins it there.
                batch.to_thread = self._done < self._locked_until
                loop.call_soon(self._flush, loop)
        call = _Call(operation, "write", loop)
        batch.calls.append(call)
        # `_outcome_of`, inline: many checkpoints wait here at once in a wide graph, each
        # holding a coroutine more through it.
        try:
            return await call.future  # type: ignore[no-any-return]
        except asyncio.CancelledError:
            await _settled(call)
            raise

    async def _queued_write(
        self,
        operation: Callable[[sqlite3.Connection], _T],
        loop: asyncio.AbstractEventLoop,
        batch: _Batch | None,
        *,
        locked: bool,
    ) -> _T:
        """Hand a write to the store's thread; the loop's open batch now commits after it."""
        call = _Call(operation, "write", loop)
        self._enqueue([call], locked=locked)
        if batch is not None:
            batch.after = self._put
        return await _outcome_of(call)  # type: ignore[no-any-return]

    def _on_caller_thread(self) -> bool:
        """Whether writes may try to commit on the caller's thread."""
        return self._direct and self._conn is not None and not self._checkpointer.behind

    def _commit_here(self, operation: Callable[[sqlite3.Connection], Any]) -> _Outcome | None:
        """Run ``operation`` in one transaction on the connection (held by this thread), or
        ``None`` when the write lock is another connection's: nothing was written then.

        Whatever the operation raises, the transaction is rolled back and the connection
        stays usable (or is closed, when even the rollback fails), as on the store's thread."""
        conn = self._connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
            result = operation(conn)
            conn.execute("COMMIT")
        except BaseException as exc:  # handed to the caller, whatever it is
            self._reset()
            if isinstance(exc, sqlite3.OperationalError) and _busy(exc):
                return None
            return self._wrapped(_Outcome(error=exc))
        self._checkpointer.committed()
        return _Outcome(result)

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        """Commit the loop's batch on its thread, once every call queued before it has run
        (else wait for the store's thread to say so), or hand it to the store's thread, in order,
        when that cannot be done without waiting for a lock; resolve each write's future
        after its ``COMMIT``."""
        batch = self._batches.get(loop)
        if batch is None:  # a forked child forgot it
            return
        with self._thread_lock:
            waits = batch.after > self._done  # for calls queued before it
            # While the thread waits for another process's lock, the batch joins it there.
            to_thread = batch.to_thread or (waits and self._done < self._locked_until)
            if waits and not to_thread:
                self._waiting.append((batch.after, loop))
                return
        del self._batches[loop]
        calls = batch.calls
        if len(calls) + batch.committed > 1:
            self._batching.add(loop)
        else:
            self._batching.discard(loop)
        if not calls:
            return
        locked = False
        if not to_thread and self._on_caller_thread() and self._conn_lock.acquire(blocking=False):
            try:
                # Again, holding the connection: the store's thread may have closed it.
                if self._on_caller_thread():
                    for start in range(0, len(calls), _MAX_BATCH):
                        self._commit(calls[start : start + _MAX_BATCH], on_loop=True)
                        locked = calls[start].outcome is None  # nothing of it was written
                        if locked:  # the rest goes to the thread, in order
                            break
            finally:
                self._conn_lock.release()
        settled = [call for call in calls if call.outcome is not None]
        _settle(settled)
        if len(settled) < len(calls):
            self._enqueue([call for call in calls if call.outcome is None], locked=locked)

    async def call(self, operation: Callable[[sqlite3.Connection], _T], kind: _Kind = "read") -> _T:
        """Run ``operation`` with the connection in the thread (a write in a transaction) and
        return what it returns, or raise what it raised (`sqlite3.Error` as `StoreError`)."""
        if self._pid != os.getpid():
            self._forget_parent()
        call = _Call(operation, kind, asyncio.get_running_loop())
        self._enqueue([call])
        return await _outcome_of(call)  # type: ignore[no-any-return]

    def _enqueue(self, calls: list[_Call], *, locked: bool = False) -> None:
        """Put ``calls`` on the store's thread's queue, in order, and start the thread
        (``locked``: another process held the write lock when they tried it)."""
        with self._thread_lock:
            self._put += len(calls)
            if locked:
                self._locked_until = self._put
            for call in calls:
                self._calls.put(call)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._serve, name=f"crewflow-store {self.path.name}", daemon=True
                )
                self._thread.start()

    async def close(self) -> None:
        """Close the connection once every call made before has finished, and stop the thread."""
        if self._thread is None and self._conn is None:
            return
        await self.call(_no_operation, "close")

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
        self._conn_lock = threading.Lock()
        self._put = self._done = self._locked_until = 0
        self._waiting = []
        self._batches = {}
        self._batching = weakref.WeakSet()
        self._checkpointer = Checkpointer(self.path)

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
                if self._checkpointer.behind:
                    self._checkpointer.catch_up(_CATCH_UP_SECONDS)
                with self._conn_lock:
                    closed = self._run_holding(batch)
                with self._thread_lock:
                    self._done += len(batch)
                    ready = [loop for after, loop in self._waiting if after <= self._done]
                    self._waiting = [found for found in self._waiting if found[0] > self._done]
                _reply(batch)
                for loop in ready:  # their batches commit on the loop again
                    with contextlib.suppress(RuntimeError):  # the loop is closed
                        loop.call_soon_threadsafe(self._flush, loop)
                if not closed:
                    continue
            with self._thread_lock:  # no call can be queued while the thread decides to stop
                if self._calls.empty():
                    self._thread = None
                    return

    def _run_holding(self, batch: list[_Call]) -> bool:
        """Run a batch with the connection's busy timeout set to wait for other processes,
        and set it back to 0 for writes on callers' threads (or close the connection when
        that fails: such a write must never wait)."""
        try:
            if self._conn is not None:
                self._conn.execute(self._wait)
            closed = self._run(batch)
        except BaseException as exc:  # a bug here must not leave a caller waiting
            closed = False
            self._reset()
            for call in batch:
                call.outcome = call.outcome or _Outcome(error=exc)
        conn = self._conn
        if conn is not None:
            try:
                conn.execute("PRAGMA busy_timeout = 0")
            except BaseException:
                self._conn = None
                with contextlib.suppress(Exception):
                    conn.close()
        return closed

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
            self._checkpointer.close()  # a closed store leaves no thread behind
            conn, self._conn = self._conn, None
            outcome = _Outcome() if conn is None else _Outcome.of(conn.close)
        else:
            outcome = _Outcome.of(lambda: call.operation(self._connection()))
            self._reset()  # a read leaves no transaction open
        call.outcome = self._wrapped(outcome)

    def _commit(self, calls: list[_Call], *, on_loop: bool = False) -> None:
        """Run ``calls`` in one transaction; each call's outcome is known once it has committed
        (or failed). Consecutive task checkpoints are inserted together, a few statements for
        the whole group (each statement lets go of the GIL, and getting it back from a busy
        event loop is what costs); other writes, or a group that fails, run one by one, each in
        its own savepoint when there are several, so that a failing write is undone alone.

        Every write goes through here, so this is where the connection is kept usable: whatever
        escapes (a value SQLite cannot bind, a bug, ``MemoryError``), the transaction is rolled
        back, and every write not yet settled fails with it; none is left half-done, and no
        transaction is left open to fail the next ``BEGIN`` and lock out other processes.

        ``on_loop``: the connection never waits for a lock (its busy timeout is 0); when another
        process holds it, the writes not yet settled are left so, for the store's thread."""
        try:
            self._commit_batch(calls, on_loop)
        except BaseException as exc:
            self._reset()
            for call in calls:
                if call.outcome is None:
                    call.outcome = self._wrapped(_Outcome(error=exc))

    def _commit_batch(self, calls: list[_Call], on_loop: bool) -> None:
        try:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
        except BaseException as exc:
            self._reset()
            if on_loop and isinstance(exc, sqlite3.OperationalError) and _busy(exc):
                return  # nothing was written
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
                    self._commit(rest, on_loop=on_loop)
                return
            ran.extend(zip(group, outcomes, strict=True))
        committed = _Outcome.of(lambda: conn.execute("COMMIT"))
        if committed.error is not None:
            _roll_back(conn)
        for call, outcome in ran:
            undone = outcome.error is None and committed.error is not None
            call.outcome = self._wrapped(committed if undone else outcome)
        if committed.error is None:
            self._checkpointer.committed()

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
        found = outcome.error
        if isinstance(found, (sqlite3.Error, OSError)):
            hint = _hint(self.path, found)
            error = StoreError(f"the run database {self.path} failed: {found}{hint}")
            error.__cause__ = found
            return _Outcome(error=error)
        return outcome

    def _reset(self) -> None:
        """Leave no transaction open on the connection: roll it back, or when even that fails,
        close the connection (the next call opens a fresh one)."""
        conn = self._conn
        if conn is None or not conn.in_transaction:
            return
        _roll_back(conn)
        if conn.in_transaction:
            self._conn = None
            with contextlib.suppress(Exception):
                conn.close()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = self._open()
        return self._conn


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


_DONE = _Outcome()
"""The outcome of every write that returned nothing (shared: an outcome is never changed)."""


class _Batch:
    """The writes of one event loop iteration, to commit together, after the first ``after``
    calls put on the store's thread's queue (all of them, when a write opened it)."""

    __slots__ = ("after", "calls", "committed", "task", "to_thread")

    def __init__(self, after: int, task: asyncio.Task[Any] | None, committed: int = 0) -> None:
        self.after = after
        self.calls: list[_Call] = []
        self.task = task  # whose write opened it
        self.committed = committed  # writes of the iteration that committed at once
        self.to_thread = False  # for the store's thread, whatever the loop could do


class _Call:
    """One operation, and the future its caller awaits."""

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
        self.outcome: _Outcome | None = None  # set by whoever runs it, then read on the loop
        self.settled = False  # read and written on the caller's loop only


async def _outcome_of(call: _Call) -> Any:
    """What ``call`` returned, or raise what it raised, once it has committed or failed."""
    try:
        return await call.future
    except asyncio.CancelledError:
        await _settled(call)
        raise


async def _settled(call: _Call) -> None:
    """Once its caller was cancelled: wait, shielded, until ``call`` has committed or rolled
    back, like anyio.to_thread.run_sync (the cancellation is seen then, never while the
    operation may still be waiting or running)."""
    if not call.settled:
        call.future = call.loop.create_future()
        with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
            await call.future


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
        except Exception:
            _roll_back(conn)  # the whole batch is run again without this write
    return outcome


def _roll_back(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        with contextlib.suppress(Exception):
            conn.execute("ROLLBACK")


def _busy(error: sqlite3.OperationalError) -> bool:
    """Whether ``error`` says another connection holds a lock (nothing else went wrong)."""
    return getattr(error, "sqlite_errorname", "").startswith(("SQLITE_BUSY", "SQLITE_LOCKED"))


def _no_operation(conn: sqlite3.Connection) -> None:
    pass


def _groups(calls: list[_Call]) -> Iterator[tuple[int, list[_Call]]]:
    """``calls`` in order, as (index, group): consecutive task checkpoints together, every
    other write alone."""
    group: list[_Call] = []
    for index, call in enumerate(calls):
        if not isinstance(call.operation, TaskRows):
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
    rows = [cast("TaskRows", call.operation) for call in group]
    try:
        if not TaskRows.leases_hold(conn, rows):
            # A writer whose run was taken over: each write alone, so that only its fail.
            return [_run_in_savepoint(conn, call) for call in group]
        conn.execute("SAVEPOINT rows")
        try:
            ATTEMPTS.insert(conn, [values for row in rows for values in row.attempts])
            OUTPUTS.insert(conn, [row.output for row in rows if row.output is not None])
        except Exception:  # not only SQLite's: a value it cannot bind raises before it runs
            if not conn.in_transaction:
                raise
            conn.execute("ROLLBACK TO rows")
            conn.execute("RELEASE rows")
        else:
            conn.execute("RELEASE rows")
            return [_DONE] * len(group)
    except Exception as exc:
        _roll_back(conn)
        return [_Outcome(error=exc) for _ in group]
    # E.g. a row of an unknown run: each write alone tells which one fails.
    return [_run_in_savepoint(conn, call) for call in group]


def _hint(path: Path, error: sqlite3.Error | OSError) -> str:
    """How to get past ``error``, by its cause (SQLite's error name tells more than its text:
    a write past a file size limit is only a "disk I/O error")."""
    text = str(error)
    if isinstance(error, OSError) or "unable to open" in text or "readonly" in text:
        return _open_hint(path)
    name = getattr(error, "sqlite_errorname", "")
    if name.startswith(("SQLITE_FULL", "SQLITE_IOERR")):
        return (
            "; the disk may be full, or the file as large as this process may write: free some "
            "space and try again (a run that stopped on it resumes with `crewflow resume RUN_ID`)"
        )
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return (
            "; another process held its write lock for longer than the store waits: let that "
            "process finish, or give the store a longer timeout (SQLiteStore(path, timeout=...))"
        )
    if name.startswith(("SQLITE_NOTADB", "SQLITE_CORRUPT")):
        return (
            f"; the file is damaged or is not a run database: move it aside ({path.name} is "
            "made afresh on the next run), or give another path (the crew's store=..., or --db "
            "for crewflow's commands)"
        )
    return ""


def _open_hint(path: Path) -> str:
    """How to get past a database that cannot be opened or written: the default one is moved
    with ``CREWFLOW_HOME``; a database named by path (``store=...``, ``--db``) needs a path to a
    file in a directory this process can write."""
    if path.expanduser().resolve() == default_store_path().expanduser().resolve():
        return (
            "; point CREWFLOW_HOME at a writable directory, give the crew another store=..., "
            "or store=None to record nothing"
        )
    return (
        f"; {path} must be a database file (or a new file's name) in a directory this process "
        "can write: give another path (the crew's store=..., or --db for crewflow's "
        "commands), or store=None to record nothing"
    )
