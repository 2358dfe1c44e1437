"""The terminal view of ``crewflow run``: what `ProgressView` draws from a run's events (fed
directly, on a fake clock: no timing), how it fits 60, 80 and 120 columns and a crew taller
than the terminal, plain lines off a terminal, ``--quiet``, the report command at the end, and
the real command under a pseudo-terminal, its screen read back through a terminal emulator."""

from __future__ import annotations

import fcntl
import io
import os
import struct
import subprocess
import sys
import termios
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyte
import pytest
from rich.cells import cell_len
from rich.console import Console
from typer.testing import CliRunner

from crewflow import cli, events

CREWS = Path(__file__).parent / "cli_crews"
EXAMPLES = Path(__file__).parent.parent / "examples"


class Clock:
    """The view's clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def view(width: int = 100, height: int = 24) -> tuple[cli.ProgressView, Clock]:
    clock = Clock()
    console = Console(file=io.StringIO(), width=width, height=height, force_terminal=True)
    progress = cli.ProgressView(console, clock=clock)
    progress._live = object()  # type: ignore[assignment]  # as under the live display: no lines printed
    return progress, clock


def feed(progress: cli.ProgressView, *items: events.Event) -> None:
    for event in items:
        progress(event)


def shown(progress: cli.ProgressView) -> list[str]:
    width, height = progress.console.width, progress.console.height
    return [line.plain for line in progress.lines(width, height)]


def started(tasks: int = 3) -> events.RunStarted:
    return events.RunStarted(
        run_id="r1", time=0.0, crew="research", process="parallel", tasks=tasks
    )


def task_started(name: str, agent: str = "Analyst", attempt: int = 1) -> events.TaskStarted:
    return events.TaskStarted(run_id="r1", time=0.0, task=name, agent=agent, attempt=attempt)


def call(name: str, prompt: int, completion: int) -> events.LLMCallFinished:
    return events.LLMCallFinished(
        run_id="r1",
        time=0.0,
        task=name,
        model="m",
        latency=0.1,
        prompt_tokens=prompt,
        completion_tokens=completion,
    )


def delta(name: str, text: str) -> events.TokenDelta:
    return events.TokenDelta(run_id="r1", time=0.0, task=name, model="m", text=text)


def finished(name: str, prompt: int = 10, completion: int = 5) -> events.TaskFinished:
    return events.TaskFinished(
        run_id="r1",
        time=0.0,
        task=name,
        attempt=1,
        duration=1.5,
        prompt_tokens=prompt,
        completion_tokens=completion,
    )


# -- what a task's line shows ---------------------------------------------------------------------


def test_a_running_task_shows_its_tokens_tool_calls_retries_and_limit_waits() -> None:
    progress, clock = view(width=200)

    feed(
        progress,
        started(1),
        task_started("facts"),
        events.LimiterWait(
            run_id="r1", time=0.0, task="facts", model="m", waited=2.5, reasons=["rpm:m"]
        ),
        events.LLMCallRetrying(
            run_id="r1", time=0.0, task="facts", model="m", call_attempt=1, status_code=503,
            delay=1.0,
        ),
        call("facts", 1200, 300),
        events.ToolCalled(run_id="r1", time=0.0, task="facts", tool="t", ok=True, duration=0.1),
        events.ToolCalled(
            run_id="r1", time=0.0, task="facts", tool="t", ok=False, duration=0.1, error="down"
        ),
    )  # fmt: skip
    clock.now += 12.5

    header, line = shown(progress)
    assert header == (
        "research (parallel)  0/1 tasks done · 1 running · 12.5 s · "
        "1,500 tokens (1,200 in, 300 out)"
    )
    assert line.endswith(
        "facts running  a tool call failed: down · 1,500 tokens (1,200 in, 300 out) · "
        "2 tool calls (1 failed) · 1 provider retry · waited 2.50 s for rpm:m"
    )


def test_a_call_made_again_after_a_provider_retry_puts_its_task_back_to_running() -> None:
    progress, _ = view(width=200)

    feed(
        progress,
        started(1),
        task_started("facts", agent="Researcher"),
        events.LLMCallRetrying(
            run_id="r1", time=0.0, task="facts", model="m", call_attempt=1, status_code=429,
            delay=2.0,
        ),
    )  # fmt: skip
    assert shown(progress)[1].endswith(
        "facts retrying  provider error 429; calling again in 2.00 s · 1 provider retry"
    )

    feed(
        progress,
        events.LimiterWait(
            run_id="r1", time=0.0, task="facts", model="m", waited=2.0, reasons=["rpm:m"]
        ),
        events.LLMCallStarted(run_id="r1", time=0.0, task="facts", model="m", attempt=1),
    )
    assert shown(progress)[1].endswith(
        "facts running  Researcher · 1 provider retry · waited 2.00 s for rpm:m"
    )


def test_nothing_is_drawn_before_the_run_starts() -> None:
    progress, _ = view()

    assert progress.lines(80, 24) == []


def test_a_finished_task_shows_its_duration_and_the_tokens_of_all_its_attempts() -> None:
    progress, _ = view()

    feed(
        progress, started(1), task_started("facts"), call("facts", 7, 3), finished("facts", 70, 30)
    )
    progress.settle(_result(cost=0.0123))

    assert shown(progress) == [
        "research (parallel)  1/1 tasks done · 0.00 s · 100 tokens (70 in, 30 out) · $0.0123",
        "✓ facts finished  in 1.50 s · 100 tokens (70 in, 30 out)",
    ]


def test_tasks_a_resumed_run_restored_show_as_done_at_the_end() -> None:
    progress, _ = view()

    feed(progress, started(2), task_started("draft"), finished("draft"))
    feed(progress, events.RunFinished(run_id="r1", time=0.0, status="completed", duration=2.0))
    assert shown(progress)[0].startswith("research (parallel)  2/2 tasks done · completed in ")
    progress.settle(_result(cost=0.5, restored=("facts",)))

    assert shown(progress) == [
        "research (parallel)  2/2 tasks done · completed in 2.00 s · 15 tokens (10 in, 5 out) "
        "· $0.5000",
        "✓ draft finished  in 1.50 s · 15 tokens (10 in, 5 out)",
        "✓ facts finished  restored from the run's record",
    ]


def test_the_header_says_how_the_run_ended_and_how_long_it_took() -> None:
    progress, _ = view()

    feed(
        progress,
        started(2),
        task_started("a"),
        finished("a"),
        task_started("b"),
        events.TaskFailed(
            run_id="r1", time=0.0, task="b", attempts=2, error_type="LLMError", error="boom"
        ),
        events.RunFinished(run_id="r1", time=0.0, status="failed", duration=3.25, error="x"),
    )

    header = shown(progress)[0]
    assert header == (
        "research (parallel)  1/2 tasks done · 1 failed · failed in 3.25 s · "
        "15 tokens (10 in, 5 out)"
    )


def test_a_streaming_task_shows_the_last_line_of_its_text_until_it_finishes() -> None:
    progress, _ = view()

    feed(progress, started(1), task_started("draft"), delta("draft", "First line\nSecond "))
    feed(progress, delta("draft", "line, still"), delta("draft", " coming\n"))

    assert shown(progress)[2] == "  ╰ Second line, still coming"

    feed(
        progress,
        events.TokenDeltaReset(run_id="r1", time=0.0, task="draft", model="m", reason="retry"),
    )
    assert len(shown(progress)) == 2  # the dropped text is gone

    feed(progress, delta("draft", "Again"), finished("draft"))
    assert len(shown(progress)) == 2  # a finished task's text is its output, shown after


def test_streamed_text_is_data_escape_codes_and_surrogates_included() -> None:
    progress, _ = view()

    feed(
        progress, started(1), task_started("draft"), delta("draft", "red \x1b[31mX\x1b[0m \ud800!")
    )
    out = Console(file=io.StringIO(), width=80, height=24)
    out.print(progress.render())

    drawn = out.file.getvalue()  # type: ignore[attr-defined]
    assert "\x1b" not in drawn
    assert "red �[31mX�[0m �!" in drawn


def test_megabytes_of_streamed_text_keep_only_a_tail() -> None:
    progress, _ = view()

    feed(progress, started(1), task_started("draft"))
    for _ in range(1_000):
        progress(delta("draft", "word " * 1_000))

    task = progress.run.tasks["draft"]
    assert len(task.streamed) <= 1_000
    assert shown(progress)[2].startswith("  ╰ word word")


# -- fitting the terminal -------------------------------------------------------------------------


@pytest.mark.parametrize("width", [60, 80, 120])
def test_long_names_and_long_streamed_lines_are_cut_to_the_width(width: int) -> None:
    progress, _ = view(width=width)
    long_name = "summarise-the-quarterly-market-research-for-the-board-" * 3

    feed(progress, started(2), task_started(long_name), delta(long_name, "y" * 500))
    feed(progress, task_started("b"), call("b", 123_456, 78_901), finished("b", 123_456, 78_901))

    lines = progress.lines(width, 24)
    assert all(cell_len(line.plain) <= width for line in lines)
    assert all(line.no_wrap for line in lines)
    assert "…" in lines[1].plain  # the name, cut
    assert lines[2].plain.startswith("  ╰ yyy")
    assert lines[2].plain.endswith("…")
    assert "tasks done" in lines[0].plain
    assert "tokens" in lines[0].plain
    assert "b" in lines[3].plain
    assert "tokens" in lines[3].plain
    # Drawn by rich on a terminal of that width: one row per line, nothing wrapped.
    out = Console(file=io.StringIO(), width=width, height=24, force_terminal=True)
    out.print(progress.render())
    assert len(out.file.getvalue().splitlines()) == len(lines)  # type: ignore[attr-defined]


def test_a_crew_taller_than_the_terminal_shows_running_and_failed_tasks_and_counts_the_rest() -> (
    None
):
    progress, _ = view(width=80, height=40)
    feed(progress, started(200))
    for number in range(150):
        feed(progress, task_started(f"t{number}"), finished(f"t{number}"))
    feed(
        progress,
        task_started("t150"),
        events.TaskFailed(
            run_id="r1", time=0.0, task="t150", attempts=1, error_type="LLMError", error="boom"
        ),
    )
    for number in range(151, 161):
        feed(progress, task_started(f"t{number}"), delta(f"t{number}", f"text of {number}"))

    lines = shown(progress)

    assert len(lines) <= 39  # under the 40 rows, with one for the cursor
    # At 80 columns the numbers win over the crew's name.
    assert lines[0] == "150/200 tasks done · 10 running · 1 failed · 0.00 s · 2,250 tokens"
    body = "\n".join(lines)
    for number in range(151, 161):  # every running task, with its streamed text
        assert f"t{number} running" in body
        assert f"╰ text of {number}" in body
    assert "✗ t150 failed  after 1 attempt: LLMError: boom" in body
    # The 16 rows left go to the tasks that finished last; a line counts the rest.
    assert [n for n in range(150) if f" t{n} " in body] == list(range(134, 150))
    assert lines[-1] == "  … 173 more: 134 finished, 39 not started"


def test_more_running_tasks_than_rows_still_fit_the_terminal() -> None:
    progress, _ = view(width=60, height=10)
    feed(progress, started(50))
    for number in range(50):
        feed(progress, task_started(f"t{number}"), delta(f"t{number}", "streaming"))

    lines = shown(progress)

    assert len(lines) <= 9
    assert lines[-1] == f"  … {50 - (len(lines) - 2)} more: {50 - (len(lines) - 2)} running"


# -- off a terminal, quiet, and the report command -------------------------------------------------


def test_off_a_terminal_each_change_is_one_plain_line() -> None:
    console = Console(file=io.StringIO(), width=80)
    progress = cli.ProgressView(console, clock=Clock())

    feed(
        progress,
        started(1),
        task_started("facts"),
        delta("facts", "not printed"),
        call("facts", 10, 5),
        finished("facts"),
        events.RunFinished(run_id="r1", time=0.0, status="completed", duration=1.5),
    )

    assert console.file.getvalue().splitlines() == [  # type: ignore[attr-defined]
        "run r1 started: research (parallel), 1 task",
        "▶ facts running  Analyst",
        "✓ facts finished  in 1.50 s · 15 tokens (10 in, 5 out)",
        "run r1 completed: 1/1 tasks done · 1.50 s · 15 tokens (10 in, 5 out)",
    ]


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")}
    return subprocess.run(
        [sys.executable, "-m", "crewflow", *args],
        cwd=cwd,
        env={**env, "COLUMNS": "80"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.slow
def test_piped_output_has_no_escape_codes_and_ends_with_the_report_command(tmp_path: Path) -> None:
    done = _run("run", str(EXAMPLES / "parallel_research.py"), cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stdout + done.stderr
    lines = done.stderr.splitlines()
    assert "✓ report finished  in " in done.stderr
    assert " completed: 7/7 tasks done · " in done.stderr
    run_id = next(line.split()[1] for line in lines if line.startswith("run "))
    assert lines[-1] == f"see the run: crewflow report {run_id}"


def test_quiet_shows_only_the_result() -> None:
    result = CliRunner().invoke(
        cli.app,
        ["run", str(CREWS / "offline_crew.py"), "-i", "topic=batteries", "--quiet"],
        env={"COLUMNS": "200"},
    )

    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert "Summarise batteries in one line" in result.stdout
    assert "crewflow report" not in result.output


def test_quiet_resume_shows_only_the_result() -> None:
    first = CliRunner().invoke(
        cli.app, ["run", str(CREWS / "offline_crew.py"), "-i", "topic=x", "--json"]
    )
    run_id = _json(first.stdout)["run_id"]

    again = CliRunner().invoke(cli.app, ["resume", run_id, "--rerun", "-q"])

    assert again.exit_code == 0, again.output
    assert again.stderr == ""
    assert "Summarise x in one line" in again.stdout


def test_quiet_still_shows_errors() -> None:
    result = CliRunner().invoke(cli.app, ["run", str(CREWS / "failing_crew.py"), "--quiet"])

    assert result.exit_code == 1
    assert "run failed: task 'line' failed" in result.stderr
    assert "▶" not in result.stderr


def test_the_report_command_names_a_database_given_with_db(tmp_path: Path) -> None:
    db = tmp_path / "my runs.db"

    result = CliRunner().invoke(
        cli.app, ["run", str(CREWS / "offline_crew.py"), "-i", "topic=x", "--db", str(db)]
    )

    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines()[-1].endswith(f" --db '{db}'")


def test_a_failed_run_also_names_its_report() -> None:
    result = CliRunner().invoke(cli.app, ["run", str(CREWS / "failing_crew.py")])

    assert result.exit_code == 1
    assert "finish it later with: crewflow resume " in result.stderr
    assert "see the run: crewflow report " in result.stderr


def test_a_run_recorded_nowhere_names_no_report(tmp_path: Path) -> None:
    path = tmp_path / "unrecorded.py"
    path.write_text(
        "from crewflow import Agent, Crew, Task\n"
        "agent = Agent(role='Writer', goal='Write', llm='offline')\n"
        "crew = Crew(tasks=[Task('Write a line', agent=agent)], store=None)\n",
        encoding="utf-8",
    )

    result = CliRunner().invoke(cli.app, ["run", str(path)])

    assert result.exit_code == 0, result.output
    assert "report" not in result.stderr
    assert "finished  in" in result.stderr


# -- under a pseudo-terminal ----------------------------------------------------------------------


@pytest.mark.slow
def test_the_live_view_on_an_80_by_24_terminal_ends_on_every_task_done(tmp_path: Path) -> None:
    columns, rows = 80, 24
    leader, follower = os.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR")}
    process = subprocess.Popen(
        [sys.executable, "-m", "crewflow", "run", str(EXAMPLES / "parallel_research.py")],
        cwd=tmp_path,
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env={**env, "TERM": "xterm-256color"},
    )
    os.close(follower)
    screen = pyte.HistoryScreen(columns, rows, history=1_000)
    stream = pyte.ByteStream(screen)
    drawn = b""
    while True:
        try:
            data = os.read(leader, 65_536)
        except OSError:  # the process closed the terminal (EIO on Linux)
            break
        if not data:
            break
        drawn += data
        stream.feed(data)
    os.close(leader)
    assert process.wait(timeout=60) == 0, drawn.decode(errors="replace")

    scrolled = ["".join(line[x].data for x in range(columns)) for line in screen.history.top]
    lines = [line.rstrip() for line in [*scrolled, *screen.display]]
    assert b"\x1b[?25l" in drawn  # drawn live (the cursor hidden while it draws)
    header = next(i for i, line in enumerate(lines) if "7/7 tasks done · completed in " in line)
    assert lines[header].endswith(" · 1,604 tokens (1,058 in, 546 out)")
    tasks = lines[header + 1 : header + 8]
    names = ["plan", "market", "technology", "regulation", "glossary", "costs", "report"]
    assert sorted(line.split()[1] for line in tasks) == sorted(names)
    assert all(line.startswith("✓ ") and " finished  in " in line for line in tasks)
    assert all(len(line) <= columns for line in lines)
    run_id = next(line.split()[-1] for line in lines if line.startswith(" run id "))
    assert [line for line in lines if line][-1] == f"see the run: crewflow report {run_id}"


def _result(cost: float, restored: tuple[str, ...] = ()) -> Any:
    from crewflow._usage import Usage

    usage = Usage(requests=1, prompt_tokens=70, completion_tokens=30, cost=cost)
    return SimpleNamespace(usage=usage, restored=list(restored))


def _json(text: str) -> dict[str, Any]:
    import json

    parsed: dict[str, Any] = json.loads(text)
    return parsed


def test_the_header_adds_up_the_cost_of_the_calls_and_counts_restored_tasks_as_done() -> None:
    progress, _ = view(width=120)
    priced = call("facts", 10, 2).model_copy(update={"cost": 0.125})
    feed(
        progress,
        started(tasks=3),
        events.TaskRestored(run_id="r1", time=0.0, task="plan"),
        task_started("facts"),
        priced,
        priced,
    )

    lines = shown(progress)

    assert "1/3 tasks done" in lines[0]
    assert "$0.2500" in lines[0]
    (plan,) = [line for line in lines if " plan " in f" {line} "]
    assert "restored from the run's record" in plan


# -- the run's health -----------------------------------------------------------------------------


def health_changed(status: str, *details: str) -> events.RunHealthChanged:
    from crewflow.health import HealthIssue, RunHealth

    issues = [
        HealthIssue(kind="stalled", subject=f"t{i}", detail=detail, since=0.0)
        for i, detail in enumerate(details)
    ]
    return events.RunHealthChanged(
        run_id="r1",
        time=0.0,
        health=RunHealth(status=status, issues=issues),  # type: ignore[arg-type]
        raised=issues,
        cleared=[],
    )


@pytest.mark.parametrize("width", [60, 80, 120])
def test_an_unhealthy_run_shows_its_oldest_issue_under_the_header_within_the_width(
    width: int,
) -> None:
    progress, _ = view(width=width, height=8)
    stalled = "task 'summarise-the-quarterly-research' has made no progress for 300 s"
    feed(progress, started(5), *(task_started(f"t{i}") for i in range(5)))

    feed(progress, health_changed("stalled", stalled, "3 of the last 4 calls to m failed"))
    lines = progress.lines(width, 8)

    assert lines[1].plain.startswith("⚠ stalled: task 'summarise")
    assert lines[1].plain.endswith("(+1 more)") or lines[1].plain.endswith("…")
    assert len(lines) <= 7
    assert all(cell_len(line.plain) <= width for line in lines)
    out = Console(file=io.StringIO(), width=width, height=8, force_terminal=True)
    out.print(progress.render())
    assert len(out.file.getvalue().splitlines()) == len(lines)  # type: ignore[attr-defined]

    feed(progress, health_changed("ok"))
    assert not any("⚠" in line for line in shown(progress))


def test_off_a_terminal_a_change_of_health_is_one_plain_line() -> None:
    console = Console(file=io.StringIO(), width=80)
    progress = cli.ProgressView(console, clock=Clock())

    feed(progress, started(1), health_changed("stalled", "task 'a' has made no progress"))
    feed(progress, health_changed("ok"))

    assert console.file.getvalue().splitlines()[1:] == [  # type: ignore[attr-defined]
        "run r1 health: stalled: task 'a' has made no progress",
        "run r1 health: ok",
    ]
