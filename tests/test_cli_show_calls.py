"""What ``crewflow show`` says of an attempt's calls: its tool calls (counted in the tasks table,
each failed one listed with its error) and, with ``--prompts``, what each LLM call sent and got
back; in text at 60, 80 and 120 columns, and in JSON.

The records are written straight into a `SQLiteStore`, as the runtime records them; the last
test runs a crew whose tool fails with ``crewflow run`` and shows what it recorded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from crewflow.llm import Message, ToolCall
from crewflow.store import PromptRecord, ToolCallRecord
from tests.test_cli_store import (
    CREWS,
    attempt,
    fill,
    invoke,
    invoke_json,
    on_terminal,
    output,
    record,
)

if TYPE_CHECKING:
    from pathlib import Path

    from crewflow.store import AttemptRecord

WIDTHS = [60, 80, 120]
RUN = "5e1f0c2b9a8d4e7f8a6b5c4d3e2f1a0b"
LONG_WORD = "https://example.com/" + "a" * 150  # no space to wrap at
SYSTEM = "You are Researcher. Your goal: Find facts about sodium-ion batteries and their makers"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh ``CREWFLOW_HOME``: the default database is ``home / "runs.db"``."""
    monkeypatch.setenv("CREWFLOW_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def tool_calls() -> tuple[ToolCallRecord, ...]:
    return (
        ToolCallRecord(tool="search", ok=True, duration=0.25),
        ToolCallRecord(
            tool="fetch",
            ok=False,
            duration=1.5,
            error_type="ConnectionError",
            error="tool 'fetch' raised ConnectionError: the host is down\nretried 3 times",
        ),
        ToolCallRecord(tool="search", ok=True, duration=0.5),
    )


def prompts() -> tuple[PromptRecord, ...]:
    ask = ToolCall("call-1", "fetch", f'{{"url": "{LONG_WORD}"}}')
    return (
        PromptRecord(
            messages=(Message("system", SYSTEM), Message("user", "Find facts\n\nabout batteries")),
            reply=Message("assistant", None, (ask,)),
            tools=("search", "fetch"),
        ),
        PromptRecord(
            repeated=3,
            messages=(
                Message("tool", "Error: the host is down", tool_call_id="call-1", name="fetch"),
            ),
            tools=("search", "fetch"),
            error="LLMError: HTTP 503: busy",
        ),
        PromptRecord(
            repeated=4,
            tools=("search", "fetch"),
            reply=Message("assistant", "Sodium-ion cells: cheaper, heavier. " * 8),
            cut=1234,
        ),
    )


def with_calls(row: AttemptRecord, **fields: Any) -> AttemptRecord:
    return row.model_copy(update={"tool_calls": tool_calls(), "prompts": prompts(), **fields})


def fill_run(path: Path) -> None:
    """A run whose ``facts`` took two attempts (the first with tool calls and prompts), and
    whose ``draft`` recorded no prompts."""
    attempts = [
        with_calls(attempt("facts", 1, 0, 2, status="failed", error="boom")),
        attempt("facts", 2, 2, 3),
        attempt("draft", 1, 3, 4),
    ]
    fill(path, [record(RUN)], {RUN: attempts}, [output(RUN, "facts", "five facts", 3)])


def squeezed(lines: list[str]) -> list[str]:
    return [" ".join(line.split()) for line in lines]


# -- tool calls ---------------------------------------------------------------------------------


def test_show_counts_each_tasks_tool_calls_and_lists_the_failed_ones(home: Path) -> None:
    fill_run(home / "runs.db")

    lines = squeezed(invoke("show", RUN).stdout.splitlines())

    header = next(line for line in lines if line.startswith("task "))
    assert "tool calls" in header
    facts = next(line for line in lines if line.startswith("facts "))
    assert "3, 1 failed" in facts
    start = lines.index("Failed tool calls (1)")
    assert lines[start + 1] == (
        "facts, attempt 1, fetch (1.50 s): tool 'fetch' raised ConnectionError: the host is down …"
    )
    assert "retried 3 times" not in lines


def test_show_full_prints_a_tool_error_whole(home: Path) -> None:
    fill_run(home / "runs.db")

    lines = squeezed(invoke("show", RUN, "--full").stdout.splitlines())

    start = lines.index("Failed tool calls (1)")
    assert lines[start + 1].endswith("the host is down")
    assert lines[start + 2] == "retried 3 times"


def test_a_run_without_tool_calls_has_no_tool_column(home: Path) -> None:
    fill(home / "runs.db", [record(RUN)], {RUN: [attempt("facts", 1, 0, 2)]})

    stdout = invoke("show", RUN).stdout

    assert "tool calls" not in stdout
    assert "Failed tool calls" not in stdout
    assert "Prompts" not in stdout  # only with --prompts


@pytest.mark.parametrize("width", WIDTHS)
def test_show_with_tool_calls_fits_the_terminal(home: Path, width: int) -> None:
    fill_run(home / "runs.db")

    code, lines = on_terminal(width, "show", RUN)

    assert code == 0
    assert "Failed tool calls (1)" in lines
    assert max(len(line) for line in lines) <= width


# -- prompts ------------------------------------------------------------------------------------


def test_show_prompts_prints_each_call_of_each_attempt(home: Path) -> None:
    fill_run(home / "runs.db")

    lines = invoke("show", RUN, "--prompts").stdout.splitlines()

    shown = squeezed(lines[lines.index("Prompts") :])
    assert shown[1].startswith("facts · attempt 1 · Writer · openai/gpt-4o-mini ─")
    assert shown[2:9] == [
        "call 1",
        "tools: search, fetch",
        "system",
        SYSTEM,
        "user",
        "Find facts",
        "",
    ]
    assert shown[9:12] == [
        "about batteries",
        "reply (assistant)",
        f'calls fetch({{"url": "{LONG_WORD}"}})',
    ]
    assert shown[12:16] == [
        "call 2 · after the 3 messages above",
        "tool fetch",
        "Error: the host is down",
        "no reply: LLMError: HTTP 503: busy",
    ]
    assert shown[16] == "call 3 · after the 4 messages above · 1,234 characters not recorded"
    assert shown[17] == "reply (assistant)"
    assert shown[18].startswith("Sodium-ion cells: cheaper, heavier.")
    rest = shown[next(i for i, line in enumerate(shown) if line.startswith("facts · attempt 2")) :]
    assert rest[1] == "no prompt recorded"
    assert rest[2].startswith("draft · attempt 1")
    assert rest[3] == "no prompt recorded"


@pytest.mark.parametrize("width", WIDTHS)
def test_show_prompts_wraps_every_line_to_the_terminal(home: Path, width: int) -> None:
    fill_run(home / "runs.db")

    code, lines = on_terminal(width, "show", RUN, "--prompts")

    assert code == 0
    assert "Prompts" in lines
    assert max(len(line) for line in lines) <= width
    # The long word is folded, not lost.
    assert "a" * 150 in "".join(line.strip() for line in lines)


def test_show_prompts_of_a_run_that_recorded_none_says_so(home: Path) -> None:
    fill(home / "runs.db", [record(RUN)], {RUN: [attempt("facts", 1, 0, 2)]})

    stdout = invoke("show", RUN, "--prompts").stdout

    assert "none recorded (the crew had record_prompts=False, or made no call)" in stdout


def test_show_json_holds_tool_calls_and_prompts_only_when_asked(home: Path) -> None:
    fill_run(home / "runs.db")

    plain = invoke_json("show", RUN)
    asked = invoke_json("show", RUN, "--prompts")

    assert plain["attempts"][0]["tool_calls"][1] == {
        "tool": "fetch",
        "ok": False,
        "duration": 1.5,
        "error_type": "ConnectionError",
        "error": "tool 'fetch' raised ConnectionError: the host is down\nretried 3 times",
    }
    assert all("prompts" not in row for row in plain["attempts"])
    assert [len(row["prompts"]) for row in asked["attempts"]] == [3, 0, 0]
    first = asked["attempts"][0]["prompts"][0]
    assert first["messages"][0] == {
        "role": "system",
        "content": SYSTEM,
        "tool_calls": [],
        "tool_call_id": None,
        "name": None,
    }
    assert first["reply"]["tool_calls"][0]["name"] == "fetch"


# -- end to end ---------------------------------------------------------------------------------


def test_a_failed_tool_call_of_a_crewflow_run_is_in_show_and_its_prompts(home: Path) -> None:
    ran = invoke("run", str(CREWS / "tool_fails.py"), "--json")
    assert ran.exit_code == 0, ran.output
    run_id = invoke_json("runs")[0]["run_id"]

    shown = squeezed(invoke("show", run_id, "--prompts").stdout.splitlines())

    assert any(line.startswith("facts, attempt 1, lookup (") for line in shown)
    assert any(
        line.endswith("tool 'lookup' raised ConnectionError: the index is down") for line in shown
    )
    assert "Error: tool 'lookup' raised ConnectionError: the index is down" in shown
    assert "Tides: 42" in shown
