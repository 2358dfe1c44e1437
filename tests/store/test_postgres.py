"""What `PostgresStore` does beyond the behaviour every store shares (`test_behaviour.py` and
`test_lease.py` run on it too): its schema matches SQLite's, URLs name it, its credentials show
nowhere, its lease fences writers on other connections, and a crew fails and resumes on it."""

from __future__ import annotations

import os
import sqlite3
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from crewflow import Agent, Crew, RetryPolicy, Task
from crewflow.exceptions import TaskFailed
from crewflow.store import (
    Lease,
    LeaseLost,
    LeaseOwner,
    OutputRow,
    RunStatus,
    SQLiteStore,
    StoreError,
    UnknownRunError,
    resolve_store,
)
from crewflow.store._base import _opened
from crewflow.store._pg_schema import ROW_ORDER
from crewflow.store._schema import MIGRATIONS
from crewflow.store.postgres import PostgresStore
from crewflow.testing import Error, FunctionLLM
from tests.store.conftest import at, run_record

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from crewflow.llm import LLMRequest

Schema = dict[str, tuple[frozenset[str], tuple[str, ...]]]
"""Each table's columns and primary key."""
PASSWORD = "pg-s3cret-canary"  # made up: the tests look for it


@pytest.fixture
def forget_opened() -> Iterator[None]:
    """Forget the stores `resolve_store` opens here (none of them connects)."""
    before = dict(_opened)
    yield
    _opened.clear()
    _opened.update(before)


