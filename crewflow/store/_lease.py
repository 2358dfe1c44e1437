"""The run lease: which process is executing a run, until when, and whether it still is.

A run being executed holds a lease in its store: its owner (host, boot, process id and the
process's start time), a random token, and an expiry at least `LEASE_SECONDS` ahead, renewed
every `RENEW_SECONDS` for as long as the run goes on, pauses included. Writing the run's final
status releases it. A process that dies (``kill -9``, an OOM kill, a power cut) stops renewing,
so its lease lapses:

- **everywhere**, once it expires: the only judgement that holds across hosts;
- **at once on the owner's own machine** (same host, same boot, same pid namespace), when its
  pid is gone, or belongs to a process started at another time (the pid was reused);
- **at once in the owner's own process**, when its run ended there but the store failed to
  record that end (a full disk, a lock held too long): see `abandon`.

A store reports a run recorded ``running`` whose lease lapsed, or that holds none, as
``interrupted`` (see `observed`): nothing is executing it any more, and `Crew.resume` finishes
it. A pid check alone would not do: a pid means nothing on another host, so there only the
expiry counts, read on the reader's clock: machines that share a database keep their clocks in
step (NTP does, far within the minute a lease lasts).
"""

from __future__ import annotations

import importlib
import os
import secrets
import socket
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from crewflow.store._records import RunRecord

__all__ = [
    "LEASE_SECONDS",
    "RENEW_SECONDS",
    "RUNNING_SECONDS",
    "Lease",
    "LeaseOwner",
    "abandon",
    "observed",
]

LEASE_SECONDS = 60.0
"""How long a lease holds without being renewed."""
RENEW_SECONDS = 20.0
"""How often a run renews its lease: three renewals may fail before it lapses."""
RUNNING_SECONDS = 1.0
"""The shortest time between two writes of a lease's `Lease.running` tasks: while tasks start
and finish, a run rewrites its lease at most once a second, not once per task."""

_PROC = Path("/proc")


