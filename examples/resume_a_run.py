"""Resume a failed run, reuse cached replies, and ask the optimizer what the records say.

What it shows: every run is recorded in the crew's store (here a SQLite file in a temporary
directory; by default ``runs.db`` in ``CREWFLOW_HOME``). A parallel crew researches three
angles of a topic and writes a report from them. In the first run the writer's provider is
down, so the report fails after the three research tasks have finished and been checkpointed.
``crew.resume(run_id)`` then finishes the same run: the research is restored from the store,
only the report runs. A second kickoff with ``cache=True`` answers every call from the replies
the first one kept, so it makes no provider request. Last, ``crewflow.optimizer.analyze`` reads
the recorded runs and prints per-task statistics and its recommendations.

The failing provider is a ``crewflow.testing.FunctionLLM``; everything else uses the offline
model. No network, no API key; it takes about a second:

    python examples/resume_a_run.py

From the command line the same steps are ``crewflow run FILE``, ``crewflow resume RUN_ID``,
``crewflow runs``, ``crewflow show RUN_ID`` and ``crewflow optimize``.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from rich.console import Console

from crewflow import Agent, Crew, RetryPolicy, Task
from crewflow.exceptions import TaskFailed
from crewflow.llm import OfflineLLM
from crewflow.optimizer import analyze, render
from crewflow.store import SQLiteStore
from crewflow.testing import Error, FunctionLLM

TOPIC = "heat pumps"


class Outage:
    """The writer's provider: HTTP 503 while ``down``, then answers."""

    def __init__(self) -> None:
        self.down = True
        self.calls = 0

    def __call__(self, request: object) -> str | Error:
        self.calls += 1
        return Error(503, "the writer's provider is down") if self.down else "The report."


def make_crew(store: SQLiteStore, writer_llm: FunctionLLM) -> Crew:
    researcher = Agent(role="Researcher", goal="Find facts", llm=OfflineLLM())
    writer = Agent(role="Writer", goal="Write clearly", llm=writer_llm)
    angles = [
        Task(f"Research the {angle} of {{topic}}", agent=researcher, name=angle, context=[])
        for angle in ("costs", "efficiency", "installation")
    ]
    report = Task("Write a report on {topic}", agent=writer, name="report", context=angles)
    return Crew(
        tasks=[*angles, report],
        name="heat-pump-report",
        process="parallel",
        store=store,
        cache=True,
        retry=RetryPolicy(max_attempts=2, initial=0.01),
    )


async def main() -> None:
    with tempfile.TemporaryDirectory() as home:
        store = SQLiteStore(Path(home) / "runs.db")
        outage = Outage()
        crew = make_crew(store, FunctionLLM(outage, model="writer-model"))

        try:
            await crew.kickoff({"topic": TOPIC})
        except TaskFailed as failure:
            run_id = failure.run_id
            assert run_id is not None
            print(f"run {run_id[:8]} failed: {failure.task!r} ({outage.calls} calls to the writer)")
            print(f"  checkpointed before the failure: {sorted(failure.outputs)}")

        outage.down = False
        resumed = await crew.resume(run_id)
        print(f"resumed run {resumed.run_id[:8]}: restored {resumed.restored}, ran the rest")
        print(f"  report: {resumed['report'].text}")

        cached = await crew.kickoff({"topic": TOPIC})
        hits = sum(attempt.cache_hits for task in cached.timeline for attempt in task.attempts)
        print(f"a second kickoff: {hits} replies from the cache, {cached.usage.requests} requests")

        runs = await store.list_runs(crew=crew.name)
        print(f"recorded runs: {[(r.run_id[:8], r.status.value, r.resumed) for r in runs]}")

        report = await analyze(store, crew=crew)
        render(report, Console(width=110))
        await store.close()


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
