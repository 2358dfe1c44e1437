"""``crewflow batch``: one kickoff of a crew file's crew per line of a JSONL file, locally or on
a Ray cluster, recorded as a batch so that ``--resume BATCH_ID`` finishes it after a crash.

Every input line is read and checked before any work starts: a line that is not a JSON object,
or lacks an input the crew's templates need, is a usage error naming its line (a batch of
100,000 inputs should not fail at line 50,000 hours in). Each input's run id is then given and
recorded with the batch before the first run starts, so a resumed batch resumes an interrupted
run from its checkpoints, reads a completed one back from its records, and runs only what had
not finished.

Output: one JSON line per input, in input order, ``{"index", "run_id", "outputs"}`` or
``{"index", "run_id", "error"}``; to ``-o FILE`` (written whole, atomically, at the end: a
resumed batch writes it again from the records, never a line twice), else to stdout as each
line's turn comes. Progress and the summary go to stderr.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio
from rich.console import Console
from rich.text import Text

from crewflow._spec import new_id
from crewflow._text import valid_json
from crewflow.cli._common import (
    EXIT_OK,
    EXIT_RUN_FAILED,
    Database,
    UsageProblem,
    exit_code,
    format_seconds,
    print_json,
    shown_database,
)
from crewflow.cli._load import _finite, _not_json, crew_from_file
from crewflow.cli._run import _recording_in
from crewflow.exceptions import CrewflowError, CrewRunError, RunInProgress
from crewflow.llm._models import check_model
from crewflow.store import BatchItem, BatchRecord

if TYPE_CHECKING:
    from pathlib import Path

    from rich.console import ConsoleOptions, RenderResult

    from crewflow.crew import Crew, CrewResult
    from crewflow.store import Store
    from crewflow.store._records import BatchStatus


@dataclass(frozen=True)
class BatchInputs:
    """The inputs of a batch, read and checked.

    Attributes:
        values: One inputs mapping per non-blank line, in order.
        digest: ``sha256:`` of the file's bytes (a resume with another file is refused).
    """

    values: list[dict[str, Any]]
    digest: str


def read_inputs(path: Path, crew: Crew) -> BatchInputs:
    """Read and check every line of ``path`` against ``crew``'s template inputs.

    Blank lines are skipped; each other line is one input, numbered from 0 in order.

    Raises:
        UsageProblem: The file is missing or holds no input, or a line (named by its number)
            is not a JSON object or lacks an input a task template needs.
    """
    try:
        raw = path.expanduser().read_bytes()
    except OSError as exc:
        raise UsageProblem(f"cannot read the inputs {path}: {exc.strerror or exc}") from None
    needed = crew.graph.placeholders
    given = set(crew.default_inputs)
    values: list[dict[str, Any]] = []
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path.name} line {number}"
        try:
            value = json.loads(line, parse_constant=_not_json, parse_float=_finite)
        except ValueError as exc:
            raise UsageProblem(f"{where} is not JSON ({exc})") from None
        if not isinstance(value, dict):
            raise UsageProblem(
                f"{where} is a JSON {type(value).__name__}, not an object of inputs such as "
                '{"topic": "batteries"}'
            )
        missing = sorted(set(needed) - set(value) - given)
        if missing:
            detail = "; ".join(f"{name!r} (used by {', '.join(needed[name])})" for name in missing)
            raise UsageProblem(f"{where} lacks inputs the task templates need: {detail}")
        values.append(value)
    if not values:
        raise UsageProblem(f"{path} holds no inputs: write one JSON object per line")
    return BatchInputs(values, "sha256:" + hashlib.sha256(raw).hexdigest())


class BatchProgress:
    """A live count of a batch's inputs (done, failed, running, of N) on ``console``: in place
    on a terminal, one plain line per finished input elsewhere (a pipe, a CI log)."""

    def __init__(self, console: Console, batch_id: str, total: int, done: int = 0) -> None:
        self.console = console
        self.batch_id = batch_id
        self.total = total
        self.done, self.failed, self.running = done, 0, 0
        self._started = time.monotonic()
        self._lock = threading.Lock()

    def header(self) -> Text:
        """``batch ID  3 done · 1 failed · 2 running · of 10  1.2 s``."""
        with self._lock:
            counts = (
                f"{self.done} done · {self.failed} failed · {self.running} running · "
                f"of {self.total}"
            )
        elapsed = format_seconds(time.monotonic() - self._started)
        line = Text(f"batch {self.batch_id}  ", style="bold")
        line.append(counts)
        line.append(f"  {elapsed}", style="dim")
        return line

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        line = self.header()
        line.truncate(options.max_width, overflow="ellipsis")
        yield line

    def started(self) -> None:
        """An input's run started."""
        with self._lock:
            self.running += 1

    def ended(self, index: int, run_id: str, error: BaseException | None) -> None:
        """An input's run ended (``error``: why it failed)."""
        with self._lock:
            self.running -= 1
            if error is None:
                self.done += 1
            else:
                self.failed += 1
        if not self.console.is_terminal:
            how = "done" if error is None else f"failed: {type(error).__name__}"
            self.console.print(Text(f"input {index} (run {run_id}) {how}"), soft_wrap=True)


