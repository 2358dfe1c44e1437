"""Rows of a `SQLiteStore` as SQL values and back, and the inserts that write them."""

from __future__ import annotations

import json
import sqlite3
from functools import cache
from typing import TYPE_CHECKING, Any, get_args

from pydantic import TypeAdapter
from pydantic_core import to_jsonable_python

from crewflow._records import AttemptRecord, CallRecord, PromptRecord, RunStatus, TaskStatus
from crewflow._text import json_text, valid_json, valid_text, valid_values
from crewflow._usage import Usage
from crewflow.store._base import LeaseLost, UnknownRunError
from crewflow.store._lease import Lease, LeaseOwner
from crewflow.store._records import (
    AddedTaskRecord,
    BatchItem,
    BatchRecord,
    BatchStatus,
    DecisionRecord,
    OutputRow,
    RunRecord,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from datetime import datetime

    from pydantic import JsonValue

RUN_COLUMNS = (
    "run_id, crew, fingerprint, crew_key, task_hashes, process_config, source, process, chosen, "
    "process_reason, inputs, status, started, ended, usage, graph, max_concurrency, resumed, "
    "paused, details"
)
_RUN_JSON = ("task_hashes", "process_config", "inputs", "usage", "graph", "details")
ATTEMPT_COLUMNS = (
    'run_id, task, attempt, agent, start, "end", duration, status, error_type, error, model, '
    "requests, prompt_tokens, completion_tokens, cost, cache_hits, llm_retries, limit_wait, "
    "limit_waits, calls, details"
)
# An attempt's tool calls and prompts are kept in its ``details`` JSON, under these keys.
_TOOL_CALLS, _PROMPTS, _KIND = "tool_calls", "prompts", "kind"
ATTEMPT_SELECT = ATTEMPT_COLUMNS.replace("details", f"json_remove(details, '$.{_PROMPTS}')")
"""What `Store.attempts` reads: every column, but the prompts (they can be large)."""
PROMPTS_JSON = f"json_extract(details, '$.{_PROMPTS}')"
"""An attempt's prompts, as the JSON text of a list (``NULL`` when it recorded none)."""
TASK_COLUMNS = "run_id, name, kind, step, agent, depends_on, spec_hash, added"
DECISION_COLUMNS = "run_id, key, kind, task, value, reason, at"
BATCH_COLUMNS = "batch_id, crew, fingerprint, inputs_hash, created, details"
BATCH_ITEM_COLUMNS = "batch_id, idx, run_id, status"

RUN_MARKS = ", ".join("?" * (len(RUN_COLUMNS.split(",")) + 1))
LEASE_COLUMNS = "token, host, boot_id, pid, process_start, expires, running"
SELECT_RUNS = f"SELECT {RUN_COLUMNS}, {LEASE_COLUMNS} FROM runs LEFT JOIN leases USING (run_id)"
"""Each run with its lease, if it holds one (``runs.rowid`` breaks ties between runs)."""
LEASE_WRITE = (
    f"INSERT OR REPLACE INTO leases (run_id, {LEASE_COLUMNS}, expires_ts) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
OUTPUT_COLUMNS = "run_id, task, text, data, agent, model, finished_at"


def check_lease(conn: sqlite3.Connection, run_id: str, token: str | None) -> None:
    """Refuse a write of run ``run_id`` whose writer's lease (``token``; ``None``: unchecked) no
    longer holds the run; inside the write's transaction, so no takeover comes in between."""
    if token is None:
        return
    found = conn.execute(
        "SELECT token, host, boot_id, pid, process_start FROM leases WHERE run_id = ?", (run_id,)
    ).fetchone()
    if found is not None and found[0] == token:
        return
    _require_run(conn, run_id)
    owner = None
    if found is not None:
        _, host, boot_id, pid, process_start = found
        owner = LeaseOwner(host=host, boot_id=boot_id, pid=pid, process_start=process_start)
    raise LeaseLost(run_id, owner)


class TaskRows:
    """The write of a task's attempts and output, as values; rows are turned into values on
    the caller's side, so that a row JSON cannot hold fails there. Called with a connection,
    it checks the writer's lease and inserts them alone; the store's thread inserts many at once
    (``_insert_together`` in `crewflow.store._writer`) once `leases_hold`."""

    __slots__ = ("attempts", "lease", "output", "run_id")

    def __init__(
        self,
        run_id: str,
        output: OutputRow | tuple[Any, ...] | None,
        attempts: Iterable[AttemptRecord],
        lease: str | None = None,
    ) -> None:
        self.run_id = valid_text(run_id)  # stored repaired (`_attempt_values`): checked so too
        self.lease = lease
        attempts = attempts if isinstance(attempts, (list, tuple)) else list(attempts)
        self.attempts = [_attempt_values(run_id, attempt) for attempt in attempts]
        # An OutputRow, or its `output_values` already.
        self.output = _output_values(output) if isinstance(output, OutputRow) else output

    @staticmethod
    def leases_hold(conn: sqlite3.Connection, rows: Iterable[TaskRows]) -> bool:
        """Whether the lease of every writer of ``rows`` still holds its run (one look per run
        and token)."""
        for run_id, token in {(row.run_id, row.lease) for row in rows if row.lease is not None}:
            found = conn.execute("SELECT token FROM leases WHERE run_id = ?", (run_id,)).fetchone()
            if found is None or found[0] != token:
                return False
        return True

    def __call__(self, conn: sqlite3.Connection) -> None:
        check_lease(conn, self.run_id, self.lease)
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
TASKS = _Insert("tasks", TASK_COLUMNS + ", added_ts")
DECISIONS = _Insert("decisions", DECISION_COLUMNS + ", at_ts")


def run_exists(conn: sqlite3.Connection, run_id: str) -> bool:
    return conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is not None


def _require_run(conn: sqlite3.Connection, run_id: str) -> None:
    if not run_exists(conn, run_id):
        raise UnknownRunError(run_id)


def _names(columns: str) -> list[str]:
    return [name.strip().strip('"') for name in columns.split(",")]


def to_json(value: Any) -> str:
    """``value`` as JSON text that any database holds: strings repaired by `valid_json` when
    they must be (checked on the text, so the usual case costs one encoding)."""
    text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    if "\\u0000" in text or valid_text(text) is not text:
        text = json.dumps(valid_json(value), ensure_ascii=False, allow_nan=False)
    return text


# Rows are written from their fields directly (a model_dump costs more than the insert), with
# the same text as a model_dump in JSON mode: datetimes through pydantic's own serialiser.
_when = to_jsonable_python


def run_values(record: RunRecord) -> tuple[Any, ...]:
    # From the fields, as for attempts: a model_dump would copy a big crew's graph and task
    # hashes once more before they are written as JSON.
    usage = record.usage
    return valid_values(
        (
            record.run_id,
            record.crew,
            record.fingerprint,
            record.crew_key,
            to_json(record.task_hashes),
            to_json(record.process_config),
            None if record.source is None else to_json(record.source.model_dump()),
            record.process,
            record.chosen,
            record.process_reason,
            to_json(record.inputs),
            record.status.value,
            _when(record.started),
            None if record.ended is None else _when(record.ended),
            to_json(
                {
                    "requests": usage.requests,
                    "prompt_tokens": usage.prompt_tokens,
                    "completion_tokens": usage.completion_tokens,
                    "cost": usage.cost,
                }
            ),
            to_json(record.graph),
            record.max_concurrency,
            record.resumed,
            record.paused,
            to_json(record.details),
            record.started.timestamp(),
        )
    )


def lease_values(run_id: str, lease: Lease) -> tuple[Any, ...]:
    owner = lease.owner
    return valid_values(
        (
            run_id,
            lease.token,
            owner.host,
            owner.boot_id,
            owner.pid,
            owner.process_start,
            _when(lease.expires),
            to_json(lease.running),
            lease.expires.timestamp(),
        )
    )


def _attempt_values(run_id: str, attempt: AttemptRecord) -> tuple[Any, ...]:
    usage = attempt.usage
    return valid_values(
        (
            run_id,
            attempt.task,
            attempt.number,
            attempt.agent,
            _when(attempt.start),
            _when(attempt.end),
            attempt.duration,
            attempt.status.value,
            attempt.error_type,
            attempt.error,
            attempt.model,
            usage.requests,
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.cost,
            attempt.cache_hits,
            attempt.llm_retries,
            attempt.limit_wait,
            to_json(attempt.limit_waits) if attempt.limit_waits else "{}",
            _calls_json().dump_json(attempt.calls).decode() if attempt.calls else "[]",
            _attempt_details(attempt),
            attempt.start.timestamp(),
        )
    )


@cache
def _calls_json() -> TypeAdapter[tuple[CallRecord, ...]]:
    """What writes an attempt's calls as JSON: a third faster than inferring their type each
    time (`pydantic_core.to_json`), as the store does for each checkpoint."""
    return TypeAdapter(tuple[CallRecord, ...])


def _attempt_details(attempt: AttemptRecord) -> str:
    """The ``details`` column: the attempt's details, its tool calls, its prompts and its kind
    (when not ``task``)."""
    if not (attempt.tool_calls or attempt.prompts or attempt.kind != "task"):
        return to_json(attempt.details) if attempt.details else "{}"
    details: dict[str, Any] = dict(attempt.details)
    if attempt.kind != "task":
        details[_KIND] = attempt.kind
    if attempt.tool_calls:
        details[_TOOL_CALLS] = attempt.tool_calls
    if attempt.prompts:
        details[_PROMPTS] = attempt.prompts
    # pydantic's encoder writes the records (and the messages in them) in one pass.
    return json_text(details, exclude_none=True)


def task_values(run_id: str, task: AddedTaskRecord) -> tuple[Any, ...]:
    return valid_values(
        (
            run_id,
            task.name,
            task.kind.value,
            task.step,
            task.agent,
            to_json(task.depends_on),
            task.spec_hash,
            _when(task.added),
            task.added.timestamp(),
        )
    )


def _output_values(row: OutputRow) -> tuple[Any, ...]:
    return output_values(
        row.run_id, row.task, row.text, row.data, row.agent, row.model, row.finished_at
    )


def output_values(
    run_id: str,
    task: str,
    text: str,
    data: JsonValue,
    agent: str,
    model: str,
    finished_at: datetime,
) -> tuple[Any, ...]:
    """An output's row (`OUTPUT_COLUMNS`, then ``finished_ts``) from an `OutputRow`'s fields."""
    return valid_values(
        (
            run_id,
            task,
            text,
            None if data is None else to_json(data),
            agent,
            model,
            _when(finished_at),
            finished_at.timestamp(),
        )
    )


_RUN_WIDTH = len(_names(RUN_COLUMNS))


def run_from_row(found: tuple[Any, ...]) -> RunRecord:
    """A run from a row of `SELECT_RUNS` (its columns, then its lease's)."""
    data = dict(zip(_names(RUN_COLUMNS), found[:_RUN_WIDTH], strict=True))
    for name in _RUN_JSON:
        data[name] = json.loads(data[name])
    data["source"] = None if data["source"] is None else json.loads(data["source"])
    token, host, boot_id, pid, process_start, expires, running = found[_RUN_WIDTH:]
    if token is not None:
        owner = LeaseOwner(host=host, boot_id=boot_id, pid=pid, process_start=process_start)
        data["lease"] = Lease(
            token=token, owner=owner, expires=expires, running=json.loads(running)
        )
    return RunRecord.model_validate(data)


def attempt_from_row(found: tuple[Any, ...]) -> AttemptRecord:
    data = dict(zip(_names(ATTEMPT_COLUMNS), found, strict=True))
    data["number"] = data.pop("attempt")
    del data["run_id"]
    data["usage"] = Usage(
        data.pop("requests"),
        data.pop("prompt_tokens"),
        data.pop("completion_tokens"),
        data.pop("cost"),
    )
    data["limit_waits"] = json.loads(data["limit_waits"])
    data["calls"] = json.loads(data["calls"])
    details = data["details"] = json.loads(data["details"])
    data[_TOOL_CALLS] = details.pop(_TOOL_CALLS, ())
    data[_PROMPTS] = details.pop(_PROMPTS, ())
    data[_KIND] = details.pop(_KIND, "task")
    if data["end"] is None:
        # Recorded as running by an older crewflow and never ended: it died with its process.
        data["end"] = data["start"]
        data["status"] = TaskStatus.CANCELLED
    record = AttemptRecord.model_validate(data | {"duration": data["duration"] or 0.0})
    if data["duration"] is None:  # recorded before attempts kept their own duration
        seconds = max(0.0, (record.end - record.start).total_seconds())
        record = record.model_copy(update={"duration": seconds})
    return record


def finish_values(
    run_id: str, status: RunStatus | str, ended: datetime, usage: Usage
) -> tuple[Any, ...]:
    """The values that record a run's end (status, end, usage, run id), validated through the
    run record so that a bad value fails here, as in `MemoryStore`."""
    checked = RunRecord(
        run_id=run_id,
        crew="",
        started=ended,
        status=RunStatus(status),
        ended=ended,
        usage=usage,
    ).model_dump(mode="json")
    return valid_values((checked["status"], checked["ended"], to_json(checked["usage"]), run_id))


def decision_values(run_id: str, decision: DecisionRecord) -> tuple[Any, ...]:
    return valid_values(
        (
            run_id,
            decision.key,
            decision.kind,
            decision.task,
            to_json(decision.value),
            decision.reason,
            _when(decision.at),
            decision.at.timestamp(),
        )
    )


def decision_from_row(found: tuple[Any, ...]) -> DecisionRecord:
    data = dict(zip(_names(DECISION_COLUMNS), found, strict=True))
    del data["run_id"]
    data["value"] = json.loads(data["value"])
    return DecisionRecord.model_validate(data)


def task_from_row(found: tuple[Any, ...]) -> AddedTaskRecord:
    data = dict(zip(_names(TASK_COLUMNS), found, strict=True))
    del data["run_id"]
    data["depends_on"] = json.loads(data["depends_on"])
    return AddedTaskRecord.model_validate(data)


def prompts_from_row(found: tuple[Any, ...]) -> tuple[tuple[str, int], list[PromptRecord]]:
    """The prompts of one attempt (a row of task, attempt and `PROMPTS_JSON`), by task and
    attempt number."""
    task, number, text = found
    return (task, number), _prompt_list().validate_json(text)


@cache
def _prompt_list() -> TypeAdapter[list[PromptRecord]]:
    # Built on first use: `crewflow runs` never reads prompts and must start fast.
    return TypeAdapter(list[PromptRecord])


def output_from_row(found: tuple[Any, ...]) -> OutputRow:
    data = dict(zip(_names(OUTPUT_COLUMNS), found, strict=True))
    data["data"] = None if data["data"] is None else json.loads(data["data"])
    return OutputRow.model_validate(data)


def batch_values(batch: BatchRecord) -> tuple[Any, ...]:
    """The ``batches`` row of ``batch`` (its columns, then ``created_ts``)."""
    return valid_values(
        (
            batch.batch_id,
            batch.crew,
            batch.fingerprint,
            batch.inputs_hash,
            _when(batch.created),
            to_json(batch.details),
            batch.created.timestamp(),
        )
    )


def valid_status(status: str) -> str:
    """``status`` when it is a `BatchStatus`.

    Raises:
        ValueError: It is not.
    """
    if status not in get_args(BatchStatus):
        raise ValueError(
            f"a batch input's status is one of {get_args(BatchStatus)}, not {status!r}"
        )
    return status


def batch_item_values(batch_id: str, items: Iterable[BatchItem]) -> list[tuple[Any, ...]]:
    """The ``batch_items`` rows of a batch's items."""
    return [valid_values((batch_id, item.index, item.run_id, item.status)) for item in items]


def batch_from_rows(found: tuple[Any, ...], items: Sequence[tuple[Any, ...]]) -> BatchRecord:
    """A batch from its ``batches`` row and its items' rows (index, run id, status), in order."""
    data = dict(zip(_names(BATCH_COLUMNS), found, strict=True))
    data["details"] = json.loads(data["details"])
    data["items"] = [
        BatchItem(index=index, run_id=run_id, status=status) for index, run_id, status in items
    ]
    return BatchRecord.model_validate(data)
