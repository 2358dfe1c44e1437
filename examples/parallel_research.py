"""Parallel research: fan out to several researchers, fan back in to one report.

What it shows: ``Crew(process="parallel", max_concurrency=3)``. A plan fans out to four
research tasks; a glossary needs only the technology research; the report needs everything.
Each task starts the moment its own dependencies have finished and one of the three slots is
free: the glossary does not wait for the slow market research, and when slots are scarce the
task with the longest path still ahead of it goes first. The run's timeline
(``result.timeline``) is printed as a small text Gantt chart, next to what the same crew would
take one task at a time.

Run it offline (no API key; the offline model is given a simulated latency per agent, so the
run takes a second or two of real time):

    python examples/parallel_research.py
    python examples/parallel_research.py --topic "heat pumps"

Run it with a real model (needs the provider's key, e.g. OPENAI_API_KEY):

    python examples/parallel_research.py --model openai/gpt-4o-mini

The module-level ``crew`` also runs from the command line:

    crewflow run examples/parallel_research.py --input topic="heat pumps"
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from crewflow import Agent, Crew, Task
from crewflow.exceptions import ConfigurationError, CrewRunError
from crewflow.llm import OfflineLLM

if TYPE_CHECKING:
    from crewflow import CrewResult

# Offline stand-ins with simulated latencies: a slow market analyst and quicker colleagues.
lead = Agent(role="Research lead", goal="Split a topic into questions", llm=OfflineLLM(latency=0.2))
market = Agent(role="Market analyst", goal="Size markets", llm=OfflineLLM(latency=0.8))
analyst = Agent(role="Analyst", goal="Find accurate, recent facts", llm=OfflineLLM(latency=0.3))
writer = Agent(role="Writer", goal="Write clear, short reports", llm=OfflineLLM(latency=0.3))

plan = Task("Split the research on {topic} into four questions", agent=lead, name="plan")
research = [
    Task("Research the market for {topic}", agent=market, name="market", context=[plan]),
    Task("Research the technology of {topic}", agent=analyst, name="technology", context=[plan]),
    Task("Research regulation of {topic}", agent=analyst, name="regulation", context=[plan]),
    Task("Research the costs of {topic}", agent=analyst, name="costs", context=[plan]),
]
glossary = Task(
    "Write a glossary of the technical terms", agent=writer, name="glossary", context=[research[1]]
)
report = Task(
    "Write a two-page report on {topic}",
    agent=writer,
    name="report",
    context=[*research, glossary],
)

crew = Crew(
    tasks=[plan, *research, glossary, report],
    process="parallel",
    max_concurrency=3,
    name="parallel_research",
    default_inputs={"topic": "home batteries"},
)


def gantt(result: CrewResult, width: int = 48) -> str:
    """The run's timeline as text: one row per task, from its first start to its end."""
    scale = width / max(result.duration, 1e-9)  # characters per second
    rows = []
    for record in result.timeline:
        if record.start is None or record.end is None:  # never started (skipped, pending)
            continue
        begin = (record.start - result.start).total_seconds()
        end = (record.end - result.start).total_seconds()
        left = round(begin * scale)
        bar = "█" * max(1, round(end * scale) - left)
        rows.append(
            f"{record.task:>10} |{' ' * left}{bar:<{width - left}}| {begin:4.2f}-{end:4.2f} s"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run the crew, print the Gantt chart and the report."""
    parser = argparse.ArgumentParser(description="A fan-out/fan-in research crew, in parallel.")
    parser.add_argument("--topic", default="home batteries", help="what to research")
    parser.add_argument(
        "--model", default=None, help="a model string such as openai/gpt-4o-mini (default: offline)"
    )
    args = parser.parse_args(argv)
    try:
        result = crew.kickoff_sync(inputs={"topic": args.topic}, llm=args.model)
    except ConfigurationError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except CrewRunError as exc:
        print(f"the run failed: {exc}", file=sys.stderr)
        return 1

    one_at_a_time = sum(record.duration for record in result.timeline)
    print(f"timeline (process={result.process}, max_concurrency={crew.max_concurrency}):\n")
    print(gantt(result))
    print(
        f"\n{len(result)} tasks in {result.duration:.2f} s; one at a time they would take "
        f"{one_at_a_time:.2f} s"
    )
    print(f"\n--- report ---\n{result['report'].text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
