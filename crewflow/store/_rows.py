"""Rows of a `SQLiteStore` as SQL values and back, and the inserts that write them."""

from __future__ import annotations

import json
import sqlite3
from typing import TYPE_CHECKING, Any

from pydantic_core import to_jsonable_python

from crewflow.store._base import UnknownRunError
from crewflow.store._records import AttemptRow, OutputRow, RunRecord

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

RUN_COLUMNS = (
    "run_id, crew, fingerprint, source, process, process_reason, inputs, status, started, "
    "ended, usage, graph, max_concurrency, resumed"
)
ATTEMPT_COLUMNS = (
    'run_id, task, attempt, agent, start, "end", status, error_type, error, model, requests, '
    "prompt_tokens, completion_tokens, cost, cache_hit, llm_retries, limit_wait, limit_waits"
)
RUN_MARKS = ", ".join("?" * (len(RUN_COLUMNS.split(",")) + 1))
OUTPUT_COLUMNS = "run_id, task, text, data, agent, model, finished_at"


class TaskRows:
    """The write of a task's attempts and output, as values; rows are turned into values on
    the caller's side, so that a row JSON cannot hold fails there. Called with a connection,
    it inserts them alone; the store's thread inserts many at once (``_insert_together`` in
    `crewflow.store._writer`)."""

    __slots__ = ("attempts", "output")

    def __init__(self, output: OutputRow | None, attempts: Iterable[AttemptRow]) -> None:
        self.attempts = [_attempt_values(row) for row in attempts]
        self.output = None if output is None else _output_values(output)

    def __call__(self, conn: sqlite3.Connection) -> None:
        # The foreign keys refuse a row of an unknown run; only then look for which.
        try:
            ATTEMPTS.insert(conn, self.attempts)
            OUTPUTS.insert(conn, [] if self.output is None else [self.output])
        except sqlite3.IntegrityError:
            run_ids = {values[0] for values in self.attempts}
            if self.output is not None:
                run_ids.add(self.output[0])
            for run_id in sorted(run_ids):
                _require_run(conn, run_id)
            raise


class _Insert:
    """``INSERT OR REPLACE`` of many rows into one table, as few statements as SQLite allows."""

    def __init__(self, table: str, columns: str) -> None:
        self.width = len(columns.split(","))
        self.head = f"INSERT OR REPLACE INTO {table} ({columns}) VALUES "
        self.per_statement = min(100, 999 // self.width)  # 999: SQLite's lowest bound limit
        self._sql: dict[int, str] = {}

    def insert(self, conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
        for start in range(0, len(rows), self.per_statement):
            chunk = rows[start : start + self.per_statement]
            conn.execute(self._statement(len(chunk)), [value for row in chunk for value in row])

    def _statement(self, rows: int) -> str:
        found = self._sql.get(rows)
        if found is None:
            marks = "(" + ", ".join("?" * self.width) + ")"
            found = self._sql[rows] = self.head + ", ".join([marks] * rows)
        return found


ATTEMPTS = _Insert("attempts", ATTEMPT_COLUMNS + ", start_ts")
OUTPUTS = _Insert("outputs", OUTPUT_COLUMNS + ", finished_ts")


def run_exists(conn: sqlite3.Connection, run_id: str) -> bool:
    return conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is not None


def _require_run(conn: sqlite3.Connection, run_id: str) -> None:
    if not run_exists(conn, run_id):
        raise UnknownRunError(run_id)


def _names(columns: str) -> list[str]:
    return [name.strip().strip('"') for name in columns.split(",")]


def to_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False)


# Rows are written from their fields directly (a model_dump costs more than the insert), with
# the same text as a model_dump in JSON mode: datetimes through pydantic's own serialiser.
_when = to_jsonable_python


def run_values(record: RunRecord) -> tuple[Any, ...]:
    data = record.model_dump(mode="json")
    for name in ("inputs", "usage", "graph"):
        data[name] = to_json(data[name])
    data["source"] = None if record.source is None else to_json(data["source"])
    return (*(data[name] for name in _names(RUN_COLUMNS)), record.started.timestamp())


def _attempt_values(row: AttemptRow) -> tuple[Any, ...]:
    return (
        row.run_id,
        row.task,
        row.attempt,
        row.agent,
        _when(row.start),
        None if row.end is None else _when(row.end),
        row.status.value,
        row.error_type,
        row.error,
        row.model,
        row.requests,
        row.prompt_tokens,
        row.completion_tokens,
        row.cost,
        row.cache_hit,
        row.llm_retries,
        row.limit_wait,
        to_json(row.limit_waits) if row.limit_waits else "{}",
        row.start.timestamp(),
    )


def _output_values(row: OutputRow) -> tuple[Any, ...]:
    return (
        row.run_id,
        row.task,
        row.text,
        None if row.data is None else to_json(row.data),
        row.agent,
        row.model,
        _when(row.finished_at),
        row.finished_at.timestamp(),
    )


def run_from_row(found: tuple[Any, ...]) -> RunRecord:
    data = dict(zip(_names(RUN_COLUMNS), found, strict=True))
    for name in ("inputs", "usage", "graph"):
        data[name] = json.loads(data[name])
    data["source"] = None if data["source"] is None else json.loads(data["source"])
    return RunRecord.model_validate(data)


def attempt_from_row(found: tuple[Any, ...]) -> AttemptRow:
    data = dict(zip(_names(ATTEMPT_COLUMNS), found, strict=True))
    data["limit_waits"] = json.loads(data["limit_waits"])
    return AttemptRow.model_validate(data)


def output_from_row(found: tuple[Any, ...]) -> OutputRow:
    data = dict(zip(_names(OUTPUT_COLUMNS), found, strict=True))
    data["data"] = None if data["data"] is None else json.loads(data["data"])
    return OutputRow.model_validate(data)
