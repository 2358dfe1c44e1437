"""The package's public face: records, the `Store` ABC's defaults, the default path, imports."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import platformdirs
import pydantic
import pytest

import crewflow
import crewflow.store
from crewflow.llm._types import Usage
from crewflow.store import (
    AddedTaskRecord,
    AttemptRecord,
    OutputRow,
    RunRecord,
    RunStatus,
    SQLiteStore,
    Store,
    StoreError,
    TaskKind,
    default_store_path,
)
from crewflow.store._writer import Writer
from tests.store.conftest import at, run_record

REPO = Path(__file__).resolve().parents[2]


def test_all_lists_exactly_the_public_names() -> None:
    assert crewflow.store.PostgresStore.__module__ == "crewflow.store.postgres"  # loaded lazily
    public = {name for name in vars(crewflow.store) if not name.startswith("_")}
    modules = {"memory", "sqlite", "postgres", "TYPE_CHECKING"}
    assert set(crewflow.store.__all__) == public - modules


def test_the_store_keeps_the_runtimes_own_attempt_record() -> None:
    # One model per concept: what the runtime builds is what the store keeps and returns.
    assert crewflow.store.AttemptRecord is crewflow.AttemptRecord
    for gone in ("AttemptRow", "AttemptStatus", "UsageRecord"):
        assert not hasattr(crewflow.store, gone)


def finished(**changes: Any) -> AttemptRecord:
    """A completed first attempt of ``t``, one second long, with ``changes``."""
    data = {"task": "t", "number": 1, "start": at(0), "end": at(1), "duration": 1.0}
    return AttemptRecord.model_validate({**data, "status": "completed", **changes})


@pytest.mark.parametrize(
    "make",
    [
        lambda: RunRecord(run_id="r", crew="c", started=datetime(2026, 1, 1)),
        lambda: finished(start=datetime(2026, 1, 1)),
        lambda: finished(end=datetime(2026, 1, 1)),
        lambda: OutputRow(run_id="r", task="t", text="", finished_at=datetime(2026, 1, 1)),
        lambda: AddedTaskRecord(name="plan", added=datetime(2026, 1, 1)),
    ],
)
def test_records_refuse_datetimes_without_a_timezone(make: Any) -> None:
    with pytest.raises(pydantic.ValidationError, match="timezone"):
        make()


def test_records_refuse_unknown_fields_and_bad_statuses() -> None:
    with pytest.raises(pydantic.ValidationError):
        RunRecord(run_id="r", crew="c", started=at(0), api_key="sk-secret")  # type: ignore[call-arg]
    with pytest.raises(pydantic.ValidationError):
        finished(status="exploded")
    with pytest.raises(pydantic.ValidationError):
        finished(number=0)
    with pytest.raises(pydantic.ValidationError):
        finished(run_id="r")  # the run is the store call's argument, not the record's
    with pytest.raises(pydantic.ValidationError):
        finished(duration=-0.5)
    with pytest.raises(pydantic.ValidationError):
        finished(cache_hits=-1)
    with pytest.raises(pydantic.ValidationError):
        AddedTaskRecord.model_validate({"name": "plan", "added": at(0), "step": "guess"})
    with pytest.raises(pydantic.ValidationError):
        AddedTaskRecord(name="", added=at(0))


@pytest.mark.parametrize("missing", ["end", "duration"])
def test_an_attempt_record_is_a_finished_attempt(missing: str) -> None:
    data = finished().model_dump()
    del data[missing]

    with pytest.raises(pydantic.ValidationError, match=missing):
        AttemptRecord.model_validate(data)


def test_records_round_trip_through_json() -> None:
    records: list[pydantic.BaseModel] = [
        run_record().model_copy(update={"status": RunStatus.FAILED, "ended": at(9)}),
        run_record().model_copy(update={"usage": Usage(requests=1, cost=None), "paused": True}),
        finished(status="failed", usage=Usage(1, 2, 3, 0.1), cache_hits=2, details={"k": [1]}),
        OutputRow(run_id="r", task="t", text="ü", data={"a": [1, {"b": None}]}, finished_at=at(1)),
        AddedTaskRecord(name="ask.1", kind=TaskKind.DELIVERABLE, step="ask", added=at(2)),
    ]
    for record in records:
        assert type(record).model_validate_json(record.model_dump_json()) == record


class _Minimal(Store):
    """A store implementing only the abstract methods."""

    closed = False

    async def start_run(self, record: RunRecord) -> None: ...
    async def finish_run(self, *args: Any) -> None: ...
    async def record_attempt(self, run_id: str, attempt: AttemptRecord) -> None: ...
    async def save_output(self, row: OutputRow) -> None: ...
    async def get_run(self, run_id: str) -> RunRecord | None:
        return None

    async def outputs(self, run_id: str) -> dict[str, OutputRow]:
        return {}

    async def attempts(self, run_id: str) -> list[AttemptRecord]:
        return []

    async def list_runs(self, crew: str | None = None, limit: int | None = 20) -> list[RunRecord]:
        runs = [
            run_record("a", started=1, crew_key="k"),
            run_record("b", started=2, crew_key="other"),
            run_record("c", started=3, crew_key="k"),
        ]
        return runs[::-1][:limit]

    async def close(self) -> None:
        self.closed = True


async def test_a_store_without_a_cache_never_hits_and_closes_as_a_context_manager() -> None:
    async with _Minimal() as store:
        await store.cache_put("k", "v")
        assert await store.cache_get("k") is None
        assert await store.cache_clear() == 0
    assert store.closed


async def test_a_store_without_the_optional_methods_keeps_no_choice_pause_or_added_task() -> None:
    store = _Minimal()

    await store.record_choice("r", "parallel", "why")
    await store.record_pause("r")
    await store.add_tasks("r", [AddedTaskRecord(name="plan", added=at(0))])

    assert await store.added_tasks("r") == []
    with pytest.raises(StoreError, match="_Minimal cannot resume runs"):
        await store.reopen_run("r")


async def test_the_default_runs_of_key_filters_every_run_newest_first() -> None:
    store = _Minimal()

    assert [run.run_id for run in await store.runs_of_key("k")] == ["c", "a"]
    assert [run.run_id for run in await store.runs_of_key("k", limit=1)] == ["c"]
    assert await store.runs_of_key("nope") == []
    with pytest.raises(ValueError, match="limit must be at least 1"):
        await store.runs_of_key("k", limit=0)


def test_the_default_path_is_in_crewflow_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CREWFLOW_HOME", str(tmp_path / "home"))

    assert default_store_path() == tmp_path / "home" / "runs.db"
    assert SQLiteStore().path == tmp_path / "home" / "runs.db"
    assert not (tmp_path / "home").exists(), "computing the path creates nothing"


def test_without_crewflow_home_the_default_path_is_the_user_data_dir(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CREWFLOW_HOME", raising=False)

    expected = Path(platformdirs.user_data_dir("crewflow", appauthor=False)) / "runs.db"
    assert default_store_path() == expected


def test_importing_the_store_does_no_io(tmp_path: Path) -> None:
    home = tmp_path / "home"
    code = "import crewflow.store, sys; store = crewflow.store.SQLiteStore(); print(store.path)"
    env = {**os.environ, "CREWFLOW_HOME": str(home)}

    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True
    )

    assert done.stdout.strip() == str(home / "runs.db")
    assert not home.exists()


async def test_a_cancelled_save_output_still_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3

    entered, release = threading.Event(), threading.Event()

    class Pausing(sqlite3.Connection):
        def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
            if sql.startswith("INSERT OR REPLACE INTO outputs"):
                entered.set()
                release.wait(30)
            return super().execute(sql, *args)

    real_connect = sqlite3.connect
    monkeypatch.setattr(sqlite3, "connect", lambda *a, **k: real_connect(*a, factory=Pausing, **k))
    # The store's thread's path: a commit on the loop's own thread is synchronous, so no
    # cancellation can reach it halfway.
    monkeypatch.setattr(Writer, "_on_caller_thread", lambda self: False)
    store = SQLiteStore(tmp_path / "runs.db")
    await store.start_run(run_record())
    row = OutputRow(run_id="run-1", task="t", text="kept", finished_at=at(1))

    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as group:
            group.start_soon(store.save_output, row)
            await anyio.to_thread.run_sync(entered.wait)
            scope.cancel()
            release.set()

    assert scope.cancelled_caught
    assert await store.outputs("run-1") == {"t": row}
    await store.close()
