"""The first calls of a cold process: how long the event loop stalls, and the rpm spacing the
server sees.

A fresh interpreter runs a parallel crew of 5 single-call tasks under
``Limit(rpm=600, burst=1)`` against the loopback server (in the same process, so the server
feels a stall too), with a ticker task that notes the loop's time every 5 ms. Reported, per run:

- the longest gap between two ticks once the first task has started (clients are opened before
  that): how long the loop went without running anything else. Importing the SDK's chat
  resources on the loop (hundreds of modules) stalled it for 0.4-1 s; off the loop, the gap is a
  few milliseconds plus whatever else the machine is doing;
- the smallest gap between two requests' arrivals at the server: the limit spaces the sends
  0.1 s apart, and a stall between a call's permit and its send bunches requests up.

``tests/test_e2e_parallel_http.py`` checks, without timing anything, that nothing is imported
on the loop while those first calls run; this benchmark shows what that is worth on this
machine. It prints its figures and asserts nothing about them.

Run: ``python benchmarks/cold_start.py [--runs 5]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import median, table

GOAL_STALL = 0.1  # seconds; a warm process stays far below it
INTERVAL = 0.1  # seconds between sends under rpm=600, burst=1

COLD_RUN = """
import asyncio, contextlib, json, time
from crewflow import Agent, Crew, Limit, Limits, Task
from crewflow.llm import OpenAIChat
from crewflow.testing import OpenAIServer

async def main():
    first_task = []
    ticks = []

    def on_event(event):
        if event.kind == "task_started" and not first_task:
            first_task.append(time.monotonic())

    async def tick():
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.005)

    async with OpenAIServer() as server:
        llm = OpenAIChat("model-x", base_url=server.base_url, api_key="k")
        agent = Agent(role="Worker", goal="Answer", llm=llm)
        crew = Crew(
            tasks=[Task(f"Job {i}", agent=agent, context=[]) for i in range(5)],
            process="parallel",
            limits=Limits({"openai/model-x": Limit(rpm=600, burst=1)}),
            on_event=on_event,
        )
        ticker = asyncio.create_task(tick())
        await crew.kickoff()
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
        arrivals = sorted(r.received_at for r in server.requests)
    after = [first_task[0], *(t for t in ticks if t > first_task[0])]
    print(json.dumps({
        "stall": max(b - a for a, b in zip(after, after[1:])),
        "gaps": [b - a for a, b in zip(arrivals, arrivals[1:])],
    }))

asyncio.run(main())
"""


def cold_run() -> tuple[float, float]:
    """One fresh interpreter: the loop's longest stall and the smallest gap between arrivals."""
    env = {**os.environ, "CREWFLOW_FORBID_REAL_LLM_CALLS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", COLD_RUN], capture_output=True, text=True, check=True, env=env
    )
    measured = json.loads(done.stdout)
    return measured["stall"], min(measured["gaps"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    runs = [cold_run() for _ in range(args.runs)]
    stalls = [stall for stall, _ in runs]
    gaps = [gap for _, gap in runs]
    rows: list[list[object]] = [
        [f"run {index + 1}", stall, stall / GOAL_STALL, gap, gap / INTERVAL]
        for index, (stall, gap) in enumerate(runs)
    ]
    stall, gap = median(stalls), median(gaps)
    rows.append(["median", stall, stall / GOAL_STALL, gap, gap / INTERVAL])
    print(
        table(
            "cold start: 5 tasks, Limit(rpm=600, burst=1), parallel, a fresh interpreter per run",
            [
                "run",
                "loop stall (s)",
                f"ratio to {GOAL_STALL:g} s",
                "smallest arrival gap (s)",
                f"ratio to {INTERVAL:g} s",
            ],
            rows,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
