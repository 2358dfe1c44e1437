"""``crewflow batch``: one kickoff per JSONL line, output lines in input order, the batch
recorded with each input's run id, inputs checked before any work, and ``--resume`` finishing a
batch whose driver was killed (nothing finished is sent again)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from rich.cells import cell_len
from rich.console import Console
from rich.text import Text
from typer.testing import CliRunner, Result

from crewflow import cli
from crewflow.cli._batch import BatchProgress
from crewflow.store import BatchRecord, SQLiteStore

CREW = str(Path(__file__).parent / "cli_crews" / "batch_crew.py")


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The crew file's state directory (its LLM calls are logged to ``calls`` there)."""
    directory = tmp_path / "state"
    directory.mkdir()
    monkeypatch.setenv("CLI_TEST_STATE", str(directory))
    return directory


def calls(state: Path) -> list[str]:
    path = state / "calls"
    return path.read_text().splitlines() if path.exists() else []


def inputs(tmp_path: Path, *topics: str, name: str = "in.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join(json.dumps({"topic": topic}) + "\n" for topic in topics))
    return path


def batch(*args: str, columns: int = 200) -> Result:
    return CliRunner().invoke(cli.app, ["batch", *args], env={"COLUMNS": str(columns)})


def lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def batch_id(stderr: str) -> str:
    return stderr.split("batch ", 1)[1].split()[0]


def stored_batch(db: Path, given: str) -> BatchRecord:
    async def read() -> BatchRecord | None:
        async with SQLiteStore(db) as store:
            return await store.get_batch(given)

    found = anyio.run(read)
    assert found is not None
    return found


def test_a_batch_prints_one_line_per_input_in_order_and_records_each_run(
    tmp_path: Path, state: Path
) -> None:
    db = tmp_path / "runs.db"
    topics = [f"t{i}" for i in range(6)]

    result = batch(CREW, str(inputs(tmp_path, *topics)), "--db", str(db), "-k", "3")

    assert result.exit_code == 0, result.output
    out = lines(result.stdout)
    assert [line["index"] for line in out] == list(range(6))
    assert [line["outputs"] for line in out] == [
        {"facts": f"facts of {t}", "summary": f"summary of {t}"} for t in topics
    ]
    recorded = stored_batch(db, batch_id(result.stderr))
    assert recorded.crew == "batched"
    assert recorded.inputs_hash.startswith("sha256:")
    assert [(i.index, i.run_id, i.status) for i in recorded.items] == [
        (line["index"], line["run_id"], "completed") for line in out
    ]
    assert "6 of 6 inputs completed, 0 failed" in result.stderr


def test_a_failed_input_gets_an_error_line_and_the_batch_exits_1(
    tmp_path: Path, state: Path
) -> None:
    db = tmp_path / "runs.db"
    out_file = tmp_path / "out.jsonl"

    result = batch(
        CREW, str(inputs(tmp_path, "a", "boom", "c")), "--db", str(db), "-o", str(out_file)
    )

    assert result.exit_code == 1, result.output
    assert result.stdout == ""  # the lines went to the file
    out = lines(out_file.read_text())
    assert [("outputs" in line, "error" in line) for line in out] == [
        (True, False),
        (False, True),
        (True, False),
    ]
    assert out[1]["error"]["type"] == "TaskFailed"
    assert "HTTP 400: the model refused boom" in out[1]["error"]["message"]
    assert out[1]["error"]["finished"] == []
    assert "failed inputs: 1; retry them with: crewflow batch --resume" in result.stderr
    statuses = [i.status for i in stored_batch(db, batch_id(result.stderr)).items]
    assert statuses == ["completed", "failed", "completed"]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ('{"topic": "a"}\n{"topic": \n', "in.jsonl line 2 is not JSON"),
        ('{"topic": "a"}\n\n["a"]\n', "in.jsonl line 3 is a JSON list, not an object"),
        ('{"topic": "a"}\n{"subject": "b"}\n', "in.jsonl line 2 lacks inputs the task "),
        ('{"topic": NaN}\n', "in.jsonl line 1 is not JSON"),
        ("\n  \n", "holds no inputs: write one JSON object per line"),
    ],
)
def test_bad_inputs_are_a_usage_error_naming_the_line_before_any_work(
    tmp_path: Path, state: Path, content: str, problem: str
) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text(content)
    db = tmp_path / "runs.db"

    result = batch(CREW, str(path), "--db", str(db))

    assert result.exit_code == 2, result.output
    assert problem in " ".join(result.stderr.split())
    assert calls(state) == []
    assert not db.exists()  # no batch, no run recorded


