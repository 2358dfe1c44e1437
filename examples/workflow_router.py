"""Triage a customer's request to one of three specialists, and escalate only what is urgent.

What it shows: a router, a condition and optional context. ``triage`` answers with a
structured `Triage` (a category and whether it is urgent); its router maps each category to
the specialist task that handles it, and the two specialists not chosen are skipped. ``reply``
joins the three branches, each taken as ``optional(...)``, so it runs with whichever branch ran.
``escalate`` has a condition over the outputs so far: it runs only when triage said urgent.
Every decision (the route, the condition) is recorded and replayed by a resume, and every
skipped task says why (``result.skipped``, ``crewflow show``).

Run it offline (no API key; a keyword rule stands in for the dispatcher's model, the offline
model for the others):

    python examples/workflow_router.py
    python examples/workflow_router.py --request "My invoice was charged twice"

Run it with a real model (needs the provider's key, e.g. OPENAI_API_KEY):

    python examples/workflow_router.py --model openai/gpt-4o-mini

The module-level ``crew`` also runs from the command line:

    crewflow run examples/workflow_router.py --input request="The app crashes on login"
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field

from crewflow import Agent, Crew, Task, optional
from crewflow.exceptions import ConfigurationError, CrewRunError
from crewflow.testing import FunctionLLM

if TYPE_CHECKING:
    from collections.abc import Mapping

    from crewflow import TaskOutput
    from crewflow.llm import LLMRequest


class Triage(BaseModel):
    """Where a request goes."""

    category: Literal["billing", "technical", "sales"] = Field(
        description="billing: invoices, charges, refunds; technical: bugs, errors, access; "
        "sales: plans, prices, upgrades"
    )
    urgent: bool = Field(description="whether the customer is blocked or losing money now")


def keyword_triage(request: LLMRequest) -> str:
    """Offline, the dispatcher's stand-in: a category from keywords in the request."""
    text = (request.messages[-1].content or "").lower()
    words = {"billing": ("charge", "invoice", "refund", "bill"), "sales": ("plan", "price")}
    category = next((c for c, keys in words.items() if any(k in text for k in keys)), "technical")
    urgent = any(word in text for word in ("twice", "crash", "down", "urgent"))
    return Triage(category=category, urgent=urgent).model_dump_json()  # type: ignore[arg-type]


def is_urgent(outputs: Mapping[str, TaskOutput]) -> bool:
    """Escalate only what triage called urgent."""
    triage = outputs["triage"].data
    return isinstance(triage, Triage) and triage.urgent


dispatcher = Agent(
    role="Dispatcher", goal="Send each request to the right desk", llm=FunctionLLM(keyword_triage)
)
billing_agent = Agent(role="Billing specialist", goal="Settle charges and refunds", llm="offline")
support_agent = Agent(role="Support engineer", goal="Fix what is broken", llm="offline")
sales_agent = Agent(role="Account manager", goal="Find the right plan", llm="offline")
lead = Agent(role="Support lead", goal="Answer customers clearly and kindly", llm="offline")

# The specialists take the triage as context (by name: the triage, made next, names them): a
# router chooses among the tasks that depend on its task.
billing = Task(
    "Resolve this billing request: {request}",
    name="billing",
    agent=billing_agent,
    context=["triage"],
)
technical = Task(
    "Diagnose and fix this problem: {request}",
    name="technical",
    agent=support_agent,
    context=["triage"],
)
sales = Task(
    "Answer this sales question: {request}", name="sales", agent=sales_agent, context=["triage"]
)
triage = Task(
    "Triage this customer request: {request}",
    name="triage",
    agent=dispatcher,
    context=[],
    output_model=Triage,
    router={"billing": billing, "technical": technical, "sales": sales},
    router_field="category",
)
reply = Task(
    "Write the reply to the customer who asked: {request}",
    expected_output="A short, friendly reply",
    name="reply",
    agent=lead,
    context=[optional(billing), optional(technical), optional(sales)],
)
escalate = Task(
    "Write a one-line escalation note for the on-call lead about: {request}",
    name="escalate",
    agent=lead,
    context=[triage],  # not one of the router's branches: it runs whichever branch is chosen
    condition=is_urgent,
)
crew = Crew(
    tasks=[triage, billing, technical, sales, reply, escalate],
    process="parallel",
    name="help_desk",
    default_inputs={"request": "I was charged twice for my subscription"},
)


def main(argv: list[str] | None = None) -> int:
    """Run the crew; print the route taken, what was skipped and why, and the reply."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--request", default=crew.default_inputs["request"])
    parser.add_argument("--model", help="a real model for every agent, e.g. openai/gpt-4o-mini")
    args = parser.parse_args(argv)
    try:
        result = crew.kickoff_sync(inputs={"request": args.request}, llm=args.model)
    except (ConfigurationError, CrewRunError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    routed = result["triage"].data
    print(f"triage: {routed.category}{' (urgent)' if routed.urgent else ''}")
    for name, why in result.skipped.items():
        print(f"skipped {name}: {why}")
    print()
    print(result["reply"].text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