def output_line(index: int, run_id: str, outcome: CrewResult | BaseException) -> dict[str, Any]:
    """The output line of one input: its outputs by task (their data when structured), or its
    error (type, message, and the tasks that had finished, which the run keeps)."""
    if isinstance(outcome, BaseException):
        error: dict[str, Any] = {"type": type(outcome).__name__, "message": str(outcome)}
        if isinstance(outcome, CrewRunError):
            error["finished"] = list(outcome.outputs)
        return {"index": index, "run_id": run_id, "error": error}
    outputs = {
        output.task: output.text if output.data is None else _jsonable(output.data)
        for output in outcome.outputs
    }
    return {"index": index, "run_id": run_id, "outputs": outputs}


def _jsonable(data: Any) -> Any:
    from pydantic_core import to_jsonable_python

    return to_jsonable_python(data, fallback=repr)


def run_batch(
    file: Path | None,
    inputs_file: Path | None,
    *,
    resume: str | None = None,
    output: Path | None = None,
    model: str | None = None,
    concurrency: int | None = None,
    ray: str | None = None,
    quiet: bool = False,
    db: Database | None = None,
    stdout: Console | None = None,
    stderr: Console | None = None,
) -> int:
    """What ``crewflow batch`` does; returns the exit code instead of raising."""
    out = stdout or Console(highlight=False)
    err = stderr or Console(stderr=True, highlight=False)
    try:
        llm = check_model(model) if model is not None else None
        if resume is not None:
            return _resume(resume, file, inputs_file, output, concurrency, ray, quiet, db, out, err)
        if file is None or inputs_file is None:
            raise UsageProblem("give FILE.py and INPUTS.jsonl, or --resume BATCH_ID")
        with crew_from_file(file) as loaded:
            crew = _recording_in(loaded.crew, db)
            batch_inputs = read_inputs(inputs_file, crew)
            batch = BatchRecord(
                batch_id=new_id(),
                crew=crew.name,
                fingerprint=crew.fingerprint(llm).digest,
                inputs_hash=batch_inputs.digest,
                created=datetime.now(UTC),
                items=[
                    BatchItem(index=i, run_id=new_id()) for i in range(len(batch_inputs.values))
                ],
                details={
                    "file": str(loaded.path),
                    "attribute": loaded.attribute,
                    "inputs": str(inputs_file.expanduser().resolve()),
                    "model": llm,
                },
            )
            job = _Job(crew, batch, batch_inputs.values, llm, concurrency, ray, output)
            return job.go(out, err, quiet=quiet, new=True, db=db)
    except (Exception, KeyboardInterrupt) as exc:
        return exit_code(err, exc)


