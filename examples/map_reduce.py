"""Summarise each of N documents, then combine the summaries: a map, then a reduce.

What it shows: ``Task(map_over=...)``. ``collect`` lists the documents (a structured output with a
list field); ``summarise`` maps over that list: each document is a task of its own
(``summarise[0]``, ``summarise[1]``, ...), with its own attempts and records, run at most
``max_concurrency`` at once under the crew's slots and limits; ``{item}`` in its description is
the document. ``combine`` depends on the map and gets every summary, in document order. The list
is recorded before any item runs, so a resumed run maps over the same documents and redoes only
the items that had not finished.

Run it offline (no API key; the offline model lists the fewest documents the output model
allows, three, and writes placeholder summaries):

    python examples/map_reduce.py
    python examples/map_reduce.py --documents 12

Run it with a real model (needs the provider's key, e.g. OPENAI_API_KEY):

    python examples/map_reduce.py --model openai/gpt-4o-mini

The module-level ``crew`` also runs from the command line:

    crewflow run examples/map_reduce.py --input subject="tidal power"
"""

from __future__ import annotations

import argparse
import sys

from pydantic import BaseModel, Field

from crewflow import Agent, Crew, Task
from crewflow.exceptions import ConfigurationError, CrewRunError


class Documents(BaseModel):
    """The documents to summarise."""

    titles: list[str] = Field(
        description="one title per document, most relevant first", min_length=3, max_length=50
    )


librarian = Agent(role="Librarian", goal="Find the documents that matter", llm="offline")
reader = Agent(role="Reader", goal="Summarise a document in three sentences", llm="offline")
editor = Agent(role="Editor", goal="Combine summaries into one brief", llm="offline")

collect = Task(
    "List {count} documents about {subject}",
    name="collect",
    agent=librarian,
    context=[],
    output_model=Documents,
)
summarise = Task(
    "Summarise the document titled {item}, about {subject}",
    expected_output="Three sentences",
    name="summarise",
    agent=reader,
    context=[collect],
    map_over="collect.titles",
    max_items=50,
    max_concurrency=4,
)
combine = Task(
    "Combine the summaries into one brief about {subject}",
    expected_output="One paragraph, then a bullet per document",
    name="combine",
    agent=editor,
    context=[summarise],
)

crew = Crew(
    tasks=[collect, summarise, combine],
    process="parallel",
    name="map_reduce",
    default_inputs={"subject": "tidal power", "count": 5},
)


def main(argv: list[str] | None = None) -> int:
    """Run the crew; print each document's summary, then the brief."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subject", default=crew.default_inputs["subject"])
    parser.add_argument("--documents", type=int, default=crew.default_inputs["count"])
    parser.add_argument("--model", help="a real model for every agent, e.g. openai/gpt-4o-mini")
    args = parser.parse_args(argv)
    inputs = {"subject": args.subject, "count": args.documents}
    try:
        result = crew.kickoff_sync(inputs=inputs, llm=args.model)
    except (ConfigurationError, CrewRunError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    titles = result["collect"].data.titles
    print(f"{len(titles)} documents, {len(result['summarise'].data)} summaries:")
    for index, title in enumerate(titles[:50]):
        first_line = result[f"summarise[{index}]"].text.splitlines()[0]
        print(f"  [{index}] {title}: {first_line[:60]}")
    print()
    print(result["combine"].text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
