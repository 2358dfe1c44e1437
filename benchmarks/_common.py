"""Shared pieces of the benchmarks: the loopback server in its own process, timing, tables."""

from __future__ import annotations

import atexit
import contextlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Iterator, Mapping, Sequence

os.environ.setdefault("LITELLM_MODE", "PRODUCTION")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
# Crews record into the default store, as they do for users (that cost is part of what the
# benchmarks measure), but into a database of this run, not the user's own, removed when the run
# ends (subprocesses inherit it and end first).
if "CREWFLOW_HOME" not in os.environ:
    os.environ["CREWFLOW_HOME"] = tempfile.mkdtemp(prefix="crewflow-bench-")
    atexit.register(shutil.rmtree, os.environ["CREWFLOW_HOME"], ignore_errors=True)


@contextlib.contextmanager
def loopback_server(latency: float = 0.0) -> Iterator[str]:
    """Run `crewflow.testing.OpenAIServer` in a subprocess (so it does not share our GIL) and
    yield its base URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "crewflow.testing.server", "--latency", str(latency)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        base_url = process.stdout.readline().strip()
        if not base_url.startswith("http://127.0.0.1:"):
            raise RuntimeError(f"the loopback server did not start: {base_url!r}")
        yield base_url
    finally:
        process.terminate()
        process.wait(timeout=10)


class Figures:
    """A benchmark's key figures, written by ``--json PATH`` for `compare.py`.

    Each figure is crewflow's own cost (a ratio to the floor or the bound, a time per task, a
    peak RSS, seconds), named ``<benchmark>.<case>.<metric>``: stable while the benchmark's
    arguments are its defaults, and carrying its unit (``_s``, ``_ms_per_task``, ``_mb``...) or
    being a ratio or a count. The file holds three keys: ``figures`` (a flat
    ``{name: number}``), ``lower_is_better`` (``{name: bool}``, the direction of each) and
    ``crewflow`` (the ``crewflow/__init__.py`` this process imported).
    """

    def __init__(self, benchmark: str) -> None:
        self.benchmark = benchmark
        self.values: dict[str, float] = {}
        self.lower_is_better: dict[str, bool] = {}

    def add(self, name: str, value: float, *, lower_is_better: bool = True) -> None:
        """Record ``<benchmark>.<name>``."""
        full = f"{self.benchmark}.{name}"
        if full in self.values:
            raise ValueError(f"figure {full!r} recorded twice")
        if not math.isfinite(value):
            raise ValueError(f"figure {full!r} is not a finite number: {value!r}")
        self.values[full] = value
        self.lower_is_better[full] = lower_is_better

    def write(self, path: str | None) -> None:
        """Write the figures to ``path`` as JSON (nothing when ``path`` is ``None``)."""
        if path is None:
            return
        import crewflow

        document = {
            "figures": self.values,
            "lower_is_better": self.lower_is_better,
            "crewflow": crewflow.__file__,
        }
        Path(path).write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")


def add_json_option(parser: argparse.ArgumentParser) -> None:
    """The ``--json PATH`` option every benchmark takes."""
    parser.add_argument(
        "--json",
        metavar="PATH",
        help="also write the key figures to PATH as JSON (see _common.Figures)",
    )


def median(values: Sequence[float]) -> float:
    """The median of ``values``."""
    return statistics.median(values)


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table (no rich: benchmarks print the same everywhere)."""
    cells = [[str(c) for c in header], *[[_fmt(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [title, "-" * len(title)]
    for index, row in enumerate(cells):
        lines.append("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)))
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


# -- a loopback server in its own process that answers questions about what it saw -------------

# Run with ``python -c``: the server runs on its own loop in a thread of that process; the main
# thread answers one command per stdin line ("stats", "reset", "messages") with one JSON line on
# stdout, and stops the server when stdin closes. A prompt holding ``[[KEY]]`` (first occurrence in
# the last user message) is answered after ``durations[KEY]`` seconds instead of the fixed latency.
# With a busy limit (argv[3]), a request that arrives while more than that many are in flight
# (itself included) is answered 429 with Retry-After argv[4] seconds, as a provider's rate limit
# would.
_COUNTING_SERVER = r"""
import json, re, sys, time
from crewflow.testing import Error, OpenAIServer, Slow, Text

latency = float(sys.argv[1])
durations = {}
if len(sys.argv) > 2 and sys.argv[2]:
    with open(sys.argv[2]) as file:
        durations = json.load(file)
busy = int(sys.argv[3]) if len(sys.argv) > 3 and sys.argv[3] else None
retry_after = float(sys.argv[4]) if len(sys.argv) > 4 else 1.0
key = re.compile(r"\[\[([^\]]+)\]\]")

def responder(request):
    if busy is not None and server.in_flight > busy:
        return Error(429, "too many requests in flight", retry_after=retry_after)
    last = request.last_user_message
    match = key.search(last)
    if match is None or match.group(1) not in durations:
        return None
    return Slow(durations[match.group(1)], Text("loopback reply: " + match.group(1)))

server = OpenAIServer(latency=latency, responder=responder).start_in_thread()
print(server.base_url, flush=True)
for line in sys.stdin:
    command = line.strip()
    if command == "reset":
        server.reset_counters()
        answer = {}
    elif command == "messages":
        answer = {"messages": [r.messages for r in list(server.requests)]}
    elif command == "stats":
        # The reply's bytes leave before the handler records its status: let handlers finish.
        deadline = time.monotonic() + 2.0
        while server.in_flight and time.monotonic() < deadline:
            time.sleep(0.001)
        requests = list(server.requests)
        answer = {
            "requests": len(requests),
            "max_in_flight": server.max_in_flight,
            "in_flight": server.in_flight,
            "received_at": [r.received_at for r in requests],
            "finished_at": [r.finished_at for r in requests],
            "statuses": [r.status for r in requests],
        }
    else:
        answer = {"error": f"unknown command {command!r}"}
    print(json.dumps(answer), flush=True)
server.stop_thread()
"""


@dataclass
class ServerStats:
    """What the counting server saw since its last reset.

    Attributes:
        requests: Chat requests received.
        max_in_flight: The most requests it was handling at once.
        received_at: ``time.monotonic()`` (the server's clock) when each request was read.
        finished_at: When each was answered (``None`` while in flight).
        statuses: The HTTP status sent for each (``None``: nothing sent).
    """

    requests: int
    max_in_flight: int
    received_at: list[float]
    finished_at: list[float | None]
    statuses: list[int | None]

    def max_in_window(self, seconds: float = 1.0) -> int:
        """The most requests received in any window of ``seconds``."""
        times = sorted(self.received_at)
        best, first = 0, 0
        for last, stamp in enumerate(times):
            while stamp - times[first] >= seconds:
                first += 1
            best = max(best, last - first + 1)
        return best

    @property
    def errors(self) -> int:
        """Requests not answered with 200 (429s included)."""
        return sum(1 for status in self.statuses if status != 200)


class CountingServer:
    """Handle on a `counting_server` subprocess."""

    def __init__(self, process: subprocess.Popen[str], base_url: str) -> None:
        self._process = process
        self.base_url = base_url

    def _ask(self, command: str) -> dict[str, object]:
        assert self._process.stdin is not None
        assert self._process.stdout is not None
        self._process.stdin.write(command + "\n")
        self._process.stdin.flush()
        return json.loads(self._process.stdout.readline())

    def reset(self) -> None:
        """Forget the requests seen so far and the in-flight peak."""
        self._ask("reset")

    def messages(self) -> list[list[dict[str, Any]]]:
        """The ``messages`` of each chat request received since the last `reset`, in order:
        exactly what a client sent, for a floor that replays it."""
        return self._ask("messages")["messages"]  # type: ignore[return-value]

    def stats(self) -> ServerStats:
        """The server's counters since the last `reset`, once the requests in flight have
        ended (up to 2 s): a blocking round trip, to call outside timed code."""
        answer = self._ask("stats")
        return ServerStats(
            requests=answer["requests"],  # type: ignore[arg-type]
            max_in_flight=answer["max_in_flight"],  # type: ignore[arg-type]
            received_at=answer["received_at"],  # type: ignore[arg-type]
            finished_at=answer["finished_at"],  # type: ignore[arg-type]
            statuses=answer["statuses"],  # type: ignore[arg-type]
        )


@contextlib.contextmanager
def counting_server(
    latency: float = 0.0,
    durations: Mapping[str, float] | None = None,
    *,
    busy_limit: int | None = None,
    retry_after: float = 1.0,
) -> Iterator[CountingServer]:
    """Like `loopback_server` (its own process, so timings do not share our GIL), but the
    handle also reads the server's own counters (`CountingServer.stats`), and a prompt holding
    ``[[KEY]]`` is answered after ``durations[KEY]`` seconds instead of ``latency``. With
    ``busy_limit``, a request arriving while more than ``busy_limit`` are in flight (itself
    included) is answered 429 with a Retry-After of ``retry_after`` seconds."""
    with tempfile.TemporaryDirectory() as folder:
        path = ""
        if durations:
            path = str(Path(folder) / "durations.json")
            Path(path).write_text(json.dumps(dict(durations)))
        process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _COUNTING_SERVER,
                str(latency),
                path,
                "" if busy_limit is None else str(busy_limit),
                str(retry_after),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert process.stdout is not None
            base_url = process.stdout.readline().strip()
            if not base_url.startswith("http://127.0.0.1:"):
                raise RuntimeError(f"the counting server did not start: {base_url!r}")
            yield CountingServer(process, base_url)
        finally:
            if process.stdin is not None:
                process.stdin.close()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.terminate()
                process.wait(timeout=10)


def user_message(description: str, context: Sequence[tuple[str, str]] = ()) -> str:
    """The user message crewflow sends for a task (no expected output), written out by hand
    for the floors: the description, then each dependency's output in a ``<context>`` block."""
    if not context:
        return description
    blocks = "\n".join(f'<context task="{name}">\n{text}\n</context>' for name, text in context)
    return f"{description}\n\nContext from earlier tasks:\n{blocks}"


def spread(values: Sequence[int]) -> str:
    """``"7"`` when every run gave 7, else ``"min-max"``."""
    low, high = min(values), max(values)
    return str(low) if low == high else f"{low}-{high}"


async def timed_kickoff(crew: Any) -> float:
    """Seconds one kickoff of ``crew`` takes (checking that every task produced an output)."""
    started = time.perf_counter()
    result = await crew.kickoff()
    elapsed = time.perf_counter() - started
    assert len(result.outputs) == len(crew.tasks)
    return elapsed


# -- a first run in fresh interpreters -------------------------------------------------------------

PROBE = "--probe"
"""The hidden option a benchmark file takes to make one first run in a fresh interpreter."""


def probe(run: Callable[[], object]) -> None:
    """Time ``run`` (one side's first run, everything it needs made inside it) and print its
    seconds and CPU seconds as one JSON line: the body of a benchmark's ``--probe`` mode."""
    started, cpu = time.perf_counter(), time.process_time()
    run()
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    print(json.dumps({"seconds": seconds, "cpu": cpu}))


def fresh_first_runs(
    script: str, arguments: Sequence[str], processes: int
) -> dict[str, list[tuple[float, float]]]:
    """Each side's first run (seconds, CPU seconds) in ``processes`` fresh interpreters,
    alternating the floor and crewflow, each with an empty ``CREWFLOW_HOME`` (so crewflow
    creates its store inside the timing): ``python script --probe SIDE *arguments``, whose
    `probe` prints the figures."""
    runs: dict[str, list[tuple[float, float]]] = {"floor": [], "crewflow": []}
    with tempfile.TemporaryDirectory(prefix="crewflow-first-") as folder:
        for index in range(processes):
            for which in ("floor", "crewflow") if index % 2 == 0 else ("crewflow", "floor"):
                output = subprocess.run(
                    [sys.executable, script, PROBE, which, *arguments],
                    env={**os.environ, "CREWFLOW_HOME": tempfile.mkdtemp(dir=folder)},
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
                answer = json.loads(output.strip().splitlines()[-1])
                runs[which].append((answer["seconds"], answer["cpu"]))
    return runs


def first_kickoff_table(
    figures: Figures, case: str, firsts: dict[str, list[tuple[float, float]]], goal: float
) -> str:
    """The table of `fresh_first_runs`' medians, and their figures
    (``CASE.fresh_first_kickoff_s``, ``..._ratio_to_floor``, ``..._cpu_s``)."""

    def med(which: str, index: int) -> float:
        return median([run[index] for run in firsts[which]])

    floor, ours = med("floor", 0), med("crewflow", 0)
    ratio = ours / floor
    figures.add(f"{case}.fresh_first_kickoff_s", ours)
    figures.add(f"{case}.fresh_first_kickoff_ratio_to_floor", ratio)
    figures.add(f"{case}.fresh_first_kickoff_cpu_s", med("crewflow", 1))
    processes = len(firsts["crewflow"])
    return table(
        f"first kickoff: median of {processes} fresh interpreters a side "
        "(from after the imports to the result in hand)",
        ["", "seconds", "min", "cpu seconds", "ratio to the floor's first run", "goal"],
        [
            ["floor", floor, min(r[0] for r in firsts["floor"]), med("floor", 1), "", ""],
            [
                "crewflow",
                ours,
                min(r[0] for r in firsts["crewflow"]),
                med("crewflow", 1),
                ratio,
                f"<= {goal:.2f} ({'met' if ratio <= goal else 'MISSED'})",
            ],
        ],
    )
