"""Fixtures for the store tests: every behaviour test runs against each store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest

from crewflow.store import Lease, MemoryStore, RunRecord, SQLiteStore, Store
from tests import postgres

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    """A UTC datetime ``seconds`` after a fixed start."""
    return T0 + timedelta(seconds=seconds)


def run_record(
    run_id: str = "run-1", *, crew: str = "research", started: float = 0, crew_key: str = ""
) -> RunRecord:
    """A minimal running run record, held by this process (as a run being executed is)."""
    return RunRecord(
        run_id=run_id, crew=crew, crew_key=crew_key, started=at(started), lease=Lease.new()
    )


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The URL of a PostgreSQL server made for this test run (`tests.postgres`)."""
    with postgres.server() as url:
        yield url


@pytest.fixture
def postgres_url(request: pytest.FixtureRequest) -> str:
    """The URL of a new, empty database on the test run's PostgreSQL server."""
    server: str = request.getfixturevalue("postgres_server")
    return postgres.fresh_database(server)


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """Each store in turn, opened and closed around the test."""
    made: Store
    if request.param == "memory":
        made = MemoryStore()
    elif request.param == "sqlite":
        made = SQLiteStore(tmp_path / "runs.db")
    else:
        from crewflow.store.postgres import PostgresStore

        made = PostgresStore(request.getfixturevalue("postgres_url"))
    async with made:
        yield made
