"""The thread that keeps a `SQLiteStore`'s write-ahead log short (see `crewflow.store.sqlite`).

The store's connection commits with SQLite's automatic checkpoint off (``wal_autocheckpoint=0``):
that one runs inside a commit and must first sync the whole log to disk, which a commit on the
event loop must not do. Instead, every few dozen commits wake one long-lived thread per store,
which checkpoints on its own connection: ``PASSIVE`` (it neither waits for nor blocks anyone),
and ``TRUNCATE`` once the log has passed a set number of pages, which empties the log file even
while other processes keep reading the database (a passive checkpoint cannot restart a log that
a reader still uses, so without it the log would grow as long as readers come and go). The thread
stops when the store closes or has been idle for a while; the next commits start it again.

Commits can outrun the thread (thousands a second of instant tasks, each copied again by the
checkpoint). Once `BEHIND` commits have gone by since its last checkpoint ended, the
checkpointer is `behind`: the store's writes then go to its thread, which waits (up to a second)
for the checkpoint under way to end, much as SQLite's own checkpoint held up the commit that ran
it. The event loop never waits for it. A reader that keeps the log from being emptied costs at
most a ``TRUNCATE``'s bounded wait (0.1 s) every `BEHIND` commits.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

CHECKPOINT_EVERY = 32  # commits between two wake-ups (a task's commit is ~8 pages)
TRUNCATE_PAGES = 1000  # a log longer than this (~4 MB of 4 KiB pages) is emptied
BEHIND = 4 * CHECKPOINT_EVERY  # commits since a checkpoint ended: writes wait for the next
_IDLE_SECONDS = 10.0  # the thread stops after this long without a wake-up
_TRUNCATE_WAIT = 0.1  # seconds a TRUNCATE waits for readers (holding the write lock meanwhile)


class Checkpointer:
    """Checkpoints the log of the database at ``path`` from a thread of its own.

    Args:
        path: The database file (``":memory:"``: nothing to checkpoint).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()  # guards self._thread and self._closing
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._commits = 0  # approximate: counted from the loop's thread and the store's
        self._since = 0  # commits since the last checkpoint ended (approximate too)
        self._caught_up = threading.Event()
        self._caught_up.set()

    @property
    def behind(self) -> bool:
        """Whether `BEHIND` commits have gone by since the last checkpoint ended."""
        return not self._caught_up.is_set()

    def catch_up(self, timeout: float) -> None:
        """Wait until a checkpoint has ended, for ``timeout`` seconds at most (for the store's
        thread, never the event loop)."""
        self._commits = CHECKPOINT_EVERY  # wakes the thread at the next commit, if stopped
        self.committed()
        self._caught_up.wait(timeout)

    def committed(self) -> None:
        """Count a commit; every `CHECKPOINT_EVERY`, wake the thread (starting it if need be)."""
        if str(self.path) == ":memory:":  # no log, and no other connection could see it
            return
        self._commits += 1
        self._since += 1
        if self._since >= BEHIND:
            self._caught_up.clear()
        if self._commits < CHECKPOINT_EVERY:
            return
        self._commits = 0
        with self._lock:
            self._wake.set()
            if self._thread is None and not self._closing:
                self._thread = threading.Thread(
                    target=self._serve,
                    name=f"crewflow-store-checkpoint {self.path.name}",
                    daemon=True,
                )
                self._thread.start()

    def close(self) -> None:
        """Stop the thread, once the checkpoint it may be running has ended, or after one more
        when commits have gone by since the last."""
        with self._lock:
            thread = self._thread
            self._closing = thread is not None
            self._wake.set()
        if thread is not None:
            thread.join()
        with self._lock:
            self._closing = False
            self._wake.clear()

    def _serve(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            closing = False
            while not closing:
                self._wake.wait(_IDLE_SECONDS)
                with self._lock:
                    if not self._wake.is_set():  # idle
                        self._thread = None
                        return
                    self._wake.clear()
                    closing = self._closing
                if closing and self._since == 0:
                    break
                # Also when woken to close: the commits since the last checkpoint (whose wake-up
                # this thread may not have seen yet) leave the log too.
                with contextlib.suppress(sqlite3.Error):  # an optimisation: skipped if it fails
                    if conn is None:
                        conn = _connect(self.path)
                    checkpoint(conn)
                self._since = 0
                self._caught_up.set()
            with self._lock:
                self._thread = None
        finally:
            self._caught_up.set()  # nobody is left to catch up: let writes go on
            if conn is not None:
                conn.close()


def _connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, timeout=_TRUNCATE_WAIT, isolation_level=None)


def checkpoint(conn: sqlite3.Connection) -> None:
    """Checkpoint as much of the log as no reader holds up; empty it once it is long."""
    _, pages, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    if pages >= TRUNCATE_PAGES:
        # Waits (a bounded time) for readers to leave the log, holding the write lock: the
        # store's commits go to its thread meanwhile, never wait on the event loop.
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
