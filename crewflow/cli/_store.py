"""The commands that read the run database: ``runs``, ``show``, ``cache clear``, ``optimize``.

They never create the database, and those that only read open it read-only (so a database on a
read-only filesystem can be read). They import nothing beyond the store and rich (``crewflow
runs`` must stay fast); ``optimize`` loads the optimizer when it runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

import anyio
from rich.console import Console
from rich.text import Text

from crewflow.cli._common import (
    EXIT_OK,
    database_exists,
    database_path,
    exit_code,
    find_run,
    print_json,
    read_store,
    shown_database,
)
from crewflow.cli._render import show_details, show_runs
from crewflow.exceptions import UnknownRunError
from crewflow.store import MemoryStore
from crewflow.store._records import HEALTH_KEY

if TYPE_CHECKING:
    from pydantic import JsonValue

    from crewflow._records import ProcessChoice
    from crewflow.cli._common import Database
    from crewflow.store import (
        AddedTaskRecord,
        AttemptRecord,
        DecisionRecord,
        OutputRow,
        PromptRecord,
        RunRecord,
        Store,
    )


@dataclass(frozen=True)
class PlanStep:
    """One step of a recorded plan: who did it, what to do, the crew tasks it waited for."""

    worker: str
    instructions: str
    after: tuple[str, ...] = ()


@dataclass(frozen=True)
class RecordedPlan:
    """The plan a planning process (hierarchical) followed in a run.

    Attributes:
        task: The manager's answer it is: ``"plan"``, or ``"plan.N"`` when the plan was asked
            for again (the last one asked); ``None`` when the process's configuration fixed it.
        steps: Each crew task's steps, in order.
    """

    task: str | None
    steps: dict[str, list[PlanStep]]

    def to_json(self) -> dict[str, JsonValue]:
        """``{"task": ..., "steps": {crew_task: [{worker, instructions, after}]}}``."""
        return {
            "task": self.task,
            "steps": {
                name: [
                    {"worker": s.worker, "instructions": s.instructions, "after": list(s.after)}
                    for s in steps
                ]
                for name, steps in self.steps.items()
            },
        }


@dataclass(frozen=True)
class RunDetails:
    """What ``crewflow show`` shows: the run's record, the tasks its process added, its
    attempts and its outputs; with ``--prompts``, what its LLM calls sent and got back."""

    run: RunRecord
    added: list[AddedTaskRecord]
    attempts: list[AttemptRecord]
    outputs: dict[str, OutputRow]
    prompts: dict[tuple[str, int], list[PromptRecord]] | None = None
    """By task and attempt number; ``None`` when not read."""
    decisions: list[DecisionRecord] = field(default_factory=list)
    """How the run chose its course (conditions, routers, skips), in the order decided."""

    @property
    def choice(self) -> ProcessChoice | None:
        """What a choosing process (adaptive) recorded of its choice, if one chose."""
        return self.run.choice

    @property
    def plan(self) -> RecordedPlan | None:
        """The plan the run followed, when its process planned: the manager's last answer to
        ``plan`` (``plan.2``, ... when asked again), else a plan fixed in its configuration."""
        asked = [name for name in self.outputs if _plan_number(name) and name not in self.run.graph]
        last = max(asked, key=_plan_number, default=None)
        steps = None if last is None else _plan_steps(self.outputs[last].data)
        if steps is not None:
            return RecordedPlan(last, steps)
        config = _config_of_ran(self.run)
        steps = _plan_steps(config.get("plan")) if config is not None else None
        return None if steps is None else RecordedPlan(None, steps)

    def to_json(self) -> str:
        """``{"run": ..., "added": [...], "attempts": [...], "outputs": {task: ...}, "plan": ...,
        "choice": ..., "decisions": [...], "health": ...}``, indented; ``plan`` is
        `RecordedPlan.to_json`, ``choice`` the `ProcessChoice`, ``health`` the run's last
        recorded `crewflow.health.RunHealth` with ``recorded``, when (each ``null`` when the
        run has none). Each attempt holds its
        ``prompts`` only when they were read (``--prompts``)."""
        choice, plan = self.choice, self.plan
        return json.dumps(
            {
                "run": self.run.model_dump(mode="json"),
                "added": [task.model_dump(mode="json") for task in self.added],
                "attempts": [self._attempt_json(row) for row in self.attempts],
                "outputs": {
                    name: row.model_dump(mode="json") for name, row in self.outputs.items()
                },
                "plan": None if plan is None else plan.to_json(),
                "choice": None if choice is None else choice.model_dump(mode="json"),
                "decisions": [decision.model_dump(mode="json") for decision in self.decisions],
                "health": self.run.details.get(HEALTH_KEY),
            },
            indent=2,
            ensure_ascii=False,
        )

    def _attempt_json(self, row: AttemptRecord) -> dict[str, JsonValue]:
        if self.prompts is None:
            return row.model_dump(mode="json", exclude={"prompts"})
        prompts = self.prompts.get((row.task, row.number), [])
        return row.model_copy(update={"prompts": tuple(prompts)}).model_dump(mode="json")


def _plan_number(name: str) -> int:
    """1 for ``plan``, N for ``plan.N``, 0 for any other name."""
    if name == "plan":
        return 1
    prefix, _, number = name.partition(".")
    return int(number) if prefix == "plan" and number.isdigit() else 0


def _plan_steps(data: JsonValue) -> dict[str, list[PlanStep]] | None:
    """A plan's steps from its JSON (``{crew_task: [{worker, instructions, after}]}``), or
    ``None`` when ``data`` is not one."""
    if not isinstance(data, dict) or not data:
        return None
    steps: dict[str, list[PlanStep]] = {}
    for task, entries in data.items():
        if not isinstance(entries, list):
            return None
        steps[task] = []
        for entry in entries:
            if not isinstance(entry, dict) or not isinstance(entry.get("worker"), str):
                return None
            instructions, after = entry.get("instructions"), entry.get("after")
            steps[task].append(
                PlanStep(
                    worker=str(entry["worker"]),
                    instructions=instructions if isinstance(instructions, str) else "",
                    after=tuple(a for a in after if isinstance(a, str))
                    if isinstance(after, list)
                    else (),
                )
            )
    return steps


def _config_of_ran(run: RunRecord) -> dict[str, JsonValue] | None:
    """The configuration of the process that ran the tasks: a choosing process records its
    candidates' (``{"candidates": [{"name": ..., "config": {...}}]}``)."""
    if run.chosen is None:
        return run.process_config
    candidates = run.process_config.get("candidates")
    for candidate in candidates if isinstance(candidates, list) else []:
        if isinstance(candidate, dict) and candidate.get("name") == run.chosen:
            config = candidate.get("config")
            return config if isinstance(config, dict) else None
    return None


