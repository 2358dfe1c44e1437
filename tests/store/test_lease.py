"""The run lease: who executes a run, and how a reader tells a run whose process died.

Store behaviour runs against `MemoryStore` and `SQLiteStore` alike. Expiry is judged at chosen
moments (``lapsed(now)``) or with leases written already expired: nothing here sleeps.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import pytest

from crewflow.llm._types import Usage
from crewflow.store import (
    AddedTaskRecord,
    AttemptRecord,
    Lease,
    LeaseLost,
    LeaseOwner,
    OutputRow,
    RunStatus,
    SQLiteStore,
    Store,
    TaskStatus,
    UnknownRunError,
)
from crewflow.store._lease import (
    LEASE_SECONDS,
    RENEW_SECONDS,
    _probe_signal,
    abandon,
    observed,
)
from tests.store.conftest import at, run_record

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def elsewhere(*, pid: int = 4242) -> LeaseOwner:
    """A process on another machine: its pid means nothing here."""
    return LeaseOwner(host="another-host", boot_id="another-boot", pid=pid, process_start="1")


def lease(owner: LeaseOwner, expires: datetime, token: str = "token-1") -> Lease:
    return Lease(token=token, owner=owner, expires=expires)


def dead_pid() -> int:
    """The pid of a process of this machine that was killed (and reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    child.send_signal(signal.SIGKILL)
    child.wait()
    return child.pid


# -- the owner ----------------------------------------------------------------------------------


def test_the_current_owner_is_this_process_on_this_host() -> None:
    owner = LeaseOwner.current()

    assert (owner.host, owner.pid) == (socket.gethostname(), os.getpid())
    assert owner.alive() is True
    assert str(owner) == f"{socket.gethostname()}, pid {os.getpid()}"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="Linux's /proc")
def test_on_linux_the_owner_has_the_boot_id_pid_namespace_and_start_time() -> None:
    owner = LeaseOwner.current()
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    stat = Path(f"/proc/{os.getpid()}/stat").read_text()

    assert owner.boot_id == f"{boot} {os.readlink('/proc/self/ns/pid')}"
    assert owner.process_start == stat.rpartition(")")[2].split()[19]


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_an_owner_on_this_machine_whose_pid_is_dead_is_gone() -> None:
    owner = LeaseOwner.current().model_copy(update={"pid": dead_pid()})

    assert owner.alive() is False


def test_an_owner_whose_pid_now_belongs_to_a_later_process_is_gone() -> None:
    here = LeaseOwner.current()
    if here.process_start is None:
        pytest.skip("this machine does not tell when a process started")
    reused = here.model_copy(update={"process_start": f"{here.process_start}0"})

    assert reused.alive() is False


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
@pytest.mark.parametrize(
    "change",
    [{"host": "another-host"}, {"boot_id": "a-boot-before-a-restart"}, {"boot_id": None}],
    ids=["another host", "another boot", "unknown boot"],
)
def test_an_owner_on_another_host_or_boot_cannot_be_judged_by_its_pid(
    change: dict[str, object],
) -> None:
    # The same dead pid, but on another machine (or boot): it may be running there.
    owner = LeaseOwner.current().model_copy(update={"pid": dead_pid(), **change})

    assert owner.alive() is None


@pytest.mark.skipif(sys.platform == "win32", reason="signal 0 is POSIX")
def test_without_proc_or_psutil_a_pid_is_looked_up_with_signal_0() -> None:
    assert _probe_signal(os.getpid()) == (True, None)
    assert _probe_signal(dead_pid()) == (False, None)


# -- the lease ----------------------------------------------------------------------------------


def test_a_new_lease_is_this_processs_with_a_fresh_token_and_a_minute_to_go() -> None:
    first, second = Lease.new(NOW), Lease.new(NOW)

    assert first.owner == LeaseOwner.current()
    assert first.expires == NOW + timedelta(seconds=LEASE_SECONDS)
    assert LEASE_SECONDS >= 60
    assert RENEW_SECONDS * 3 <= LEASE_SECONDS
    assert first.token != second.token
    assert len(first.token) == 32


