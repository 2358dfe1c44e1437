"""Soak: 200 concurrent crews in one process, one shared set of limits, a 429 storm.

Five rounds; each starts 200 crews of two dependent tasks at once, all over `OpenAIChat` against
one loopback server and one `Limits`, recording to the default SQLite store. A seeded `Storm`
answers 30 % of the requests with a 429 (Retry-After 0.2 to 1 s) for its first 10 s, so it
spans the first round or two. With the default retry policy:

- no crew fails;
- the shared concurrency limit is never exceeded, as counted by the server (it counts a request
  in flight from its arrival until its reply is handed over, within the client's own count);
- memory is flat: tracemalloc's current size, after a collection, grows less than 2 % and less
  than 1 MB from each round to the next over rounds 2 to 5 (round 1 loads the SDK and warms the
  caches);
- nothing leaks: no asyncio task outlives the rounds, and no socket or file is left for the
  garbage collector to close (a `ResourceWarning` fails the test, including one raised in a
  finaliser).

The soak runs in a process of its own, traced from its start (``python -X tracemalloc``):
tracemalloc's current size is then the whole Python heap of a process that did nothing but
soak, not whatever a test session happened to allocate since the soak began.

`soak()` returns what it measured and `SoakReport.rows()` makes rows of it for the reliability
table (``python -X tracemalloc -m tests.test_soak`` prints the report as JSON); the test asserts
on it.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
import tempfile
import tracemalloc
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from crewflow import Agent, Crew, Limit, Limits, Task
from crewflow.exceptions import CrewRunError
from crewflow.llm import OpenAIChat
from crewflow.testing import OpenAIServer, Storm
from tests.reliability.table import PAGE, Section, differences

if TYPE_CHECKING:
    from collections.abc import Iterator

CREWS = 200
ROUNDS = 5
CONCURRENCY = 8
MODEL = "model-x"
MB = 1024 * 1024
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Round:
    """What one round measured."""

    seconds: float
    requests: int
    rate_limited: int
    max_in_flight: int
    failed: list[str]
    traced_bytes: int


@dataclass
class SoakReport:
    """What a soak measured, round by round, and what leaked."""

    rounds: list[Round] = field(default_factory=list)
    tasks_left: list[str] = field(default_factory=list)
    resource_warnings: list[str] = field(default_factory=list)

    def growth(self) -> list[tuple[int, float]]:
        """Per round from the second on: (bytes grown since the previous round, as a share)."""
        sizes = [r.traced_bytes for r in self.rounds]
        return [(after - before, (after - before) / before) for before, after in pairwise(sizes)]

    def rows(self) -> list[dict[str, Any]]:
        """One row per round, for the reliability table."""
        growth = [(0, 0.0), *self.growth()]
        return [
            {
                "round": number,
                "crews": CREWS,
                "failed": len(r.failed),
                "requests": r.requests,
                "rate_limited (429)": r.rate_limited,
                f"max in flight (limit {CONCURRENCY})": r.max_in_flight,
                "traced MB": round(r.traced_bytes / MB, 2),
                "growth KB": round(grown / 1024, 1),
                "seconds": round(r.seconds, 1),
            }
            for number, (r, (grown, _)) in enumerate(zip(self.rounds, growth, strict=True), start=1)
        ]


@contextmanager
def leaks_recorded(report: SoakReport) -> Iterator[None]:
    """Record every `ResourceWarning`, raised directly or in a finaliser (where it can only
    reach ``sys.unraisablehook``), into ``report``."""
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        report.resource_warnings.append(f"{unraisable.exc_value!r} in {unraisable.object!r}")

    sys.unraisablehook = hook
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            yield
            gc.collect()
    finally:
        sys.unraisablehook = previous
    report.resource_warnings += [str(w.message) for w in caught if w.category is ResourceWarning]


async def one_round(number: int, server: OpenAIServer, limits: Limits) -> list[str]:
    """Start ``CREWS`` crews at once; return the names of those that failed."""
    failed: list[str] = []
    llm = OpenAIChat(MODEL, base_url=server.base_url, api_key="soak-key")
    agent = Agent(role="Worker", goal="Answer", llm=llm)

    async def crew(index: int) -> None:
        first = Task(f"Round {number} crew {index}: collect", agent=agent, name="collect")
        second = Task(f"Round {number} crew {index}: write", agent=agent, name="write")
        try:
            await Crew(tasks=[first, second], limits=limits, name=f"soak_{index}").kickoff()
        except CrewRunError as exc:
            failed.append(f"crew {index}: {exc}")

    async with anyio.create_task_group() as group:
        for index in range(CREWS):
            group.start_soon(crew, index)
    return failed


async def soak(*, seed: int = 12, storm_seconds: float = 10.0) -> SoakReport:
    """Run the soak; return what it measured (see the module docstring)."""
    report = SoakReport()
    storm = Storm(rate=0.3, retry_after=(0.2, 1.0), duration=storm_seconds, seed=seed)
    # Shared by every crew of every round: the process-wide registry holds their state.
    limits = Limits({f"openai/{MODEL}": Limit(concurrency=CONCURRENCY)})
    before = asyncio.all_tasks()
    loop = asyncio.get_running_loop()
    tracing = tracemalloc.is_tracing()  # since the process started, with -X tracemalloc
    with leaks_recorded(report):
        if not tracing:
            tracemalloc.start()
        try:
            # Server-side latency keeps requests in flight long enough for the limit to bind.
            async with OpenAIServer(responder=storm, latency=0.05) as server:
                for number in range(1, ROUNDS + 1):
                    started, limited = loop.time(), storm.limited
                    failed = await one_round(number, server, limits)
                    seconds = loop.time() - started
                    requests, in_flight = server.count, server.max_in_flight
                    # The server's record of requests is the test's, not the process's.
                    server.reset_counters()
                    gc.collect()
                    report.rounds.append(
                        Round(
                            seconds=seconds,
                            requests=requests,
                            rate_limited=storm.limited - limited,
                            max_in_flight=in_flight,
                            failed=failed,
                            traced_bytes=tracemalloc.get_traced_memory()[0],
                        )
                    )
        finally:
            if not tracing:
                tracemalloc.stop()
    current = asyncio.current_task()
    report.tasks_left = [repr(t) for t in asyncio.all_tasks() - before if t is not current]
    return report


def report_from_json(text: str) -> SoakReport:
    """The `SoakReport` that `main` printed."""
    data = json.loads(text)
    rounds = [Round(**fields) for fields in data.pop("rounds")]
    return SoakReport(rounds=rounds, **data)


def main() -> None:
    """Soak, and print the report as JSON on stdout."""
    report = asyncio.run(soak())
    sys.stdout.write(json.dumps(asdict(report)) + "\n")


async def soak_in_a_process() -> SoakReport:
    """Run `main` in a fresh process traced from its start; return its report.

    Raises:
        RuntimeError: The process failed.
    """
    with tempfile.TemporaryDirectory(prefix="crewflow-soak-") as home:
        env = {
            **os.environ,
            "CREWFLOW_HOME": home,
            "CREWFLOW_FORBID_REAL_LLM_CALLS": "1",
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        }
        # Warnings are errors in there too; ResourceWarnings are recorded (`leaks_recorded`).
        command = [sys.executable, "-X", "tracemalloc", "-W", "error", "-m", "tests.test_soak"]
        done = await anyio.run_process(command, env=env, cwd=ROOT, check=False)
    if done.returncode != 0:
        raise RuntimeError(done.stderr.decode(errors="replace")[-4000:])
    return report_from_json(done.stdout.decode())


def yes(holds: bool) -> str:
    return "yes" if holds else "no"


def section_of(report: SoakReport) -> Section:
    """The soak's table in ``docs/reliability.md``: a row per round."""
    growth = [None, *report.growth()]
    last = len(report.rounds)
    left = len(report.tasks_left) + len(report.resource_warnings)
    rows = [
        (
            str(number),
            str(CREWS),
            str(len(r.failed)),
            yes(r.max_in_flight <= CONCURRENCY),
            "baseline" if grew is None else yes(grew[0] < MB and grew[1] < 0.02),
            (str(left) if number == last else "-"),
            str(r.requests),
            str(r.rate_limited),
            str(r.max_in_flight),
            f"{r.traced_bytes / MB:.2f}",
            "-" if grew is None else f"{grew[0] / 1024:+.1f}",
            f"{r.seconds:.1f} s",
        )
        for number, (r, grew) in enumerate(zip(report.rounds, growth, strict=True), start=1)
    ]
    return Section(
        "soak",
        "Soak",
        (
            "round",
            "crews",
            "crews failed",
            f"in flight <= {CONCURRENCY}",
            "memory flat",
            "tasks, sockets left",
            "requests",
            "429s",
            "max in flight",
            "heap MB",
            "growth KB",
            "time",
        ),
        frozenset({"requests", "429s", "max in flight", "heap MB", "growth KB", "time"}),
        rows,
    )


async def soak_section() -> Section:
    """Run the soak in its own process and make its table (`tests.reliability.generate`)."""
    return section_of(await soak_in_a_process())


@pytest.mark.slow
@pytest.mark.timeout(300)  # about 90 s on a busy 2-core machine; the default 120 s is too tight
async def test_200_crews_ride_out_a_429_storm_within_their_limits_without_leaking() -> None:
    report = await soak_in_a_process()

    assert sum(r.rate_limited for r in report.rounds) > 0  # the storm did hit
    assert [r.failed for r in report.rounds] == [[]] * ROUNDS
    assert all(r.requests >= 2 * CREWS for r in report.rounds)
    assert all(r.max_in_flight <= CONCURRENCY for r in report.rounds)
    for grown, share in report.growth()[1:]:  # rounds 2 to 5, each from the one before
        assert grown < MB
        assert share < 0.02
    assert report.tasks_left == []
    assert report.resource_warnings == []
    # The reliability page shows these outcomes.
    assert differences(PAGE.read_text(encoding="utf-8"), section_of(report)) == []


if __name__ == "__main__":
    main()