async def _details(store: Store, *, run_id: str, prompts: bool = False) -> RunDetails:
    run = await find_run(store, run_id)
    if run is None:
        raise UnknownRunError(run_id)
    run_id = run.run_id  # a short id, made whole
    added = await store.added_tasks(run_id)
    outputs = await store.outputs(run_id)
    # In crew order: the crew's tasks as declared, then the process's as added; a store gives
    # them in the order they finished.
    order = [*run.graph, *(task.name for task in added)]
    rank = {name: index for index, name in enumerate(order)}
    ordered = sorted(outputs, key=lambda name: rank.get(name, len(order)))
    attempts = await store.attempts(run_id)
    sent = await store.prompts(run_id) if prompts else None
    decisions = await store.decisions(run_id)
    return RunDetails(run, added, attempts, {n: outputs[n] for n in ordered}, sent, decisions)


def list_runs(
    *, crew: str | None = None, limit: int = 20, as_json: bool = False, db: Database | None = None
) -> int:
    """What ``crewflow runs`` does; returns the exit code."""
    out, err = Console(highlight=False), Console(stderr=True, highlight=False)
    path = database_path(db)
    try:
        found = (
            read_store(path, partial(_list, crew=crew, limit=limit), read_only=True)
            if database_exists(path)
            else []
        )
    except (Exception, KeyboardInterrupt) as exc:
        return exit_code(err, exc)
    if as_json:
        print_json(out, json.dumps([run.model_dump(mode="json") for run in found], indent=2))
    elif not found:
        of = f" of crew {crew!r}" if crew is not None else ""
        out.print(
            Text(f"no runs{of} recorded yet (database: {shown_database(path)})"), soft_wrap=True
        )
    else:
        show_runs(out, found, db=db)
    return EXIT_OK


async def _list(store: Store, *, crew: str | None, limit: int) -> list[RunRecord]:
    return await store.list_runs(crew=crew, limit=limit)


def show_run(
    run_id: str,
    *,
    as_json: bool = False,
    full: bool = False,
    prompts: bool = False,
    db: Database | None = None,
) -> int:
    """What ``crewflow show`` does; returns the exit code."""
    out, err = Console(highlight=False), Console(stderr=True, highlight=False)
    path = database_path(db)
    try:
        if not database_exists(path):
            raise UnknownRunError(run_id)
        details = read_store(
            path, partial(_details, run_id=run_id, prompts=prompts), read_only=True
        )
    except (Exception, KeyboardInterrupt) as exc:
        return exit_code(err, exc)
    if as_json:
        print_json(out, details.to_json())
    else:
        show_details(out, details, full=full, db=db)
    return EXIT_OK


def clear_cache(*, db: Database | None = None) -> int:
    """What ``crewflow cache clear`` does; returns the exit code."""
    out, err = Console(highlight=False), Console(stderr=True, highlight=False)
    path = database_path(db)
    try:
        removed = read_store(path, _clear) if database_exists(path) else 0
    except (Exception, KeyboardInterrupt) as exc:
        return exit_code(err, exc)
    plural = "y" if removed == 1 else "ies"
    out.print(
        Text(f"removed {removed:,} cached repl{plural} (database: {shown_database(path)})"),
        soft_wrap=True,
    )
    return EXIT_OK


async def _clear(store: Store) -> int:
    return await store.cache_clear()


def optimize_runs(
    *, crew: str | None = None, runs: int = 100, as_json: bool = False, db: Database | None = None
) -> int:
    """What ``crewflow optimize`` does; returns the exit code."""
    from crewflow.optimizer import Report, analyze, render  # only this command needs it

    out, err = Console(highlight=False), Console(stderr=True, highlight=False)
    path = database_path(db)

    async def report(store: Store) -> Report:
        return await analyze(store, crew, runs=runs)

    try:
        # Without a database the report is the empty one: "no runs recorded".
        found = (
            read_store(path, report, read_only=True)
            if database_exists(path)
            else anyio.run(report, MemoryStore())
        )
    except (Exception, KeyboardInterrupt) as exc:
        return exit_code(err, exc)
    if as_json:
        print_json(out, found.model_dump_json(indent=2))
    else:
        render(found, out)
    return EXIT_OK
