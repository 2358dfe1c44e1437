"""The README and the docs say true things: their commands and runnable code work as written.

Convention: a fenced ``python`` block preceded by the line ``<!-- runnable -->`` (invisible once
rendered) is executed offline by this file, top-level ``await`` allowed, as notebooks allow it.
Every other ``python`` block must at least compile.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").rglob("*.md"))
MARKER = "<!-- runnable -->"

README_COMMANDS = (
    "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/python examples/quickstart.py",  # noqa: E501 - verbatim
    "python3 -m venv .venv && .venv/bin/pip install -e '.[dev]' && .venv/bin/python -m pytest",
)

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^\n`]*)$")


@dataclass(frozen=True)
class Block:
    """One fenced code block of a Markdown file."""

    path: Path
    line: int  # 1-based line of the opening fence
    language: str
    code: str
    runnable: bool

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def fenced_blocks(path: Path) -> list[Block]:
    """The fenced code blocks of ``path`` (indented ones too, e.g. inside lists or admonitions)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        language = opening["info"].strip().split(" ")[0].lower()
        previous = next((line.strip() for line in reversed(lines[:index]) if line.strip()), "")
        body: list[str] = []
        index += 1
        while index < len(lines) and lines[index].strip() != fence:
            line = lines[index]
            body.append(line[len(indent) :] if line.startswith(indent) else line.lstrip())
            index += 1
        start = index - len(body)
        blocks.append(Block(path, start, language, "\n".join(body) + "\n", previous == MARKER))
        index += 1
    return blocks


ALL_BLOCKS = [block for path in [README, *PAGES] for block in fenced_blocks(path)]
PYTHON_BLOCKS = [block for block in ALL_BLOCKS if block.language in ("python", "py")]
RUNNABLE = [block for block in PYTHON_BLOCKS if block.runnable]


def compile_block(block: Block) -> object:
    # dont_inherit: this module's `from __future__ import annotations` must not leak into
    # the blocks (pydantic could not resolve their annotations).
    return compile(
        block.code, block.id, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True
    )


def test_readme_has_the_two_commands_verbatim_in_a_fenced_block() -> None:
    shell_lines = {
        line.strip()
        for block in fenced_blocks(README)
        if block.language in ("bash", "sh", "shell", "console", "")
        for line in block.code.splitlines()
    }
    for command in README_COMMANDS:
        assert command in shell_lines, f"README.md must show this command verbatim: {command}"


def test_the_ci_script_runs_the_readme_test_command() -> None:
    ci = ROOT / ".ci" / "run"
    if not ci.exists():
        pytest.skip("no .ci/run in this checkout")
    text = ci.read_text(encoding="utf-8")
    assert "pip install --quiet -e '.[dev]'" in text or "pip install -e '.[dev]'" in text
    assert "-m pytest" in text


def test_readme_and_docs_have_runnable_examples() -> None:
    assert any(block.path == README for block in RUNNABLE), "keep the README example runnable"
    assert len({block.path for block in RUNNABLE}) >= 5


def test_the_marker_is_only_used_before_python_blocks() -> None:
    for path in [README, *PAGES]:
        lines = path.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines):
            if line.strip() != MARKER:
                continue
            following = next((ln for ln in lines[number + 1 :] if ln.strip()), "")
            assert re.match(r"\s*```(python|py)\s*$", following), (
                f"{path.relative_to(ROOT)}:{number + 1}: {MARKER} must precede a ```python block"
            )


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=[block.id for block in PYTHON_BLOCKS])
def test_python_block_compiles(block: Block) -> None:
    compile_block(block)


@pytest.mark.parametrize("block", RUNNABLE, ids=[block.id for block in RUNNABLE])
def test_runnable_block_runs_offline(block: Block, capsys: pytest.CaptureFixture[str]) -> None:
    # The autouse fixture of conftest.py has removed any model or key and forbidden real calls.
    namespace: dict[str, object] = {"__name__": "__main__"}
    outcome = eval(compile_block(block), namespace)  # our own documentation, run as written
    if inspect.iscoroutine(outcome):
        asyncio.run(outcome)
    assert "Traceback" not in capsys.readouterr().err


def test_the_events_table_of_the_concepts_lists_every_event() -> None:
    from crewflow import events

    table = (ROOT / "docs" / "concepts" / "crews.md").read_text(encoding="utf-8")
    missing = [
        name
        for name in events.__all__
        if name not in ("Event", "EventSink")
        and f"| `{name}` | `{getattr(events, name).model_fields['kind'].default}` |" not in table
    ]
    assert not missing, f"docs/concepts/crews.md#events lacks {missing}"


# The site's strict build, and what its API reference must show: tests/test_reference.py.