def _resume(
    batch_id: str,
    file: Path | None,
    inputs_file: Path | None,
    output: Path | None,
    concurrency: int | None,
    ray: str | None,
    quiet: bool,
    db: Database | None,
    out: Console,
    err: Console,
) -> int:
    from pathlib import Path

    from crewflow.cli._common import database_exists, database_path, read_store

    path = database_path(db)
    batch = (
        read_store(path, lambda store: store.get_batch(batch_id)) if database_exists(path) else None
    )
    if batch is None:
        raise UsageProblem(f"no batch {batch_id!r} in {shown_database(path)}")
    details = batch.details
    crew_file = file or Path(str(details["file"]))
    recorded_inputs = inputs_file or Path(str(details["inputs"]))
    attribute = details.get("attribute")
    model = details.get("model")
    llm = str(model) if model is not None else None
    with crew_from_file(crew_file, str(attribute) if attribute else None) as loaded:
        crew = _recording_in(loaded.crew, db)
        batch_inputs = read_inputs(recorded_inputs, crew)
        if batch_inputs.digest != batch.inputs_hash or len(batch_inputs.values) != len(batch.items):
            raise UsageProblem(
                f"{recorded_inputs} is not the inputs batch {batch_id} was started with (its "
                "contents changed, or it is another file); start a new batch for these inputs"
            )
        job = _Job(crew, batch, batch_inputs.values, llm, concurrency, ray, output)
        return job.go(out, err, quiet=quiet, new=False, db=db)


