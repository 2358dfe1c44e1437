"""Auto concurrency: ``Crew(max_concurrency="auto")`` against a provider's hidden capacity.

A fan-out of ``--tasks`` (200) single-call tasks, 200 ms replies, ``process="parallel"``,
against a provider with a hidden capacity C (`crewflow.testing.Capacity`) for C in
``--capacities`` (2, 6, 16), in two variants: ``reject`` (a 429 with Retry-After 1 s once C
requests are in flight) and ``slow`` (every reply slows in proportion once more than C are in
flight). On each, every fixed setting of ``--fixed`` (``Limit(concurrency=n)`` on the model) and
``"auto"``: the first run, with nothing learned (a fresh store, a fresh registry), and a second
run in a fresh registry that starts from what the first recorded in the store. Per run: the
wall time, its ratio to the best fixed setting's, and the 429s the provider sent.

Goals, on every C and both variants: the first run within 1.30x of the best fixed setting with
at most 2C + 5 429s; the second within 1.05x with at most 2 429s.

Backends: ``--backend server`` (default), the loopback OpenAI server in a thread of this
process and the real ``openai`` SDK over a socket, in real time; ``--backend virtual``, the
same provider as a `FunctionLLM` in virtual time (`run_virtual`): no socket, exact, and fast
enough for every fixed setting from 1 to 32.

Run: ``python benchmarks/auto_concurrency.py [--backend server|virtual] [--tasks 200]
[--capacities 2,6,16] [--variants reject,slow] [--fixed 1,2,3,4,6,8,12,16,24,32] [--json PATH]``.
Not part of ``run.py`` (the server backend takes many minutes: a fixed setting of 1 alone is
40 s per capacity and variant).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import add_json_option, table

from crewflow import Agent, Crew, Limit, Limits, Task
from crewflow.llm import OpenAIChat
from crewflow.store import SQLiteStore
from crewflow.testing import Capacity, FunctionLLM, OpenAIServer, reset_limits
from crewflow.testing import run_virtual as _run_virtual

LATENCY = 0.2
RETRY_AFTER = 1.0


def fan_out(llm: Any, tasks: int, setting: int | str, store: Any) -> Crew:
    agent = Agent(role="Worker", goal="Answer", llm=llm)
    items = [Task(f"item {i}", agent=agent, context=[]) for i in range(tasks)]
    if setting == "auto":
        return Crew(tasks=items, process="parallel", max_concurrency="auto", store=store)
    limits = Limits({llm.limit_key: Limit(concurrency=int(setting))})
    return Crew(tasks=items, process="parallel", limits=limits, store=store)


def measure(
    backend: str, capacity: int, variant: str, tasks: int, settings: Sequence[int | str]
) -> list[tuple[str, float, int]]:
    """(setting, seconds, 429s) for each setting, then ``auto`` twice (first, second)."""
    hidden = Capacity(capacity, mode=variant, latency=LATENCY, retry_after=RETRY_AFTER)  # type: ignore[arg-type]
    results: list[tuple[str, float, int]] = []
    with tempfile.TemporaryDirectory(prefix="crewflow-auto-") as folder:
        server: OpenAIServer | None = None
        if backend == "server":
            server = OpenAIServer(responder=hidden).start_in_thread()
            llm: Any = OpenAIChat("test-model", base_url=server.base_url, api_key="unused")
        else:
            llm = FunctionLLM(hidden, model="hidden")
        try:
            runs = [*settings, "auto", "auto"]
            for index, setting in enumerate(runs):
                # Each run as in a new process: nothing live; the second auto run finds what
                # the first recorded in the store.
                reset_limits()
                hidden.rejected = 0
                seconds = run_one(backend, llm, tasks, setting, Path(folder) / "runs.db")
                name = (
                    str(setting)
                    if setting != "auto"
                    else f"auto ({runs[:index].count('auto') + 1})"
                )
                results.append((name, seconds, hidden.rejected))
        finally:
            if server is not None:
                server.stop_thread()
    return results


def run_one(backend: str, llm: Any, tasks: int, setting: int | str, path: Path) -> float:
    async def kickoff() -> float:
        async with SQLiteStore(path) as store:
            crew = fan_out(llm, tasks, setting if setting == "auto" else int(setting), store)
            loop = asyncio.get_running_loop()
            began = loop.time()
            await crew.kickoff()
            return loop.time() - began

    if backend == "virtual":
        return _run_virtual(kickoff)
    began = time.perf_counter()
    asyncio.run(kickoff())
    return time.perf_counter() - began


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("server", "virtual"), default="server")
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--capacities", default="2,6,16")
    parser.add_argument("--variants", default="reject,slow")
    parser.add_argument("--fixed", default=None, help="default: 1..32 virtual, a sample server")
    add_json_option(parser)
    args = parser.parse_args(argv)
    ints: Callable[[str], list[int]] = lambda text: [int(x) for x in text.split(",")]  # noqa: E731
    fixed = (
        ints(args.fixed)
        if args.fixed
        else list(range(1, 33))
        if args.backend == "virtual"
        else [1, 2, 3, 4, 6, 8, 12, 16, 24, 32]
    )
    figures: dict[str, float] = {}
    rows = []
    for variant in args.variants.split(","):
        for capacity in ints(args.capacities):
            results = measure(args.backend, capacity, variant, args.tasks, fixed)
            fixed_results = results[:-2]
            best_name, best, _ = min(fixed_results, key=lambda result: result[1])
            for name, seconds, rejected in results[-2:]:
                first = name == "auto (1)"
                ratio = seconds / best
                goal_ratio, goal_429 = (1.30, 2 * capacity + 5) if first else (1.05, 2)
                ok = ratio <= goal_ratio and rejected <= goal_429
                rows.append(
                    (
                        variant,
                        capacity,
                        name,
                        f"{seconds:.2f}",
                        f"{best:.2f} ({best_name})",
                        f"{ratio:.2f}x <= {goal_ratio}",
                        f"{rejected} <= {goal_429}",
                        "yes" if ok else "NO",
                    )
                )
                key = f"{variant}_c{capacity}_{'first' if first else 'second'}"
                figures[f"{key}_ratio"] = ratio
                figures[f"{key}_429s"] = rejected
            worst = max(fixed_results, key=lambda result: result[1])
            print(
                f"{variant} C={capacity}: fixed "
                + ", ".join(f"{n}={s:.2f}s/{r}x429" for n, s, r in fixed_results)
                + f" (worst {worst[0]})",
                flush=True,
            )
    print(
        table(
            f"auto concurrency: {args.tasks} tasks, {LATENCY * 1000:.0f} ms replies, "
            f"backend {args.backend}, fixed settings {fixed}",
            ("variant", "C", "run", "seconds", "best fixed", "ratio", "429s", "goal met"),
            rows,
        )
    )
    if args.json:
        import json

        Path(args.json).write_text(
            json.dumps(
                {
                    "figures": figures,
                    "lower_is_better": dict.fromkeys(figures, True),
                    "crewflow": str(Path(__file__).resolve().parent.parent),
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
