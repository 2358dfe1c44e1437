"""The ``crewflow`` commands that read and use the run database: ``runs``, ``show``, ``resume``,
``optimize`` and ``cache clear``.

Most tests fill a `SQLiteStore` with records directly (no crew runs); the end-to-end ones run
the offline crews in ``tests/cli_crews/`` with ``crewflow run`` and read what they recorded.
Every test has its own ``CREWFLOW_HOME``, so the default database is a fresh file.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from typer.testing import CliRunner, Result

from crewflow import cli
from crewflow.llm._types import Usage
from crewflow.store import (
    AddedTaskRecord,
    AttemptRecord,
    Lease,
    LeaseOwner,
    MemoryStore,
    OutputRow,
    RunRecord,
    RunSource,
    RunStatus,
    SQLiteStore,
    TaskKind,
    TaskStatus,
)

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

CREWS = Path(__file__).parent / "cli_crews"
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh ``CREWFLOW_HOME``: the default database is ``home / "runs.db"``, not yet there."""
    monkeypatch.setenv("CREWFLOW_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def invoke(*args: str) -> Result:
    # Wide enough that rich never wraps a line the assertions look for.
    return CliRunner().invoke(cli.app, list(args), env={"COLUMNS": "250"})


def invoke_json(*args: str) -> Any:
    result = invoke(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def record(
    run_id: str,
    *,
    crew: str = "research",
    minute: int = 0,
    status: RunStatus = RunStatus.COMPLETED,
    seconds: float | None = 12.5,
    graph: dict[str, list[str]] | None = None,
    cost: float | None = None,
    source: RunSource | None = None,
    lease: Lease | None = None,
) -> RunRecord:
    """A run's record; a running one is held by this process unless ``lease`` says otherwise
    (as a run being executed is)."""
    started = T0 + timedelta(minutes=minute)
    if lease is None and status == RunStatus.RUNNING:
        lease = Lease.new()
    return RunRecord(
        run_id=run_id,
        crew=crew,
        fingerprint="f1",
        source=source,
        process="parallel",
        process_reason="wide graph",
        inputs={"topic": "batteries"},
        status=status,
        started=started,
        ended=None if seconds is None else started + timedelta(seconds=seconds),
        usage=Usage(requests=3, prompt_tokens=1200, completion_tokens=34, cost=cost),
        graph={"facts": [], "draft": ["facts"]} if graph is None else graph,
        lease=lease,
    )


def attempt(task: str, number: int, start: float, end: float, **fields: Any) -> AttemptRecord:
    return AttemptRecord(
        task=task,
        number=number,
        agent="Writer",
        start=T0 + timedelta(seconds=start),
        end=T0 + timedelta(seconds=end),
        duration=end - start,
        model="openai/gpt-4o-mini",
        **{"status": TaskStatus.COMPLETED, **fields},
    )


def output(run_id: str, task: str, text: str, at: float) -> OutputRow:
    return OutputRow(
        run_id=run_id,
        task=task,
        text=text,
        agent="Writer",
        model="openai/gpt-4o-mini",
        finished_at=T0 + timedelta(seconds=at),
    )


def fill(
    path: Path,
    runs: Sequence[RunRecord],
    attempts: Mapping[str, Sequence[AttemptRecord]] | None = None,
    outputs: Sequence[OutputRow] = (),
    cached: int = 0,
    added: Mapping[str, Sequence[AddedTaskRecord]] | None = None,
) -> None:
    """Write the runs, then each run's added tasks and attempts (by run id), outputs and as
    many cached replies as asked."""

    async def write() -> None:
        async with SQLiteStore(path) as store:
            for run in runs:
                await store.start_run(run)
            for run_id, tasks in (added or {}).items():
                await store.add_tasks(run_id, tasks)
            for run_id, rows in (attempts or {}).items():
                for row in rows:
                    await store.record_attempt(run_id, row)
            for item in outputs:
                await store.save_output(item)
            for number in range(cached):
                await store.cache_put(f"key-{number}", "reply")

    anyio.run(write)


def local(moment: datetime) -> str:
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


# -- crewflow runs ------------------------------------------------------------------------------


def test_runs_without_a_database_says_so_and_creates_nothing(home: Path) -> None:
    result = invoke("runs")

    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"no runs recorded yet (database: {home / 'runs.db'})"
    assert not home.exists()


def test_runs_json_without_a_database_is_an_empty_list(home: Path) -> None:
    assert invoke_json("runs") == []
    assert not home.exists()


def test_runs_json_lists_the_records_newest_first(home: Path) -> None:
    fill(
        home / "runs.db",
        [record("old", minute=0), record("new", minute=2), record("mid", minute=1, crew="other")],
    )

    listed = invoke_json("runs")

    assert [run["run_id"] for run in listed] == ["new", "mid", "old"]
    assert listed[0] == record("new", minute=2).model_dump(mode="json")


def test_runs_crew_keeps_only_that_crews_runs(home: Path) -> None:
    fill(
        home / "runs.db",
        [record("a", minute=0), record("b", minute=1, crew="other"), record("c", minute=2)],
    )

    assert [run["run_id"] for run in invoke_json("runs", "--crew", "research")] == ["c", "a"]
    assert [run["run_id"] for run in invoke_json("runs", "-c", "other")] == ["b"]


def test_runs_of_an_unknown_crew_says_none_were_recorded(home: Path) -> None:
    fill(home / "runs.db", [record("a")])

    result = invoke("runs", "--crew", "nobody")

    assert result.exit_code == 0
    assert "no runs of crew 'nobody' recorded yet" in result.stdout


def test_runs_shows_twenty_by_default_and_limit_changes_it(home: Path) -> None:
    fill(home / "runs.db", [record(f"run-{n:02d}", minute=n) for n in range(25)])

    default = invoke_json("runs")
    two = invoke_json("runs", "--limit", "2")

    assert len(default) == 20
    assert default[0]["run_id"] == "run-24"
    assert [run["run_id"] for run in two] == ["run-24", "run-23"]


@pytest.mark.parametrize("limit", ["0", "-3"])
def test_runs_refuses_a_limit_below_one(home: Path, limit: str) -> None:
    result = invoke("runs", "--limit", limit)

    assert result.exit_code == 2
    assert "--limit" in result.output
    assert "greater than or equal to 1" in result.output


def test_runs_table_has_a_row_per_run_with_status_duration_size_and_usage(home: Path) -> None:
    fill(
        home / "runs.db",
        [
            record("done-run", minute=0, cost=0.01234),
            record("failed-run", minute=1, status=RunStatus.FAILED, seconds=75),
            record("live-run", minute=2, status=RunStatus.RUNNING, seconds=None),
        ],
    )

    result = invoke("runs")

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    header = next(line for line in lines if "run id" in line)
    for column in ("crew", "process", "status", "started", "duration", "tasks", "tokens", "cost"):
        assert column in header
    done = next(line for line in lines if line.startswith("done-run"))
    failed = next(line for line in lines if line.startswith("failed-run"))
    live = next(line for line in lines if line.startswith("live-run"))
    assert lines.index(live) < lines.index(failed) < lines.index(done)  # newest first
    assert done.split()[1:4] == ["research", "parallel", "completed"]
    assert local(T0)[:16] in done  # local time, to the minute
    assert "12.5 s" in done
    assert "1,234" in done  # prompt + completion tokens
    assert "$0.0123" in done
    assert " 2 " in done  # tasks in the run's graph
    assert failed.split()[3] == "failed"
    assert "1m 15s" in failed
    assert live.split()[3:5] == ["running", local(T0)[:10]]
    assert live.count("running") == 2  # status, and no duration yet


def on_terminal(width: int, *args: str) -> tuple[int, list[str]]:
    """The command's exit code and output lines as a ``width``-column terminal shows them
    (without the colour codes): there, tables leave out columns to fit."""
    # TERM=dumb would make rich assume 80 columns.
    env = {"COLUMNS": str(width), "TTY_COMPATIBLE": "1", "TERM": "xterm-256color"}
    result = CliRunner().invoke(cli.app, list(args), env=env)
    assert not result.exception or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, ANSI.sub("", result.stdout).splitlines()


@pytest.mark.parametrize("width", [60, 80, 120])
def test_runs_without_any_cost_fits_a_narrow_terminal(home: Path, width: int) -> None:
    # No run has a cost, so there is no cost column to leave out (issue 11: it raised).
    long_id = "0123456789abcdef0123456789abcdef"
    fill(home / "runs.db", [record(long_id), record("other", minute=1, crew="a-long-crew-name")])

    code, lines = on_terminal(width, "runs")

    assert code == 0
    assert lines[0].split()[:2] == ["run", "id"]
    assert not any("cost" in line for line in lines)
    assert any(line.startswith(long_id + " ") for line in lines)  # an id is never cut
    assert max(len(line) for line in lines) <= width


def lapsed_lease() -> Lease:
    """The lease of a process on another host, which expired a minute ago."""
    owner = LeaseOwner(host="elsewhere", boot_id="another-boot", pid=4242)
    return Lease(token="t-1", owner=owner, expires=datetime.now(UTC) - timedelta(minutes=1))


def interrupted(run_id: str, *, minute: int = 0, from_file: bool = True) -> RunRecord:
    """A run recorded running whose process stopped renewing its lease."""
    source = RunSource(file="/crews/research.py", attribute="crew") if from_file else None
    return record(
        run_id,
        minute=minute,
        status=RunStatus.RUNNING,
        seconds=None,
        source=source,
        lease=lapsed_lease(),
    )


def test_runs_shows_an_interrupted_run_with_the_command_that_finishes_it(home: Path) -> None:
    fill(
        home / "runs.db",
        [
            record("done-run"),
            interrupted("dead-run", minute=1),
            record("live-run", minute=2, status=RunStatus.RUNNING, seconds=None),
        ],
    )

    result = invoke("runs")

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    dead = next(line for line in lines if line.startswith("dead-run"))
    live = next(line for line in lines if line.startswith("live-run"))
    assert dead.split()[3] == "interrupted"
    assert "running" not in dead
    assert live.split()[3] == "running"
    assert lines[-2:] == [
        "1 run was interrupted (nothing executes it any more); finish it with:",
        "  crewflow resume dead-run",
    ]
    listed = {run["run_id"]: run for run in invoke_json("runs")}
    assert listed["dead-run"]["status"] == "interrupted"
    assert listed["dead-run"]["lease"]["owner"]["host"] == "elsewhere"
    assert listed["live-run"]["status"] == "running"


def test_runs_names_the_database_and_the_file_a_run_started_from_code_needs(
    home: Path, tmp_path: Path
) -> None:
    db = tmp_path / "my.db"
    fill(db, [interrupted("from-code", from_file=False), interrupted("from-file", minute=1)])

    result = invoke("runs", "--db", str(db))

    lines = result.stdout.splitlines()
    start = lines.index(
        "2 runs were interrupted (nothing executes them any more); finish each with:"
    )
    assert lines[start + 1 : start + 3] == [
        f"  crewflow resume from-file --db {db}",
        f"  crewflow resume from-code --file FILE.py --db {db}",
    ]
    assert 'await crew.resume("RUN_ID")' in " ".join(lines[start + 3 :])


def test_runs_prints_the_commands_of_five_interrupted_runs_and_counts_the_others(
    home: Path,
) -> None:
    fill(home / "runs.db", [interrupted(f"dead-{n}", minute=n) for n in range(7)])

    lines = invoke("runs").stdout.splitlines()

    commands = [line for line in lines if line.startswith("  crewflow resume")]
    assert commands == [f"  crewflow resume dead-{n}" for n in (6, 5, 4, 3, 2)]
    assert lines[-1] == "  … and 2 more"


def test_show_of_an_interrupted_run_says_why_and_how_to_finish_it(home: Path) -> None:
    fill(
        home / "runs.db",
        [interrupted("dead-run")],
        {"dead-run": [attempt("facts", 1, 0, 2)]},
        [output("dead-run", "facts", "five facts", 2)],
    )

    result = invoke("show", "dead-run")

    assert result.exit_code == 0, result.output
    raw = result.stdout.splitlines()
    lines = [" ".join(line.split()) for line in raw]
    assert "status interrupted" in lines
    why = next(line for line in lines if line.startswith("why "))
    assert why.startswith("why its lease, held by elsewhere, pid 4242, expired at ")
    assert "1 run was interrupted (nothing executes it any more); finish it with:" in raw
    assert "  crewflow resume dead-run" in raw
    assert "facts completed 1 +0.00 s 2.00 s openai/gpt-4o-mini 0" in lines
    assert "draft not run" in lines  # nothing will run it unless the run is resumed
    assert invoke_json("show", "dead-run")["run"]["status"] == "interrupted"


@pytest.mark.parametrize("width", [60, 80, 120])
def test_an_interrupted_run_fits_a_narrow_terminal_in_runs_and_show(home: Path, width: int) -> None:
    long_id = "0123456789abcdef0123456789abcdef"
    fill(home / "runs.db", [interrupted(long_id), record("done-run", minute=1)])

    for command in ("runs", "show"):
        code, lines = on_terminal(width, command, *([long_id] if command == "show" else []))

        assert code == 0
        assert f"  crewflow resume {long_id}" in lines
        assert any("interrupted" in line for line in lines[:-2])
        assert max(len(line) for line in lines) <= width


def test_runs_reads_the_database_given_with_db(home: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere" / "my.db"
    fill(elsewhere, [record("there")])

    assert [run["run_id"] for run in invoke_json("runs", "--db", str(elsewhere))] == ["there"]
    assert invoke_json("runs") == []


def test_a_file_that_is_not_a_database_exits_2_in_one_line(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.db"
    bogus.write_text("this is not SQLite, just text that is long enough to be read as a header")

    result = invoke("runs", "--db", str(bogus))

    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: the run database {bogus} failed")
    assert len(result.stderr.strip().splitlines()) == 1


# -- crewflow show ------------------------------------------------------------------------------


def fill_failed_run(path: Path, *, long_output: bool = False) -> None:
    """A failed run: ``facts`` completed, ``draft`` failed twice, ``post`` never ran."""
    text = "\n".join(f"fact {n}" for n in range(30)) if long_output else "five facts"
    failed: dict[str, Any] = {"status": TaskStatus.FAILED, "error_type": "LLMError"}
    rejected = "HTTP 400: the request was rejected"
    fill(
        path,
        [
            record(
                "r1",
                status=RunStatus.FAILED,
                seconds=75,
                graph={"facts": [], "draft": ["facts"], "post": ["draft"]},
                cost=0.5,
                source=RunSource(file="/crews/research.py", attribute="crew"),
            )
        ],
        {
            "r1": [
                attempt(
                    "facts",
                    1,
                    0,
                    2,
                    usage=Usage(prompt_tokens=100, completion_tokens=20, cost=0.25),
                ),
                attempt("draft", 1, 2.5, 3, error="HTTP 503", limit_wait=1.5, **failed),
                attempt("draft", 2, 4, 9, error=rejected, cache_hits=1, **failed),
            ]
        },
        [output("r1", "facts", text, 2)],
    )


def test_show_prints_the_header_with_process_reason_source_inputs_and_usage(home: Path) -> None:
    fill_failed_run(home / "runs.db")

    result = invoke("show", "r1")

    assert result.exit_code == 0, result.output
    lines = [" ".join(line.split()) for line in result.stdout.splitlines()]
    for expected in (
        "run id r1",
        "crew research",
        "process parallel (wide graph)",
        "status failed",
        f"started {local(T0)}",
        f"ended {local(T0 + timedelta(seconds=75))}",
        "duration 1m 15s",
        "source /crews/research.py (crew)",
        'inputs {"topic": "batteries"}',
        "requests 3",
        "prompt tokens 1,200",
        "completion tokens 34",
        "cost $0.5000",
    ):
        assert expected in lines


def test_show_lists_the_tasks_in_graph_order_with_their_attempts(home: Path) -> None:
    fill_failed_run(home / "runs.db")

    result = invoke("show", "r1")

    lines = [" ".join(line.split()) for line in result.stdout.splitlines()]
    header = next(line for line in lines if line.startswith("task "))
    assert header == ("task status attempts start duration model tokens cost cache hits limit wait")
    tasks = [line for line in lines if line.split(" ")[0] in ("facts", "draft", "post")]
    assert tasks == [
        "facts completed 1 +0.00 s 2.00 s openai/gpt-4o-mini 120 $0.2500",
        "draft failed 2 +2.50 s 6.50 s openai/gpt-4o-mini 0 1 1.50 s",
        "post skipped",  # it depends on draft, which failed
    ]


def test_show_prints_each_failed_attempts_error(home: Path) -> None:
    fill_failed_run(home / "runs.db")

    result = invoke("show", "r1")

    assert "draft: attempt 1 failed: LLMError: HTTP 503" in result.stdout
    assert "draft: attempt 2 failed: LLMError: HTTP 400: the request was rejected" in result.stdout


def test_show_prints_the_outputs_titled_by_task_agent_and_model(home: Path) -> None:
    fill_failed_run(home / "runs.db")

    result = invoke("show", "r1")

    assert "─ facts ─" in result.stdout
    assert "│ five facts " in result.stdout
    assert "Writer · openai/gpt-4o-mini" in result.stdout


def test_show_cuts_a_long_output_unless_full(home: Path) -> None:
    fill_failed_run(home / "runs.db", long_output=True)

    cut = invoke("show", "r1").stdout
    full = invoke("show", "r1", "--full").stdout

    assert "fact 19" in cut
    assert "fact 20" not in cut
    assert "… 10 more lines; --full shows all" in cut
    assert "fact 29" in full
    assert "more lines" not in full


def test_show_json_holds_the_run_its_attempts_and_outputs(home: Path) -> None:
    fill_failed_run(home / "runs.db")

    shown = invoke_json("show", "r1")

    assert set(shown) == {
        "run",
        "added",
        "attempts",
        "outputs",
        "plan",
        "choice",
        "decisions",
        "health",
    }
    assert shown["plan"] is shown["choice"] is None  # nothing planned, nothing chosen
    assert shown["health"] is None  # never watched
    assert shown["decisions"] == []  # nothing branched, mapped, looped or skipped
    assert shown["run"]["run_id"] == "r1"
    assert shown["run"]["source"] == {"file": "/crews/research.py", "attribute": "crew"}
    assert shown["added"] == []
    assert [(row["task"], row["number"]) for row in shown["attempts"]] == [
        ("facts", 1),
        ("draft", 1),
        ("draft", 2),
    ]
    assert shown["attempts"][2]["error"] == "HTTP 400: the request was rejected"
    assert shown["outputs"]["facts"]["text"] == "five facts"


def test_show_of_a_running_run_marks_the_tasks_in_flight_and_those_not_started(
    home: Path,
) -> None:
    graph = {"facts": [], "draft": ["facts"], "notes": ["facts"]}
    lease = Lease.new().model_copy(update={"running": ("notes",)})
    fill(
        home / "runs.db",
        [record("live", status=RunStatus.RUNNING, seconds=None, graph=graph, lease=lease)],
        {"live": [attempt("facts", 1, 0, 2)]},
        [output("live", "facts", "five facts", 2)],
    )

    result = invoke("show", "live")

    lines = [" ".join(line.split()) for line in result.stdout.splitlines()]
    assert "status running" in lines
    owner = f"owner {socket.gethostname()}, pid {os.getpid()} (its lease runs until"
    assert any(line.startswith(owner) for line in lines)  # this process holds it
    assert "in flight notes" in lines
    assert "facts completed 1 +0.00 s 2.00 s openai/gpt-4o-mini 0" in lines
    assert "notes running" in lines
    assert "draft pending" in lines


def chosen_run(run_id: str = "chosen", **fields: Any) -> RunRecord:
    """A completed run of the adaptive process, which chose parallel, and was paused once."""
    update = {"process": "adaptive", "chosen": "parallel", "paused": True, **fields}
    return record(run_id).model_copy(update=update)


def test_show_prints_the_process_chosen_and_that_the_run_was_paused(home: Path) -> None:
    fill(home / "runs.db", [chosen_run(), record("plain")])

    chosen = [" ".join(line.split()) for line in invoke("show", "chosen").stdout.splitlines()]
    plain = [" ".join(line.split()) for line in invoke("show", "plain").stdout.splitlines()]

    assert "process adaptive → parallel (wide graph)" in chosen
    assert "paused yes (its duration is not a measure of its process)" in chosen
    assert "process parallel (wide graph)" in plain
    assert not any(line.startswith("paused") for line in plain)


def test_runs_shows_the_process_a_choosing_process_picked(home: Path) -> None:
    fill(home / "runs.db", [chosen_run(), record("plain", minute=1)])

    lines = invoke("runs").stdout.splitlines()

    chosen = next(line for line in lines if line.startswith("chosen"))
    plain = next(line for line in lines if line.startswith("plain"))
    assert chosen.split()[1:5] == ["research", "adaptive", "→", "parallel"]
    assert plain.split()[1:3] == ["research", "parallel"]
    assert invoke_json("runs")[1]["chosen"] == "parallel"


def fill_run_with_added_tasks(path: Path) -> None:
    """A completed run of facts and draft, to which its process added ``review`` (which ran
    first) and then ``plan`` (which never ran)."""
    added = [
        AddedTaskRecord(name="review", agent="Critic", depends_on=["draft"], added=T0),
        AddedTaskRecord(
            name="plan",
            kind=TaskKind.DELIVERABLE,
            step="ask",
            agent="Lead",
            spec_hash="sha256:p",
            added=T0 + timedelta(seconds=1),
        ),
    ]
    attempts = [attempt("review", 1, 0, 1), attempt("facts", 1, 1, 3), attempt("draft", 1, 3, 6)]
    fill(path, [record("grown")], {"grown": attempts}, added={"grown": added})


def test_show_lists_the_tasks_the_process_added_after_the_crews_in_the_order_added(
    home: Path,
) -> None:
    fill_run_with_added_tasks(home / "runs.db")

    result = invoke("show", "grown")

    lines = [" ".join(line.split()) for line in result.stdout.splitlines()]
    tasks = [line for line in lines if line.split(" ")[0] in ("facts", "draft", "review", "plan")]
    assert tasks == [
        "facts completed 1 +1.00 s 2.00 s openai/gpt-4o-mini 0",
        "draft completed 1 +3.00 s 3.00 s openai/gpt-4o-mini 0",
        "review completed 1 +0.00 s 1.00 s openai/gpt-4o-mini 0",
        "plan not run",
    ]


def test_show_json_holds_the_added_tasks(home: Path) -> None:
    fill_run_with_added_tasks(home / "runs.db")

    shown = invoke_json("show", "grown")

    assert shown["added"] == [
        {
            "name": "review",
            "kind": "internal",
            "step": "task",
            "agent": "Critic",
            "depends_on": ["draft"],
            "spec_hash": "",
            "added": "2024-05-01T12:00:00Z",
        },
        {
            "name": "plan",
            "kind": "deliverable",
            "step": "ask",
            "agent": "Lead",
            "depends_on": [],
            "spec_hash": "sha256:p",
            "added": "2024-05-01T12:00:01Z",
        },
    ]


def test_show_of_an_unknown_run_exits_2_naming_it(home: Path) -> None:
    fill(home / "runs.db", [record("r1")])

    result = invoke("show", "nope")

    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "error: no run 'nope' in the store; `crewflow runs` lists the runs it holds"
    )
    assert result.stdout == ""


def test_show_without_a_database_exits_2_and_creates_nothing(home: Path) -> None:
    result = invoke("show", "nope")

    assert result.exit_code == 2
    assert "no run 'nope' in the store" in result.stderr
    assert not home.exists()


def test_show_reads_the_database_given_with_db(home: Path, tmp_path: Path) -> None:
    fill_failed_run(tmp_path / "other.db")

    assert invoke_json("show", "r1", "--db", str(tmp_path / "other.db"))["run"]["crew"] == (
        "research"
    )


# -- crewflow cache clear -----------------------------------------------------------------------


def test_cache_clear_says_how_many_replies_it_removed(home: Path) -> None:
    fill(home / "runs.db", [], cached=3)

    first = invoke("cache", "clear")
    second = invoke("cache", "clear")

    assert first.exit_code == 0, first.output
    assert first.stdout.strip() == f"removed 3 cached replies (database: {home / 'runs.db'})"
    assert second.stdout.startswith("removed 0 cached replies")


def test_cache_clear_without_a_database_removes_nothing_and_creates_nothing(home: Path) -> None:
    result = invoke("cache", "clear")

    assert result.exit_code == 0
    assert result.stdout.startswith("removed 0 cached replies")
    assert not home.exists()


def test_cache_clear_clears_the_database_given_with_db(home: Path, tmp_path: Path) -> None:
    fill(tmp_path / "other.db", [], cached=1)

    result = invoke("cache", "clear", "--db", str(tmp_path / "other.db"))

    assert result.stdout.startswith("removed 1 cached reply (database:")


# -- crewflow optimize --------------------------------------------------------------------------


def fill_history(path: Path) -> None:
    """Three completed runs of ``research`` (facts 2 s, then draft 4 s) and one of ``other``."""
    runs: list[RunRecord] = []
    attempts: dict[str, list[AttemptRecord]] = {}
    for number in range(3):
        run_id = f"h{number}"
        runs.append(record(run_id, minute=number, seconds=6))
        base = number * 60
        attempts[run_id] = [
            attempt("facts", 1, base, base + 2),
            attempt("draft", 1, base + 2, base + 6),
        ]
    runs.append(record("x", crew="other", minute=5, graph={"solo": []}))
    fill(path, runs, attempts)


def test_optimize_prints_the_report_of_every_crew(home: Path) -> None:
    fill_history(home / "runs.db")

    result = invoke("optimize")

    assert result.exit_code == 0, result.output
    assert "4 runs of every crew" in result.stdout
    assert "Processes" in result.stdout
    assert "research" in result.stdout
    assert "other" in result.stdout


def test_optimize_json_for_one_crew(home: Path) -> None:
    fill_history(home / "runs.db")

    report = invoke_json("optimize", "--crew", "research")

    assert report["crew"] == "research"
    assert report["runs"] == 3
    assert [(stats["crew"], stats["runs"]) for stats in report["processes"]] == [("research", 3)]
    assert {stats["task"] for stats in report["tasks"]} == {"facts", "draft"}


def fill_two_crews_of_one_file(path: Path) -> None:
    """Five runs each of ``reports:daily`` and ``reports:weekly``: the same tasks, facts 2 s
    (a third of the run spent waiting on a concurrency limit), then draft 4 s."""
    runs: list[RunRecord] = []
    attempts: dict[str, list[AttemptRecord]] = {}
    for crew in ("reports:daily", "reports:weekly"):
        for number in range(5):
            run_id = f"{crew}-{number}"
            runs.append(record(run_id, crew=crew, minute=number, seconds=6))
            base = number * 60
            attempts[run_id] = [
                attempt("facts", 1, base, base + 2, limit_waits={"concurrency:search": 2.0}),
                attempt("draft", 1, base + 2, base + 6),
            ]
    fill(path, runs, attempts)


@pytest.mark.parametrize("width", [60, 80, 120])
def test_optimize_keeps_crews_of_one_file_apart_at_any_width(home: Path, width: int) -> None:
    fill_two_crews_of_one_file(home / "runs.db")

    code, lines = on_terminal(width, "optimize")

    assert code == 0
    text = "\n".join(lines)
    for crew in ("reports:daily", "reports:weekly"):
        assert any(line.split()[:2] == [crew, "parallel"] for line in lines)  # processes
        assert f"{crew}:facts" in text  # tasks
        assert any(line.startswith(crew) and "concurrency:search" in line for line in lines)
        assert f"for search: {crew} waits on it 33 %" in " ".join(text.split())
    assert max(len(line) for line in lines) <= width


UNNAMED_CREW = """
from crewflow import Agent, Crew, Task

crew = Crew(tasks=[Task("{task}", agent=Agent(role="Writer", goal="Write", llm="offline"))])
crew.kickoff_sync()
"""


@pytest.mark.slow
def test_unnamed_crews_run_as_scripts_are_listed_and_analysed_apart(
    home: Path, tmp_path: Path
) -> None:
    for stem in ("daily", "weekly"):
        script = tmp_path / f"{stem}.py"
        script.write_text(UNNAMED_CREW.format(task=f"Write the {stem} report"))
        environment = {**os.environ, "CREWFLOW_HOME": str(home)}
        subprocess.run([sys.executable, str(script)], env=environment, check=True, timeout=60)

    listed = invoke_json("runs")
    report = invoke_json("optimize")

    assert sorted(run["crew"] for run in listed) == ["daily", "weekly"]
    assert [run["crew"] for run in invoke_json("runs", "--crew", "daily")] == ["daily"]
    assert sorted(stats["crew"] for stats in report["processes"]) == ["daily", "weekly"]
    assert sorted(stats["crew"] for stats in report["tasks"]) == ["daily", "weekly"]


def test_optimize_runs_limits_how_many_runs_are_read(home: Path) -> None:
    fill_history(home / "runs.db")

    assert invoke_json("optimize", "--runs", "2")["runs"] == 2
    assert invoke("optimize", "--runs", "0").exit_code == 2


def test_optimize_without_a_database_says_nothing_was_recorded(home: Path) -> None:
    result = invoke("optimize")

    assert result.exit_code == 0, result.output
    assert "No runs recorded for every crew" in result.stdout
    assert invoke_json("optimize")["runs"] == 0
    assert not home.exists()


# -- end to end: crewflow run records, crewflow resume finishes ---------------------------------

RESUMABLE = CREWS / "resumable.py"


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The directory where resumable.py logs its calls and looks for its ``fail`` switch."""
    directory = tmp_path / "state"
    directory.mkdir()
    monkeypatch.setenv("CLI_TEST_STATE", str(directory))
    monkeypatch.delenv("CLI_TEST_DRAFT", raising=False)
    return directory


def calls(state: Path) -> list[str]:
    return (state / "calls").read_text().split()


def failed_run(state: Path, *args: str, file: Path = RESUMABLE) -> str:
    """Run resumable.py with draft failing; the run's id."""
    (state / "fail").touch()
    result = invoke("run", str(file), "-i", "topic=batteries", *args)
    (state / "fail").unlink()
    assert result.exit_code == 1, result.output
    assert "finished before the failure: facts" in result.stderr
    run_id: str = invoke_json("runs", *args)[0]["run_id"]
    assert f"finish it later with: crewflow resume {run_id}{' '.join(('', *args))}" in (
        result.stderr
    )
    return run_id


def test_run_records_the_absolute_file_and_the_crews_attribute(
    home: Path, state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(CREWS)

    ran = invoke_json("run", "resumable.py", "-i", "topic=batteries")
    listed = invoke_json("runs")

    assert [run["run_id"] for run in listed] == [ran["run_id"]]
    assert listed[0]["source"] == {"file": str(RESUMABLE.resolve()), "attribute": "resumable"}
    assert listed[0]["crew"] == "resumable"
    assert listed[0]["status"] == "completed"
    assert listed[0]["inputs"] == {"topic": "batteries"}


def test_show_reads_back_a_recorded_run(home: Path, state: Path) -> None:
    run_id = failed_run(state)

    shown = invoke_json("show", run_id)
    table = invoke("show", run_id).stdout

    assert shown["run"]["status"] == "failed"
    assert list(shown["outputs"]) == ["facts"]
    assert [(row["task"], row["status"]) for row in shown["attempts"]] == [
        ("facts", "completed"),
        ("draft", "failed"),
    ]
    assert "draft: attempt 1 failed: LLMError: fn/draft: HTTP 400: the writer is out" in table


def test_resume_runs_only_the_unfinished_tasks_from_any_directory(
    home: Path, state: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = failed_run(state)
    monkeypatch.chdir(tmp_path)  # the recorded path is absolute

    result = invoke("resume", run_id)

    assert result.exit_code == 0, result.output
    assert calls(state) == ["facts", "draft", "draft"]  # facts did not run again
    assert "a draft" in result.stdout
    assert "restored" in result.stdout
    assert "draft finished" in result.stderr
    assert "facts running" not in result.stderr
    [run] = invoke_json("runs")
    assert run["run_id"] == run_id
    assert run["status"] == "completed"
    assert run["resumed"] == 1


def test_resume_of_a_completed_run_changes_nothing_and_rerun_starts_a_new_run(
    home: Path, state: Path
) -> None:
    run_id = failed_run(state)
    assert invoke("resume", run_id).exit_code == 0
    [before] = invoke_json("runs")
    asked = calls(state)

    again = invoke("resume", run_id)

    assert again.exit_code == 0, again.output
    assert again.stdout.strip().startswith(f"run {run_id} is complete; nothing to resume")
    assert invoke_json("runs") == [before]  # not reopened, its end not rewritten
    assert calls(state) == asked

    rerun = invoke_json("resume", run_id, "--rerun")

    assert rerun["run_id"] != run_id
    runs = invoke_json("runs")
    assert [run["run_id"] for run in runs] == [rerun["run_id"], run_id]
    assert runs[0]["inputs"] == before["inputs"]
    assert runs[0]["status"] == "completed"
    assert runs[1] == before


def test_resume_json_prints_the_whole_runs_result(home: Path, state: Path) -> None:
    run_id = failed_run(state)

    resumed = invoke_json("resume", run_id)

    assert resumed["run_id"] == run_id
    assert resumed["restored"] == ["facts"]
    assert [item["task"] for item in resumed["outputs"]] == ["facts", "draft"]


def test_resume_of_a_changed_crew_exits_2_suggesting_force(
    home: Path, state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = failed_run(state)
    monkeypatch.setenv("CLI_TEST_DRAFT", "Write it up differently")

    refused = invoke("resume", run_id)
    forced = invoke("resume", run_id, "--force")

    assert refused.exit_code == 2
    assert refused.stderr.startswith("error: ")
    assert "was recorded for a different crew (task 'draft': description changed)" in (
        refused.stderr
    )
    assert refused.stderr.count("--force") == 1
    assert len(refused.stderr.strip().splitlines()) == 1
    assert forced.exit_code == 0, forced.output
    assert calls(state) == ["facts", "draft", "draft"]


@pytest.mark.parametrize("width", [60, 80, 120])
def test_a_refused_resume_names_what_changed_at_any_width(
    home: Path, state: Path, monkeypatch: pytest.MonkeyPatch, width: int
) -> None:
    run_id = failed_run(state)
    monkeypatch.setenv("CLI_TEST_DRAFT", "Write it up differently")

    env = {"COLUMNS": str(width), "TTY_COMPATIBLE": "1", "TERM": "xterm-256color"}
    refused = CliRunner().invoke(cli.app, ["resume", run_id], env=env)

    assert refused.exit_code == 2
    assert "Traceback" not in refused.output
    said = " ".join(ANSI.sub("", refused.stderr).split())
    assert "(task 'draft': description changed)" in said
    assert said.endswith("so its saved outputs may not fit this one; pass --force to resume anyway")


@pytest.mark.parametrize("width", [60, 80, 120])
def test_a_resume_of_a_run_another_process_executes_exits_2_naming_it_at_any_width(
    home: Path, state: Path, width: int
) -> None:
    run_id = failed_run(state)
    owner = LeaseOwner(host="build-host-7", boot_id="b", pid=31337)
    theirs = Lease(token="theirs", owner=owner, expires=datetime.now(UTC) + timedelta(hours=1))

    async def held_elsewhere() -> None:
        async with SQLiteStore(home / "runs.db") as store:
            assert await store.take_lease(run_id, theirs, replacing=None)
            await store.reopen_run(run_id, lease="theirs")

    anyio.run(held_elsewhere)
    env = {"COLUMNS": str(width), "TTY_COMPATIBLE": "1", "TERM": "xterm-256color"}

    refused = CliRunner().invoke(cli.app, ["resume", run_id], env=env)

    assert refused.exit_code == 2
    assert "Traceback" not in refused.output
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", refused.stderr)  # colours, cursor moves
    assert max(len(line) for line in shown.splitlines()) <= width, shown
    said = " ".join(shown.split())
    assert said.startswith(
        f"error: run {run_id!r} is being executed by another process (build-host-7, pid 31337)"
    )
    assert f"`crewflow resume {run_id}` takes the run over" in said
    assert calls(state) == ["facts", "draft"]  # nothing was sent
    [run] = invoke_json("runs")
    assert (run["status"], run["resumed"]) == ("running", 1)


def test_resume_of_an_unknown_run_exits_2(home: Path, state: Path) -> None:
    failed_run(state)

    result = invoke("resume", "nope")

    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "error: no run 'nope' in the store; `crewflow runs` lists the runs it holds"
    )


def test_resume_of_a_run_started_from_code_asks_for_the_file(home: Path) -> None:
    fill(home / "runs.db", [record("coded", status=RunStatus.FAILED)])

    result = invoke("resume", "coded")

    assert result.exit_code == 2
    assert "run 'coded' was started from code, not by `crewflow run`" in result.stderr
    assert "pass --file FILE.py" in result.stderr


def test_resume_file_loads_the_crew_from_another_file(
    home: Path, state: Path, tmp_path: Path
) -> None:
    moved = tmp_path / "moved.py"
    moved.write_text(RESUMABLE.read_text())
    run_id = failed_run(state, file=moved)
    moved.unlink()

    missing = invoke("resume", run_id)
    resumed = invoke("resume", run_id, "--file", str(RESUMABLE))

    assert missing.exit_code == 2
    assert f"{moved}, where run {run_id!r} was started, does not exist any more" in missing.stderr
    assert resumed.exit_code == 0, resumed.output
    assert calls(state) == ["facts", "draft", "draft"]


def test_run_and_resume_record_in_the_database_given_with_db(
    home: Path, state: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other.db"
    run_id = failed_run(state, "--db", str(other))

    elsewhere = invoke("resume", run_id)
    there = invoke("resume", run_id, "--db", str(other))

    assert invoke_json("runs") == []
    assert elsewhere.exit_code == 2
    assert there.exit_code == 0, there.output
    assert invoke_json("runs", "--db", str(other))[0]["status"] == "completed"


# -- what the store commands load ---------------------------------------------------------------

HEAVY = (
    "crewflow.agent",
    "crewflow.crew",
    "crewflow.graph",
    "crewflow.llm",
    "crewflow.optimizer",
    "crewflow.task",
    "crewflow.tools",
    "httpx",
    "litellm",
    "networkx",
    "openai",
)


def loaded_modules_script(heavy: tuple[str, ...]) -> str:
    """A script that runs the CLI with its own argv, then prints its exit code and which of
    ``heavy`` (modules and their submodules) it loaded."""
    return f"""
import sys
from crewflow.cli import main
try:
    main()
except SystemExit as done:
    code = done.code
heavy = {heavy!r}
loaded = sorted(n for n in sys.modules if any(n == h or n.startswith(h + ".") for h in heavy))
print("exit", code, "loaded", loaded)
"""


LOADED = loaded_modules_script(HEAVY)


@pytest.mark.slow
@pytest.mark.parametrize(
    "command", [["runs"], ["runs", "--json"], ["show", "one"], ["cache", "clear"]]
)
def test_the_store_commands_load_none_of_the_crew_machinery(
    home: Path, tmp_path: Path, command: list[str]
) -> None:
    # `crewflow runs` must start fast: the CLI imports the crew, its LLM clients and the
    # optimizer only in the commands that use them, and `import crewflow` is lazy.
    path = tmp_path / "runs.db"
    fill(
        path,
        [record("one")],
        {"one": [attempt("facts", 1, 0, 2)]},
        [output("one", "facts", "x", 2)],
        added={"one": [AddedTaskRecord(name="review", added=T0)]},
    )

    done = subprocess.run(
        [sys.executable, "-c", LOADED, *command, "--db", str(path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert done.stdout.strip().splitlines()[-1] == "exit 0 loaded []", done.stdout + done.stderr


def test_a_db_that_cannot_be_opened_says_to_give_another_path_not_crewflow_home(
    tmp_path: Path,
) -> None:
    result = invoke("runs", "--db", str(tmp_path))  # a directory, not a database

    assert result.exit_code == 2
    assert "unable to open database file" in result.output
    assert "--db for crewflow's commands" in result.output
    assert "CREWFLOW_HOME" not in result.output


async def test_the_default_database_that_cannot_be_opened_says_to_move_crewflow_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from crewflow.store import SQLiteStore, StoreError, default_store_path

    monkeypatch.setenv("CREWFLOW_HOME", str(tmp_path / "home"))
    default_store_path().mkdir(parents=True)  # a directory where the database should be
    store = SQLiteStore(default_store_path())
    with pytest.raises(StoreError, match="point CREWFLOW_HOME at a writable directory"):
        await store.list_runs()
    await store.close()


def test_show_json_lists_outputs_in_crew_order_not_finish_order(home: Path) -> None:
    run = record("ordered").model_copy(update={"graph": {"a": [], "b": [], "c": []}})
    added = [
        AddedTaskRecord(name="plan", step="ask", added=T0),
        AddedTaskRecord(name="a.1", added=T0 + timedelta(seconds=1)),
    ]
    finished = [("c", 1), ("a.1", 2), ("b", 3), ("plan", 4), ("a", 5)]  # as they finished
    rows = [output("ordered", name, f"out {name}", at) for name, at in finished]
    fill(home / "runs.db", [run], outputs=rows, added={"ordered": added})

    shown = invoke_json("show", "ordered")

    assert list(shown["outputs"]) == ["a", "b", "c", "plan", "a.1"]


def test_ctrl_c_names_the_run_and_the_command_that_finishes_it(home: Path) -> None:
    result = invoke("run", str(CREWS / "interrupted.py"))

    assert result.exit_code == 130
    [run] = invoke_json("runs")
    assert run["status"] == "cancelled"
    assert "error: cancelled" in result.stderr
    assert f"run {run['run_id']} was cancelled" in result.stderr
    assert f"finish it later with: crewflow resume {run['run_id']}" in result.stderr


def test_show_and_resume_take_any_unique_prefix_of_four_characters_or_more(
    home: Path, state: Path
) -> None:
    run_id = failed_run(state)

    shown = invoke_json("show", run_id[:8])
    resumed = invoke("resume", run_id[:4])

    assert shown["run"]["run_id"] == run_id
    assert resumed.exit_code == 0, resumed.output
    [run] = invoke_json("runs")
    assert (run["run_id"], run["status"], run["resumed"]) == (run_id, "completed", 1)
    assert invoke("show", run_id[:3]).exit_code == 2  # too short to stand for a run


def test_an_ambiguous_prefix_lists_the_runs_it_fits(home: Path) -> None:
    fill(home / "runs.db", [record("abcd1111"), record("abcd2222"), record("abce3333")])

    result = invoke("show", "abcd")

    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "error: run id 'abcd' is ambiguous: abcd1111, abcd2222 start with it; give more of it"
    )
    assert invoke_json("show", "abcd2")["run"]["run_id"] == "abcd2222"
    assert invoke_json("show", "abce")["run"]["run_id"] == "abce3333"


@pytest.mark.parametrize("make", [MemoryStore, lambda: None], ids=["memory", "sqlite"])
async def test_run_ids_starting_a_prefix_come_in_order_up_to_the_limit(
    make: Any, tmp_path: Path
) -> None:
    store = make() or SQLiteStore(tmp_path / "runs.db")
    for run_id in ["b2", "a1", "a3", "a2", "a~", "b"]:
        await store.start_run(record(run_id))

    assert await store.run_ids_starting("a") == ["a1", "a2"]
    assert await store.run_ids_starting("a", limit=10) == ["a1", "a2", "a3", "a~"]
    assert await store.run_ids_starting("b", limit=10) == ["b", "b2"]
    assert await store.run_ids_starting("c") == []
    await store.close()


# -- a database on a read-only filesystem ------------------------------------------------------


def read_only(folder: Path, argv: list[str]) -> list[str]:
    """``argv`` run where ``folder`` cannot be written: for root (who writes through any
    permissions) in a mount namespace where ``folder`` is a read-only filesystem, as in the
    report; for anyone else, in a folder whose permissions refuse writes."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return argv
    mount = f"mount --bind -o ro '{folder}' '{folder}' && exec \"$@\""
    command = ["unshare", "-m", "--propagation", "private", "sh", "-c", mount, "sh", *argv]
    probe = subprocess.run([*command[: -len(argv)], "touch", str(folder / "probe")], check=False)
    if probe.returncode == 0 or (folder / "probe").exists():
        pytest.skip("cannot make a read-only filesystem here (unshare/mount refused)")
    return command


@pytest.mark.parametrize(
    "command", [["runs", "--json"], ["show", "one", "--json"], ["optimize", "--json"]]
)
def test_the_commands_that_only_read_read_a_database_on_a_read_only_filesystem(
    tmp_path: Path, command: list[str]
) -> None:
    folder = tmp_path / "records"
    folder.mkdir()
    path = folder / "runs.db"
    fill(path, [record("one")], {"one": [attempt("facts", 1, 0, 2)]})
    before = path.read_bytes()
    argv = [sys.executable, "-m", "crewflow", *command, "--db", str(path)]

    try:
        done = subprocess.run(
            read_only(folder, argv), capture_output=True, text=True, timeout=120, check=False
        )
    finally:
        folder.chmod(0o755)

    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    if command[0] != "optimize":
        assert '"one"' in done.stdout
    assert path.read_bytes() == before
    assert sorted(p.name for p in folder.iterdir()) == ["runs.db"]


# -- a database that is not one ----------------------------------------------------------------


@pytest.mark.parametrize("width", [60, 80, 120])
@pytest.mark.parametrize("command", ["run", "runs"])
def test_a_corrupt_database_is_one_clear_error_at_every_width(
    tmp_path: Path, width: int, command: str
) -> None:
    path = tmp_path / "runs.db"
    path.write_bytes(b"\x17not a database\x00" * 1_000)
    crew = tmp_path / "crew.py"
    crew.write_text(
        "from crewflow import Agent, Crew, Task\n"
        "agent = Agent(role='W', goal='G', llm='offline')\n"
        "crew = Crew(tasks=[Task('Write a line', agent=agent)])\n",
        encoding="utf-8",
    )
    args = ["run", str(crew)] if command == "run" else ["runs"]
    env = {"COLUMNS": str(width), "TTY_COMPATIBLE": "1", "TERM": "xterm-256color"}

    result = CliRunner().invoke(cli.app, [*args, "--db", str(path)], env=env)

    assert result.exit_code == 2
    assert "Traceback" not in result.output
    shown = ANSI.sub("", result.stderr)
    lines = [line.rstrip() for line in shown[shown.index("error: ") :].strip().splitlines()]
    assert all(len(line) <= width for line in lines)
    message = " ".join(" ".join(lines).split())
    assert "file is not a database" in message
    assert "move it aside" in message


def fill_stalled_run(path: Path) -> None:
    """A failed run whose health was last recorded stalled on ``draft``, and one never
    watched."""
    detail = "task 'draft' has made no progress for 300 s, a long sentence that wraps on narrow"
    health = {
        "status": "stalled",
        "issues": [{"kind": "stalled", "subject": "draft", "detail": detail, "since": 300.0}],
        "recorded": "2024-05-01T12:05:00+00:00",
    }
    watched = record("sick", status=RunStatus.FAILED).model_copy(
        update={"details": {"health": health}}
    )
    fill(path, [watched, record("plain", minute=1)])


def test_show_json_carries_the_runs_last_recorded_health(home: Path) -> None:
    fill_stalled_run(home / "runs.db")

    shown = invoke_json("show", "sick")

    assert shown["health"]["status"] == "stalled"
    assert [issue["subject"] for issue in shown["health"]["issues"]] == ["draft"]
    assert invoke_json("show", "plain")["health"] is None


@pytest.mark.parametrize("width", [60, 80, 120])
def test_show_tells_the_last_health_and_its_issues_at_any_width(home: Path, width: int) -> None:
    fill_stalled_run(home / "runs.db")

    code, lines = on_terminal(width, "show", "sick")

    assert code == 0
    assert any(line.startswith("last health: stalled (at ") for line in lines)
    text = " ".join(line.strip() for line in lines)
    assert "task 'draft' has made no progress for 300 s" in text
    assert max(len(line) for line in lines) <= width
    _, plain = on_terminal(width, "show", "plain")
    assert not any("health" in line for line in plain)
