"""Concurrency that finds the capacity: ``Crew(max_concurrency="auto")`` against a provider
that can serve only a few calls at once.

What it shows: the provider here is crewflow's loopback test server (`OpenAIServer`, on
127.0.0.1 in a thread of this process, so the real ``openai`` SDK runs over a socket with no
network and no key) with a hidden capacity (`crewflow.testing.Capacity`): above 8 requests in
flight it answers 429. Nobody tells the crew that number. ``max_concurrency="auto"`` puts an
auto limit on the model: it starts low, grows while replies are healthy, is cut by the 429s,
and settles at the capacity. Each change is a `ConcurrencyChanged` event, printed as it
happens (the limit over time), and kept with the run in the store, where the next run of a
crew against the same endpoint starts from it.

Run it:

    python examples/auto_concurrency.py
    crewflow run examples/auto_concurrency.py
"""

from __future__ import annotations

import sys

from crewflow import Agent, Crew, RetryPolicy, Task
from crewflow.events import ConcurrencyChanged, Event
from crewflow.llm import OpenAIChat
from crewflow.testing import Capacity, OpenAIServer

CAPACITY = 8
# A provider that serves CAPACITY calls at once, 200 ms each, and answers 429 (retry after
# 0.2 s) above that: short times, to keep the example quick.
hidden = Capacity(CAPACITY, mode="reject", latency=0.2, retry_after=0.2)
server = OpenAIServer(responder=hidden).start_in_thread()


def show_limit(event: Event) -> None:
    """Print the limit each time it changes: the limit over time."""
    if isinstance(event, ConcurrencyChanged):
        bar = "#" * event.new
        print(
            f"{event.time - started[0]:6.2f} s  limit {event.old:>2} -> {event.new:<2} {bar:<12}"
            f" {event.reason}"
        )


started = [0.0]


def note_start(event: Event) -> None:
    """Remember when the run began, and show the limit's changes."""
    if event.kind == "run_started":
        started[0] = event.time
    show_limit(event)


llm = OpenAIChat("test-model", base_url=server.base_url, api_key="unused")
worker = Agent(role="Summarizer", goal="Summarize one document", llm=llm)
crew = Crew(
    name="auto_concurrency",
    tasks=[Task(f"Summarize document {i}", agent=worker, context=[]) for i in range(40)],
    process="parallel",
    max_concurrency="auto",
    retry=RetryPolicy(initial=0.05),
    on_event=note_start,
)


def main() -> int:
    """Run the fan-out against the hidden capacity, then say what the provider saw."""
    result = crew.kickoff_sync()
    print(
        f"{len(result.outputs)} tasks done; the provider served {hidden.served}, answered "
        f"{hidden.rejected} with a 429, and never held more than {hidden.max_in_flight} at once "
        f"(its hidden capacity: {CAPACITY})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
