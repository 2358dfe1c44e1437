"""`MemoryStore`: the store's behaviour in a dict, for tests and runs that need no file."""

from __future__ import annotations

from typing import TYPE_CHECKING

from crewflow.store._base import DuplicateRunError, Store, UnknownRunError, check_limit
from crewflow.store._records import AttemptRow, OutputRow, RunRecord, RunStatus, UsageRecord

if TYPE_CHECKING:
    from collections.abc import Sequence
    from datetime import datetime

    from crewflow.llm._types import Usage

__all__ = ["MemoryStore"]


class MemoryStore(Store):
    """Keeps records in memory, for one process; behaves like `SQLiteStore` otherwise.

    Records are kept as JSON text, exactly as a database would keep them, so a round trip
    through this store changes a record the same way (e.g. a named time zone becomes its offset)
    and a record that JSON cannot hold fails here too. Every method runs without awaiting, so
    each is atomic on the event loop.

    Example:
        ```python
        store = MemoryStore()
        crew = Crew(tasks=[...], store=store)
        ```
    """

    def __init__(self) -> None:
        self._runs: dict[str, tuple[int, str]] = {}
        self._attempts: dict[tuple[str, str, int], str] = {}
        self._outputs: dict[tuple[str, str], str] = {}
        self._cache: dict[str, str] = {}
        self._sequence = 0

    async def start_run(self, record: RunRecord) -> None:
        if record.run_id in self._runs:
            raise DuplicateRunError(record.run_id)
        self._sequence += 1
        self._runs[record.run_id] = (self._sequence, record.model_dump_json())

    async def finish_run(
        self,
        run_id: str,
        status: RunStatus,
        ended: datetime,
        usage: Usage | UsageRecord,
    ) -> None:
        current = self._load_run(run_id)
        updated = RunRecord.model_validate(
            {
                **current.model_dump(),
                "status": RunStatus(status),
                "ended": ended,
                "usage": UsageRecord.from_usage(usage),
            }
        )
        sequence = self._runs[run_id][0]
        self._runs[run_id] = (sequence, updated.model_dump_json())

    async def reopen_run(self, run_id: str) -> None:
        current = self._load_run(run_id)
        updated = current.model_copy(
            update={"status": RunStatus.RUNNING, "ended": None, "resumed": current.resumed + 1}
        )
        sequence = self._runs[run_id][0]
        self._runs[run_id] = (sequence, updated.model_dump_json())

    async def record_attempt(self, row: AttemptRow) -> None:
        self._require_run(row.run_id)
        self._attempts[(row.run_id, row.task, row.attempt)] = row.model_dump_json()

    async def save_output(self, row: OutputRow) -> None:
        self._require_run(row.run_id)
        key = (row.run_id, row.task)
        # A saved-again output counts as finishing now, as in the database.
        self._outputs.pop(key, None)
        self._outputs[key] = row.model_dump_json()

    async def save_task(self, output: OutputRow, attempts: Sequence[AttemptRow] = ()) -> None:
        # All or nothing, as one transaction in the database.
        for run_id in {output.run_id, *(row.run_id for row in attempts)}:
            self._require_run(run_id)
        for row in attempts:
            await self.record_attempt(row)
        await self.save_output(output)

    async def get_run(self, run_id: str) -> RunRecord | None:
        if run_id not in self._runs:
            return None
        return self._load_run(run_id)

    async def outputs(self, run_id: str) -> dict[str, OutputRow]:
        rows = [
            OutputRow.model_validate_json(text)
            for (run, _), text in self._outputs.items()
            if run == run_id
        ]
        rows.sort(key=lambda row: row.finished_at.timestamp())
        return {row.task: row for row in rows}

    async def attempts(self, run_id: str) -> list[AttemptRow]:
        rows = [
            AttemptRow.model_validate_json(text)
            for (run, _, _), text in self._attempts.items()
            if run == run_id
        ]
        rows.sort(key=lambda row: (row.start.timestamp(), row.task, row.attempt))
        return rows

    async def list_runs(self, crew: str | None = None, limit: int | None = 20) -> list[RunRecord]:
        check_limit(limit)
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
        return [record for _, _, record in chosen[:limit]]

    async def cache_get(self, key: str) -> str | None:
        return self._cache.get(key)

    async def cache_put(self, key: str, value: str) -> None:
        self._cache[key] = value

    async def cache_clear(self) -> int:
        count = len(self._cache)
        self._cache.clear()
        return count

    def _require_run(self, run_id: str) -> None:
        if run_id not in self._runs:
            raise UnknownRunError(run_id)

    def _load_run(self, run_id: str) -> RunRecord:
        self._require_run(run_id)
        return RunRecord.model_validate_json(self._runs[run_id][1])
