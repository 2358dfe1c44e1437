"""Cancellation at seeded random points, over a real socket and a SQLite store.

Each case builds a crew (sequential or parallel, over `OpenAIChat` and the loopback server),
starts it, and cancels it at a point drawn from a seeded generator: while the server holds the
k-th request, or from inside the n-th event the run publishes. Then, whatever the point:

- no asyncio task the run started is left behind;
- every request the server received was either answered or aborted by the client (its
  connection closed), none is still in flight;
- the store records the run as ``cancelled``, with exactly the outputs `RunCancelled` carries;
- ``crewflow show RUN --json`` reports the same.

Each case earns a row of the "cancellation" table in ``docs/reliability.md``.

Nothing here depends on how fast the machine is: held requests wait an hour server-side (until
the client aborts them), the event point cancels synchronously inside the run, and waits for the
server's counters and the run's last tasks are bounded polls under ``anyio.fail_after``.
"""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import anyio
import pytest
from typer.testing import CliRunner

from crewflow import Agent, Crew, Task, cli
from crewflow import events as ev
from crewflow.exceptions import RunCancelled
from crewflow.llm import OpenAIChat
from crewflow.store import SQLiteStore
from crewflow.testing import OpenAIServer, ReceivedRequest, Reply, Slow, Text
from tests.reliability.from_tests import on_page, rows_from_tests
from tests.reliability.table import Section
from tests.waiting import wait_until

if TYPE_CHECKING:
    from collections.abc import Callable

SEED = 12
CASES = 12
ROOT = Path(__file__).resolve().parents[1]
CASES = 12


@dataclass(frozen=True)
class CancelPoint:
    """Where one case cancels its run."""

    process: Literal["sequential", "parallel"]
    tasks: int
    on: Literal["request", "event"]
    at: int  # the held request's index, or the event's position (from 1)


def cancel_points(seed: int, count: int) -> list[CancelPoint]:
    """The seeded cases: each process, each kind of point, at a random place in the run."""
    draw = random.Random(seed)
    points = []
    for number in range(count):
        process: Literal["sequential", "parallel"] = ("sequential", "parallel")[number % 2]
        on: Literal["request", "event"] = ("request", "event")[(number // 2) % 2]
        tasks = draw.randint(3, 6)
        # A run of n one-call tasks sends n requests and publishes more than 2n events.
        at = draw.randrange(tasks) if on == "request" else draw.randint(1, 2 * tasks)
        points.append(CancelPoint(process, tasks, on, at))
    return points


def build_crew(
    point: CancelPoint, server: OpenAIServer, db: Path, on_event: Callable[[ev.Event], None]
) -> Crew:
    llm = OpenAIChat("model-x", base_url=server.base_url, api_key="k")
    agent = Agent(role="Worker", goal="Answer", llm=llm)
    names = [f"step_{i}" for i in range(point.tasks)]
    if point.process == "sequential":
        tasks = [Task(f"Step {i} of the run", agent=agent, name=n) for i, n in enumerate(names)]
    else:
        # Two roots and a fan-in: some branches run together, some wait on others.
        tasks = []
        for i, name in enumerate(names):
            context = [tasks[i - 2]] if i >= 2 else []
            tasks.append(Task(f"Step {i} of the run", agent=agent, name=name, context=context))
    return Crew(
        tasks=tasks,
        process=point.process,
        max_concurrency=2,
        store=SQLiteStore(db),
        on_event=on_event,
    )


def show_json(db: Path, run_id: str) -> dict[str, object]:
    result = CliRunner().invoke(
        cli.app, ["show", run_id, "--json", "--db", str(db)], env={"COLUMNS": "120"}
    )
    assert result.exit_code == 0, result.output
    shown: dict[str, object] = json.loads(result.stdout)
    return shown


CANCELLATION = Section(
    "cancellation",
    "Cancellation",
    (
        "process",
        "tasks",
        "cancelled",
        "status",
        "finished outputs",
        "left running",
        "finished",
        "requests",
        "aborted",
    ),
    varying=frozenset({"finished", "requests", "aborted"}),
)
"""The table of the cases: where each was cancelled and what it left; *finished*, *requests*
and *aborted* depend on how far the other branches of a parallel run had got."""


async def cancellation_section() -> Section:
    """Run the cases and make their table (`tests.reliability.generate`)."""
    return await rows_from_tests(CANCELLATION, __file__.removeprefix(f"{ROOT}/"))


def where(point: CancelPoint) -> str:
    if point.on == "request":
        return f"while request {point.at + 1} is held"
    return f"inside event {point.at}"


@pytest.mark.parametrize(
    "point", cancel_points(SEED, CASES), ids=lambda p: f"{p.process}-{p.on}-{p.at}-of-{p.tasks}"
)
async def test_a_run_cancelled_at_any_point_leaves_nothing_behind(
    point: CancelPoint, tmp_path: Path
) -> None:
    db = tmp_path / "runs.db"
    published = 0
    cancel: list[Callable[[], None]] = []

    def respond(request: ReceivedRequest) -> Reply | None:
        if point.on == "request" and request.index >= point.at:
            # Held until the client aborts it (the server watches the socket meanwhile).
            return Slow(3600, Text("never sent"))
        return None

    def on_event(event: ev.Event) -> None:
        nonlocal published
        published += 1
        if point.on == "event" and published == point.at:
            cancel[0]()  # synchronously, inside the run, at exactly this event

    before = asyncio.all_tasks()
    async with OpenAIServer(responder=respond) as server:
        crew = build_crew(point, server, db, on_event)
        handle = crew.start()
        cancel.append(handle.cancel)
        if point.on == "request":
            await wait_until(lambda: server.count > point.at, within=10)
            handle.cancel()
        with anyio.fail_after(10), pytest.raises(RunCancelled) as caught:
            await handle.result()
        # Every request is over: answered, or aborted by the client closing its connection.
        await wait_until(lambda: server.in_flight == 0, within=10)
        unanswered = [r for r in server.requests if r.status is None]
        assert all(r.disconnected for r in unanswered)
        if point.on == "request":
            assert unanswered  # the held request was aborted, not left to finish
        received = server.count

    assert handle.status == "cancelled"
    # No task of the run outlives it (the server's own have ended with `async with`).
    await wait_until(lambda: asyncio.all_tasks() <= before | {asyncio.current_task()}, within=10)
    finished = {name: output.text for name, output in caught.value.outputs.items()}
    assert len(finished) < point.tasks
    # Each finished task's one request was answered.
    assert received >= len(finished)

    store = SQLiteStore(db)
    try:
        record = await store.get_run(handle.run_id)
        assert record is not None
        assert record.status == "cancelled"
        stored = {name: row.text for name, row in (await store.outputs(handle.run_id)).items()}
    finally:
        await store.close()
    assert stored == finished

    # The CLI runs its own event loop: in a thread, as from a shell.
    shown = await anyio.to_thread.run_sync(show_json, db, handle.run_id)
    run = shown["run"]
    assert isinstance(run, dict)
    assert run["status"] == "cancelled"
    outputs = shown["outputs"]
    assert isinstance(outputs, dict)
    assert {name: row["text"] for name, row in outputs.items()} == finished
    left = len(asyncio.all_tasks() - before - {asyncio.current_task()})
    on_page(
        CANCELLATION,
        (
            point.process,
            str(point.tasks),
            where(point),
            handle.status,
            "same in the error, the store and show",
            f"{left} tasks, {server.in_flight} requests",
            f"{len(finished)} of {point.tasks}",
            str(received),
            str(len(unanswered)),
        ),
    )