def test_a_lease_from_another_host_holds_until_it_expires_whatever_its_pid() -> None:
    held = lease(elsewhere(pid=dead_pid() if sys.platform != "win32" else 4242), NOW)

    assert held.lapsed(NOW - timedelta(seconds=1)) is None
    assert held.lapsed(NOW) == (
        "its lease, held by another-host, pid "
        f"{held.owner.pid}, expired at 2026-06-01T12:00:00+00:00"
    )


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_a_lease_of_a_dead_process_on_this_machine_lapses_before_it_expires() -> None:
    gone = LeaseOwner.current().model_copy(update={"pid": dead_pid()})

    reason = lease(gone, NOW + timedelta(hours=1)).lapsed(NOW)

    assert reason == f"its process ({gone}) is gone"


def test_a_lease_abandoned_by_its_process_lapses_there_at_once_and_no_other_does() -> None:
    # Its run ended here, but the store could not record that end.
    lease, other = Lease.new(), Lease.new()

    abandon(lease)

    assert lease.lapsed() == (
        f"its run ended in its process ({lease.owner}), which could not record the end"
    )
    assert other.lapsed() is None
    record = run_record().model_copy(update={"lease": lease})
    assert observed(record).status == RunStatus.INTERRUPTED


def test_a_running_run_reads_as_interrupted_once_its_lease_lapsed() -> None:
    record = run_record().model_copy(update={"lease": lease(elsewhere(), NOW)})

    assert observed(record, NOW - timedelta(seconds=1)).status == RunStatus.RUNNING
    assert observed(record, NOW).status == RunStatus.INTERRUPTED
    # Ended runs keep their status, whatever their lease.
    failed = record.model_copy(update={"status": RunStatus.FAILED})
    assert observed(failed, NOW + timedelta(days=1)).status == RunStatus.FAILED


# -- in the store -------------------------------------------------------------------------------


async def statuses(store: Store, run_id: str = "run-1") -> set[RunStatus]:
    """The run's status as each read tells it (they must agree)."""
    got = await store.get_run(run_id)
    assert got is not None
    listed = [run for run in await store.list_runs() if run.run_id == run_id]
    of_key = [run for run in await store.runs_of_key("key") if run.run_id == run_id]
    return {got.status, *(run.status for run in listed + of_key)}


async def test_a_run_held_by_this_process_reads_as_running_with_its_lease(store: Store) -> None:
    record = run_record(crew_key="key")
    await store.start_run(record)

    assert await statuses(store) == {RunStatus.RUNNING}
    got = await store.get_run("run-1")
    assert got is not None
    assert got.lease == record.lease


async def test_a_run_whose_lease_expired_reads_as_interrupted(store: Store) -> None:
    expired = lease(elsewhere(), datetime.now(UTC) - timedelta(seconds=1))
    await store.start_run(run_record(crew_key="key").model_copy(update={"lease": expired}))

    assert await statuses(store) == {RunStatus.INTERRUPTED}
    got = await store.get_run("run-1")
    assert got is not None
    assert got.lease == expired


async def test_a_lease_from_another_host_that_has_not_expired_reads_as_running(
    store: Store,
) -> None:
    later = lease(elsewhere(), datetime.now(UTC) + timedelta(hours=1))
    await store.start_run(run_record(crew_key="key").model_copy(update={"lease": later}))

    assert await statuses(store) == {RunStatus.RUNNING}


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
async def test_a_run_whose_process_on_this_machine_died_reads_as_interrupted(
    store: Store,
) -> None:
    gone = LeaseOwner.current().model_copy(update={"pid": dead_pid()})
    held = lease(gone, datetime.now(UTC) + timedelta(hours=1))
    await store.start_run(run_record(crew_key="key").model_copy(update={"lease": held}))

    assert await statuses(store) == {RunStatus.INTERRUPTED}


async def test_a_running_run_without_a_lease_reads_as_interrupted(store: Store) -> None:
    # Recorded by a crewflow without leases (or by hand): nothing holds it.
    await store.start_run(run_record(crew_key="key").model_copy(update={"lease": None}))

    assert await statuses(store) == {RunStatus.INTERRUPTED}


