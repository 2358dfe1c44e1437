"""Rate limit: 100 single-call tasks under ``Limit(rpm=600)`` (a burst of 10, then 10 per second).

``Limits({"openai/bench-model": Limit(rpm=600)})`` on a crew of 100 independent tasks,
``process="parallel"`` with no concurrency limit, against the loopback server (its own process)
answering at once (0 ms). The first 10 requests go at once (the burst, ``rpm / 60``) and each
later one waits for a token: the run takes at least (100 - 10) / 10 = 9.0 s, the rate bound,
and should take at most 1.05x it.

- floor: a bare ``openai.AsyncOpenAI`` client (made once, outside the timing) with a hand-written
  asyncio token bucket of the same size and rate (an ``asyncio.Lock`` serialising takers, who
  ``asyncio.sleep`` until the next token), ``asyncio.gather`` over the 100 calls;
- crewflow: ``kickoff`` (which opens and closes its own client: that is timed). The limit
  registry is process-wide and keeps its bucket between runs, so each crewflow run starts after
  the bucket has refilled (>= 1 s idle), as the floor's fresh bucket does.

The server's own record (``received_at`` of each request, read from it after each run) gives the
requests it received, the most in any 1 s window (a token bucket allows burst + rate = 20) and
how many were not answered 200 (it sends no 429 unless told to: this must be 0). Also shown: the
warm-up kickoff (a 2-task crew), the first of this fresh process (after the floor's warm-up has
imported openai).

Run: ``python benchmarks/rate.py [--tasks 100] [--rpm 600] [--repeats 5] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    Figures,
    add_json_option,
    counting_server,
    median,
    spread,
    table,
    timed_kickoff,
)

from crewflow import Agent, Crew, Limit, Limits, Task
from crewflow.llm.openai import OpenAIChat

if TYPE_CHECKING:
    from _common import CountingServer
    from openai import AsyncOpenAI

MODEL = "bench-model"
ROLE, GOAL = "Clerk", "Answer one question"
SYSTEM = f"You are {ROLE}. Your goal: {GOAL}"


def question(index: int) -> str:
    return f"Answer question {index}"


class TokenBucket:
    """The floor's rate limiter: ``burst`` tokens, refilled at ``rate`` per second."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst, self.level = rate, burst, burst
        self.stamp = time.monotonic()
        self.lock = asyncio.Lock()

    async def take(self) -> None:
        async with self.lock:
            while True:
                now = time.monotonic()
                self.level = min(self.burst, self.level + (now - self.stamp) * self.rate)
                self.stamp = now
                if self.level >= 1:
                    self.level -= 1
                    return
                await asyncio.sleep((1 - self.level) / self.rate)


async def bare_rate(client: AsyncOpenAI, tasks: int, rpm: float) -> float:
    """The floor: a token bucket in front of each call, all calls gathered."""
    bucket = TokenBucket(rpm / 60, max(1.0, rpm / 60))

    async def one(index: int) -> None:
        await bucket.take()
        await client.chat.completions.create(
            model=MODEL,
            messages=[
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": question(index)},
            ],
        )

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(1, tasks + 1)))
    return time.perf_counter() - started


def build_crew(base_url: str, tasks: int, rpm: float) -> Crew:
    agent = Agent(role=ROLE, goal=GOAL, llm=OpenAIChat(MODEL, base_url=base_url, api_key="bench"))
    return Crew(
        tasks=[Task(question(i), name=f"q{i}", context=[]) for i in range(1, tasks + 1)],
        agents=[agent],
        process="parallel",
        limits=Limits({f"openai/{MODEL}": Limit(rpm=rpm)}),
    )


async def crewflow_rate(crew: Crew) -> float:
    await asyncio.sleep(1.5)  # let the shared bucket refill (1 s at 10/s), outside the timing
    return await timed_kickoff(crew)


async def measure(
    server: CountingServer, tasks: int, rpm: float, repeats: int
) -> tuple[dict[str, tuple[list[float], list[int], list[int], list[int]]], float]:
    """Seconds, requests received, max requests in 1 s and non-200 replies per runner,
    alternating (each run is long: no warm-up run beyond one call of each); and the seconds of
    crewflow's warm-up kickoff."""
    from openai import AsyncOpenAI

    crew = build_crew(server.base_url, tasks, rpm)
    warm = build_crew(server.base_url, 2, rpm)
    runs: dict[str, tuple[list[float], list[int], list[int], list[int]]] = {
        "floor": ([], [], [], []),
        "crewflow": ([], [], [], []),
    }
    async with AsyncOpenAI(base_url=server.base_url, api_key="bench", max_retries=0) as client:
        await bare_rate(client, 2, rpm)
        first = await timed_kickoff(warm)
        runners = {
            "floor": lambda: bare_rate(client, tasks, rpm),
            "crewflow": lambda: crewflow_rate(crew),
        }
        for _ in range(repeats):
            for name, runner in runners.items():
                server.reset()
                seconds = await runner()
                stats = server.stats()
                runs[name][0].append(seconds)
                runs[name][1].append(stats.requests)
                runs[name][2].append(stats.max_in_window(1.0))
                runs[name][3].append(stats.errors)
                others = [status for status in stats.statuses if status != 200]
                if others:
                    print(f"{name}: replies other than 200: {others}", file=sys.stderr)
    return runs, first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--rpm", type=float, default=600)
    parser.add_argument("--repeats", type=int, default=5)
    add_json_option(parser)
    args = parser.parse_args()
    rate, burst = args.rpm / 60, max(1.0, args.rpm / 60)
    bound = (args.tasks - burst) / rate
    with counting_server(0.0) as server:
        runs, first = asyncio.run(measure(server, args.tasks, args.rpm, args.repeats))
    floor = median(runs["floor"][0])
    rows = []
    for name, (seconds, received, windows, errors) in runs.items():
        ours = median(seconds)
        rows.append(
            [
                name,
                ours,
                ours / bound,
                ours / floor,
                spread(received),
                max(windows),
                sum(errors),
            ]
        )
    print(
        table(
            f"rate: {args.tasks} single-call tasks, Limit(rpm={args.rpm:g}) (burst {burst:g}), "
            f"parallel, unbounded concurrency, 0 ms server, median of {args.repeats} "
            "(store: SQLite, the default)",
            [
                "runner",
                "seconds",
                f"ratio to bound ({bound:.1f} s)",
                "ratio to floor",
                "requests/run",
                f"max in 1 s (<= {burst + rate:g})",
                "non-200 replies",
            ],
            rows,
        )
    )
    ours = median(runs["crewflow"][0])
    print(
        f"goal: {bound:.1f} s <= crewflow <= {1.05 * bound:.2f} s: "
        f"{'met' if bound <= ours <= 1.05 * bound else 'MISSED'} ({ours / bound:.3f}x the bound)"
    )
    print(
        f"first kickoff in this fresh process (the 2-task warm-up, openai already imported): "
        f"{first:.3f} s"
    )
    figures = Figures("rate")
    case = f"{args.tasks}tasks_rpm{args.rpm:g}"
    figures.add(f"{case}.ratio_to_bound", ours / bound)
    figures.add(f"{case}.ratio_to_floor", ours / floor)
    figures.add(f"{case}.non_200_replies", sum(runs["crewflow"][3]))
    figures.add(f"{case}.max_in_1s_over_allowed", max(0, max(runs["crewflow"][2]) - burst - rate))
    figures.add("warmup2.first_kickoff_s", first)
    figures.write(args.json)


if __name__ == "__main__":
    main()
