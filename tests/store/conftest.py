"""Fixtures for the store tests: every behaviour test runs against each store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest

from crewflow.store import Lease, RunRecord, Store
from tests.stores import STORE_KINDS, made_store

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
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


@pytest.fixture(params=STORE_KINDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """Each store in turn, opened and closed around the test."""
    async with made_store(request.param, request, tmp_path) as made:
        yield made
