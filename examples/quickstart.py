"""Quickstart: a three-task crew that researches, outlines and writes about a topic.

What it shows: catalogue agents (``Agent.from_yaml``), ``{topic}`` placeholders, a sequential
crew where each task receives the previous task's output, and ``kickoff_sync`` in a script.

Run it offline (no API key, no network; the offline model writes placeholder answers):

    python examples/quickstart.py
    python examples/quickstart.py --topic "heat pumps"

Run it with a real model (needs the provider's key, e.g. OPENAI_API_KEY):

    python examples/quickstart.py --model openai/gpt-4o-mini

The module-level ``crew`` also runs from the command line:

    crewflow run examples/quickstart.py --input topic="heat pumps"
"""

from __future__ import annotations

import argparse
import sys

from crewflow import Agent, Crew, Task
from crewflow.exceptions import ConfigurationError, CrewRunError

researcher = Agent.from_yaml("researcher")
writer = Agent.from_yaml("writer")

research = Task(
    "Research {topic}: what it is, how it works, and where it stands today.",
    expected_output="Five to eight short, factual bullet points.",
    agent=researcher,
    name="research",
)
outline = Task(
    "Outline a short article about {topic} for a general technical reader.",
    expected_output="A title and four section headings, each with one line on what it covers.",
    agent=writer,
    name="outline",
)
article = Task(
    "Write the article about {topic} following the outline.",
    expected_output="About 300 words of plain prose under the outline's title.",
    agent=writer,
    name="article",
)

# No `context=` on the tasks: in a sequential crew each one receives the previous output.
crew = Crew(
    tasks=[research, outline, article],
    name="quickstart",
    default_inputs={"topic": "sodium-ion batteries"},  # --topic / --input topic=... win
)


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run the crew, print the article."""
    parser = argparse.ArgumentParser(description="Research, outline and write about a topic.")
    parser.add_argument("--topic", default="sodium-ion batteries", help="what to write about")
    parser.add_argument(
        "--model",
        default=None,
        help="a model string such as openai/gpt-4o-mini (default: CREWFLOW_MODEL, else offline)",
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
    print(result.text)
    print(
        f"\n({len(result)} tasks, {result.usage.total_tokens} tokens, "
        f"{result.duration:.2f} s, model {result.output.model})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