async def test_finishing_a_run_releases_its_lease(store: Store) -> None:
    record = run_record()
    assert record.lease is not None
    await store.start_run(record)

    await store.finish_run("run-1", RunStatus.COMPLETED, at(5), Usage())

    got = await store.get_run("run-1")
    assert got is not None
    assert (got.status, got.lease) == (RunStatus.COMPLETED, None)
    assert not await store.renew_lease("run-1", record.lease.token, at(100))


async def test_renewing_a_lease_moves_its_expiry_and_needs_its_token(store: Store) -> None:
    expired = lease(elsewhere(), datetime.now(UTC) - timedelta(seconds=1), token="mine")
    await store.start_run(run_record().model_copy(update={"lease": expired}))
    later = datetime.now(UTC) + timedelta(hours=1)

    assert not await store.renew_lease("run-1", "not-mine", later)
    assert (await statuses(store)) == {RunStatus.INTERRUPTED}
    assert await store.renew_lease("run-1", "mine", later)

    got = await store.get_run("run-1")
    assert got is not None
    assert got.lease == expired.model_copy(update={"expires": later})
    assert got.status == RunStatus.RUNNING
    assert not await store.renew_lease("no-such-run", "mine", later)


async def test_a_lease_keeps_the_tasks_in_flight_it_was_last_given(store: Store) -> None:
    held = lease(LeaseOwner.current(), datetime.now(UTC) + timedelta(minutes=1), token="mine")
    await store.start_run(run_record().model_copy(update={"lease": held}))
    later = datetime.now(UTC) + timedelta(hours=1)

    async def running() -> tuple[str, ...]:
        got = await store.get_run("run-1")
        assert got is not None
        assert got.lease is not None
        return got.lease.running

    assert await running() == ()  # a new lease: nothing in flight yet
    assert await store.renew_lease("run-1", "mine", later, running=["b", "a\ud800\x00é"])
    assert await running() == ("b", "a\ufffd\ufffdé")  # in their order; the text made valid
    assert await store.renew_lease("run-1", "mine", later)  # None: unchanged
    assert await running() == ("b", "a\ufffd\ufffdé")
    assert not await store.renew_lease("run-1", "not-mine", later, running=["c"])
    assert await store.renew_lease("run-1", "mine", later, running=[])
    assert await running() == ()


async def test_taking_a_lease_over_compares_the_token_it_replaces(store: Store) -> None:
    first = lease(elsewhere(), datetime.now(UTC) - timedelta(seconds=1), token="first")
    await store.start_run(run_record().model_copy(update={"lease": first}))
    mine, theirs = Lease.new(), Lease.new()

    assert not await store.take_lease("run-1", mine, replacing=None)  # it holds one
    assert not await store.take_lease("run-1", mine, replacing="another")
    assert await store.take_lease("run-1", mine, replacing="first")
    # A second process that saw the same lapsed lease loses: the run is taken already.
    assert not await store.take_lease("run-1", theirs, replacing="first")

    got = await store.get_run("run-1")
    assert got is not None
    assert (got.lease, got.status) == (mine, RunStatus.RUNNING)


async def test_a_finished_run_is_taken_over_by_replacing_no_lease(store: Store) -> None:
    await store.start_run(run_record())
    await store.finish_run("run-1", RunStatus.FAILED, at(5), Usage())
    mine = Lease.new()

    assert await store.take_lease("run-1", mine, replacing=None)

    got = await store.get_run("run-1")
    assert got is not None
    assert got.lease == mine


async def test_taking_the_lease_of_an_unknown_run_fails(store: Store) -> None:
    with pytest.raises(UnknownRunError):
        await store.take_lease("nope", Lease.new(), replacing=None)


# -- every write carries the writer's lease ------------------------------------------------------