async def _sqlite_schema(path: Path) -> Schema:
    async with SQLiteStore(path) as store:
        await store.schema_version()  # creates and migrates it
    with sqlite3.connect(path) as conn:
        tables = [
            row[0]
            for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        schema: Schema = {}
        for table in tables:
            info = conn.execute(f"PRAGMA table_info({table})").fetchall()
            key = tuple(row[1] for row in sorted(info, key=lambda row: row[5]) if row[5])
            schema[table] = (frozenset(row[1] for row in info), key)
    return schema


async def _postgres_schema(url: str) -> Schema:
    import psycopg

    store = PostgresStore(url)
    await store.schema_version()
    await store.close()
    async with await psycopg.AsyncConnection.connect(url) as conn:
        columns = await (
            await conn.execute(
                "SELECT table_name, column_name FROM information_schema.columns "
                "WHERE table_schema = 'public'"
            )
        ).fetchall()
        keys = await (
            await conn.execute(
                "SELECT tc.table_name, kcu.column_name "
                "FROM information_schema.table_constraints tc "
                "JOIN information_schema.key_column_usage kcu "
                "USING (constraint_schema, constraint_name) "
                "WHERE tc.constraint_type = 'PRIMARY KEY' AND tc.table_schema = 'public' "
                "ORDER BY kcu.ordinal_position"
            )
        ).fetchall()
    schema: Schema = {}
    for table in {table for table, _ in columns}:
        names = frozenset(name for t, name in columns if t == table and name != ROW_ORDER)
        schema[table] = (names, tuple(name for t, name in keys if t == table))
    return schema


async def test_both_backends_hold_the_same_logical_schema_at_the_same_version(
    postgres_url: str, tmp_path: Path
) -> None:
    sqlite = await _sqlite_schema(tmp_path / "runs.db")
    postgres = await _postgres_schema(postgres_url)

    assert postgres == sqlite
    assert "decisions" in postgres  # version 8's table
    assert "batch_items" in postgres  # version 9's, applied after the baseline
    async with PostgresStore(postgres_url) as store:
        assert await store.schema_version() == len(MIGRATIONS)


@pytest.mark.usefixtures("forget_opened")
def test_store_settings_are_parsed_by_url_scheme(tmp_path: Path) -> None:
    for url in ("postgresql://u@h/db", "postgres://u@h/db"):
        found = resolve_store(url)
        assert isinstance(found, PostgresStore)
        assert resolve_store(url) is found  # one store per URL in a process
    by_url = resolve_store(f"sqlite:///{tmp_path}/a.db")
    assert isinstance(by_url, SQLiteStore)
    assert by_url.path == tmp_path / "a.db"
    assert isinstance(resolve_store(str(tmp_path / "b.db")), SQLiteStore)
    with pytest.raises(ValueError, match=r"not a mysql:// URL"):
        resolve_store("mysql://u@h/db")
    with pytest.raises(ValueError, match=r"postgresql:// URL"):
        Crew(tasks=[Task("t", agent=Agent(role="r", goal="g"))], store=42)


@pytest.mark.usefixtures("forget_opened")
def test_crewflow_store_names_the_default_store(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CREWFLOW_STORE", f"postgresql://u:{PASSWORD}@h/db")
    found = resolve_store("default")
    assert isinstance(found, PostgresStore)
    assert repr(found) == "PostgresStore('postgresql://h/db')"


async def test_no_error_shows_the_urls_password() -> None:
    with anyio.move_on_after(60):  # a closed loopback port refuses at once
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        store = PostgresStore(
            f"postgresql://crew:{PASSWORD}@127.0.0.1:{port}/db?password={PASSWORD}"
        )
        with pytest.raises(StoreError) as failed:
            await store.get_run("r")
    error = failed.value
    shown = f"{error} {error!r} {store!r} {store.url}"
    assert PASSWORD not in shown
    assert f"127.0.0.1:{port}" in str(error)
    assert (error.__cause__, error.__suppress_context__) == (None, True)


def _row(run_id: str, task: str) -> OutputRow:
    return OutputRow(run_id=run_id, task=task, text=task, agent="a", model="m", finished_at=at(1))


async def test_a_take_over_on_another_connection_fences_the_old_writer(postgres_url: str) -> None:
    old, new = PostgresStore(postgres_url), PostgresStore(postgres_url)
    record = run_record()
    assert record.lease is not None
    await old.start_run(record)
    await old.save_output(_row(record.run_id, "a"), lease=record.lease.token)

    taking = Lease.new()
    assert await new.take_lease(record.run_id, taking, replacing=record.lease.token)
    with pytest.raises(LeaseLost) as lost:
        await old.save_output(_row(record.run_id, "b"), lease=record.lease.token)
    assert lost.value.owner == taking.owner
    assert not await old.renew_lease(record.run_id, record.lease.token, at(100))
    await new.save_output(_row(record.run_id, "c"), lease=taking.token)

    assert list(await old.outputs(record.run_id)) == ["a", "c"]
    await old.close()
    await new.close()


async def test_of_two_take_overs_of_one_lapsed_lease_one_wins(postgres_url: str) -> None:
    stores = [PostgresStore(postgres_url) for _ in range(4)]
    dead = Lease(
        token="dead",
        owner=LeaseOwner(host="elsewhere", pid=1),
        expires=datetime.now(UTC) - timedelta(seconds=1),
    )
    await stores[0].start_run(run_record().model_copy(update={"lease": dead}))
    won: list[bool] = []

    async def take(store: PostgresStore) -> None:
        won.append(await store.take_lease("run-1", Lease.new(), replacing="dead"))

    async with anyio.create_task_group() as group:
        for store in stores:
            group.start_soon(take, store)

    assert sorted(won) == [False, False, False, True]
    for store in stores:
        await store.close()


@pytest.fixture
def batches(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The task checkpoints of each commit, in order (the tasks' names)."""
    found: list[list[str]] = []
    commit = PostgresStore._commit

    async def noted(self: PostgresStore, conn: Any, batch: list[Any]) -> None:
        found.append([checkpoint.rows.output[1] for checkpoint in batch])
        await commit(self, conn, batch)

    monkeypatch.setattr(PostgresStore, "_commit", noted)
    return found


async def test_checkpoints_that_come_while_one_commits_are_committed_together(
    postgres_url: str, batches: list[list[str]]
) -> None:
    async with PostgresStore(postgres_url) as store:
        record = run_record()
        assert record.lease is not None
        await store.start_run(record)
        batches.clear()

        async with anyio.create_task_group() as group:
            for index in range(50):
                group.start_soon(
                    lambda i=index: store.save_task(
                        _row(record.run_id, f"t{i}"), lease=record.lease.token
                    )
                )

        # The first commits alone; the 49 that came meanwhile, in the next transaction.
        assert [len(batch) for batch in batches] == [1, 49]
        assert len(await store.outputs(record.run_id)) == 50


async def test_each_checkpoint_of_a_shared_commit_is_fenced_by_its_own_lease(
    postgres_url: str, batches: list[list[str]]
) -> None:
    async with PostgresStore(postgres_url) as store, PostgresStore(postgres_url) as other:
        mine, taken = run_record("mine"), run_record("taken")
        assert mine.lease is not None
        assert taken.lease is not None
        await store.start_run(mine)
        await store.start_run(taken)
        assert await other.take_lease("taken", Lease.new(), replacing=taken.lease.token)
        batches.clear()
        refused: dict[str, type[Exception]] = {}

        async def save(run_id: str, task: str, token: str | None) -> None:
            try:
                await store.save_task(_row(run_id, task), lease=token)
            except (LeaseLost, UnknownRunError) as exc:
                refused[task] = type(exc)

        async with anyio.create_task_group() as group:
            group.start_soon(save, "mine", "first", mine.lease.token)
            group.start_soon(save, "taken", "lost", taken.lease.token)
            group.start_soon(save, "ghost", "unknown", None)
            group.start_soon(save, "mine", "second", mine.lease.token)
            group.start_soon(save, "taken", "unchecked", None)

        assert batches == [["first"], ["lost", "unknown", "second", "unchecked"]]
        assert refused == {"lost": LeaseLost, "unknown": UnknownRunError}
        assert list(await store.outputs("mine")) == ["first", "second"]
        assert list(await store.outputs("taken")) == ["unchecked"]


async def test_version_moves_when_another_connection_commits_and_only_then(
    postgres_url: str,
) -> None:
    reader, writer = PostgresStore(postgres_url), PostgresStore(postgres_url)
    before = await reader.version()
    assert await reader.version() == before
    await reader.list_runs()
    assert await reader.version() == before  # reading moves nothing
    await writer.start_run(run_record())
    assert await reader.version() != before
    await reader.close()
    await writer.close()


async def test_a_crew_fails_and_resumes_from_its_checkpoints_in_postgresql(
    postgres_url: str,
) -> None:
    broken = {"on": True}
    asked: list[str] = []

    def answer(request: LLMRequest) -> object:
        prompt = request.messages[-1].content
        asked.append("second" if "second" in prompt else "first")
        if "second" in prompt and broken["on"]:
            return Error(400, "no")
        return f"{asked[-1]} done \x00 \ud800"  # text PostgreSQL cannot hold as it is

    agent = Agent(role="Worker", goal="Work", llm=FunctionLLM(answer))
    tasks = [Task("first", agent=agent, name="first"), Task("second", agent=agent, name="second")]
    crew = Crew(tasks=tasks, store=postgres_url, retry=RetryPolicy(max_attempts=1))
    store = crew.resolved_store()
    assert isinstance(store, PostgresStore)
    try:
        with pytest.raises(TaskFailed) as failed:
            await crew.kickoff()
        run_id = failed.value.run_id
        assert run_id is not None
        assert (await store.get_run(run_id)).status == RunStatus.FAILED  # type: ignore[union-attr]
        broken["on"] = False

        result = await crew.resume(run_id)

        assert result.restored == ["first"]
        assert asked == ["first", "second", "second"]  # the first task was not sent again
        run = await store.get_run(run_id)
        assert run is not None
        assert (run.status, run.resumed, run.lease) == (RunStatus.COMPLETED, 1, None)
        outputs = await store.outputs(run_id)
        assert outputs["second"].text == "second done \ufffd \ufffd"
        attempts = await store.attempts(run_id)
        assert [(a.task, a.status.value) for a in attempts] == [
            ("first", "completed"),
            ("second", "failed"),
            ("second", "completed"),
        ]
    finally:
        await store.close()
        _opened.pop(postgres_url, None)


def test_the_password_never_reaches_the_environment_of_a_test() -> None:
    assert PASSWORD not in os.environ.get("CREWFLOW_STORE", "")


@pytest.mark.parametrize("columns", [60, 80, 120])
def test_runs_and_show_read_a_postgresql_database_and_show_no_password(
    postgres_url: str, columns: int
) -> None:
    from typer.testing import CliRunner

    from crewflow import cli
    from tests.stores import close_default_stores

    # The test server trusts loopback: the password is sent nowhere, only looked for.
    url = postgres_url.replace("postgres@", f"postgres:{PASSWORD}@", 1)
    agent = Agent(role="Worker", goal="Work", llm=FunctionLLM(lambda request: "all done"))
    crew = Crew(tasks=[Task("first", agent=agent, name="first")], store=url)
    run_id = crew.kickoff_sync().run_id
    close_default_stores()
    env = {"COLUMNS": str(columns)}

    runs = CliRunner().invoke(cli.app, ["runs", "--db", url], env=env)
    show = CliRunner().invoke(cli.app, ["show", run_id[:8], "--db", url], env=env)
    missing = CliRunner().invoke(cli.app, ["show", "nope-nope", "--db", url], env=env)

    assert (runs.exit_code, show.exit_code) == (0, 0), runs.output + show.output
    assert run_id[:8] in runs.output
    assert "all done" in show.output
    assert missing.exit_code != 0
    for result in (runs, show, missing):
        assert result.exception is None or isinstance(result.exception, SystemExit)
        assert PASSWORD not in result.output


@pytest.mark.parametrize("columns", [60, 80, 120])
def test_a_store_url_of_an_unknown_scheme_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, columns: int
) -> None:
    from typer.testing import CliRunner

    from crewflow import cli

    env = {"COLUMNS": str(columns)}
    given = CliRunner().invoke(cli.app, ["runs", "--db", "mysql://u@h/db"], env=env)
    monkeypatch.setenv("CREWFLOW_STORE", "mysql://u@h/db")
    from_env = CliRunner().invoke(cli.app, ["runs"], env=env)

    for result in (given, from_env):
        assert result.exit_code == 2
        assert isinstance(result.exception, SystemExit)
        assert "mysql" in " ".join(result.output.split())
    assert "CREWFLOW_STORE" in " ".join(from_env.output.split())


def test_a_store_used_from_one_event_loop_after_another_leaves_no_connection_open(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `kickoff_sync` and `anyio.run` make a loop per call: each loop's connection is closed once
    # that loop is gone, not left to the garbage collector (a ResourceWarning, and a server
    # connection held until then).
    import gc

    import psycopg

    opened: list[psycopg.AsyncConnection[Any]] = []
    connect = psycopg.AsyncConnection.connect

    async def noted(*args: Any, **kwargs: Any) -> psycopg.AsyncConnection[Any]:
        conn = await connect(*args, **kwargs)
        opened.append(conn)
        return conn

    monkeypatch.setattr(psycopg.AsyncConnection, "connect", noted)
    store = PostgresStore(postgres_url)

    async def use() -> None:
        await store.cache_put("key", "value")

    for _ in range(3):
        anyio.run(use)
    assert opened[0].closed  # closed when the next loop connected, whatever the collector did
    assert opened[1].closed
    gc.collect()

    assert len(opened) == 3
    assert all(conn.closed for conn in opened)
