"""The `Store` ABC every store implements, its errors, and where the default database lives."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NamedTuple, Self

from crewflow.exceptions import (
    DuplicateRunError,
    LeaseLost,
    RunInProgress,
    SchemaVersionError,
    StoreError,
    UnknownRunError,
)

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from datetime import datetime
    from types import TracebackType

    from pydantic import JsonValue

    from crewflow._records import AttemptRecord, PromptRecord, RunStatus
    from crewflow._usage import Usage
    from crewflow.store._lease import Lease
    from crewflow.store._records import (
        AddedTaskRecord,
        BatchRecord,
        DecisionRecord,
        OutputRow,
        RunRecord,
    )


class FinishedOutput(NamedTuple):
    """A finished task's output as the runtime hands it to `Store._save_finished`: the fields
    of an `OutputRow` without ``data`` (``None``), and of no run yet."""

    task: str
    text: str
    agent: str
    model: str
    finished_at: datetime


_opened: dict[str, Store] = {}
"""The stores `resolve_store` opened: SQLite's by resolved path (one per database file),
PostgreSQL's by URL."""

__all__ = [
    "DuplicateRunError",
    "LeaseLost",
    "RunInProgress",
    "SchemaVersionError",
    "Store",
    "StoreError",
    "UnknownRunError",
    "default_store_path",
    "resolve_store",
]


def default_store_path() -> Path:
    """Where the default run database lives: ``runs.db`` in ``CREWFLOW_HOME`` if set, else in
    the platform's user data directory (e.g. ``~/.local/share/crewflow`` on Linux).

    Only computes the path: the directory is created when a store first opens the file.
    """
    home = os.environ.get("CREWFLOW_HOME")
    if home:
        return Path(home).expanduser() / "runs.db"
    import platformdirs

    return Path(platformdirs.user_data_dir("crewflow", appauthor=False)) / "runs.db"


POSTGRES_SCHEMES = ("postgresql://", "postgres://")
"""The URL schemes that name a `PostgresStore`."""


def resolve_store(store: Store | str | os.PathLike[str] | None) -> Store | None:
    """The store a crew's ``store`` setting names.

    ``"default"`` is ``CREWFLOW_STORE`` when set (a URL or a path, read as below), else the
    database at `default_store_path()` (both looked up now, so a changed environment takes
    effect); a ``postgresql://`` or ``postgres://`` URL is a `PostgresStore`; ``sqlite:///path``
    or any other string or path is a SQLite database file; a `Store` is itself; ``None`` is no
    store. Crews naming the same database share one store (one connection) in a process.

    Raises:
        ValueError: ``store`` is a URL of another scheme (``mysql://...``).
    """
    if store is None or isinstance(store, Store):
        return store
    if store == "default":
        store = os.environ.get("CREWFLOW_STORE") or default_store_path()
    if isinstance(store, str) and store.startswith(POSTGRES_SCHEMES):
        opened = _opened.get(store)
        if opened is None:
            from crewflow.store.postgres import PostgresStore

            opened = _opened[store] = PostgresStore(store)
        return opened
    from crewflow.store.sqlite import SQLiteStore

    path = store_path(store)
    key = str(path.resolve())
    opened = _opened.get(key)
    if opened is None:
        opened = _opened[key] = SQLiteStore(path)
    return opened


def store_path(store: str | os.PathLike[str]) -> Path:
    """The SQLite file a store setting that is not a PostgreSQL URL names: a path, or a
    ``sqlite:///path`` URL (``sqlite:////abs/path`` or ``sqlite:///rel/path``).

    Raises:
        ValueError: ``store`` is a URL of a scheme no store knows.
    """
    text = os.fspath(store)
    if text.startswith("sqlite:///"):
        return Path(text.removeprefix("sqlite:///")).expanduser()
    scheme, sep, _ = text.partition("://")
    if sep and scheme.isalnum() and len(scheme) > 1:  # "C://x" is a Windows path
        raise ValueError(
            f"a store is a file path, sqlite:///PATH or postgresql://..., not a {scheme}:// URL"
        )
    return Path(text).expanduser()


