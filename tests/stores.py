"""Test support: close the SQLite stores crews opened through ``store="default"`` or a path."""

from __future__ import annotations

import anyio

from crewflow.store._base import _opened


def close_default_stores() -> None:
    """Close and forget every store `crewflow.store.resolve_store` opened (outside any loop)."""
    stores = list(_opened.values())
    _opened.clear()

    async def close_all() -> None:
        for store in stores:
            await store.close()

    if stores:
        anyio.run(close_all)
