"""Batch records (``crewflow batch``), the same on every store: kept whole, in input order,
their statuses updated in one write, an id never reused."""

from __future__ import annotations

import pytest

from crewflow.exceptions import StoreError
from crewflow.store import BatchItem, BatchRecord, Store
from tests.store.conftest import at


def batch(batch_id: str = "batch-ü-1", size: int = 3) -> BatchRecord:
    return BatchRecord(
        batch_id=batch_id,
        crew="recherche",
        fingerprint="sha256:abc",
        inputs_hash="sha256:def",
        created=at(5),
        items=[BatchItem(index=i, run_id=f"run-{i}") for i in range(size)],
        details={"file": "/crews/research.py", "model": None, "nul": "a\x00b"},
    )


async def test_a_batch_reads_back_as_it_was_started_with_its_items_in_input_order(
    store: Store,
) -> None:
    started = batch(size=12)  # more than 9: ordered by number, not by text
    await store.start_batch(started)
    found = await store.get_batch("batch-ü-1")
    assert found is not None
    assert [item.index for item in found.items] == list(range(12))
    assert found.details["nul"] == "a\ufffdb"  # text rules hold for batches too
    assert found.model_copy(update={"details": started.details}) == started
    assert await store.get_batch("batch-2") is None


async def test_statuses_are_set_by_index_and_the_rest_stay_pending(store: Store) -> None:
    await store.start_batch(batch())
    await store.set_batch_status("batch-ü-1", {2: "failed", 0: "completed"})
    found = await store.get_batch("batch-ü-1")
    assert found is not None
    assert [(i.index, i.run_id, i.status) for i in found.items] == [
        (0, "run-0", "completed"),
        (1, "run-1", "pending"),
        (2, "run-2", "failed"),
    ]


async def test_a_batch_id_is_never_reused_and_the_first_batch_stays(store: Store) -> None:
    await store.start_batch(batch(size=2))
    with pytest.raises(StoreError, match="already in the store"):
        await store.start_batch(batch(size=5))
    found = await store.get_batch("batch-ü-1")
    assert found is not None
    assert len(found.items) == 2


async def test_a_status_for_an_unknown_batch_or_input_is_refused(store: Store) -> None:
    await store.start_batch(batch(size=1))
    with pytest.raises(StoreError, match="no input 7"):
        await store.set_batch_status("batch-ü-1", {7: "completed"})
    with pytest.raises(StoreError, match="no "):
        await store.set_batch_status("nope", {0: "completed"})
    with pytest.raises(ValueError, match="status"):
        await store.set_batch_status("batch-ü-1", {0: "done"})  # type: ignore[dict-item]