class LeaseOwner(BaseModel):
    """The process that holds a lease.

    Attributes:
        host: The machine's host name.
        boot_id: What tells this boot of the machine from another, with the pid namespace on
            Linux (pids are only unique within one): ``/proc/sys/kernel/random/boot_id`` there,
            the boot time where psutil is installed, else ``None``. A pid is only checked when
            the host and boot id are both this machine's.
        pid: The process id.
        process_start: When the process started, as the OS tells it (compared for equality
            only): a pid reused by a later process has another. ``None`` when unknown.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    host: str
    boot_id: str | None = None
    pid: int = Field(ge=0)
    process_start: str | None = None

    @classmethod
    def current(cls) -> LeaseOwner:
        """This process (computed once per process: a forked child is another owner)."""
        pid = os.getpid()
        found = _current.get(pid)
        if found is None:
            _current.clear()
            found = _current[pid] = cls(
                host=socket.gethostname(),
                boot_id=_boot_id(),
                pid=pid,
                process_start=_probe(pid)[1],
            )
        return found

    def alive(self) -> bool | None:
        """Whether the owner's process is still running: ``None`` when this machine cannot
        tell (another host, another boot, or no way to look at processes here)."""
        here = LeaseOwner.current()
        if self.host != here.host or self.boot_id is None or self.boot_id != here.boot_id:
            return None
        running, start = _probe(self.pid)
        if running is None or not running:
            return running
        # The pid is taken: by the owner, unless the process using it started at another time.
        return not (self.process_start and start and start != self.process_start)

    def __str__(self) -> str:
        return f"{self.host}, pid {self.pid}"


_current: dict[int, LeaseOwner] = {}
_abandoned: set[str] = set()  # tokens of this process's leases whose run ended here


class Lease(BaseModel):
    """A run's claim by the process executing it.

    Attributes:
        token: A random token, the lease's identity: renewing or replacing a lease names it,
            so a process whose lease was taken over cannot renew it.
        owner: The process that holds it.
        expires: When it lapses unless renewed.
        running: The run's tasks in flight (an attempt started, not ended), in the order they
            started, as of the lease's last write. The run rewrites it when that set changes,
            at most once every `RUNNING_SECONDS`, so it lags the run by up to that much; it
            means nothing once the lease lapsed (the run then reads ``interrupted``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    token: str = Field(min_length=1)
    owner: LeaseOwner
    expires: AwareDatetime
    running: tuple[str, ...] = ()

    @classmethod
    def new(cls, now: datetime | None = None) -> Self:
        """A new lease for this process, with a fresh token, expiring `LEASE_SECONDS` after
        ``now`` (default: now)."""
        return cls(
            token=secrets.token_hex(16),
            owner=LeaseOwner.current(),
            expires=expiry(now),
        )

    def lapsed(self, now: datetime | None = None) -> str | None:
        """Why the lease no longer holds its run at ``now`` (default: now), or ``None`` while
        it does: it expired, its owner's process is gone from this machine, or its run ended in
        this process without its end recorded."""
        moment = now or datetime.now(UTC)
        if self.expires <= moment:
            expired = self.expires.isoformat(timespec="seconds")
            return f"its lease, held by {self.owner}, expired at {expired}"
        if self.owner.alive() is False:
            return f"its process ({self.owner}) is gone"
        if self.token in _abandoned:
            return f"its run ended in its process ({self.owner}), which could not record the end"
        return None


def abandon(lease: Lease) -> None:
    """Mark ``lease``, which this process took, as held by nothing any more: its run ended here
    but the store could not record that end (which would have released it). In this process
    the run then reads as ``interrupted`` at once, so it can be resumed without waiting for
    the lease to expire, as it can elsewhere once it has."""
    _abandoned.add(lease.token)


def expiry(now: datetime | None = None) -> datetime:
    """When a lease taken or renewed at ``now`` (default: now) expires."""
    return (now or datetime.now(UTC)) + timedelta(seconds=LEASE_SECONDS)


def observed(record: RunRecord, now: datetime | None = None) -> RunRecord:
    """``record`` as a reader sees it at ``now``: a run recorded ``running`` whose lease lapsed,
    or that holds none (recorded by a crewflow without leases), is ``interrupted``."""
    from crewflow._records import RunStatus

    if record.status != RunStatus.RUNNING:
        return record
    if record.lease is not None and record.lease.lapsed(now) is None:
        return record
    return record.model_copy(update={"status": RunStatus.INTERRUPTED})


def lapse_reason(record: RunRecord, now: datetime | None = None) -> str:
    """Why an ``interrupted`` run is no longer executed, in words."""
    if record.lease is None:
        return "no process holds it (it was recorded without a lease)"
    return record.lease.lapsed(now) or "its process stopped"


def _boot_id() -> str | None:
    """This boot of this machine (with the pid namespace on Linux), or ``None``."""
    try:
        boot = (_PROC / "sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    if boot:
        try:
            namespace = os.readlink(_PROC / "self/ns/pid")
        except OSError:
            return boot
        return f"{boot} {namespace}"
    psutil = _psutil()
    return None if psutil is None else f"boot at {psutil.boot_time():.0f}"


_Probe = tuple[bool | None, str | None]


def _probe(pid: int) -> _Probe:
    """Whether process ``pid`` runs on this machine (``None``: cannot tell), and when it
    started (``None``: unknown). A zombie (ended, not yet reaped) counts as gone."""
    if (_PROC / "self/stat").exists():
        return _probe_proc(pid)
    psutil = _psutil()
    if psutil is not None:
        return _probe_psutil(psutil, pid)
    if sys.platform == "win32":
        return None, None  # os.kill(pid, 0) would end the process there
    return _probe_signal(pid)


def _probe_proc(pid: int) -> _Probe:
    """From Linux's ``/proc/PID/stat``."""
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except FileNotFoundError:
        return False, None
    except OSError:
        return None, None
    # "pid (comm) state ... starttime ...": comm may hold spaces and parentheses.
    fields = stat.rpartition(")")[2].split()
    if len(fields) < 20 or fields[0] in ("Z", "X", "x"):
        return False, None
    return True, fields[19]  # field 22: the start time, in clock ticks after boot


def _probe_psutil(psutil: Any, pid: int) -> _Probe:
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False, None
        return True, f"{process.create_time():.6f}"
    except psutil.NoSuchProcess:
        return False, None
    except psutil.Error:
        return None, None


def _probe_signal(pid: int) -> _Probe:
    """With signal 0, which checks that a process exists without signalling it (POSIX)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False, None
    except PermissionError:
        return True, None  # someone else's process
    except OSError:
        return None, None
    return True, None


def _psutil() -> Any:
    """psutil, where it is installed (it is not a dependency), else ``None``."""
    try:
        return importlib.import_module("psutil")
    except ImportError:
        return None
