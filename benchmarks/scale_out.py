"""Scale-out: 1,000 kickoffs of a 3-task crew in one process and on a local Ray cluster.

The crew is a chain of three tasks (``process="sequential"``) whose agent calls
``openai/bench-model`` on the loopback server (its own process), which answers every request
after ``--latency`` seconds (0.1 s). The kickoffs record into one SQLite file, as kickoffs on a
one-machine cluster share it. Measured in one run, at equal concurrency (``--concurrency``
kickoffs at once, 16 by default):

- floor: a bare ``openai.AsyncOpenAI`` client (made once) runs the same 1,000 chains of three
  calls under ``asyncio.Semaphore(concurrency)``, each call with the previous answer as context;
- in-process: ``crew.kickoff_for_each(inputs, concurrency=...)`` in this process;
- on Ray: the same call with ``executor=RayExecutor()`` on a local cluster of ``--cpus`` CPUs
  that this benchmark starts (outside the timing, reported apart): a pool of one worker actor
  per CPU, the kickoffs spread over them. The Ray side runs twice: its first batch starts the
  worker processes (what a user's first batch on a fresh cluster pays), the second finds them
  warm.

Reported: throughput (kickoffs per second) of each; the ratio of each to the theoretical bound
(``ceil(kickoffs / concurrency)`` waves of three calls of ``latency`` seconds) and to the floor;
Ray's overhead per kickoff, (Ray's wall time - in-process wall time) / kickoffs, with the CPU
time of both beside it (this process's own, plus, for Ray, every process of the local cluster:
its workers, raylet and GCS, read with psutil).

Then the shared limit: ``--rpm-kickoffs`` kickoffs (100) on Ray under
``Limit(rpm=--rpm)`` (600 a minute, a burst of 10) for the model. The server counts the most
requests it received in any 1 s window: a limit shared across the workers keeps it at or under
burst + rpm / 60 (20); per-worker limits would let each worker send that much.

Run: ``python benchmarks/scale_out.py [--kickoffs 1000] [--concurrency 16] [--latency 0.1]
[--cpus 2] [--rpm-kickoffs 100] [--rpm 600] [--json PATH]``. About 2 minutes on a 2-core
machine. Needs ``pip install 'crewflow[ray]'``. Kept out of CI.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Figures, add_json_option, counting_server, table, user_message

from crewflow import Agent, Crew, Limit, Limits, Task

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from _common import CountingServer
    from openai import AsyncOpenAI

MODEL = "bench-model"
ROLE, GOAL = "Writer", "Write one short paragraph"
SYSTEM = f"You are {ROLE}. Your goal: {GOAL}"
STEPS = ("outline {topic}", "draft {topic}", "polish {topic}")
NAMES = ("outline", "draft", "polish")
RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_AUTH_MODE": "disabled",
}


def build_crew(store: Path, limits: Limits | None = None) -> Crew:
    """The 3-task chain; its model is resolved from the environment on whichever machine runs
    it (``OPENAI_BASE_URL``, ``OPENAI_API_KEY``), as a crew shipped to Ray workers must be."""
    agent = Agent(role=ROLE, goal=GOAL, llm=f"openai/{MODEL}")
    tasks = [Task(step, name=name) for step, name in zip(STEPS, NAMES, strict=True)]
    return Crew(tasks=tasks, agents=[agent], store=store, limits=limits)


async def bare_chains(client: AsyncOpenAI, kickoffs: int, concurrency: int) -> None:
    """The floor: each chain's three calls in turn, ``concurrency`` chains at once."""
    gate = asyncio.Semaphore(concurrency)

    async def chain(index: int) -> None:
        async with gate:
            context: list[tuple[str, str]] = []
            for step, name in zip(STEPS, NAMES, strict=True):
                reply = await client.chat.completions.create(
                    model=MODEL,
                    messages=[
                        {"role": "system", "content": SYSTEM},
                        {
                            "role": "user",
                            "content": user_message(step.format(topic=index), context[-1:]),
                        },
                    ],
                )
                context.append((name, reply.choices[0].message.content or ""))

    await asyncio.gather(*(chain(i) for i in range(kickoffs)))


def cluster_cpu() -> Callable[[], float]:
    """A reader of the CPU seconds used so far by this process and every process under it (a
    local Ray cluster's GCS, raylet and workers are its descendants). A process that ends
    between two readings takes its seconds with it: the workers of a batch stay alive."""
    import psutil

    me = psutil.Process()
    seen: dict[int, float] = {}

    def read() -> float:
        for child in me.children(recursive=True):
            try:
                times = child.cpu_times()
            except psutil.Error:
                continue
            seen[child.pid] = times.user + times.system
        return time.process_time() + sum(seen.values())

    return read


async def timed(run: Callable[[], Any], cpu: Callable[[], float]) -> tuple[float, float]:
    """Wall and CPU seconds of one awaited ``run()``."""
    wall, used = time.perf_counter(), cpu()
    await run()
    return time.perf_counter() - wall, cpu() - used


async def kickoffs(crew: Crew, inputs: Sequence[dict[str, str]], **options: Any) -> None:
    results = await crew.kickoff_for_each(inputs, progress=False, **options)
    assert len(results) == len(inputs)
    assert all(len(r.outputs) == len(STEPS) for r in results)