def check_limit(limit: int | None) -> None:
    """Refuse a ``list_runs`` limit below 1 (``None`` means no limit)."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1 (or None for every run), not {limit}")


class Store(ABC):
    """Where runs, task attempts, finished outputs and cached replies are kept.

    All methods are async; implementations never block the event loop. Records are pydantic
    models stored as JSON. A store never receives secrets (no record has a field for them).
    ``save_output`` is the checkpoint: when it returns, the output is committed and a resumed
    run will find it, even if the process is killed the next instant.

    A run being executed holds a lease (`Lease`) that its process renews: ``start_run`` records
    the first one, ``take_lease`` takes a run over (a resume), ``renew_lease`` extends it, and
    ``finish_run`` releases it. A run recorded ``running`` whose lease lapsed is read back as
    ``interrupted``. Every write of a run's records takes the token of the lease its writer
    holds (``lease=``) and checks it in the same transaction: once another process took the run
    over, the write fails with `LeaseLost` and changes nothing. ``lease=None`` writes unchecked.

    Subclasses implement the abstract methods; the others have defaults that later versions may
    add to without breaking existing stores.

    Example:
        ```python
        async with SQLiteStore(path) as store:
            for run in await store.list_runs(crew="research", limit=5):
                print(run.run_id, run.status)
        ```
    """

    @abstractmethod
    async def start_run(self, record: RunRecord) -> None:
        """Record a new run, with its lease (``record.lease``) when it has one, in one write.

        Raises:
            DuplicateRunError: A run with this id is already stored.
        """

    @abstractmethod
    async def finish_run(
        self,
        run_id: str,
        status: RunStatus,
        ended: datetime,
        usage: Usage,
        *,
        lease: str | None = None,
    ) -> None:
        """Mark a run as ended, with its final status and usage, and release its lease.

        Raises:
            UnknownRunError: No such run.
            LeaseLost: ``lease`` is not the token of the run's lease.
        """

    async def reopen_run(self, run_id: str, *, lease: str | None = None) -> None:
        """Mark an ended (or killed) run as running again and count the resume
        (`Crew.resume` calls it, with the lease it took, before re-running what had not
        finished).

        Raises:
            UnknownRunError: No such run.
            LeaseLost: ``lease`` is not the token of the run's lease.
            StoreError: This store cannot resume runs (the default; both built-in stores can).
        """
        raise StoreError(f"{type(self).__name__} cannot resume runs (it has no reopen_run)")

    async def take_lease(self, run_id: str, lease: Lease, *, replacing: str | None) -> bool:
        """Make ``lease`` the run's lease if the one it holds now is the lease whose token is
        ``replacing`` (``None``: if it holds none), as one write: of two processes that both
        saw the same lease lapse, only one takes the run over.

        The default keeps no lease (and always says it took it): a store that keeps none never
        reports a run ``interrupted``.

        Returns:
            Whether ``lease`` now holds the run.

        Raises:
            UnknownRunError: No such run.
        """
        return True

    async def renew_lease(
        self,
        run_id: str,
        token: str,
        expires: datetime,
        *,
        running: Sequence[str] | None = None,
    ) -> bool:
        """Move the run's lease's expiry to ``expires``, and set its tasks in flight
        (`Lease.running`) to ``running`` unless it is ``None``, if it is still the lease with
        ``token``.

        Returns:
            Whether it was (``False``: another process took the run over, or it ended).
        """
        return True

    async def record_choice(  # noqa: B027 - an optional hook
        self,
        run_id: str,
        process: str,
        reason: str,
        details: Mapping[str, JsonValue] | None = None,
        *,
        lease: str | None = None,
    ) -> None:
        """Record the process a choosing process (adaptive) picked for the run, and why:
        ``chosen`` and ``process_reason``, with ``details`` merged into the run's ``details``
        (adaptive keeps its features and predictions there, under ``"choice"``).

        The default keeps nothing (the run record then shows the crew's process only).

        Raises:
            UnknownRunError: No such run.
            LeaseLost: ``lease`` is not the token of the run's lease.
        """

    async def record_health(  # noqa: B027 - an optional hook
        self,
        run_id: str,
        health: Mapping[str, JsonValue] | None,
        *,
        lease: str | None = None,
    ) -> None:
        """Keep the run's health as it last changed (`crewflow.health.RunHealth` as JSON, with
        ``recorded``: when, as an ISO time) in the run's ``details`` under ``"health"``,
        replacing the one kept before; ``None`` removes it (a resumed run starts afresh).

        A run writes it only on a change of its health, and only when it is watched
        (`crewflow.health`). The default keeps nothing (views then show no health).

        Raises:
            UnknownRunError: No such run.
            LeaseLost: ``lease`` is not the token of the run's lease.
        """

    async def record_pause(  # noqa: B027 - an optional hook
        self, run_id: str, *, lease: str | None = None
    ) -> None:
        """Record that the run was paused (its duration then says little about its speed).

        The default keeps nothing.

        Raises:
            UnknownRunError: No such run.
            LeaseLost: ``lease`` is not the token of the run's lease.
        """

    async def add_tasks(  # noqa: B027 - an optional hook
        self, run_id: str, tasks: Sequence[AddedTaskRecord], *, lease: str | None = None
    ) -> None:
        """Record tasks a process added to the run while it ran, as one write.

        The default keeps nothing: a resumed run then re-adds its process's tasks without
        checking them against what ran before.

        Raises:
            UnknownRunError: No such run.
            LeaseLost: ``lease`` is not the token of the run's lease.
        """

    async def added_tasks(self, run_id: str) -> list[AddedTaskRecord]:
        """The tasks the run's process added, in the order they were added (default: none)."""
        return []

    async def record_decisions(  # noqa: B027 - an optional hook
        self, run_id: str, decisions: Sequence[DecisionRecord], *, lease: str | None = None
    ) -> None:
        """Commit decisions the run made about its own course (`DecisionRecord`), as one
        write, replacing any of the same key.

        The default keeps nothing: a resumed run then decides again (a condition or a router
        runs again over the same outputs), and views cannot say why a task was skipped.

        Raises:
            UnknownRunError: No such run.
            LeaseLost: ``lease`` is not the token of the run's lease.
        """

    async def decisions(self, run_id: str) -> list[DecisionRecord]:
        """The run's decisions, in the order they were made (default: none)."""
        return []

    async def start_batch(self, batch: BatchRecord) -> None:
        """Record a new batch with every input's run id (``crewflow batch``), as one write,
        before any of its runs starts.

        Raises:
            StoreError: A batch with this id is already in the store, or the store keeps no
                batches (the default).
        """
        raise StoreError(f"{type(self).__name__} keeps no batches; use SQLite or PostgreSQL")

    async def get_batch(self, batch_id: str) -> BatchRecord | None:
        """The batch with this id, its items in input order, or ``None`` (the default keeps
        none)."""
        return None

    async def set_batch_status(
        self, batch_id: str, statuses: Mapping[int, Literal["pending", "completed", "failed"]]
    ) -> None:
        """Set the status of some of a batch's inputs, by index, as one write.

        A status only says what the batch last saw: the truth of a run is its own record (a
        resumed batch reads it, so a status lost to a crash costs nothing).

        Raises:
            StoreError: No such batch or input (or the store keeps no batches).
        """
        raise StoreError(f"no batch {batch_id!r} in the store")

    @abstractmethod
    async def record_attempt(
        self, run_id: str, attempt: AttemptRecord, *, lease: str | None = None
    ) -> None:
        """Record one finished attempt of a task of run ``run_id`` (replacing an earlier record
        of the same task and attempt number).

        Raises:
            UnknownRunError: The run was never started.
            LeaseLost: ``lease`` is not the token of the run's lease.
        """

    @abstractmethod
    async def save_output(self, row: OutputRow, *, lease: str | None = None) -> None:
        """Commit a finished task's output before returning (the checkpoint).

        Raises:
            UnknownRunError: The row's run was never started.
            LeaseLost: ``lease`` is not the token of the run's lease.
        """

    async def save_task(
        self,
        output: OutputRow,
        attempts: Sequence[AttemptRecord] = (),
        *,
        lease: str | None = None,
    ) -> None:
        """Record a finished task's attempts and commit its output, as one checkpoint.

        What the runtime calls when a task finishes; a store may do it in one transaction
        (`SQLiteStore` does). The default records each attempt, then saves the output.

        Raises:
            UnknownRunError: The output's run was never started.
            LeaseLost: ``lease`` is not the token of the run's lease.
        """
        for attempt in attempts:
            await self.record_attempt(output.run_id, attempt, lease=lease)
        await self.save_output(output, lease=lease)

    async def _save_finished(
        self,
        run_id: str,
        output: FinishedOutput,
        attempts: Sequence[AttemptRecord],
        *,
        lease: str | None,
    ) -> None:
        """What the runtime calls for a finished task whose output holds no structured data:
        `save_task`, unless a store writes the output's fields without an `OutputRow` (an
        internal shortcut, taken only where ``save_task`` is the store's own)."""
        from crewflow.store._records import OutputRow

        row = OutputRow(
            run_id=run_id,
            task=output.task,
            text=output.text,
            agent=output.agent,
            model=output.model,
            finished_at=output.finished_at,
        )
        await self.save_task(row, attempts, lease=lease)

    @abstractmethod
    async def get_run(self, run_id: str) -> RunRecord | None:
        """The run with this id, or ``None``.

        Like every method that reads runs, it reads a run recorded ``running`` whose lease
        lapsed (or that holds none) as ``interrupted`` (see `crewflow.store.Lease`)."""

    async def run_ids_starting(self, prefix: str, limit: int = 2) -> list[str]:
        """The ids of runs that start with ``prefix``, in order, at most ``limit`` of them (to
        take a short run id, git-style). The default reads every run; stores override it with
        an indexed lookup."""
        return sorted(
            r.run_id for r in await self.list_runs(limit=None) if r.run_id.startswith(prefix)
        )[:limit]

    @abstractmethod
    async def outputs(self, run_id: str) -> dict[str, OutputRow]:
        """The run's finished outputs by task name, in the order they finished."""

    @abstractmethod
    async def attempts(self, run_id: str) -> list[AttemptRecord]:
        """The run's attempts, by start time (then task and attempt number), with their tool
        calls but not their prompts (`AttemptRecord.prompts` is empty: they can be large, and
        `prompts` reads them)."""

    async def prompts(self, run_id: str) -> dict[tuple[str, int], list[PromptRecord]]:
        """What each LLM call of the run's attempts sent and got back, by task name and attempt
        number (attempts that recorded none are left out).

        The default reads them off `attempts`, for a store that keeps them there.
        """
        return {
            (attempt.task, attempt.number): list(attempt.prompts)
            for attempt in await self.attempts(run_id)
            if attempt.prompts
        }

    async def version(self) -> str | None:
        """A token that changes whenever the store's records change, by this process or
        another: a live view polls it and reads the records again only when it moved (compare
        tokens for equality only). ``None``: this store cannot tell (the default), so a view
        must read the records each time.
        """
        return None

    @abstractmethod
    async def list_runs(self, crew: str | None = None, limit: int | None = 20) -> list[RunRecord]:
        """Runs, newest first; only ``crew``'s when given; at most ``limit`` (``None``: all)."""

    async def runs_of_key(self, crew_key: str, limit: int | None = 50) -> list[RunRecord]:
        """The runs of one crew key (`RunRecord.crew_key`), newest first, at most ``limit``.

        The default filters `list_runs`; a store with an index on the key does better.
        """
        check_limit(limit)
        found = [run for run in await self.list_runs(limit=None) if run.crew_key == crew_key]
        return found[:limit]

    async def cache_get(self, key: str) -> str | None:
        """The cached value for ``key``, or ``None``. The default store caches nothing."""
        return None

    async def cache_put(self, key: str, value: str) -> None:  # noqa: B027 - optional hook
        """Keep ``value`` under ``key`` (replacing it). The default store drops it."""

    async def cache_clear(self) -> int:
        """Remove every cached value; return how many there were."""
        return 0

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release the store's resources (connections, files). The default has none."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
