"""Tools and structured output: an agent calls a Python function, then answers with a typed object.

What it shows: ``@tool`` (the JSON schema comes from the type hints and the docstring), and a
task with ``output_model``: the answer is validated against a pydantic model (here with
``Literal`` fields, so the model must pick one of the allowed values) and parsed into
``result.output.data``.

Run it offline (the offline model calls each tool once, then answers with schema-valid JSON):

    python examples/tools_and_structured.py

or with a real model: ``python examples/tools_and_structured.py --model openai/gpt-4o-mini``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Literal

from pydantic import BaseModel, Field

from crewflow import Agent, Crew, Task, tool
from crewflow.events import Event, ToolCalled

# A stand-in for a real customer database.
CUSTOMERS = {
    "ana@example.com": {"plan": "enterprise", "open_tickets": 3, "since": 2019},
    "bo@example.com": {"plan": "free", "open_tickets": 0, "since": 2024},
}


@tool
def lookup_customer(email: str) -> dict[str, object]:
    """Look up a customer's plan and support history.

    Args:
        email: The customer's e-mail address.
    """
    return CUSTOMERS.get(email.lower(), {"plan": "unknown", "open_tickets": 0, "since": None})


class Triage(BaseModel):
    """How support should handle one ticket."""

    category: Literal["billing", "bug", "feature_request", "other"]
    priority: Literal["low", "normal", "urgent"]
    summary: str = Field(description="One sentence: what the customer needs.")
    reply_draft: str = Field(description="A short first reply to the customer.")


triager = Agent(
    role="Support triager",
    goal="Route each support ticket to the right queue with the right priority",
    backstory="Enterprise customers with open tickets get priority; say why in the summary.",
    tools=[lookup_customer],
)

triage = Task(
    "Triage this ticket from {email}:\n\n{ticket}",
    expected_output="The ticket's category, priority, a one-sentence summary and a reply draft.",
    agent=triager,
    output_model=Triage,
    name="triage",
)


def show_tool_calls(event: Event) -> None:
    """Print each tool call as it happens (events are typed objects)."""
    if isinstance(event, ToolCalled):
        print(f"tool called: {event.tool} (ok={event.ok}, {event.duration * 1000:.1f} ms)")


crew = Crew(
    tasks=[triage],
    name="triage",
    on_event=show_tool_calls,
    default_inputs={
        "email": "ana@example.com",
        "ticket": "We were charged twice for November. Please refund one payment.",
    },
)


def main(argv: list[str] | None = None) -> int:
    """Triage one ticket and print the parsed `Triage` object."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="e.g. openai/gpt-4o-mini (default offline)")
    args = parser.parse_args(argv)
    result = crew.kickoff_sync(
        inputs={
            "email": "ana@example.com",
            "ticket": "We were charged twice for November. Please refund one payment.",
        },
        llm=args.model,
    )
    verdict = result.output.data
    assert isinstance(verdict, Triage)  # parsed and validated, not just JSON text
    print(f"parsed {type(verdict).__name__}:")
    print(f"  category:    {verdict.category}")
    print(f"  priority:    {verdict.priority}")
    print(f"  summary:     {verdict.summary}")
    print(f"  reply_draft: {verdict.reply_draft}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