async def measure(
    server: CountingServer, args: argparse.Namespace, folder: Path
) -> dict[str, tuple[float, float]]:
    """Wall and CPU seconds of each side, and the shared limit's run (its server stats are
    read by the caller)."""
    from openai import AsyncOpenAI

    from crewflow.executors import RayExecutor

    inputs = [{"topic": str(i)} for i in range(args.kickoffs)]
    crew = build_crew(folder / "runs.db")
    here = time.process_time
    seconds: dict[str, tuple[float, float]] = {}
    async with AsyncOpenAI(base_url=server.base_url, api_key="bench", max_retries=0) as client:
        await bare_chains(client, 2, 2)
        seconds["floor"] = await timed(
            lambda: bare_chains(client, args.kickoffs, args.concurrency), here
        )
    seconds["in-process"] = await timed(
        lambda: kickoffs(crew, inputs, concurrency=args.concurrency), here
    )
    import ray

    started = time.perf_counter()
    ray.init(
        num_cpus=args.cpus,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        configure_logging=False,
    )
    seconds["cluster start"] = (time.perf_counter() - started, 0.0)
    try:
        executor = RayExecutor()
        cpu = cluster_cpu()
        for which in ("Ray, first batch", "Ray, warm"):
            seconds[which] = await timed(
                lambda: kickoffs(crew, inputs, concurrency=args.concurrency, executor=executor),
                cpu,
            )
        limited = build_crew(
            folder / "limited.db",
            Limits({f"openai/{MODEL}": Limit(rpm=args.rpm, burst=args.burst)}),
        )
        await asyncio.sleep(args.burst * 60 / args.rpm)  # a full bucket, outside the timing
        server.reset()
        seconds["Ray, shared rpm"] = await timed(
            lambda: kickoffs(
                limited,
                [{"topic": str(i)} for i in range(args.rpm_kickoffs)],
                concurrency=args.concurrency,
                executor=executor,
            ),
            cpu,
        )
    finally:
        ray.shutdown()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kickoffs", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--rpm-kickoffs", type=int, default=100)
    parser.add_argument("--rpm", type=float, default=600.0)
    parser.add_argument("--burst", type=int, default=10)
    add_json_option(parser)
    args = parser.parse_args()
    try:
        import ray  # noqa: F401
    except ImportError:
        sys.exit("scale_out.py needs Ray: pip install 'crewflow[ray]'")

    figures = Figures("scale_out")
    with counting_server(args.latency) as server, tempfile.TemporaryDirectory() as folder:
        os.environ.update(RAY_ENV)
        os.environ["OPENAI_BASE_URL"] = server.base_url
        os.environ["OPENAI_API_KEY"] = "sk-bench-scale-out"
        seconds = asyncio.run(measure(server, args, Path(folder)))
        shared = server.stats()

    n, c = args.kickoffs, args.concurrency
    bound = math.ceil(n / c) * len(STEPS) * args.latency
    floor = seconds["floor"][0]
    local_wall, local_cpu = seconds["in-process"]
    rows = []
    for which in ("floor", "in-process", "Ray, first batch", "Ray, warm"):
        wall, cpu = seconds[which]
        rows.append([which, wall, n / wall, cpu, wall / bound, wall / floor])
    print(
        table(
            f"{n} kickoffs of a 3-task chain, {c} at once, {args.latency * 1000:.0f} ms replies "
            f"(bound {bound:.2f} s); Ray cluster start {seconds['cluster start'][0]:.2f} s",
            ["", "wall s", "kickoffs/s", "cpu s", "ratio to bound", "ratio to floor"],
            rows,
        )
    )
    overhead_rows = []
    for which in ("Ray, first batch", "Ray, warm"):
        wall, cpu = seconds[which]
        per = (wall - local_wall) / n * 1000
        cpu_per = (cpu - local_cpu) / n * 1000
        overhead_rows.append([which, per, cpu / n * 1000, local_cpu / n * 1000, cpu_per])
        key = "ray_first" if which == "Ray, first batch" else "ray_warm"
        figures.add(f"{key}.overhead_ms_per_kickoff", per)
        figures.add(f"{key}.cpu_ms_per_kickoff", cpu / n * 1000)
        figures.add(f"{key}.ratio_to_floor", wall / floor)
    figures.add("in_process.ratio_to_floor", local_wall / floor)
    figures.add("in_process.cpu_ms_per_kickoff", local_cpu / n * 1000)
    print(
        table(
            "Ray's overhead per kickoff: (Ray wall - in-process wall) / kickoffs",
            ["", "ms per kickoff", "cpu ms/kickoff (Ray)", "cpu ms (in-process)", "cpu ms more"],
            overhead_rows,
        )
    )
    allowed = args.burst + args.rpm / 60
    most = shared.max_in_window(1.0)
    figures.add("shared_rpm.over_limit", max(0, most - allowed))
    print(
        table(
            f"shared limit: {args.rpm_kickoffs} kickoffs on Ray under Limit(rpm={args.rpm:g}, "
            f"burst={args.burst})",
            ["requests", "most in 1 s", "allowed in 1 s", "non-200", "wall s", "held"],
            [
                [
                    shared.requests,
                    most,
                    allowed,
                    shared.errors,
                    seconds["Ray, shared rpm"][0],
                    "yes" if most <= allowed and shared.errors == 0 else "NO",
                ]
            ],
        )
    )
    figures.write(args.json)


if __name__ == "__main__":
    main()