@dataclass
class _Job:
    """One batch being carried out: its crew, record and inputs, and how to run them."""

    crew: Crew
    batch: BatchRecord
    values: list[dict[str, Any]]
    llm: str | None
    concurrency: int | None
    ray: str | None
    output: Path | None

    def go(self, out: Console, err: Console, *, quiet: bool, new: bool, db: Database | None) -> int:
        batch = self.batch
        again = f"crewflow batch --resume {batch.batch_id}"
        if db is not None:
            again += f" --db {shown_database(db)}"
        verb = "started" if new else "resumed"
        err.print(
            Text(
                f"batch {batch.batch_id} {verb}: {len(batch.items)} inputs; if it stops, "
                f"finish it with: {again}"
            ),
            soft_wrap=True,
        )
        view = None if quiet else BatchProgress(err, batch.batch_id, len(batch.items))
        lines: dict[int, dict[str, Any]] = {}
        emitter = _InOrder(out) if self.output is None else None
        started = time.monotonic()
        try:
            if err.is_terminal and view is not None:
                from rich.live import Live

                with Live(view, console=err, refresh_per_second=4, transient=False):
                    anyio.run(self._run_all, new, view, lines, emitter)
            else:
                anyio.run(self._run_all, new, view, lines, emitter)
        except KeyboardInterrupt:
            err.print(
                Text(f"batch {batch.batch_id} stopped; finish it with: {again}"), soft_wrap=True
            )
            raise
        if self.output is not None:
            _write_atomically(self.output, [lines[i] for i in sorted(lines)])
        failed = sorted(i for i, line in lines.items() if "error" in line)
        summary = (
            f"batch {batch.batch_id}: {len(lines) - len(failed)} of {len(lines)} inputs "
            f"completed, {len(failed)} failed, in {format_seconds(time.monotonic() - started)}"
        )
        err.print(Text(summary), soft_wrap=True)
        if self.output is not None:
            err.print(Text(f"outputs: {self.output}"), soft_wrap=True)
        if failed:
            shown = ", ".join(map(str, failed[:10])) + (", ..." if len(failed) > 10 else "")
            err.print(Text(f"failed inputs: {shown}; retry them with: {again}"), soft_wrap=True)
            return EXIT_RUN_FAILED
        return EXIT_OK

    async def _run_all(
        self,
        new: bool,
        view: BatchProgress | None,
        lines: dict[int, dict[str, Any]],
        emitter: _InOrder | None,
    ) -> None:
        from crewflow.crew import _load_runtime

        await _load_runtime()
        store = self.crew.resolved_store()
        if store is None:
            raise UsageProblem(
                "a batch is recorded so that it can be resumed; the crew has store=None "
                "(give it a store, or pass --db)"
            )
        if new:
            await store.start_batch(self.batch)
        else:
            await self._refuse_if_running_elsewhere(store)
        if self.ray is not None:
            await self._on_ray(store, view, lines, emitter)
            return
        limiter = anyio.CapacityLimiter(self.concurrency or len(self.batch.items))

        async def one(item: BatchItem) -> None:
            async with limiter:
                if view is not None:
                    view.started()
                outcome: CrewResult | CrewflowError
                try:
                    outcome = await self.crew._carry_out(
                        self.values[item.index], item.run_id, self.llm
                    )
                except CrewflowError as exc:
                    outcome = exc
                await self._ended(store, item, outcome, view, lines, emitter)

        async with anyio.create_task_group() as group:
            for item in self.batch.items:
                group.start_soon(one, item)

    async def _on_ray(
        self,
        store: Store,
        view: BatchProgress | None,
        lines: dict[int, dict[str, Any]],
        emitter: _InOrder | None,
    ) -> None:
        from crewflow.executors import RayExecutor

        executor = RayExecutor(self.ray)
        items = self.batch.items

        def started(_index: int) -> None:
            if view is not None:
                view.started()

        async def ended(index: int, outcome: CrewResult | CrewflowError) -> None:
            await self._ended(store, items[index], outcome, view, lines, emitter)

        await executor.kickoffs(
            self.crew,
            [self.values[item.index] for item in items],
            concurrency=self.concurrency,
            llm=self.llm,
            run_ids=[item.run_id for item in items],
            on_start=started,
            on_end=ended,
        )

    async def _refuse_if_running_elsewhere(self, store: Store) -> None:
        """Refuse to resume a batch that another live process is still carrying out (one of
        its runs is held by a lease that has not lapsed): the two would each find the other's
        runs busy. A run held elsewhere that slips past this check (both started at once) is
        still never run twice: its lease refuses the second."""
        from crewflow._records import RunStatus

        for item in self.batch.items:
            record = await store.get_run(item.run_id)
            if record is None or record.status != RunStatus.RUNNING or record.lease is None:
                continue
            if record.lease.lapsed() is None:
                raise UsageProblem(
                    f"batch {self.batch.batch_id} is being carried out by another process "
                    f"({record.lease.owner}): its input {item.index} (run {item.run_id}) is "
                    "running there. Let that process finish, or stop it, then resume"
                )

    async def _ended(
        self,
        store: Store,
        item: BatchItem,
        outcome: CrewResult | CrewflowError,
        view: BatchProgress | None,
        lines: dict[int, dict[str, Any]],
        emitter: _InOrder | None,
    ) -> None:
        error = outcome if isinstance(outcome, BaseException) else None
        status: BatchStatus = "completed" if error is None else "failed"
        # A run another process holds is not this input failing: its status is that process's
        # to record.
        if item.status != status and not isinstance(error, RunInProgress):
            await store.set_batch_status(self.batch.batch_id, {item.index: status})
        lines[item.index] = output_line(item.index, item.run_id, outcome)
        if view is not None:
            view.ended(item.index, item.run_id, error)
        if emitter is not None:
            emitter.add(item.index, lines[item.index])


class _InOrder:
    """Print output lines to stdout in input order, each as soon as every earlier one is out."""

    def __init__(self, out: Console) -> None:
        self._out = out
        self._next = 0
        self._waiting: dict[int, dict[str, Any]] = {}

    def add(self, index: int, line: dict[str, Any]) -> None:
        self._waiting[index] = line
        while self._next in self._waiting:
            print_json(self._out, _dumps(self._waiting.pop(self._next)))
            self._next += 1


def _dumps(line: dict[str, Any]) -> str:
    # Valid UTF-8 whatever a model or an error message held (a lone surrogate becomes U+FFFD).
    return json.dumps(valid_json(line), ensure_ascii=False, allow_nan=False)


def _write_atomically(path: Path, lines: list[dict[str, Any]]) -> None:
    """Write ``lines`` as JSONL to ``path`` through a temporary file renamed over it: a reader
    (or a crash) never sees half a file."""
    path = path.expanduser()
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    with partial.open("w", encoding="utf-8") as file:
        for line in lines:
            file.write(_dumps(line) + "\n")
        file.flush()
        os.fsync(file.fileno())
    os.replace(partial, path)
