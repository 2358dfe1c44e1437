"""Test support: ``python tests/crash_child.py ARGS`` is ``crewflow ARGS`` in a process that kills
itself with SIGKILL at the k-th commit of its store, to test what a crash leaves behind.

The hook lives here, not in the product: it wraps the store thread's connection so that its
``COMMIT`` statements are counted. ``CRASH_AT_COMMIT=k`` (from 1) kills the process at the k-th;
``CRASH_WHEN=before`` kills it just before that commit (its writes never land), ``after`` (the
default) just after it (they have landed, and nothing after them has). ``CRASH_COMMITS=FILE``
has a line added to FILE at each commit, to measure a run.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crewflow.cli import main
from crewflow.store._writer import Writer

if TYPE_CHECKING:
    import sqlite3

_KILL_AT = int(os.environ.get("CRASH_AT_COMMIT", "0"))
_BEFORE = os.environ.get("CRASH_WHEN", "after") == "before"
_COUNT_FILE = os.environ.get("CRASH_COMMITS")
_commits = 0


class _Counted:
    """A store connection whose commits are counted, and the chosen one kills the process."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        global _commits
        if sql != "COMMIT":
            return self._conn.execute(sql, *args)
        _commits += 1
        if _commits == _KILL_AT and _BEFORE:
            os.kill(os.getpid(), signal.SIGKILL)
        cursor = self._conn.execute(sql, *args)
        if _COUNT_FILE:
            with Path(_COUNT_FILE).open("a") as count:
                count.write("commit\n")
        if _commits == _KILL_AT:
            os.kill(os.getpid(), signal.SIGKILL)
        return cursor


_connection = Writer._connection


def _counted_connection(self: Writer) -> sqlite3.Connection:
    conn = _connection(self)
    if not isinstance(conn, _Counted):
        conn = self._conn = _Counted(conn)  # type: ignore[assignment]
    return conn


Writer._connection = _counted_connection  # type: ignore[method-assign]

if __name__ == "__main__":
    main()
