"""Any text in any stored field (lone surrogates, NUL, any code point, big strings) is stored:
read back as valid UTF-8 without NUL (U+FFFD in their place), on every store, and the store
stays usable. Bytes where text belongs fail cleanly, at the record."""

from __future__ import annotations

import itertools
import os
import sqlite3
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from crewflow._text import valid_json, valid_text
from crewflow.llm._types import Message, ToolCall, Usage
from crewflow.store import (
    AddedTaskRecord,
    AttemptRecord,
    CallRecord,
    Lease,
    OutputRow,
    PromptRecord,
    RunRecord,
    RunSource,
    RunStatus,
    SQLiteStore,
    Store,
    TaskKind,
    TaskStatus,
    ToolCallRecord,
)
from crewflow.store._writer import Writer
from tests.store.conftest import at
from tests.stores import STORE_KINDS, made_store

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

# Every code point, surrogates included (hypothesis leaves them out unless told).
_ANY = st.characters(codec=None, exclude_categories=())
TEXTS = st.one_of(
    st.text(_ANY, max_size=20),
    st.sampled_from(["\x00", "\ud800", "a\udfffb", "\x00\ud83d\ude00\ud83d", "\\u0000"]),
    st.builds(
        lambda piece, n: piece * n, st.text(_ANY, min_size=1, max_size=3), st.integers(1, 3_000)
    ),
)
KEYS = st.text(_ANY, max_size=8)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | TEXTS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3),
    max_leaves=8,
)
# CREWFLOW_FUZZ_EXAMPLES=1000 for a longer hunt, as in tests/test_fuzz.py.
FUZZ = settings(
    max_examples=int(os.environ.get("CREWFLOW_FUZZ_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
_runs = itertools.count()
_M = TypeVar("_M", bound=BaseModel)


@pytest.fixture(params=[*STORE_KINDS, "sqlite-thread"])
def store(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Store]:
    """One store for every example of a test (each example writes its own run). SQLite's writes
    commit on the loop's thread, or (``sqlite-thread``) all in the store's thread."""
    kind = request.param
    if kind == "sqlite-thread":
        monkeypatch.setattr(Writer, "_on_caller_thread", lambda self: False)
        kind = "sqlite"
    made = made_store(kind, request, tmp_path)
    yield made
    anyio.run(made.close)


def strings(value: Any) -> Iterator[str]:
    """Every string in ``value`` (records, and the lists and dicts that hold them), keys
    included (a record's dump turns the messages in it into dicts too)."""
    if isinstance(value, BaseModel):
        value = value.model_dump()
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from strings(key)
            yield from strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from strings(item)


def assert_valid(*values: Any) -> None:
    for text in (found for value in values for found in strings(value)):
        text.encode("utf-8")  # raises on a lone surrogate
        assert "\x00" not in text


def built(model: type[_M], /, **fields: Any) -> _M:
    """``model(**fields)``. A field with a length bound (a run id, a task's name) refuses a lone
    surrogate at the record, a clean error: then the record is built with the text repaired."""
    try:
        return model(**fields)
    except ValidationError:
        assert any(valid_text(text) is not text for text in strings(fields))
        return model(**{name: valid_json(value) for name, value in fields.items()})


def assert_usable(store: Store) -> None:
    async def use() -> None:
        await store.cache_put("usable", "yes")
        assert await store.cache_get("usable") == "yes"

    anyio.run(use)
    if isinstance(store, SQLiteStore):
        other = sqlite3.connect(store.path, timeout=0, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            other.execute("ROLLBACK")
        finally:
            other.close()


@FUZZ
@given(data=st.data())
def test_any_text_in_any_field_is_read_back_valid_and_the_store_stays_usable(
    store: Store, data: st.DataObject
) -> None:
    def text() -> str:
        return data.draw(TEXTS)

    def json() -> Any:
        return data.draw(JSON)

    run_id = f"{next(_runs)}-{data.draw(KEYS)}"
    run = built(
        RunRecord,
        run_id=run_id,
        crew=text(),
        fingerprint=text(),
        crew_key=text(),
        task_hashes={text(): text()},
        process_config={text(): json()},
        source=RunSource(file=text(), attribute=text()),
        process=text(),
        chosen=text(),
        process_reason=text(),
        inputs={text(): json()},
        started=at(0),
        graph={text(): [text()]},
        details={text(): json()},
        lease=Lease.new().model_copy(update={"running": (text(), text())}),
    )
    added = built(
        AddedTaskRecord,
        name=text() or "n",
        kind=TaskKind.INTERNAL,
        agent=text(),
        depends_on=[text()],
        spec_hash=text(),
        added=at(1),
    )
    task = text()
    call = ToolCall(id=text(), name=text(), arguments=text())
    prompt = PromptRecord(
        messages=(
            Message("user", text()),
            Message("tool", text(), tool_call_id=text(), name=text()),
        ),
        reply=Message("assistant", text(), (call,)),
        tools=(text(),),
        output=text(),
        error=text(),
    )
    attempt = AttemptRecord(
        task=task,
        number=1,
        agent=text(),
        start=at(1),
        end=at(2),
        duration=1.0,
        status=TaskStatus.FAILED,
        error_type=text(),
        error=text(),
        model=text(),
        limit_waits={text(): 0.5},
        details={text(): json()},
        tool_calls=(
            ToolCallRecord(tool=text(), ok=False, duration=0.1, error_type=text(), error=text()),
        ),
        calls=(CallRecord(start=0.0, end=0.5, outcome="failed", status_code=500),),
        prompts=(prompt,),
    )
    output = built(
        OutputRow,
        run_id=run.run_id,
        task=task,
        text=text(),
        data=json(),
        agent=text(),
        model=text(),
        finished_at=at(3),
    )
    key, value = text(), text()
    process, reason, choice = text(), text(), {text(): json()}

    async def write_and_read() -> list[Any]:
        await store.start_run(run)
        await store.add_tasks(run_id, [added])
        await store.record_attempt(run_id, attempt)
        await store.save_task(output, [attempt.model_copy(update={"number": 2})])
        await store.record_choice(run_id, process, reason, choice)
        await store.cache_put(key, value)
        await store.finish_run(run_id, RunStatus.COMPLETED, at(4), Usage())
        return [
            await store.get_run(run_id),
            await store.outputs(run_id),
            await store.attempts(run_id),
            await store.prompts(run_id),
            await store.added_tasks(run_id),
            await store.list_runs(limit=1),
            await store.cache_get(key),
        ]

    found = anyio.run(write_and_read)

    assert_valid(*found)
    got, outputs, attempts, prompts, tasks, _, cached = found
    assert got is not None
    assert got.status is RunStatus.COMPLETED
    assert got.crew == valid_text(run.crew)
    assert (got.chosen, got.process_reason) == (valid_text(process), valid_text(reason))
    assert [row.text for row in outputs.values()] == [valid_text(output.text)]
    assert [a.number for a in attempts] == [1, 2]
    assert attempts[0].error == valid_text(attempt.error or "")
    assert [a.calls for a in attempts] == [attempt.calls] * 2
    assert len(prompts) == 2
    assert [t.name for t in tasks] == [valid_text(added.name)]
    assert cached == valid_text(value)
    assert_usable(store)


@pytest.mark.parametrize(
    "make",
    [
        lambda: OutputRow(run_id="r", task=b"t\xff", text="x", finished_at=at(0)),
        lambda: OutputRow(run_id="r", task="t", text="x", data=b"\xff\xfe", finished_at=at(0)),
        lambda: RunRecord(run_id="r", crew="c", started=at(0), details={"k": b"\x80"}),
        lambda: AttemptRecord(
            task="t",
            number=1,
            start=at(0),
            end=at(0),
            duration=0,
            status="failed",
            error=b"\xc3\x28",
        ),
    ],
)
def test_bytes_that_are_not_utf8_where_text_belongs_fail_at_the_record(make: Any) -> None:
    with pytest.raises(ValidationError):
        make()


@pytest.mark.slow
def test_megabytes_of_broken_text_are_stored_valid(store: Store) -> None:
    broken = "ok \ud800\x00 " * 200_000  # 1.4 M characters
    run_id = f"{next(_runs)}-big"

    async def write_and_read() -> OutputRow:
        await store.start_run(RunRecord(run_id=run_id, crew=broken, started=at(0)))
        await store.save_output(
            OutputRow(run_id=run_id, task="t", text=broken, data=[broken], finished_at=at(1))
        )
        return (await store.outputs(run_id))["t"]

    row = anyio.run(write_and_read)

    assert row.text == valid_text(broken)
    assert row.data == [valid_text(broken)]
    assert_usable(store)
