"""Render an example run's report in headless Chromium and save a screenshot of it.

    python scripts/report_screenshot.py                          # refresh docs/img/report.png
    python scripts/report_screenshot.py build/report.png --check # CI: render it again, and
                                                                 # fail if it came out blank

The run is an offline crew of twelve tasks under the parallel process, with a concurrency
limit that makes some wait, a retried failure, a fallback agent and a skipped task, so that
every kind of bar shows. Chromium is the system's (``/usr/bin/chromium``, or
``CREWFLOW_CHROMIUM``), driven by Playwright with the report tests' flags; it may load nothing
but the page's own file.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import struct
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHROMIUM = os.environ.get("CREWFLOW_CHROMIUM", "/usr/bin/chromium")
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
]
WIDTH, HEIGHT = 1200, 1180
MIN_COLOURS = 24
"""A page with its charts drawn has hundreds of colours; a blank or error page a handful."""


def example_crew() -> Any:
    """Twelve tasks in four layers; limited to two calls at once on the writers' model."""
    from crewflow import Agent, Crew, Limit, Limits, RetryPolicy, Task
    from crewflow.testing import FunctionLLM

    failures: dict[str, int] = {"draft": 1}

    async def answer(request: Any) -> str:
        import anyio

        text = request.messages[-1].content or ""
        name = next((n for n in DURATIONS if f"[{n}]" in text), "")
        await anyio.sleep(DURATIONS.get(name, 0.1))
        if failures.get(name, 0) > 0:
            failures[name] -= 1
            raise ValueError(f"{name}: the reply did not parse")
        if name == "fact_check" and "Checker" in (request.messages[0].content or ""):
            raise ValueError("the checker's model is down")
        return f"The {name.replace('_', ' ')}, done."

    fast = FunctionLLM(answer, model="research-mini")
    slow = FunctionLLM(answer, model="writer-large")
    researcher = Agent(role="Researcher", goal="Find facts", llm=fast)
    writer = Agent(role="Writer", goal="Write clearly", llm=slow)
    checker = Agent(role="Checker", goal="Check", llm=slow)
    editor = Agent(role="Editor", goal="Edit", llm=fast)
    retry = RetryPolicy(max_attempts=2, initial=0.0, jitter=False, retry_on=(ValueError,))

    def task(name: str, agent: Any, context: list[Any], **kw: Any) -> Any:
        return Task(f"[{name}] Do the {name}.", agent=agent, name=name, context=context, **kw)

    sources = task("sources", researcher, [])
    market = task("market_size", researcher, [])
    costs = task("cost_curves", researcher, [])
    policy = task("policy", researcher, [])
    outline = task("outline", writer, [sources, market])
    draft = task("draft", writer, [outline, costs], retry=retry)
    figures = task("figures", writer, [costs, market])
    glossary = task("glossary", writer, [policy])
    check = task("fact_check", checker, [draft], retry=retry, fallback_agent=editor)
    summary = task("summary", writer, [draft, figures])
    doomed = task("translation", writer, [glossary], retry=retry)
    failures["translation"] = 2
    publish = task("publish", editor, [check, summary, doomed])
    return Crew(
        tasks=[
            sources, market, costs, policy, outline, draft, figures, glossary, check, summary,
            doomed, publish,
        ],
        process="parallel",
        on_failure="continue",
        limits=Limits({"writer-large": Limit(concurrency=2)}),
        name="battery-report",
        store=None,
    )  # fmt: skip


DURATIONS = {
    "sources": 0.25,
    "market_size": 0.35,
    "cost_curves": 0.3,
    "policy": 0.15,
    "outline": 0.2,
    "draft": 0.35,
    "figures": 0.3,
    "glossary": 0.25,
    "fact_check": 0.2,
    "summary": 0.25,
    "translation": 0.1,
    "publish": 0.15,
}


async def example_report() -> Any:
    from crewflow.exceptions import CrewRunError
    from crewflow.report import Report
    from crewflow.store import MemoryStore

    store = MemoryStore()
    crew = example_crew().model_copy(update={"store": store})
    with contextlib.suppress(CrewRunError):  # the translation fails, publish is skipped
        await crew.kickoff()
    [run] = await store.list_runs(limit=1)
    return await Report.from_store(store, run.run_id)


def screenshot(html: Path, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright, tempfile.TemporaryDirectory() as profile:
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            headless=True,
            args=FLAGS,
            viewport={"width": WIDTH, "height": HEIGHT},
        )
        context.route(
            "**/*",
            lambda route: (
                route.continue_() if route.request.url.startswith("file://") else route.abort()
            ),
        )
        page = context.new_page()
        page.goto(html.as_uri())
        page.hover('[data-attempt="translation#2"]')  # a tooltip in the picture
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out), type="png")
        context.close()


def colours(png: bytes) -> tuple[int, float]:
    """How many distinct colours a PNG (8-bit RGB or RGBA, not interlaced, as Chromium writes
    them) has, and the share of its pixels that have the commonest one."""
    if png[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos, data, header = 8, b"", b""
    while pos < len(png):
        (size,) = struct.unpack(">I", png[pos : pos + 4])
        kind, body = png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + size]
        header = body if kind == b"IHDR" else header
        data += body if kind == b"IDAT" else b""
        pos += 12 + size
    width, height, depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", header)
    if depth != 8 or colour_type not in (2, 6) or interlace:
        raise ValueError(f"an unexpected PNG format: depth {depth}, colour type {colour_type}")
    step = 3 if colour_type == 2 else 4
    stride = width * step
    raw = zlib.decompress(data)
    previous = bytearray(stride)
    counts: dict[bytes, int] = {}
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        _unfilter(kind, line, previous, step)
        for x in range(0, stride, step * 4):  # every fourth pixel is plenty to tell
            pixel = bytes(line[x : x + 3])
            counts[pixel] = counts.get(pixel, 0) + 1
        previous = line
    return len(counts), max(counts.values()) / sum(counts.values())


def _unfilter(kind: int, line: bytearray, up: bytearray, step: int) -> None:
    for i in range(len(line)):
        left = line[i - step] if i >= step else 0
        corner = up[i - step] if i >= step else 0
        if kind == 1:
            line[i] = (line[i] + left) & 0xFF
        elif kind == 2:
            line[i] = (line[i] + up[i]) & 0xFF
        elif kind == 3:
            line[i] = (line[i] + (left + up[i]) // 2) & 0xFF
        elif kind == 4:
            p = left + up[i] - corner
            pa, pb, pc = abs(p - left), abs(p - up[i]), abs(p - corner)
            guess = left if pa <= pb and pa <= pc else up[i] if pb <= pc else corner
            line[i] = (line[i] + guess) & 0xFF


def main() -> int:
    import anyio

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=ROOT / "docs" / "img" / "report.png")
    parser.add_argument("--check", action="store_true", help="fail if the picture is blank")
    args = parser.parse_args()
    report = anyio.run(example_report)
    with tempfile.TemporaryDirectory() as folder:
        screenshot(report.save(Path(folder) / "report.html"), args.out)
    found, commonest = colours(args.out.read_bytes())
    size = args.out.stat().st_size
    sys.stdout.write(
        f"{args.out}: {size:,} bytes, {found} colours, the commonest on {commonest:.0%} of the"
        " pixels\n"
    )
    if args.check and (found < MIN_COLOURS or commonest > 0.95):
        sys.stdout.write(f"blank: fewer than {MIN_COLOURS} colours, or one on over 95 %\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
