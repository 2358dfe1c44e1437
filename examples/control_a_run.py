"""Control a run: start it in the background, watch its events, pause, resume, scale up.

What it shows: ``crew.start(inputs)`` returns a `RunHandle` at once while the run goes on in
the background of the event loop, as it would in a notebook or a web service. The script
subscribes to the run's events (``handle.events()``), pauses the run (tasks in flight finish,
nothing new starts), resumes it with more slots (``handle.set_concurrency(3)``), and waits for
the result (``await handle.result()``). ``async with crew.start(...) as handle:`` makes sure the
run is cancelled if the block is left early. A second, short run is cancelled halfway, and
``RunCancelled`` still carries what finished.

Every agent uses the offline model with a simulated latency of one second per answer. By
default the script runs on ``crewflow.testing.run_virtual``, an event loop whose waits take no
real time, so it finishes at once and prints the same times on every run:

    python examples/control_a_run.py
    python examples/control_a_run.py --real-time    # the same on a normal loop: about 9 s

The module-level ``crew`` also runs from the command line (to completion, without control):

    crewflow run examples/control_a_run.py --input topic="tides"
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TYPE_CHECKING

from crewflow import Agent, Crew, Task
from crewflow.exceptions import RunCancelled
from crewflow.llm import OfflineLLM
from crewflow.testing import run_virtual

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from crewflow.events import Event

writer = Agent(role="Writer", goal="Write clear chapters", llm=OfflineLLM(latency=1.0))
editor = Agent(role="Editor", goal="Make a book of chapters", llm=OfflineLLM(latency=1.0))

chapters = [
    Task(
        f"Write chapter {number} of a short book about {{topic}}", agent=writer, name=f"ch{number}"
    )
    for number in range(1, 6)
]
book = Task("Edit the chapters into one book", agent=editor, name="book", context=chapters)

# One chapter at a time to begin with; the handle scales it up while the run goes on.
crew = Crew(
    tasks=[*chapters, book],
    process="parallel",
    max_concurrency=1,
    name="book",
    default_inputs={"topic": "tides"},
)


def now() -> float:
    """The event loop's clock: the same clock as the events' ``time``."""
    return asyncio.get_running_loop().time()


def since(start: float, time: float) -> str:
    """``time`` as seconds after ``start``, for the printout."""
    return f"{time - start:5.1f} s"


async def show(events: AsyncIterator[Event], start: float) -> None:
    """Print the events that tell the story of the run, as they come."""
    async for event in events:
        if event.kind in ("task_started", "task_finished"):
            task = getattr(event, "task", "")
            print(f"{since(start, event.time)}  {event.kind:<13} {task}")
        elif event.kind in ("run_started", "run_paused", "run_resumed", "run_finished"):
            print(f"{since(start, event.time)}  {event.kind}")


async def control(topic: str) -> None:
    """Run the crew under control: pause it, resume it with more slots, get its result."""
    start = now()
    async with crew.start({"topic": topic}) as handle:
        # handle.events() subscribes at once, before the run has done anything: nothing is missed.
        watching = asyncio.create_task(show(handle.events(), start))
        await asyncio.sleep(1.5)  # ch1 has finished, ch2 is running

        handle.pause()
        status = handle.status
        print(f"{since(start, now())}  >> pause(): status={status}; ch2 may finish, no new task")
        await asyncio.sleep(3)

        handle.resume()
        handle.set_concurrency(3)
        print(f"{since(start, now())}  >> resume() and set_concurrency(3)")

        result = await handle.result()
        await watching
    print(f"\nstatus={handle.status}, {len(result)} outputs in {result.duration:.1f} s")
    print(f"the book: {result['book'].text.splitlines()[0]}")


async def cancel_halfway(topic: str) -> None:
    """Start a run, cancel it after 2.5 s, and see what it had finished."""
    start = now()
    handle = crew.start({"topic": topic})
    await asyncio.sleep(2.5)
    handle.cancel()
    try:
        await handle.result()
    except RunCancelled as cancelled:
        finished = list(cancelled.outputs)
        print(f"\ncancelled after {since(start, now()).strip()}: status={handle.status}")
        print(f"finished before the cancel: {finished}")


async def main_async(topic: str) -> None:
    """Both demonstrations, one after the other."""
    await control(topic)
    await cancel_halfway(topic)


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments and run the demonstrations."""
    parser = argparse.ArgumentParser(description="Start a run and control it while it goes on.")
    parser.add_argument("--topic", default="tides", help="what the book is about")
    parser.add_argument(
        "--real-time", action="store_true", help="use a normal event loop (takes about 9 s)"
    )
    args = parser.parse_args(argv)
    if args.real_time:
        asyncio.run(main_async(args.topic))
    else:
        run_virtual(main_async, args.topic)
    return 0


if __name__ == "__main__":
    sys.exit(main())