def writes(run_id: str, token: str | None) -> dict[str, Callable[[Store], Awaitable[object]]]:
    """Every write of a run's records, made by the holder of lease ``token``."""
    attempt = AttemptRecord(
        task="t", number=1, start=at(0), end=at(1), duration=1.0, status=TaskStatus.COMPLETED
    )
    output = OutputRow(run_id=run_id, task="t", text="out", finished_at=at(1))
    added = [AddedTaskRecord(name="plan", added=at(0))]
    return {
        "save_task": lambda s: s.save_task(output, [attempt], lease=token),
        "save_output": lambda s: s.save_output(output, lease=token),
        "record_attempt": lambda s: s.record_attempt(run_id, attempt, lease=token),
        "add_tasks": lambda s: s.add_tasks(run_id, added, lease=token),
        "record_choice": lambda s: s.record_choice(run_id, "parallel", "why", lease=token),
        "record_pause": lambda s: s.record_pause(run_id, lease=token),
        "reopen_run": lambda s: s.reopen_run(run_id, lease=token),
        "finish_run": lambda s: s.finish_run(
            run_id, RunStatus.COMPLETED, at(5), Usage(), lease=token
        ),
    }


WRITES = list(writes("run-1", None))


async def snapshot(store: Store) -> tuple[object, ...]:
    return (
        await store.get_run("run-1"),
        await store.outputs("run-1"),
        await store.attempts("run-1"),
        await store.added_tasks("run-1"),
    )


@pytest.mark.parametrize("write", WRITES)
async def test_a_write_by_a_process_whose_lease_was_taken_changes_nothing(
    store: Store, write: str
) -> None:
    stalled = Lease.new()
    await store.start_run(run_record().model_copy(update={"lease": stalled}))
    theirs = lease(elsewhere(), datetime.now(UTC) + timedelta(hours=1), token="theirs")
    assert await store.take_lease("run-1", theirs, replacing=stalled.token)
    before = await snapshot(store)

    with pytest.raises(LeaseLost) as lost:
        await writes("run-1", stalled.token)[write](store)

    assert (lost.value.run_id, lost.value.owner) == ("run-1", elsewhere())
    assert "another-host, pid 4242 holds it now" in str(lost.value)
    assert await snapshot(store) == before


@pytest.mark.parametrize("write", WRITES)
async def test_a_write_by_the_leases_holder_or_unchecked_goes_through(
    store: Store, write: str
) -> None:
    mine = Lease.new()
    await store.start_run(run_record().model_copy(update={"lease": mine}))
    before = await snapshot(store)

    await writes("run-1", mine.token)[write](store)
    if write != "finish_run":  # which releases the lease: a second write is unchecked
        await writes("run-1", None)[write](store)

    assert await snapshot(store) != before


async def test_a_write_after_the_run_ended_elsewhere_says_no_process_holds_it(
    store: Store,
) -> None:
    stalled = Lease.new()
    await store.start_run(run_record().model_copy(update={"lease": stalled}))
    await store.finish_run("run-1", RunStatus.COMPLETED, at(5), Usage())

    with pytest.raises(LeaseLost, match="no process holds it now"):
        await writes("run-1", stalled.token)["save_task"](store)
    with pytest.raises(UnknownRunError):
        await writes("nope", stalled.token)["save_task"](store)


async def test_checkpoints_committed_together_fail_only_the_stalled_writers(
    tmp_path: Path,
) -> None:
    async with SQLiteStore(tmp_path / "runs.db") as store:
        mine, stalled = Lease.new(), Lease.new()
        await store.start_run(run_record("run-1").model_copy(update={"lease": mine}))
        await store.start_run(run_record("run-2").model_copy(update={"lease": stalled}))
        theirs = lease(elsewhere(), datetime.now(UTC) + timedelta(hours=1), token="theirs")
        assert await store.take_lease("run-2", theirs, replacing=stalled.token)
        outcomes: dict[str, BaseException | None] = {}

        async def save(run_id: str, token: str, task: str) -> None:
            row = OutputRow(run_id=run_id, task=task, text="out", finished_at=at(1))
            try:
                await store.save_task(row, lease=token)
            except LeaseLost as exc:
                outcomes[f"{run_id}/{task}"] = exc
            else:
                outcomes[f"{run_id}/{task}"] = None

        async with anyio.create_task_group() as group:  # queued together: one transaction
            for task in ("a", "b"):
                group.start_soon(save, "run-1", mine.token, task)
                group.start_soon(save, "run-2", stalled.token, task)

        assert {key for key, error in outcomes.items() if error is None} == {"run-1/a", "run-1/b"}
        assert list(await store.outputs("run-1")) == ["a", "b"]
        assert await store.outputs("run-2") == {}
