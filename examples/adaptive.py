"""The adaptive process: the same crew, kicked off six times, learns which process runs it
fastest.

What it shows: ``Crew(process="adaptive")`` on a small fan-out (a brief, two research tasks side
by side, a report), recorded in a SQLite store so that each run sees the ones before it. With no
history the choice rests on the graph (parallel: 3 task units against 4). Until each plausible
candidate has been measured twice, the least measured runs next: runs 2 and 4 explore
sequential, runs 1 and 3 measure parallel, the best prediction. From then on the measured
medians decide (parallel: the two research tasks overlap). Each run prints its choice, whether
it explored, and its reason (``result.process_choice``); the last run's predictions follow.
Every candidate runs the same graph, so every run gives the same report: the offline model's
answer id (a digest of its prompt) is the same on every line.

Offline (no API key); the offline model is given a latency of 0.1 s a call so that running
tasks side by side is measurably faster. About two seconds:

    python examples/adaptive.py

The module-level ``crew`` also runs from the command line, recorded in the run database, so
that each ``crewflow run`` learns from the ones before it (``crewflow runs`` shows
``adaptive → parallel``, ``crewflow show RUN_ID`` the reason):

    crewflow run examples/adaptive.py --input topic="heat pumps"
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import anyio

from crewflow import Agent, Crew, Task
from crewflow.llm import OfflineLLM
from crewflow.store import SQLiteStore

RUNS = 6

researcher = Agent(role="Researcher", goal="Find facts", llm=OfflineLLM(latency=0.1))
writer = Agent(role="Writer", goal="Write clearly", llm=OfflineLLM(latency=0.1))


def make_crew(**options: Any) -> Crew:
    """The crew: every task declares its context (``context=[]`` for none), as the adaptive
    process requires, so sequential and parallel run the same graph."""
    brief = Task("Write a research brief on {topic}", agent=writer, name="brief", context=[])
    market = Task(
        "Research the market for {topic}", agent=researcher, name="market", context=[brief]
    )
    tech = Task(
        "Research the technology of {topic}", agent=researcher, name="tech", context=[brief]
    )
    report = Task(
        "Write the report on {topic}", agent=writer, name="report", context=[market, tech]
    )
    return Crew(
        tasks=[brief, market, tech, report],
        process="adaptive",
        name="adaptive",
        default_inputs={"topic": "tidal power"},
        **options,
    )


# What `crewflow run examples/adaptive.py` runs, recorded in the default run database.
crew = make_crew()


async def main() -> None:
    with tempfile.TemporaryDirectory() as home:
        store = SQLiteStore(Path(home) / "runs.db")
        learning = make_crew(store=store)
        print("run  process     explored  seconds  answer        reason")
        for number in range(1, RUNS + 1):
            result = await learning.kickoff({"topic": "tidal power"})
            choice = result.process_choice
            assert choice is not None
            answer = result.text.rsplit("Answer id: ", 1)[-1]
            print(
                f"{number:>3}  {choice.process:<10}  {'yes' if choice.explored else 'no':<8}  "
                f"{result.duration:>7.2f}  {answer}  {choice.reason}"
            )
        print("\nthe last run's predictions (result.process_choice.predictions):")
        for prediction in choice.predictions:
            print(
                f"  {prediction.process:<10} {prediction.seconds:.3g} {prediction.unit} "
                f"(from {prediction.basis}; lower bound {prediction.lower_bound:g} task units; "
                f"success {prediction.success}; hopeless: {prediction.hopeless})"
            )
        features = ", ".join(f"{name} {value:.3g}" for name, value in choice.features.items())
        print(f"what it looked at (result.process_choice.features): {features}")
        await store.close()


if __name__ == "__main__":
    anyio.run(main)
    sys.exit(0)
