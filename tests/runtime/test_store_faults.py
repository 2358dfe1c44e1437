"""A run under a failing store: a corrupt, locked or read-only database fails the kickoff before
any model call, with a `StoreError` naming the file and the cause; a store that fails in the
middle of a run (a full disk, a lock taken by another process) fails the run with every finished
output in the error, and the store is usable afterwards: reads work, the run resumes and a new
kickoff completes once the cause is gone.

Each case earns a row of the "store-faults" table in ``docs/reliability.md``."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from crewflow import Agent, Crew, RetryPolicy, Task
from crewflow.exceptions import CrewRunError, StoreError
from crewflow.store import RunStatus, SQLiteStore
from crewflow.testing import FunctionLLM, capture_events
from tests.held import captured_logs
from tests.reliability.from_tests import on_page, rows_from_tests
from tests.reliability.table import Section

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Iterator

    from crewflow.llm._types import LLMRequest

BIG = "x" * 100_000  # an output that needs new pages in the database

STORE_FAULTS = Section(
    "store-faults",
    "Store faults",
    ("fault", "when", "fails with", "model calls", "finished outputs", "afterwards"),
)
"""The table of the cases: a row per fault, from the test that injects it."""


async def store_faults_section() -> Section:
    """Run the cases and make their table (`tests.reliability.generate`)."""
    return await rows_from_tests(STORE_FAULTS, "tests/runtime/test_store_faults.py")


def names(tasks: Iterable[str]) -> str:
    """Task names (a mapping's keys), in order, as a table cell."""
    return ", ".join(sorted(tasks)) or "none"


class Calls:
    """An LLM answering ``<task> done`` plus `BIG`, counting calls per task; ``before`` maps a
    task to what happens while it is in its model call (the fault, injected)."""

    def __init__(self) -> None:
        self.count: dict[str, int] = {}
        self.before: dict[str, Callable[[], Awaitable[None]]] = {}
        self.llm = FunctionLLM(self.answer, model="calls")

    @property
    def total(self) -> int:
        return sum(self.count.values())

    async def answer(self, request: LLMRequest) -> str:
        user = next(m.content for m in request.messages if m.role == "user")
        assert user is not None
        name = user.split("do ", 1)[1].split()[0]
        self.count[name] = self.count.get(name, 0) + 1
        fault = self.before.pop(name, None)
        if fault is not None:
            await fault()
        return f"{name} done {BIG}"


def chain(calls: Calls, store: Any) -> Crew:
    agent = Agent(role="Worker", goal="Work", llm=calls.llm)
    tasks: list[Task] = []
    for name in ("a", "b", "c"):
        tasks.append(Task(f"do {name}", agent=agent, name=name, context=tasks[-1:]))
    return Crew(tasks=tasks, name="chain", store=store, retry=RetryPolicy(max_attempts=1))


class Lock:
    """Another process holding ``path``'s write lock (``BEGIN EXCLUSIVE``) until released."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.process: subprocess.Popen[str] | None = None

    def take(self) -> None:
        hold = (
            "import sqlite3, sys\n"
            "conn = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
            "conn.execute('BEGIN EXCLUSIVE')\n"
            "print('held', flush=True)\n"
            "sys.stdin.read()\n"
        )
        self.process = subprocess.Popen(
            [sys.executable, "-c", hold, str(self.path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        assert self.process.stdout.readline() == "held\n"

    def release(self) -> None:
        if self.process is not None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            self.process.wait(timeout=60)
            assert self.process.stdout is not None
            self.process.stdout.close()
            self.process = None


@pytest.fixture
def lock(tmp_path: Path) -> Iterator[Lock]:
    held = Lock(tmp_path / "runs.db")
    try:
        yield held
    finally:
        held.release()


class Cramped(SQLiteStore):
    """A `SQLiteStore` whose file can be capped at its size (SQLite's ``max_page_count``): a
    disk that is full from then on, for this store's connection."""

    async def cap(self, pages: int | None = None) -> None:
        """Cap the file at ``pages`` pages (default: as many as it has now)."""

        def set_cap(conn: sqlite3.Connection) -> None:
            limit = conn.execute("PRAGMA page_count").fetchone()[0] if pages is None else pages
            conn.execute(f"PRAGMA max_page_count = {limit}").fetchone()

        await self._writer.call(set_cap)

    async def uncap(self) -> None:
        await self.cap(1_000_000_000)


async def a_real_database(path: Path) -> None:
    """Fill ``path`` with a few runs, and leave it closed, with its WAL checkpointed away."""
    calls = Calls()
    store = SQLiteStore(path)
    for _ in range(2):
        await chain(calls, store).kickoff()
    await store.close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA journal_mode = DELETE").fetchone()


# -- detectable at the start: the kickoff fails there ------------------------------------------


def fails_at_the_start(calls: Calls, logs: list[Any], kinds: list[str]) -> None:
    """Nothing ran, nothing was announced, and no end was recorded for a run never recorded."""
    assert calls.total == 0
    assert "run_started" not in kinds
    assert [log["event"] for log in logs if log["log_level"] == "error"] == []


@pytest.mark.parametrize("damage", ["random bytes", "truncated"])
async def test_a_corrupt_database_fails_the_kickoff_before_any_model_call(
    tmp_path: Path, damage: str
) -> None:
    path = tmp_path / "runs.db"
    if damage == "random bytes":
        path.write_bytes(os.urandom(16_384))
        cause = "file is not a database"
    else:
        await a_real_database(path)
        whole = path.read_bytes()
        path.write_bytes(whole[: len(whole) // 2])
        cause = "malformed"
    calls = Calls()

    with captured_logs() as logs, capture_events() as events, pytest.raises(StoreError) as caught:
        await chain(calls, SQLiteStore(path)).kickoff()

    assert str(path) in str(caught.value)
    assert cause in str(caught.value)
    assert "move it aside" in str(caught.value)
    fails_at_the_start(calls, logs, events.kinds)
    on_page(
        STORE_FAULTS,
        (
            f"a corrupt database ({damage})",
            "kickoff",
            f"StoreError: {cause}",
            str(calls.total),
            "-",
            "the error names the file and says to move it aside",
        ),
    )


async def test_a_database_locked_by_another_process_fails_the_kickoff_when_the_timeout_ends(
    tmp_path: Path, lock: Lock
) -> None:
    path = tmp_path / "runs.db"
    store = SQLiteStore(path, timeout=0.2)
    await store.schema_version()
    lock.take()
    calls = Calls()

    with captured_logs() as logs, capture_events() as events, pytest.raises(StoreError) as caught:
        await chain(calls, store).kickoff()

    assert str(path) in str(caught.value)
    assert "locked" in str(caught.value)
    assert "longer timeout" in str(caught.value)
    fails_at_the_start(calls, logs, events.kinds)
    lock.release()
    result = await chain(calls, store).kickoff()
    assert (await store.get_run(result.run_id)).status == RunStatus.COMPLETED  # type: ignore[union-attr]
    await store.close()
    on_page(
        STORE_FAULTS,
        (
            "locked by another process",
            "kickoff",
            "StoreError: locked (after `timeout`)",
            "0",
            "-",
            "a kickoff completes once the lock is released",
        ),
    )


async def test_a_resume_of_a_run_in_a_locked_database_fails_before_any_model_call(
    tmp_path: Path, lock: Lock
) -> None:
    store = Cramped(tmp_path / "runs.db", timeout=0.2)
    calls = Calls()
    calls.before["b"] = store.cap
    with pytest.raises(CrewRunError) as caught:
        await chain(calls, store).kickoff()
    await store.uncap()
    run_id = caught.value.run_id
    assert run_id is not None
    lock.take()
    calls = Calls()

    with pytest.raises(StoreError, match="locked") as refused:
        await chain(calls, store).resume(run_id)

    refused_after = calls.total
    assert refused_after == 0
    assert str(store.path) in str(refused.value)
    lock.release()
    resumed = await chain(calls, store).resume(run_id)
    assert resumed.restored == ["a"]
    assert calls.count == {"b": 1, "c": 1}
    await store.close()
    on_page(
        STORE_FAULTS,
        (
            "locked by another process",
            "resume",
            "StoreError: locked",
            str(refused_after),
            "-",
            f"the resume completes once released: restores {names(resumed.restored)}, "
            f"sends {names(calls.count)}",
        ),
    )


# -- in the middle of a run: it fails with its finished outputs ---------------------------------


async def after_the_fault(store: SQLiteStore, error: CrewRunError) -> tuple[str, str]:
    """The store is usable: it reads, the failed run resumes (running only what was not
    checkpointed) and a new kickoff completes. Return the table's *finished outputs* and
    *afterwards* cells."""
    assert error.run_id is not None
    assert {name: output.text.split()[0] for name, output in error.outputs.items()} == {
        "a": "a",
        "b": "b",
    }
    stored = list(await store.outputs(error.run_id))
    assert stored == ["a"]
    calls = Calls()
    resumed = await chain(calls, store).resume(error.run_id)
    assert resumed.restored == ["a"]
    assert calls.count == {"b": 1, "c": 1}
    sent = names(calls.count)
    again = await chain(calls, store).kickoff()
    for run_id in (error.run_id, again.run_id):
        assert (await store.get_run(run_id)).status == RunStatus.COMPLETED  # type: ignore[union-attr]
    await store.close()
    return (
        f"{names(error.outputs)} in the error; {names(stored)} stored",
        f"resume restores {names(resumed.restored)}, sends {sent}; a new kickoff completes",
    )


async def test_a_full_disk_in_the_middle_of_a_run_fails_it_with_its_finished_outputs(
    tmp_path: Path,
) -> None:
    store = Cramped(tmp_path / "runs.db")
    calls = Calls()
    calls.before["b"] = store.cap

    with pytest.raises(CrewRunError) as caught:
        await chain(calls, store).kickoff()

    assert "database or disk is full" in str(caught.value)
    assert "free some space" in str(caught.value)
    assert calls.count == {"a": 1, "b": 1}
    await store.uncap()
    kept, afterwards = await after_the_fault(store, caught.value)
    on_page(
        STORE_FAULTS,
        (
            "a full disk",
            "mid-run, sequential",
            "CrewRunError: database or disk is full",
            str(calls.total),
            kept,
            afterwards,
        ),
    )


async def test_a_full_disk_under_a_parallel_run_keeps_every_output_that_finished(
    tmp_path: Path,
) -> None:
    store = Cramped(tmp_path / "runs.db")
    calls = Calls()
    calls.before["b"] = store.cap
    agent = Agent(role="Worker", goal="Work", llm=calls.llm)
    tasks = [Task(f"do {name}", agent=agent, name=name, context=[]) for name in "abcdef"]
    crew = Crew(tasks=tasks, process="parallel", store=store, retry=RetryPolicy(max_attempts=1))

    with pytest.raises(CrewRunError) as caught:
        await crew.kickoff()

    finished = set(caught.value.outputs)
    assert "b" in finished
    sent = calls.total
    await store.uncap()
    run_id = caught.value.run_id
    assert run_id is not None
    stored = set(await store.outputs(run_id))
    assert stored <= finished
    # A task is sent again on resume only if its output was not checkpointed.
    calls.count.clear()
    resumed = await crew.resume(run_id)
    assert set(resumed.restored) == stored
    assert set(calls.count) == set("abcdef") - stored
    await store.close()
    on_page(
        STORE_FAULTS,
        (
            "a full disk",
            "mid-run, 6 parallel tasks",
            "CrewRunError: database or disk is full",
            str(sent),
            "every finished one in the error; those stored are among them",
            "resume restores the stored ones and sends only the others",
        ),
    )


async def test_a_lock_taken_in_the_middle_of_a_run_fails_it_with_its_finished_outputs(
    tmp_path: Path, lock: Lock
) -> None:
    store = SQLiteStore(tmp_path / "runs.db", timeout=0.2)
    calls = Calls()

    async def take() -> None:
        lock.take()

    calls.before["b"] = take

    with pytest.raises(CrewRunError) as caught:
        await chain(calls, store).kickoff()

    assert "locked" in str(caught.value)
    assert "longer timeout" in str(caught.value)
    assert calls.count == {"a": 1, "b": 1}
    lock.release()
    kept, afterwards = await after_the_fault(store, caught.value)
    on_page(
        STORE_FAULTS,
        (
            "a lock taken by another process",
            "mid-run",
            "CrewRunError: locked (after `timeout`)",
            str(calls.total),
            kept,
            afterwards,
        ),
    )


# -- in another process: a read-only filesystem, a file size limit -----------------------------

ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import anyio, json, sys
from crewflow.exceptions import CrewRunError
from crewflow.store import SQLiteStore
from tests.runtime.test_store_faults import Calls, chain, {extra}


async def main() -> None:
    store = {store}
    calls = Calls()
    {setup}
    try:
        await chain(calls, store).kickoff()
    except Exception as exc:
        error = exc
    else:
        raise AssertionError("the run did not fail")
    report = dict(
        error=type(error).__name__,
        store_error=isinstance(error, StoreError) or isinstance(error.__cause__, StoreError),
        message=str(error),
        calls=calls.count,
    )
    {after}
    print(json.dumps(report))

anyio.run(main)
"""


def in_child(argv_around: Callable[[list[str]], list[str]], **parts: str) -> dict[str, Any]:
    """Run a crew in a child process (as ``CHILD`` with ``parts``) and return its report."""
    script = CHILD.format(**parts)
    argv = argv_around([sys.executable, "-c", script])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=120, check=False, cwd=ROOT, env=env
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    report: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return report


@pytest.mark.slow
async def test_a_database_on_a_read_only_filesystem_fails_a_writing_kickoff_before_any_call(
    tmp_path: Path,
) -> None:
    from tests.test_cli_store import read_only

    folder = tmp_path / "records"
    folder.mkdir()
    path = folder / "runs.db"
    await a_real_database(path)
    before = path.read_bytes()

    try:
        report = in_child(
            lambda argv: read_only(folder, argv),
            extra="StoreError",
            store=f"SQLiteStore({str(path)!r})",
            setup="",
            after="",
        )
    finally:
        folder.chmod(0o755)

    assert report["error"] == "StoreError"
    assert str(path) in report["message"]
    assert "readonly" in report["message"] or "unable to open" in report["message"]
    assert report["calls"] == {}
    assert path.read_bytes() == before
    on_page(
        STORE_FAULTS,
        (
            "a read-only filesystem",
            "kickoff",
            "StoreError: readonly, or unable to open",
            "0",
            "-",
            "the file is unchanged",
        ),
    )


@pytest.mark.slow
def test_a_file_size_limit_that_leaves_no_room_for_a_new_database_fails_the_kickoff_at_once(
    tmp_path: Path,
) -> None:
    setup = (
        "import resource, signal\n"
        "    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]\n"
        "    resource.setrlimit(resource.RLIMIT_FSIZE, (8192, hard))"
    )
    report = in_child(
        lambda argv: argv,
        extra="StoreError",
        store=f"SQLiteStore({str(tmp_path / 'runs.db')!r})",
        setup=setup,
        after="",
    )

    assert report["error"] == "StoreError"
    assert "free some space" in report["message"]
    assert report["calls"] == {}
    on_page(
        STORE_FAULTS,
        (
            "a file size limit (RLIMIT_FSIZE) with no room for the database",
            "kickoff",
            "StoreError: says to free some space",
            "0",
            "-",
            "-",
        ),
    )


@pytest.mark.slow
def test_a_file_size_limit_reached_in_the_middle_of_a_run_fails_it_with_its_outputs(
    tmp_path: Path,
) -> None:
    # RLIMIT_FSIZE: a write past the limit fails with EFBIG (SIGXFSZ, which would kill the
    # process, is ignored), as on a disk that fills up, whatever filesystem holds the file.
    setup = (
        "import os, resource, signal\n"
        "    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)\n"
        "    async def cap() -> None:\n"
        "        files = [store.path, store.path.with_name(store.path.name + '-wal')]\n"
        "        size = max(os.path.getsize(f) for f in files if f.exists())\n"
        "        resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))\n"
        "    calls.before['b'] = cap"
    )
    after = (
        "resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))\n"
        "    report['kept'], report['afterwards'] = await after_the_fault(store, error)"
    )
    report = in_child(
        lambda argv: argv,
        extra="StoreError, after_the_fault",
        store=f"SQLiteStore({str(tmp_path / 'runs.db')!r})",
        setup=setup,
        after=after,
    )

    assert report["error"] == "CrewRunError"
    assert report["store_error"]
    assert "could not be checkpointed" in report["message"]
    assert "free some space" in report["message"]
    assert report["calls"] == {"a": 1, "b": 1}
    on_page(
        STORE_FAULTS,
        (
            "a file size limit (RLIMIT_FSIZE) reached",
            "mid-run",
            "CrewRunError (its cause a StoreError): could not be checkpointed",
            str(sum(report["calls"].values())),
            report["kept"],
            report["afterwards"],
        ),
    )