def test_resume_with_changed_inputs_is_refused_and_runs_nothing(
    tmp_path: Path, state: Path
) -> None:
    db = tmp_path / "runs.db"
    path = inputs(tmp_path, "a", "b")
    first = batch(CREW, str(path), "--db", str(db))
    assert first.exit_code == 0, first.output
    ran = calls(state)
    path.write_text(path.read_text() + '{"topic": "c"}\n')

    changed = batch("--resume", batch_id(first.stderr), "--db", str(db))
    other = batch(
        "--resume", batch_id(first.stderr), CREW, str(inputs(tmp_path, "a", "x", name="o.jsonl"))
    )
    unknown = batch("--resume", "nope", "--db", str(db))

    assert changed.exit_code == 2
    assert "is not the inputs batch" in " ".join(changed.stderr.split())
    assert other.exit_code == 2
    assert unknown.exit_code == 2
    assert "no batch 'nope'" in unknown.stderr
    assert calls(state) == ran


def test_resume_of_a_finished_batch_sends_nothing_and_writes_the_same_lines(
    tmp_path: Path, state: Path
) -> None:
    db, out_file = tmp_path / "runs.db", tmp_path / "out.jsonl"
    first = batch(CREW, str(inputs(tmp_path, "a", "b")), "--db", str(db), "-o", str(out_file))
    written, ran = out_file.read_text(), calls(state)

    again = batch("--resume", batch_id(first.stderr), "--db", str(db), "-o", str(out_file))

    assert again.exit_code == 0, again.output
    assert out_file.read_text() == written
    assert calls(state) == ran


def test_a_driver_killed_mid_batch_is_finished_by_resume_without_sending_anything_again(
    tmp_path: Path, state: Path
) -> None:
    db, out_file = tmp_path / "runs.db", tmp_path / "out.jsonl"
    path = inputs(tmp_path, "a", "b", "halt", "d")
    (state / "kill").touch()  # the crew kills its own process at "halt"'s summary
    command = [sys.executable, "-m", "crewflow", "batch", CREW, str(path), "--db", str(db)]
    env = {**os.environ, "CLI_TEST_STATE": str(state)}

    killed = subprocess.run(
        [*command, "-k", "1", "-o", str(out_file)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not out_file.exists()
    before = calls(state)
    assert before == [
        "a facts", "a summary", "b facts", "b summary", "halt facts", "halt summary",
    ]  # fmt: skip
    (state / "kill").unlink()

    resumed = batch("--resume", batch_id(killed.stderr), "--db", str(db), "-o", str(out_file))

    assert resumed.exit_code == 0, resumed.output
    # Only what had not finished was sent: halt's summary (its facts were checkpointed) and d.
    assert sorted(calls(state)[len(before) :]) == ["d facts", "d summary", "halt summary"]
    out = lines(out_file.read_text())
    assert [line["index"] for line in out] == [0, 1, 2, 3]
    assert out[2]["outputs"] == {"facts": "facts of halt", "summary": "summary of halt"}
    items = stored_batch(db, batch_id(killed.stderr)).items
    assert [line["run_id"] for line in out] == [item.run_id for item in items]
    assert [item.status for item in items] == ["completed"] * 4


def test_a_batch_another_live_process_is_carrying_out_is_not_resumed_beside_it(
    tmp_path: Path, state: Path
) -> None:
    from crewflow.store import Lease

    db = tmp_path / "runs.db"
    first = batch(CREW, str(inputs(tmp_path, "a", "b")), "--db", str(db))
    given = batch_id(first.stderr)
    held = stored_batch(db, given).items[1].run_id

    async def hold() -> None:
        # Run "b" as a live process holds it: running, under a lease of this (live) process.
        async with SQLiteStore(db) as store:
            await store.reopen_run(held)
            assert await store.take_lease(held, Lease.new(), replacing=None)

    anyio.run(hold)
    ran = calls(state)

    again = batch("--resume", given, "--db", str(db))

    assert again.exit_code == 2, again.output
    assert "being carried out by another process" in again.stderr
    assert f"input 1 (run {held})" in again.stderr
    assert calls(state) == ran
    assert [item.status for item in stored_batch(db, given).items] == ["completed"] * 2


@pytest.mark.parametrize("columns", [60, 80, 120])
def test_the_batch_renders_at_the_terminal_width_without_tracebacks(
    tmp_path: Path, state: Path, columns: int
) -> None:
    env = {"COLUMNS": str(columns), "TTY_COMPATIBLE": "1", "TERM": "xterm-256color"}
    db = tmp_path / "runs.db"
    args = ["batch", CREW, str(inputs(tmp_path, "a", "boom")), "--db", str(db)]

    result = CliRunner().invoke(cli.app, args, env=env)

    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert len(lines(result.stdout)) == 2
    # The live count fits one row of the terminal, whatever its width.
    view = BatchProgress(Console(width=columns), "f" * 32, 100_000)
    view.done, view.failed, view.running = 99_000, 990, 10
    out = Console(file=io.StringIO(), width=columns, force_terminal=True)
    out.print(view)
    rows = Text.from_ansi(out.file.getvalue()).plain.splitlines()  # type: ignore[attr-defined]
    assert len(rows) == 1
    assert cell_len(rows[0]) <= columns


def test_batch_without_its_files_says_what_to_give(tmp_path: Path) -> None:
    result = batch(CREW)

    assert result.exit_code == 2
    assert "give FILE.py and INPUTS.jsonl, or --resume BATCH_ID" in result.stderr
