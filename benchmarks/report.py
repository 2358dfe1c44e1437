"""The run report (`crewflow.Report`): render time and file size of a 1,000-task run's page.

A 1,000-task random DAG (each task depends on 1-3 earlier ones, as ``scale.py``) runs once on
``OfflineLLM(latency=0)`` under the parallel process into a SQLite file, prompts recorded. Then:

- first render: in ``--processes`` fresh interpreters, from before ``import crewflow`` to the
  page in hand: open the store, ``Report.from_store`` (records, prompts, the optimizer's
  analysis of the crew's runs), ``report.html()`` (Jinja2's import and template compile
  included); and, in those interpreters, the part after ``from_store`` alone;
- warm: in this process, after one render, ``--repeats`` more of ``Report.from_store`` then
  ``html()``, and of ``html()`` alone on a fresh `Report` built from the same records;
- the page's size in bytes (and gzipped, as an email attachment travels).

Figures are medians, in seconds. No goal: before/after figures for changes to the report.

Run: ``python benchmarks/report.py [--tasks 1000] [--repeats 7] [--processes 5]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Figures, add_json_option, median, table

FRESH = """
import time
start = time.perf_counter()
import anyio
from crewflow import Report
from crewflow.store import SQLiteStore

async def read():
    async with SQLiteStore({path!r}, read_only=True) as store:
        return await Report.from_store(store, {run_id!r})

report = anyio.run(read)
read_at = time.perf_counter()
page = report.html()
end = time.perf_counter()
print(end - start, end - read_at, len(page.encode()))
"""


def record_run(path: Path, size: int, seed: int = 7) -> str:
    """Run the 1,000-task crew into the SQLite file at ``path``; the run's id."""
    import anyio

    from crewflow import Agent, Crew, Task
    from crewflow.llm.offline import OfflineLLM

    rng = random.Random(seed)
    agent = Agent(role="Worker", goal="Do one step", llm=OfflineLLM(latency=0))
    tasks: list[Task] = []
    for index in range(size):
        deps = rng.sample(range(index), min(index, rng.choice((1, 2, 3))))
        context = [tasks[d] for d in deps]
        tasks.append(Task(f"Step {index}", name=f"s{index}", context=context))
    crew = Crew(
        tasks=tasks, agents=[agent], process="parallel", store=str(path), name="report-bench"
    )
    return anyio.run(crew.kickoff).run_id


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--processes", type=int, default=5)
    add_json_option(parser)
    args = parser.parse_args()
    import anyio

    from crewflow.report import Report
    from crewflow.store import SQLiteStore

    figures = Figures("report")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "runs.db"
        run_id = record_run(path, args.tasks)

        fresh = []
        for _ in range(args.processes):
            code = FRESH.format(path=str(path), run_id=run_id)
            done = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, check=True
            )
            total, render, size = done.stdout.split()
            fresh.append((float(total), float(render), int(size)))

        async def read() -> Report:
            async with SQLiteStore(path, read_only=True) as store:
                return await Report.from_store(store, run_id)

        page = anyio.run(read).html()  # warms Jinja2 and the template
        whole, render = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            report = anyio.run(read)
            report.html()
            whole.append(time.perf_counter() - start)
            again = dataclasses.replace(report)  # the same records, no page cached yet
            start = time.perf_counter()
            again.html()
            render.append(time.perf_counter() - start)

    size, zipped = len(page.encode()), len(gzip.compress(page.encode()))
    rows = [
        ["first: import, read, render", median([f[0] for f in fresh])],
        ["first: render alone", median([f[1] for f in fresh])],
        ["warm: read and render", median(whole)],
        ["warm: render alone", median(render)],
    ]
    print(
        table(
            f"report: a {args.tasks}-task run from SQLite, seconds (medians; fresh: "
            f"{args.processes} interpreters, warm: {args.repeats} repeats)",
            ["what", "seconds"],
            rows,
        )
    )
    print(f"page: {size:,} bytes ({zipped:,} gzipped)")
    figures.add(f"tasks{args.tasks}.first_render_s", rows[0][1])  # type: ignore[arg-type]
    figures.add(f"tasks{args.tasks}.warm_render_s", rows[3][1])  # type: ignore[arg-type]
    figures.add(f"tasks{args.tasks}.page_bytes", float(size))
    figures.write(args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
