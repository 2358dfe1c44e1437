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

import pytest

from crewflow.llm._types import Usage
from crewflow.store import Lease, LeaseOwner, RunStatus, Store, UnknownRunError
from crewflow.store._lease import LEASE_SECONDS, RENEW_SECONDS, _probe_signal, observed
from tests.store.conftest import at, run_record

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
