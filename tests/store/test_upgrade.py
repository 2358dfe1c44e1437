"""A run database written by an older crewflow opens, migrates forward, and its runs resume.

``fixtures/runs_v3.db`` was written at schema v3 by ``fixtures/make_runs_v3.py``: a completed run
and a run whose second task failed. Every later schema change extends this test: v4 (the
columns read as "not recorded then"), v5 (run leases: runs hold none, and a run an older
crewflow left ``running`` reads as interrupted, and resumes), v9 (batches: none, and a new one
is kept). Opened read-only, it is not
migrated, and says so.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from crewflow import Agent, Crew, Task
from crewflow._records import RunStatus, TaskStatus
from crewflow.exceptions import CrewChange, CrewChanged
from crewflow.store import BatchItem, BatchRecord, SchemaVersionError, SQLiteStore
from crewflow.store._schema import MIGRATIONS
from crewflow.testing import FunctionLLM

FIXTURE = Path(__file__).parent / "fixtures" / "runs_v3.db"
COMPLETED = "cec061d10ac24096a09f1dd4cfff9e25"
FAILED = "a5dbb0b1afcb4bc29896aad551ee935b"


def v3_database(tmp_path: Path) -> Path:
    path = tmp_path / "runs.db"
    shutil.copy(FIXTURE, path)
    return path


def upgrade_crew(path: Path, calls: list[str], **changes: Any) -> Crew:
    """The crew that recorded the fixture, as `make_runs_v3.py` built it (``changes``: to its
    second task)."""

    def facts(request: object) -> str:
        calls.append("facts")
        return "three facts about tides"

    def draft(request: object) -> str:
        calls.append("draft")
        return "a draft"

    researcher = Agent(
        role="Researcher", goal="Find facts", llm=FunctionLLM(facts, model="fn/facts")
    )
    writer = Agent(role="Writer", goal="Write", llm=FunctionLLM(draft, model="fn/draft"))
    return Crew(
        tasks=[
            Task("Collect facts about {topic}", agent=researcher, name="facts"),
            Task(changes.pop("description", "Write it up"), agent=writer, name="draft", **changes),
        ],
        name="upgrade",
        store=path,
    )


async def test_a_v3_database_migrates_to_the_current_schema_keeping_its_records(
    tmp_path: Path,
) -> None:
    async with SQLiteStore(v3_database(tmp_path)) as store:
        assert await store.schema_version() == len(MIGRATIONS) == 9
        runs = await store.list_runs()
        attempts = await store.attempts(FAILED)
        outputs = await store.outputs(FAILED)
        added = await store.added_tasks(FAILED)
        prompts = await store.prompts(FAILED)
        assert await store.decisions(FAILED) == []
        assert await store.get_batch("b-1") is None
        batch = BatchRecord(
            batch_id="b-1",
            crew="upgrade",
            inputs_hash="h",
            created=datetime(2026, 3, 1, tzinfo=UTC),
            items=[BatchItem(index=0, run_id=COMPLETED, status="completed")],
        )
        await store.start_batch(batch)
        assert await store.get_batch("b-1") == batch

    assert [(run.run_id, run.status) for run in runs] == [
        (FAILED, "failed"),
        (COMPLETED, "completed"),
    ]
    failed = runs[0]
    # Columns added since v3 read as "not recorded then".
    assert (failed.crew_key, failed.task_hashes, failed.chosen, failed.paused) == (
        "",
        {},
        None,
        False,
    )
    assert failed.details == {}
    assert [run.lease for run in runs] == [None, None]  # ended runs hold no lease
    assert [(a.task, a.number, a.status, a.cache_hits) for a in attempts] == [
        ("facts", 1, TaskStatus.COMPLETED, 0),
        ("draft", 1, TaskStatus.FAILED, 0),
    ]
    # An attempt's duration, not kept by v3, comes from its start and end.
    assert all(a.duration == (a.end - a.start).total_seconds() for a in attempts)
    # Tool calls and prompts were not recorded then: none, in the attempts' details column.
    assert [(a.tool_calls, a.prompts, a.details) for a in attempts] == [((), (), {})] * 2
    assert [a.calls for a in attempts] == [(), ()]  # nor calls: an empty table
    assert prompts == {}
    assert attempts[1].error == "fn/draft: HTTP 400: the writer is out"
    assert list(outputs) == ["facts"]
    assert added == []


async def test_a_run_recorded_at_v3_resumes_with_the_same_crew(tmp_path: Path) -> None:
    path = v3_database(tmp_path)
    calls: list[str] = []
    crew = upgrade_crew(path, calls)

    result = await crew.resume(FAILED)

    assert calls == ["draft"]  # facts was finished under v3: restored, not redone
    assert result.restored == ["facts"]
    assert [o.text for o in result.outputs] == ["three facts about tides", "a draft"]
    async with SQLiteStore(path) as store:
        record = await store.get_run(FAILED)
        attempts = await store.attempts(FAILED)
        prompts = await store.prompts(FAILED)
    assert record is not None
    assert (record.status, record.resumed) == ("completed", 1)
    assert [(a.task, a.number, a.status) for a in attempts] == [
        ("facts", 1, "completed"),
        ("draft", 1, "failed"),
        ("draft", 2, "completed"),
    ]
    # The new attempt records its prompts next to the attempts recorded at v3.
    (sent,) = prompts[("draft", 2)]
    assert sent.reply is not None
    assert sent.reply.content == "a draft"
    assert list(prompts) == [("draft", 2)]


def left_running(path: Path, run_id: str) -> None:
    """Mark a run of the v3 database as running, as a crewflow killed mid-run left it."""
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE runs SET status = 'running', ended = NULL WHERE run_id = ?", (run_id,))
    conn.close()


async def test_a_run_an_older_crewflow_left_running_reads_as_interrupted(tmp_path: Path) -> None:
    path = v3_database(tmp_path)
    left_running(path, FAILED)

    async with SQLiteStore(path) as store:
        record = await store.get_run(FAILED)
        (listed,) = [run for run in await store.list_runs() if run.run_id == FAILED]

    # Nothing can be executing it: a crewflow that executes a run holds a lease on it.
    assert record is not None
    assert (record.status, record.lease) == (RunStatus.INTERRUPTED, None)
    assert listed.status == RunStatus.INTERRUPTED


async def test_a_run_an_older_crewflow_left_running_resumes_and_releases_its_lease(
    tmp_path: Path,
) -> None:
    path = v3_database(tmp_path)
    left_running(path, FAILED)
    calls: list[str] = []

    result = await upgrade_crew(path, calls).resume(FAILED)

    assert calls == ["draft"]
    assert result.restored == ["facts"]
    async with SQLiteStore(path) as store:
        record = await store.get_run(FAILED)
    assert record is not None
    assert (record.status, record.resumed, record.lease) == ("completed", 1, None)


async def test_a_run_recorded_at_v3_refused_says_what_its_record_can_tell(tmp_path: Path) -> None:
    path = v3_database(tmp_path)

    # v3 kept the graph, not a hash per task: a dependency change is named, with the tasks...
    with pytest.raises(CrewChanged) as rewired:
        await upgrade_crew(path, [], context=[]).resume(FAILED)
    # ...any other change only said to be one of them.
    with pytest.raises(CrewChanged) as reworded:
        await upgrade_crew(path, [], description="Write it up again").resume(FAILED)

    assert rewired.value.changes == [
        CrewChange("changed", "draft", ("dependencies",), "it depends on [] instead of ['facts']")
    ]
    assert [(c.kind, c.task) for c in reworded.value.changes] == [("changed", None)]
    assert str(reworded.value.changes[0]).startswith("a task's description, expected output")


async def test_a_v3_database_opened_read_only_is_not_migrated_and_says_why(
    tmp_path: Path,
) -> None:
    path = v3_database(tmp_path)
    before = path.read_bytes()

    store = SQLiteStore(path, read_only=True)
    with pytest.raises(SchemaVersionError, match="older than this crewflow's 9") as caught:
        await store.list_runs()
    await store.close()

    assert (caught.value.found, caught.value.supported) == (3, len(MIGRATIONS))
    assert "open it writable once" in str(caught.value)
    assert path.read_bytes() == before


def test_crewflow_runs_upgrades_a_v3_database_it_may_write(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from crewflow import cli

    path = v3_database(tmp_path)

    result = CliRunner().invoke(cli.app, ["runs", "--json", "--db", str(path)])

    assert result.exit_code == 0, result.output
    assert {run["run_id"] for run in json.loads(result.stdout)} == {COMPLETED, FAILED}
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT MAX(version) FROM schema_version").fetchone() == (9,)
    conn.close()
