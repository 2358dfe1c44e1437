"""Compare the benchmark figures of two source trees: did any get worse by more than 3 %?

``python benchmarks/compare.py --before GIT_REF [--after PATH_OR_REF] [--repeat 5]
[--only NAME ...] [--threshold 3] [--order abab|abba] [--json PATH] [--output DIR]``

- Each side is a source tree: a git ref becomes a temporary ``git worktree add --detach``
  (removed at the end); ``--after`` defaults to the working tree holding this script, as it is
  (uncommitted changes included).
- Each tree runs its *own* benchmark scripts with ``--json``, with the tree first on
  ``PYTHONPATH`` and as the working directory, so the scripts and every interpreter they start
  (the loopback servers, ``python -c`` probes, fresh subprocesses) import that tree's
  ``crewflow``: checked once per side (a ``python -c`` and the loopback servers it starts) and on
  every run (from the script's own report). Each run records into a fresh ``CREWFLOW_HOME``.
- Before the runs, each tree's ``crewflow/`` and ``benchmarks/`` are compiled to bytecode (as an
  install has it), so that neither side pays compilation that the other does not; the caches
  this makes in a tree that is not temporary are removed at the end.
- Per repetition, per benchmark: before, then after (ABAB...; ``--order abba`` swaps the two
  every other repetition), so that both sides see the same machine; the median per figure over
  the repetitions is compared.

Prints one line per figure (before and after medians, the change, the spread of the runs) and
flags each figure worse than its before median by more than the threshold, in the figure's
direction (its ``lower_is_better``). Exits 1 when any is flagged, 0 when none is, 2 when the
comparison could not run (a ref without ``--json`` support, a benchmark that failed).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

HERE = Path(__file__).resolve().parent
BENCHMARKS = ("import_time", "overhead", "fanout", "dag", "scale", "rate", "store")
# Run only when named in --only: a ref older than the benchmark has no script for it, and the
# default comparison must keep working against such refs.
OPT_IN = ("adaptive", "report")
# Run in a tree with ``python -c``: print where crewflow comes from, then start the loopback
# servers as the benchmarks do, verbose (a flag read at startup: this process stays quiet).
PROBE = """
import os, sys
import crewflow
print(crewflow.__file__)
sys.path.insert(0, "benchmarks")
from _common import counting_server, loopback_server
os.environ["PYTHONVERBOSE"] = "1"
with loopback_server(0.0), counting_server(0.0):
    pass
"""
WIDTH = 100


class CompareError(Exception):
    """The comparison cannot go on; the message says why."""


@dataclass
class Side:
    """One source tree and the figures its benchmarks reported, one dict per repetition."""

    label: str
    spec: str
    tree: Path
    commit: str | None = None
    runs: list[dict[str, float]] = field(default_factory=list)
    lower_is_better: dict[str, bool] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def expected(self) -> Path:
        return self.tree / "crewflow" / "__init__.py"

    def describe(self) -> str:
        at = f"{self.spec} ({self.commit[:10]})" if self.commit else self.spec
        return f"{self.label}: {at} at {self.tree}"

    def env(self, home: Path) -> dict[str, str]:
        """The environment of this side's benchmarks: its tree first on the import path, a
        database of the run's own."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.tree), env.get("PYTHONPATH")]))
        env["CREWFLOW_HOME"] = str(home)
        return env

    def values(self, figure: str) -> list[float]:
        return [run[figure] for run in self.runs if figure in run]


# -- the source trees ----------------------------------------------------------------------------


