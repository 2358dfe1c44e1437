"""Failures and fallbacks: a parallel crew that keeps going when one branch fails.

What it shows: ``Crew(on_failure="continue")``. Feedback is gathered, then analysed in three
branches. The pricing analyst's provider answers HTTP 503 to every call: the runtime retries
the call (with backoff), gives up, and the task fails; the two tasks that need its output are
skipped, and everything else still runs. The reviews analyst's provider fails too, but that
task has a ``fallback_agent`` (another model), which takes over and finishes it. At the end
the run raises ``CrewPartialFailure``, which carries every finished output, each failure
(a ``TaskFailed`` with its attempts and cause) and the skipped tasks. A second run with the
default ``on_failure="stop"`` shows the other policy: the first failure cancels the tasks in
flight and ends the run with ``TaskFailed``. In that run the pricing model's circuit breaker,
shared by every crew of the process, opens after its fifth consecutive failure, so the last
call fails fast. crewflow also logs each failure and fallback on stderr, as it does by default.

The failing providers are ``crewflow.testing.ScriptedLLM`` scripts; everything else uses the
offline model. No network, no API key; it takes about a second:

    python examples/failures_and_fallbacks.py

The module-level ``crew`` also runs from the command line (it exits with status 1, listing
what finished):

    crewflow run examples/failures_and_fallbacks.py --input product="the Nimbus kettle"
"""

from __future__ import annotations

import sys
from typing import Literal

from crewflow import Agent, Crew, RetryPolicy, Task, events
from crewflow.exceptions import CrewPartialFailure, TaskFailed
from crewflow.llm import OfflineLLM
from crewflow.testing import Error, ScriptedLLM

PRODUCT = "the Nimbus kettle"


def make_crew(on_failure: Literal["stop", "continue"] = "continue") -> Crew:
    """The crew, with fresh scripted providers (a script is used up by one run)."""
    # Every call answers 503: retryable, so each call is tried three times, then the task fails.
    pricing_llm = ScriptedLLM([Error(503, "pricing service down")] * 3, model="pricing-model")
    # The reviews analyst's model fails too; its fallback (the offline model) takes over.
    reviews_llm = ScriptedLLM([Error(500, "overloaded")] * 3, model="primary-model")

    collector = Agent(role="Feedback collector", goal="Gather feedback", llm="offline")
    pricing = Agent(role="Pricing analyst", goal="Judge the price", llm=pricing_llm)
    reviewer = Agent(role="Reviews analyst", goal="Summarise reviews", llm=reviews_llm)
    backup = Agent(role="Backup analyst", goal="Summarise reviews", llm="offline")
    writer = Agent(role="Writer", goal="Write clear, short notes", llm=OfflineLLM(latency=0.3))

    gather = Task("Gather customer feedback about {product}", agent=collector, name="gather")
    price = Task("Analyse the prices", agent=pricing, name="pricing", context=[gather])
    reviews = Task(
        "Summarise the reviews",
        agent=reviewer,
        fallback_agent=backup,
        name="reviews",
        context=[gather],
    )
    support = Task("List the top support issues", agent=writer, name="support", context=[gather])
    discount = Task("Propose a discount", agent=writer, name="discount", context=[price])
    summary = Task(
        "Write a one-page summary for the product team",
        agent=writer,
        name="summary",
        context=[price, reviews, support],
    )
    faq = Task("Write an FAQ from the reviews", agent=writer, name="faq", context=[reviews])
    return Crew(
        tasks=[gather, price, reviews, support, discount, summary, faq],
        process="parallel",
        on_failure=on_failure,
        retry=RetryPolicy(initial=0.02, jitter=False),  # short waits, for the demonstration
        on_event=narrate,
        name="feedback",
        default_inputs={"product": PRODUCT},
    )


def narrate(event: events.Event) -> None:
    """Print the events that tell what went wrong, and what was done about it."""
    if isinstance(event, events.LLMCallRetrying):
        print(f"  {event.task}: HTTP {event.status_code}, call retried in {event.delay:.2f} s")
    elif isinstance(event, events.TaskFallback):
        print(f"  {event.task}: {event.agent} gave up, {event.fallback} takes over")
    elif isinstance(event, events.TaskFailed):
        print(f"  {event.task}: failed after {event.attempts} attempt(s): {event.error_type}")
    elif isinstance(event, events.TaskSkipped):
        print(f"  {event.task}: skipped, because {', '.join(event.because)} failed")


crew = make_crew()


def main() -> int:
    """Run the crew with on_failure="continue", then "stop", and print what happened."""
    print('on_failure="continue": as it happens')
    try:
        crew.kickoff_sync(inputs={"product": PRODUCT})
    except CrewPartialFailure as partial:
        print("\nfinished:")
        for name, output in partial.outputs.items():
            print(f"  {name:<9} by {output.agent} ({output.model})")
        print("failed:")
        for name, failure in partial.failures.items():
            cause = failure.cause
            print(
                f"  {name:<9} after {failure.attempts} attempt(s): {type(cause).__name__}: {cause}"
            )
        print(f"skipped:\n  {', '.join(partial.skipped)}")
    else:
        print("unexpected: every task finished")
        return 1

    print('\non_failure="stop": as it happens')
    try:
        make_crew("stop").kickoff_sync(inputs={"product": PRODUCT})
    except TaskFailed as failed:
        # The circuit breaker is process-wide: pricing-model failed 3 times in the first run, so
        # after 2 more failures its circuit opens and the third call fails fast.
        print(f"\nstopped: {failed.task!r} failed: {type(failed.cause).__name__}: {failed.cause}")
        print(f"finished before the stop (tasks in flight were cancelled): {list(failed.outputs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
