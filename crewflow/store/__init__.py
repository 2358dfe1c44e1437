"""Run records and checkpoints: where every run, task attempt and finished output is kept.

`SQLiteStore` is the default (one file, safe for several processes at once); `PostgresStore`
keeps them in a PostgreSQL database that many machines share (``pip install
'crewflow[postgres]'``; imported on first use, as is psycopg); `MemoryStore` keeps the same
records in memory for tests. All implement the `Store` ABC, whose records are
pydantic models stored as JSON, never pickled. A run being executed holds a `Lease` there, so
that a run whose process died reads as ``interrupted``, not ``running``. No record holds a
secret: nothing here takes API keys, headers or client settings.

Importing this package does no I/O: a store opens its database on first use. Its errors
(`StoreError` and below) are part of the one tree in `crewflow.exceptions`.
"""

from typing import TYPE_CHECKING

from crewflow._records import (
    AttemptRecord,
    CallRecord,
    ContextCutRecord,
    PromptRecord,
    RunStatus,
    TaskKind,
    TaskStatus,
    ToolCallRecord,
)
from crewflow.store._base import (
    DuplicateRunError,
    LeaseLost,
    RunInProgress,
    SchemaVersionError,
    Store,
    StoreError,
    UnknownRunError,
    default_store_path,
    resolve_store,
)
from crewflow.store._history import History, ProcessHistory, read_history
from crewflow.store._lease import Lease, LeaseOwner
from crewflow.store._records import (
    AddedTaskRecord,
    BatchItem,
    BatchRecord,
    DecisionRecord,
    OutputRow,
    RunRecord,
    RunSource,
)
from crewflow.store.memory import MemoryStore
from crewflow.store.sqlite import SQLiteStore

if TYPE_CHECKING:
    from crewflow.store.postgres import PostgresStore

__all__ = [
    "AddedTaskRecord",
    "AttemptRecord",
    "BatchItem",
    "BatchRecord",
    "CallRecord",
    "ContextCutRecord",
    "DecisionRecord",
    "DuplicateRunError",
    "History",
    "Lease",
    "LeaseLost",
    "LeaseOwner",
    "MemoryStore",
    "OutputRow",
    "PostgresStore",
    "ProcessHistory",
    "PromptRecord",
    "RunInProgress",
    "RunRecord",
    "RunSource",
    "RunStatus",
    "SQLiteStore",
    "SchemaVersionError",
    "Store",
    "StoreError",
    "TaskKind",
    "TaskStatus",
    "ToolCallRecord",
    "UnknownRunError",
    "default_store_path",
    "read_history",
    "resolve_store",
]


def __getattr__(name: str) -> object:
    # PostgresStore on first use: `crewflow runs` on SQLite never loads it.
    if name == "PostgresStore":
        from crewflow.store.postgres import PostgresStore

        globals()[name] = PostgresStore
        return PostgresStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
