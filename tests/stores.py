"""Test support: each kind of store for the tests that run on all of them, and closing the
stores crews opened through ``store="default"``, a path or a URL."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio

from crewflow.store import MemoryStore, SQLiteStore, Store
from crewflow.store._base import _opened

if TYPE_CHECKING:
    from pathlib import Path

    import pytest

#: The stores every store-backed behaviour is checked on (PostgreSQL on `tests.postgres`'s
#: server: skipped where none is installed, required in CI).
STORE_KINDS = ["memory", "sqlite", "postgres"]


def store_name(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """What a crew's ``store=`` names for a kind of store kept outside the process: a SQLite
    path, or the URL of a new PostgreSQL database (requested only then: the server starts
    once, for the first test that needs it)."""
    if kind == "postgres":
        url: str = request.getfixturevalue("postgres_url")
        return url
    assert kind == "sqlite", kind
    return str(tmp_path / "runs.db")


def made_store(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    """A new, empty store of ``kind`` (one of `STORE_KINDS`), not yet opened."""
    if kind == "memory":
        return MemoryStore()
    if kind == "sqlite":
        return SQLiteStore(tmp_path / "runs.db")
    from crewflow.store.postgres import PostgresStore

    return PostgresStore(store_name(kind, request, tmp_path))


def close_default_stores() -> None:
    """Close and forget every store `crewflow.store.resolve_store` opened (outside any loop)."""
    stores = list(_opened.values())
    _opened.clear()

    async def close_all() -> None:
        for store in stores:
            await store.close()

    if stores:
        anyio.run(close_all)
