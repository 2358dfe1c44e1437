"""`MemoryStore`: the store's behaviour in a dict, for tests and runs that need no file."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import TypeAdapter

from crewflow._records import AttemptRecord, PromptRecord, RunStatus
from crewflow._text import json_text, valid_text
from crewflow.store._base import (
    DuplicateRunError,
    LeaseLost,
    Store,
    StoreError,
    UnknownRunError,
    check_limit,
)
from crewflow.store._lease import Lease, observed
from crewflow.store._records import (
    AddedTaskRecord,
    BatchItem,
    BatchRecord,
    DecisionRecord,
    OutputRow,
    RunRecord,
)
from crewflow.store._rows import valid_status

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from pydantic import BaseModel, JsonValue

    from crewflow._usage import Usage
    from crewflow.store._records import BatchStatus

__all__ = ["MemoryStore"]

_PROMPTS = TypeAdapter(list[PromptRecord], config={"defer_build": True})
_M = TypeVar("_M", bound="BaseModel")


def _stored(record: _M) -> _M:
    """``record`` as a database returns it: its strings valid (`crewflow._text.json_text`)."""
    return type(record).model_validate_json(json_text(record))


class MemoryStore(Store):
    """Keeps records in memory, for one process; behaves like `SQLiteStore` otherwise.

    Records are kept as JSON text, exactly as a database would keep them, so a round trip
    through this store changes a record the same way (e.g. a named time zone becomes its offset,
    a lone surrogate or a NUL U+FFFD) and a record that JSON cannot hold fails here too. Every
    method runs without awaiting, so each is atomic on the event loop.

    Example:
        ```python
        store = MemoryStore()
        crew = Crew(tasks=[...], store=store)
        ```
    """

    def __init__(self) -> None:
        self._runs: dict[str, tuple[int, str]] = {}
        self._attempts: dict[tuple[str, str, int], str] = {}
        self._prompts: dict[tuple[str, str, int], str] = {}
        """Each attempt's prompts apart, as the database keeps them apart from what
        `attempts` reads."""
        self._tasks: dict[tuple[str, str], str] = {}
        self._decisions: dict[tuple[str, str], str] = {}
        self._batches: dict[str, str] = {}
        self._outputs: dict[tuple[str, str], str] = {}
        self._cache: dict[str, str] = {}
        self._leases: dict[str, str] = {}
        self._sequence = 0

    async def start_run(self, record: RunRecord) -> None:
        record = _stored(record)
        if record.run_id in self._runs:
            raise DuplicateRunError(record.run_id)
        self._sequence += 1
        # The lease apart, as in the database, where a renewal rewrites it alone.
        bare = record.model_copy(update={"lease": None})
        self._runs[record.run_id] = (self._sequence, bare.model_dump_json())
        if record.lease is not None:
            self._leases[record.run_id] = record.lease.model_dump_json()

    async def finish_run(
        self,
        run_id: str,
        status: RunStatus,
        ended: datetime,
        usage: Usage,
        *,
        lease: str | None = None,
    ) -> None:
        run_id = valid_text(run_id)
        self._check_lease(run_id, lease)
        self._update_run(run_id, status=RunStatus(status), ended=ended, usage=usage)
        self._leases.pop(run_id, None)

    async def reopen_run(self, run_id: str, *, lease: str | None = None) -> None:
        run_id = valid_text(run_id)
        self._check_lease(run_id, lease)
        resumed = self._load_run(run_id).resumed + 1
        self._update_run(run_id, status=RunStatus.RUNNING, ended=None, resumed=resumed)

    async def take_lease(self, run_id: str, lease: Lease, *, replacing: str | None) -> bool:
        run_id, lease = valid_text(run_id), _stored(lease)
        replacing = None if replacing is None else valid_text(replacing)
        self._require_run(run_id)
        held = self._leases.get(run_id)
        if (None if held is None else Lease.model_validate_json(held).token) != replacing:
            return False
        self._leases[run_id] = lease.model_dump_json()
        return True

    async def renew_lease(
        self,
        run_id: str,
        token: str,
        expires: datetime,
        *,
        running: Sequence[str] | None = None,
    ) -> bool:
        run_id, token = valid_text(run_id), valid_text(token)
        held = self._leases.get(run_id)
        if held is None:
            return False
        lease = Lease.model_validate_json(held)
        if lease.token != token:
            return False
        changes: dict[str, Any] = {"expires": expires}
        if running is not None:
            changes["running"] = tuple(valid_text(name) for name in running)
        self._leases[run_id] = lease.model_copy(update=changes).model_dump_json()
        return True

    async def record_choice(
        self,
        run_id: str,
        process: str,
        reason: str,
        details: Mapping[str, JsonValue] | None = None,
        *,
        lease: str | None = None,
    ) -> None:
        run_id = valid_text(run_id)
        self._check_lease(run_id, lease)
        merged = {**self._load_run(run_id).details, **(details or {})}
        self._update_run(run_id, chosen=process, process_reason=reason, details=merged)

    async def record_health(
        self,
        run_id: str,
        health: Mapping[str, JsonValue] | None,
        *,
        lease: str | None = None,
    ) -> None:
        run_id = valid_text(run_id)
        self._check_lease(run_id, lease)
        details = dict(self._load_run(run_id).details)
        details.pop("health", None)
        if health is not None:
            details["health"] = dict(health)
        self._update_run(run_id, details=details)

    async def record_pause(self, run_id: str, *, lease: str | None = None) -> None:
        run_id = valid_text(run_id)
        self._check_lease(run_id, lease)
        self._update_run(run_id, paused=True)

    async def add_tasks(
        self, run_id: str, tasks: Sequence[AddedTaskRecord], *, lease: str | None = None
    ) -> None:
        run_id = valid_text(run_id)
        self._check_lease(run_id, lease)
        for task in map(_stored, tasks):
            # A task added again counts as added now, as in the database.
            self._tasks.pop((run_id, task.name), None)
            self._tasks[(run_id, task.name)] = task.model_dump_json()

    async def added_tasks(self, run_id: str) -> list[AddedTaskRecord]:
        run_id = valid_text(run_id)
        found = [
            AddedTaskRecord.model_validate_json(text)
            for (run, _), text in self._tasks.items()
            if run == run_id
        ]
        found.sort(key=lambda task: task.added.timestamp())  # stable: then in insertion order
        return found

    async def record_decisions(
        self, run_id: str, decisions: Sequence[DecisionRecord], *, lease: str | None = None
    ) -> None:
        run_id = valid_text(run_id)
        self._check_lease(run_id, lease)
        for decision in map(_stored, decisions):
            # A decision made again counts as made now, as in the database.
            self._decisions.pop((run_id, decision.key), None)
            self._decisions[(run_id, decision.key)] = decision.model_dump_json()

    async def decisions(self, run_id: str) -> list[DecisionRecord]:
        run_id = valid_text(run_id)
        found = [
            DecisionRecord.model_validate_json(text)
            for (run, _), text in self._decisions.items()
            if run == run_id
        ]
        found.sort(key=lambda decision: decision.at.timestamp())  # stable
        return found

    async def start_batch(self, batch: BatchRecord) -> None:
        batch = _stored(batch)
        if batch.batch_id in self._batches:
            raise StoreError(f"a batch {batch.batch_id!r} is already in the store")
        self._batches[batch.batch_id] = batch.model_dump_json()

    async def get_batch(self, batch_id: str) -> BatchRecord | None:
        text = self._batches.get(valid_text(batch_id))
        return None if text is None else BatchRecord.model_validate_json(text)

    async def set_batch_status(self, batch_id: str, statuses: Mapping[int, BatchStatus]) -> None:
        batch_id = valid_text(batch_id)
        batch = await self.get_batch(batch_id)
        if batch is None:
            raise StoreError(f"no batch {batch_id!r} in the store")
        items = {item.index: item for item in batch.items}
        for index, status in statuses.items():
            if index not in items:
                raise StoreError(f"no input {index} of a batch {batch_id!r} in the store")
            items[index] = BatchItem(
                index=index, run_id=items[index].run_id, status=valid_status(status)
            )
        updated = batch.model_copy(update={"items": list(items.values())})
        self._batches[batch_id] = updated.model_dump_json()

    async def record_attempt(
        self, run_id: str, attempt: AttemptRecord, *, lease: str | None = None
    ) -> None:
        run_id, attempt = valid_text(run_id), _stored(attempt)
        self._check_lease(run_id, lease)
        key = (run_id, attempt.task, attempt.number)
        self._attempts[key] = attempt.model_dump_json(exclude={"prompts"})
        if attempt.prompts:
            self._prompts[key] = _PROMPTS.dump_json(list(attempt.prompts)).decode()
        else:
            self._prompts.pop(key, None)

    async def save_output(self, row: OutputRow, *, lease: str | None = None) -> None:
        row = _stored(row)
        self._check_lease(row.run_id, lease)
        key = (row.run_id, row.task)
        # A saved-again output counts as finishing now, as in the database.
        self._outputs.pop(key, None)
        self._outputs[key] = row.model_dump_json()

    async def save_task(
        self,
        output: OutputRow,
        attempts: Sequence[AttemptRecord] = (),
        *,
        lease: str | None = None,
    ) -> None:
        # All or nothing, as one transaction in the database.
        self._check_lease(valid_text(output.run_id), lease)
        for attempt in attempts:
            await self.record_attempt(output.run_id, attempt)
        await self.save_output(output)

    async def get_run(self, run_id: str) -> RunRecord | None:
        run_id = valid_text(run_id)
        if run_id not in self._runs:
            return None
        return self._observed(self._load_run(run_id), datetime.now(UTC))

    async def outputs(self, run_id: str) -> dict[str, OutputRow]:
        run_id = valid_text(run_id)
        rows = [
            OutputRow.model_validate_json(text)
            for (run, _), text in self._outputs.items()
            if run == run_id
        ]
        rows.sort(key=lambda row: row.finished_at.timestamp())
        return {row.task: row for row in rows}

    async def attempts(self, run_id: str) -> list[AttemptRecord]:
        run_id = valid_text(run_id)
        found = [
            AttemptRecord.model_validate_json(text)
            for (run, _, _), text in self._attempts.items()
            if run == run_id
        ]
        found.sort(key=lambda attempt: (attempt.start.timestamp(), attempt.task, attempt.number))
        return found

    async def prompts(self, run_id: str) -> dict[tuple[str, int], list[PromptRecord]]:
        run_id = valid_text(run_id)
        found = {}
        for attempt in await self.attempts(run_id):  # in the database's order
            text = self._prompts.get((run_id, attempt.task, attempt.number))
            if text is not None:
                found[(attempt.task, attempt.number)] = _PROMPTS.validate_json(text)
        return found

    async def list_runs(self, crew: str | None = None, limit: int | None = 20) -> list[RunRecord]:
        check_limit(limit)
        crew = None if crew is None else valid_text(crew)
        records = [
            (sequence, RunRecord.model_validate_json(text))
            for sequence, text in self._runs.values()
        ]
        chosen = [
            (record.started.timestamp(), sequence, record)
            for sequence, record in records
            if crew is None or record.crew == crew
        ]
        chosen.sort(key=lambda item: (item[0], item[1]), reverse=True)
        now = datetime.now(UTC)
        return [self._observed(record, now) for _, _, record in chosen[:limit]]

    async def cache_get(self, key: str) -> str | None:
        return self._cache.get(valid_text(key))

    async def cache_put(self, key: str, value: str) -> None:
        self._cache[valid_text(key)] = valid_text(value)

    async def cache_clear(self) -> int:
        count = len(self._cache)
        self._cache.clear()
        return count

    def _observed(self, record: RunRecord, now: datetime) -> RunRecord:
        """The run with its lease, as a reader sees it at ``now`` (`observed`)."""
        held = self._leases.get(record.run_id)
        if held is not None:
            record = record.model_copy(update={"lease": Lease.model_validate_json(held)})
        return observed(record, now)

    def _check_lease(self, run_id: str, token: str | None) -> None:
        """Refuse a write of a process whose lease (``token``) no longer holds the run."""
        self._require_run(run_id)
        if token is None:
            return
        held = self._leases.get(run_id)
        lease = None if held is None else Lease.model_validate_json(held)
        if lease is None or lease.token != token:
            raise LeaseLost(run_id, None if lease is None else lease.owner)

    def _require_run(self, run_id: str) -> None:
        if run_id not in self._runs:
            raise UnknownRunError(run_id)

    def _update_run(self, run_id: str, **changes: object) -> None:
        # Validated again, so that a bad value fails here as it would in the database.
        updated = RunRecord.model_validate({**self._load_run(run_id).model_dump(), **changes})
        sequence = self._runs[run_id][0]
        self._runs[run_id] = (sequence, json_text(updated))

    def _load_run(self, run_id: str) -> RunRecord:
        self._require_run(run_id)
        return RunRecord.model_validate_json(self._runs[run_id][1])