def git(*args: str, cwd: Path) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise CompareError(f"git {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout.strip()


@contextlib.contextmanager
def materialise(label: str, spec: str | None, repo: Path) -> Iterator[Side]:
    """The tree of ``spec``: the working tree at ``repo`` (``None``), a git ref checked out in a
    temporary worktree for as long as the context lasts, or else a directory."""
    if spec is None:
        yield Side(label, "working tree", repo)
        return
    try:
        commit = git("rev-parse", "--verify", "--quiet", f"{spec}^{{commit}}", cwd=repo)
    except CompareError:
        if not Path(spec).is_dir():
            raise CompareError(f"--{label} {spec}: neither a commit nor a directory") from None
        yield Side(label, spec, Path(spec).resolve())
        return
    folder = Path(tempfile.mkdtemp(prefix=f"crewflow-compare-{label}-"))
    tree = folder / "tree"
    try:
        git("worktree", "add", "--detach", str(tree), commit, cwd=repo)
        yield Side(label, spec, tree, commit)
    finally:
        if tree.exists():
            with contextlib.suppress(CompareError):
                git("worktree", "remove", "--force", str(tree), cwd=repo)
        shutil.rmtree(folder, ignore_errors=True)


def check_support(sides: Sequence[Side], names: Sequence[str]) -> None:
    """Stop unless every side has each benchmark and its ``--json`` option."""
    for side in sides:
        for name in names:
            script = side.tree / "benchmarks" / f"{name}.py"
            if not script.exists():
                raise CompareError(f"{side.describe()} has no benchmarks/{name}.py")
            if "--json" not in script.read_text():
                raise CompareError(
                    f"{side.describe()}: benchmarks/{name}.py has no --json option: this tree "
                    "predates the benchmarks' figures, so there is nothing to compare. Use a ref "
                    "that has them (any commit after bench-compare was merged)."
                )


@contextlib.contextmanager
def compiled(side: Side, python: str) -> Iterator[None]:
    """Compile the tree's ``crewflow/`` and ``benchmarks/`` to bytecode for as long as the
    context lasts, removing the ``__pycache__`` folders this made."""
    roots = [side.tree / "crewflow", side.tree / "benchmarks"]
    before = {path for root in roots for path in root.rglob("__pycache__")}
    done = subprocess.run(
        [python, "-m", "compileall", "-q", *map(str, roots)], capture_output=True, text=True
    )
    if done.returncode != 0:
        print(f"warning: {side.label}: compileall failed: {done.stdout.strip()[-300:]}")
    try:
        yield
    finally:
        for path in {path for root in roots for path in root.rglob("__pycache__")} - before:
            shutil.rmtree(path, ignore_errors=True)


def check_imports(side: Side, python: str) -> set[str]:
    """The ``crewflow/__init__.py`` files that the interpreters this side's benchmarks start
    import: one started as they are (``python -c``, in the tree), and the loopback servers it
    starts through the tree's own ``_common`` (told to be verbose, so that they name the files
    they import on stderr)."""
    with tempfile.TemporaryDirectory() as home:
        done = subprocess.run(
            [python, "-c", PROBE],
            cwd=side.tree,
            env=side.env(Path(home)),
            capture_output=True,
            text=True,
            check=False,
        )
    found = set(done.stdout.split())
    servers = set(re.findall(r"(/\S*/crewflow/__init__\.py)\b", done.stderr))
    if done.returncode != 0 or not servers:
        tail = "\n".join(done.stderr.strip().splitlines()[-10:])
        raise CompareError(f"{side.describe()}: the import check failed:\n{tail}")
    if found | servers != {str(side.expected)}:
        raise CompareError(
            f"{side.describe()}: child interpreters import crewflow from "
            f"{', '.join(sorted(found | servers))} instead of {side.expected}"
        )
    return found | servers


# -- running the benchmarks ----------------------------------------------------------------------


def run_benchmark(side: Side, name: str, python: str, output: Path | None) -> float:
    """Run one of the side's benchmarks, add its figures to the side's last repetition and
    return the seconds it took."""
    with tempfile.TemporaryDirectory(prefix="crewflow-compare-run-") as folder:
        report, home = Path(folder) / "figures.json", Path(folder) / "home"
        home.mkdir()
        script = side.tree / "benchmarks" / f"{name}.py"
        started = time.perf_counter()
        done = subprocess.run(
            [python, str(script), "--json", str(report)],
            cwd=side.tree,
            env=side.env(home),
            capture_output=True,
            text=True,
            check=False,
        )
        seconds = time.perf_counter() - started
        if output is not None:
            log = output / f"{len(side.runs)}-{side.label}-{name}.txt"
            log.write_text(done.stdout + done.stderr)
        if not report.exists():
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
            raise CompareError(f"{side.label}: {name}.py failed (exit {done.returncode}):\n{tail}")
        document: dict[str, Any] = json.loads(report.read_text())
    if Path(document["crewflow"]) != side.expected:
        raise CompareError(
            f"{side.label}: {name}.py imported crewflow from {document['crewflow']} instead of "
            f"{side.expected}"
        )
    side.runs[-1].update(document["figures"])
    side.lower_is_better.update(document["lower_is_better"])
    side.seconds += seconds
    return seconds


def run_all(sides: Sequence[Side], args: argparse.Namespace, python: str) -> None:
    """Every benchmark on every side, ``args.repeat`` times, the sides alternating: before
    first every time (``abab``), or first every other time (``abba``), so that a benefit of
    running second (warm caches) does not always go to the same side."""
    names, repeat = args.only, args.repeat
    for index in range(repeat):
        started = time.perf_counter()
        for side in sides:
            side.runs.append({})
        order = sides if args.order == "abab" or index % 2 == 0 else sides[::-1]
        for name in names:
            times = {side.label: run_benchmark(side, name, python, args.output) for side in order}
            shown = "   ".join(f"{s.label} {times[s.label]:6.1f} s" for s in order)
            print(f"[{index + 1}/{repeat}] {name:<12} {shown}", flush=True)
        if index == 0:
            took = time.perf_counter() - started
            estimates = {f"--repeat {n}": took * n / 60 for n in sorted({repeat, 5})}
            shown = ", ".join(
                f"{what} about {minutes:.{0 if minutes >= 10 else 1}f} min"
                for what, minutes in estimates.items()
            )
            print(f"one repetition took {took:.0f} s: {shown}", flush=True)


# -- the comparison ------------------------------------------------------------------------------


@dataclass
class Row:
    """One figure compared."""

    figure: str
    before: float | None
    after: float | None
    lower_is_better: bool
    spread: float | None
    change: float | None = None
    worse: bool = False

    def judge(self, threshold: float) -> None:
        """Set the change in percent of the before median and whether it is a regression."""
        if self.before is None or self.after is None:
            return
        if self.before == 0:
            self.change = 0.0 if self.after == 0 else math.copysign(math.inf, self.after)
        else:
            self.change = (self.after - self.before) / abs(self.before) * 100
        self.worse = self.change > threshold if self.lower_is_better else self.change < -threshold


def spread(values: Sequence[float]) -> float | None:
    """(max - min) / |median| in percent; ``None`` for fewer than two values or a zero median."""
    middle = statistics.median(values) if values else 0
    if len(values) < 2 or middle == 0:
        return None
    return (max(values) - min(values)) / abs(middle) * 100


def compare(before: Side, after: Side, threshold: float) -> list[Row]:
    rows = []
    for figure in sorted(set(before.lower_is_better) | set(after.lower_is_better)):
        old, new = before.values(figure), after.values(figure)
        spreads = [s for s in (spread(old), spread(new)) if s is not None]
        row = Row(
            figure,
            statistics.median(old) if old else None,
            statistics.median(new) if new else None,
            after.lower_is_better.get(figure, before.lower_is_better.get(figure, True)),
            max(spreads) if spreads else None,
        )
        row.judge(threshold)
        rows.append(row)
    return rows


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _change(value: float | None) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "+inf" if value > 0 else "-inf"
    return f"{value:+.1f} %"


def _spread(value: float | None, threshold: float) -> str:
    if value is None:
        return "-"
    return f"{value:.1f} %{'*' if value > threshold else ''}"


def render(rows: Sequence[Row], threshold: float) -> str:
    """The comparison as a table that fits in `WIDTH` columns (longer names are cut)."""
    header = ["figure", "before", "after", "change", "spread", ""]
    lines = [header] + [
        [
            row.figure + ("" if row.lower_is_better else " ^"),
            _number(row.before),
            _number(row.after),
            _change(row.change),
            _spread(row.spread, threshold),
            "WORSE" if row.worse else "",
        ]
        for row in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    widths[0] = min(widths[0], WIDTH - sum(widths[1:]) - 2 * (len(widths) - 1))
    text = []
    for line in lines:
        name = line[0] if len(line[0]) <= widths[0] else line[0][: widths[0] - 1] + "~"
        numbers = [cell.rjust(width) for cell, width in zip(line[1:-1], widths[1:-1], strict=True)]
        text.append("  ".join([name.ljust(widths[0]), *numbers, line[-1]]).rstrip())
    text.insert(1, "  ".join("-" * width for width in widths[:-1]))
    return "\n".join(text)


def legend(rows: Sequence[Row], threshold: float, repeat: int) -> str:
    lines = [
        f"before, after: medians of {repeat} run{'s' if repeat > 1 else ''} per side; change: of "
        "the after median against the before one",
        "spread: (max - min) / median of the runs, the larger of the two sides",
        f"WORSE: worse by more than {threshold:g} % (lower is better unless marked ^)",
    ]
    if any(row.spread is not None and row.spread > threshold for row in rows):
        lines.append(
            f"*: runs spread more than {threshold:g} %: more repeats or a quieter machine would "
            "judge it better"
        )
    missing = [row.figure for row in rows if row.change is None]
    if missing:
        lines.append(f"on one side only, not judged: {', '.join(missing)}")
    return "\n".join(lines)


def write_json(path: Path, before: Side, after: Side, rows: Sequence[Row], args: Any) -> None:
    def side(one: Side) -> dict[str, object]:
        return {"spec": one.spec, "commit": one.commit, "tree": str(one.tree)}

    document = {
        "before": side(before),
        "after": side(after),
        "repeat": args.repeat,
        "threshold_pct": args.threshold,
        "benchmarks": args.only,
        "order": args.order,
        "worse": [row.figure for row in rows if row.worse],
        "figures": {
            row.figure: {
                "before": row.before,
                "after": row.after,
                "change_pct": None if row.change is None or math.isinf(row.change) else row.change,
                "lower_is_better": row.lower_is_better,
                "worse": row.worse,
                "spread_pct": row.spread,
                "before_runs": before.values(row.figure),
                "after_runs": after.values(row.figure),
            }
            for row in rows
        },
    }
    path.write_text(json.dumps(document, indent=2) + "\n")


# -- the command ---------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, metavar="GIT_REF", help="the tree before")
    parser.add_argument(
        "--after",
        metavar="PATH_OR_REF",
        help="the tree after (default: this working tree, uncommitted changes included)",
    )
    parser.add_argument("--repeat", type=int, default=5, help="runs per side (default 5)")
    parser.add_argument(
        "--only", nargs="+", choices=BENCHMARKS + OPT_IN, default=list(BENCHMARKS),
        metavar="NAME",
        help=f"benchmarks to run (default: {', '.join(BENCHMARKS)}; also {', '.join(OPT_IN)})",
    )  # fmt: skip
    parser.add_argument(
        "--threshold", type=float, default=3.0, help="percent worse that flags (default 3)"
    )
    parser.add_argument(
        "--order",
        choices=("abab", "abba"),
        default="abab",
        help="abab: before first every time (default); abba: first every other repetition",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the comparison here")
    parser.add_argument(
        "--output", type=Path, metavar="DIR", help="keep each run's printed tables in DIR"
    )
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    args.only = [name for name in BENCHMARKS + OPT_IN if name in args.only]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    python = sys.executable
    if args.output is not None:
        args.output.mkdir(parents=True, exist_ok=True)
    try:
        repo = Path(git("rev-parse", "--show-toplevel", cwd=HERE))
        with (
            materialise("before", args.before, repo) as before,
            materialise("after", args.after, repo) as after,
            compiled(before, python),
            compiled(after, python),
        ):
            check_support([before, after], args.only)
            for side in (before, after):
                found = ", ".join(sorted(check_imports(side, python)))
                print(f"{side.describe()}\n  crewflow from {found} (child and server processes)")
            runs = f"{args.repeat} run{'s' if args.repeat > 1 else ''} per side"
            order = "before first" if args.order == "abab" else "each first every other time"
            print(f"benchmarks: {' '.join(args.only)}; {runs}, alternating, {order}")
            run_all([before, after], args, python)
    except CompareError as error:
        print(f"compare: {error}", file=sys.stderr)
        return 2
    rows = compare(before, after, args.threshold)
    print()
    print(render(rows, args.threshold))
    print()
    print(legend(rows, args.threshold, args.repeat))
    worse = [row.figure for row in rows if row.worse]
    print(
        f"worse by more than {args.threshold:g} %: {len(worse)} of {len(rows)} figures; the "
        f"benchmarks took {before.seconds:.0f} s before and {after.seconds:.0f} s after"
    )
    if args.json is not None:
        write_json(args.json, before, after, rows, args)
    return 1 if worse else 0


if __name__ == "__main__":
    raise SystemExit(main())
