"""The ``crewflow`` command line: ``run`` (progress, result, JSON, exit codes) and ``--version``.

Most tests drive the typer app in-process with `CliRunner`; the ``slow`` ones run the installed
console script and ``python -m crewflow`` in a subprocess, on the offline crews in
``tests/cli_crews/``.
"""

from __future__ import annotations

import gc
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from rich.console import Console
from rich.text import Text
from typer.testing import CliRunner, Result

from crewflow import Agent, Crew, Task, __version__, cli, events
from crewflow.testing import Error, OpenAIServer

if TYPE_CHECKING:
    from crewflow.testing import FakeClock

CREWS = Path(__file__).parent / "cli_crews"


def invoke(*args: str) -> Result:
    # Wide enough that rich never wraps a line the assertions look for.
    return CliRunner().invoke(cli.app, list(args), env={"COLUMNS": "200"})


def run_json(*args: str) -> dict[str, Any]:
    result = invoke("run", *args, "--json")
    assert result.exit_code == 0, result.output
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


# -- help ---------------------------------------------------------------------------------------


def test_help_reflows_every_paragraph_and_keeps_the_extras_brackets() -> None:
    # Rich markup would swallow "[ray]" in "crewflow[ray]", and typer keeps the docstring's
    # line breaks in the paragraphs after the first: markdown help reflows them to the width.
    resume = invoke("resume", "--help").stdout
    assert "(crewflow run recorded it). A completed run is left as it is" in resume
    assert "pip install 'crewflow[dashboard]'" in invoke("dashboard", "--help").stdout
    assert "pip install 'crewflow[ray]'" in invoke("batch", "--help").stdout


# -- success ------------------------------------------------------------------------------------


def test_version_prints_the_package_version() -> None:
    result = invoke("--version")

    assert result.exit_code == 0
    assert result.stdout.strip() == f"crewflow {__version__}"


def test_run_shows_the_final_output_titled_by_the_last_task_and_the_usage() -> None:
    result = invoke("run", str(CREWS / "offline_crew.py"), "--input", "topic=batteries")

    assert result.exit_code == 0, result.output
    assert "Writer on: Summarise batteries in one line" in result.stdout
    assert "─ summary ─" in result.stdout  # the panel's title
    for row in ("requests", "prompt tokens", "completion tokens", "duration", "run id"):
        assert row in result.stdout
    assert "cost" not in result.stdout  # the offline model's cost is unknown: no row


def test_run_reports_each_task_finishing_on_stderr() -> None:
    result = invoke("run", str(CREWS / "offline_crew.py"), "--input", "topic=batteries")

    assert result.exit_code == 0, result.output
    assert "facts running" in result.stderr
    assert "facts finished  in" in result.stderr
    assert "summary finished  in" in result.stderr
    assert "tokens" in result.stderr
    assert "Summarise" not in result.stderr  # the answer goes to stdout only


def test_input_fills_the_task_templates() -> None:
    output = run_json(str(CREWS / "offline_crew.py"), "--input", "topic=sodium batteries")

    texts = {item["task"]: item["text"] for item in output["outputs"]}
    assert "Collect facts about sodium batteries" in texts["facts"]
    assert "Summarise sodium batteries in one line" in texts["summary"]


def test_nan_and_infinity_on_the_command_line_are_text_since_json_has_neither() -> None:
    inputs = cli.parse_inputs(["a=NaN", "b=Infinity", "c=-Infinity", "d=[1, NaN]", "e=1e999"])

    assert inputs == {"a": "NaN", "b": "Infinity", "c": "-Infinity", "d": "[1, NaN]", "e": "1e999"}


def test_input_values_are_json_when_they_parse_as_json_else_strings() -> None:
    inputs = cli.parse_inputs(
        ["n=3", "ratio=0.5", "on=true", 'tags=["a", "b"]', "topic=batteries", "q=a=b", "empty="]
    )

    assert inputs == {
        "n": 3,
        "ratio": 0.5,
        "on": True,
        "tags": ["a", "b"],
        "topic": "batteries",
        "q": "a=b",
        "empty": "",
    }


def test_json_prints_only_the_result_as_json() -> None:
    result = invoke("run", str(CREWS / "offline_crew.py"), "-i", "topic=batteries", "--json")

    assert result.exit_code == 0, result.output
    output = json.loads(result.stdout)  # nothing but JSON on stdout
    assert [item["task"] for item in output["outputs"]] == ["facts", "summary"]
    assert output["usage"]["requests"] == 2
    assert output["process"] == "sequential"
    assert result.stderr == ""  # no progress either


def test_crew_name_defaults_to_the_file_stem() -> None:
    assert run_json(str(CREWS / "offline_crew.py"), "-i", "topic=x")["crew"] == "offline_crew"


def test_a_crew_named_in_its_file_keeps_its_name() -> None:
    assert run_json(str(CREWS / "sibling_crew.py"))["crew"] == "sibling-named"


def test_the_crew_of_a_file_is_named_after_it_by_construction_not_by_the_cli() -> None:
    with cli.crew_from_file(CREWS / "offline_crew.py") as loaded:
        assert loaded.crew is sys.modules["offline_crew"].crew
        assert loaded.crew.name == "offline_crew"


@pytest.mark.slow
def test_a_file_of_several_crews_names_each_after_its_attribute_as_python_does() -> None:
    by_python = subprocess.run(
        [sys.executable, str(CREWS / "several_crews.py")],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )

    assert json.loads(by_python.stdout) == ["several_crews:crew", "several_crews:side"]
    assert run_json(str(CREWS / "several_crews.py"))["crew"] == "several_crews:crew"


def test_the_file_directory_is_on_sys_path_only_while_it_runs() -> None:
    directory = str(CREWS.resolve())
    assert directory not in sys.path

    # sibling_crew.py imports _cli_parts from its own directory, and its only Crew is not
    # called `crew`.
    output = run_json(str(CREWS / "sibling_crew.py"))

    assert output["outputs"][0]["agent"] == "Helper"
    assert directory not in sys.path
    assert "sibling_crew" not in sys.modules


def test_model_overrides_every_agents_model() -> None:
    # The file's agent would fail with HTTP 400; --model offline replaces it for this run.
    output = run_json(str(CREWS / "failing_crew.py"), "--model", "offline")

    assert [item["model"] for item in output["outputs"]] == ["offline"]


def test_model_overrides_the_model_with_progress_shown() -> None:
    result = invoke("run", str(CREWS / "failing_crew.py"), "--model", "offline")

    assert result.exit_code == 0, result.output
    assert "[offline model] Writer on: Write a line" in result.stdout
    assert "line finished" in result.stderr


def test_the_users_own_event_hook_still_gets_every_event() -> None:
    seen: list[events.Event] = []
    agent = Agent(role="Writer", goal="Write", llm="offline")
    crew = Crew(tasks=[Task("Write a line", agent=agent, name="line")], on_event=seen.append)
    view = cli.ProgressView(Console(file=io.StringIO(), width=200))

    result = cli.kickoff(crew, {}, None, view)

    assert result.text
    assert [type(e) for e in seen if isinstance(e, events.TaskFinished)] == [events.TaskFinished]
    assert "line finished" in view.console.file.getvalue()  # type: ignore[attr-defined]
    assert crew.on_event == seen.append  # the user's crew was not touched


def test_tasks_a_process_adds_show_before_they_start() -> None:
    view = cli.ProgressView(Console(file=io.StringIO(), width=200))

    view(
        events.TaskAdded(
            run_id="r", time=0.0, task="plan", agent="Manager", step="ask", depends_on=[]
        )
    )
    view(
        events.TaskAdded(
            run_id="r",
            time=0.0,
            task="research.1",
            agent="Researcher",
            step="task",
            depends_on=["plan", "brief"],
        )
    )
    view(events.TaskStarted(run_id="r", time=1.0, task="plan", agent="Manager", attempt=1))

    printed = view.console.file.getvalue().splitlines()  # type: ignore[attr-defined]
    assert printed == [
        "+ plan added  asked of Manager",
        "+ research.1 added  planned for Researcher, after plan, brief",
        "▶ plan running  Manager",
    ]


def test_a_delegated_task_shows_who_does_it_and_when_it_is_done() -> None:
    view = cli.ProgressView(Console(file=io.StringIO(), width=200))

    view(events.TaskDelegated(run_id="r", time=0.0, task="research", to="research.2"))
    view(
        events.TaskFinished(
            run_id="r",
            time=1.0,
            task="research",
            attempt=0,
            duration=0.5,
            prompt_tokens=0,
            completion_tokens=0,
        )
    )

    printed = view.console.file.getvalue().splitlines()  # type: ignore[attr-defined]
    assert printed == [
        "… research waiting  done by research.2",
        "✓ research finished  by the tasks that did its work",
    ]


def test_a_retried_provider_call_shows_as_retrying(fake_clock: FakeClock) -> None:
    result = invoke("run", str(CREWS / "flaky_crew.py"))

    assert result.exit_code == 0, result.output
    assert "line retrying  provider error 503" in result.stderr
    assert "recovered answer" in result.stdout
    assert len(fake_clock.sleeps) == 1


def test_on_a_terminal_progress_is_drawn_live_and_ends_in_its_final_state() -> None:
    stderr = Console(file=io.StringIO(), force_terminal=True, width=200)
    stdout = Console(file=io.StringIO(), width=200)

    code = cli.run_file(
        CREWS / "offline_crew.py", inputs=["topic=batteries"], stdout=stdout, stderr=stderr
    )

    assert code == 0
    drawn = stderr.file.getvalue()  # type: ignore[attr-defined]
    assert "\x1b[?25l" in drawn  # the live display hides the cursor while it draws
    assert "facts" in drawn
    assert "summary" in drawn
    assert "finished" in drawn
    assert "Summarise batteries" in stdout.file.getvalue()  # type: ignore[attr-defined]


def test_a_running_task_is_drawn_with_a_spinner_and_its_agent() -> None:
    view = cli.ProgressView(Console(file=io.StringIO(), width=200))

    class _Live:  # stands in for the live display: nothing is printed line by line
        def update(self, renderable: object) -> None:
            pass

    view._live = _Live()  # type: ignore[assignment]
    view(events.TaskStarted(run_id="r", time=0.0, task="facts", agent="Researcher", attempt=1))
    view(events.TaskStarted(run_id="r", time=0.0, task="draft", agent="Writer", attempt=2))
    view(
        events.TaskFailed(
            run_id="r", time=1.0, task="draft", attempts=2, error_type="LLMError", error="boom"
        )
    )
    console = Console(file=io.StringIO(), width=200)
    console.print(view.render())

    drawn = console.file.getvalue()  # type: ignore[attr-defined]
    assert "facts running  Researcher" in drawn
    assert "✗ draft failed  after 2 attempts: LLMError: boom" in drawn
    assert view.console.file.getvalue() == ""  # type: ignore[attr-defined]


# -- run failures: exit 1 -----------------------------------------------------------------------


def test_an_llm_failure_exits_1_naming_the_task_without_a_traceback() -> None:
    result = invoke("run", str(CREWS / "failing_crew.py"))

    assert result.exit_code == 1
    assert "run failed: task 'line' failed after 1 attempt" in result.stderr
    assert "HTTP 400: the request was rejected" in result.stderr
    assert "finished before the failure: none" in result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""


def test_a_partial_failure_is_told_in_terminal_words_with_each_cause() -> None:
    result = invoke("run", str(CREWS / "partly_failing.py"))

    assert result.exit_code == 1
    assert "run failed: 1 task(s) failed: broken" in result.stderr
    assert "broken: LLMError: function: HTTP 400: the request was rejected" in result.stderr
    assert "skipped: after" in result.stderr
    assert "finished before the failure: fine" in result.stderr
    assert ".outputs" not in result.stderr
    assert ".failures" not in result.stderr


def test_a_run_failure_names_the_tasks_that_finished_before_it() -> None:
    result = invoke("run", str(CREWS / "fails_second.py"))

    assert result.exit_code == 1
    assert "failed task: second" in result.stderr
    assert "finished before the failure: first" in result.stderr


def test_an_unexpected_error_is_one_line_and_exit_1(monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(*args: object) -> None:
        raise ValueError("something odd")

    monkeypatch.setattr("crewflow.cli._run.kickoff", explode)

    result = invoke("run", str(CREWS / "offline_crew.py"), "-i", "topic=x")

    assert result.exit_code == 1
    assert result.stderr.strip() == "error: unexpected ValueError: something odd"


def test_ctrl_c_exits_130_saying_cancelled(monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupt(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("crewflow.cli._run.kickoff", interrupt)

    result = invoke("run", str(CREWS / "offline_crew.py"), "-i", "topic=x")

    assert result.exit_code == 130
    assert result.stderr.strip() == "error: cancelled"


# -- usage and configuration errors: exit 2 -----------------------------------------------------


def test_a_missing_template_input_exits_2_naming_it() -> None:
    result = invoke("run", str(CREWS / "offline_crew.py"))

    assert result.exit_code == 2
    assert "'topic' (used by facts, summary)" in result.stderr
    assert "--input topic=" in result.stderr


@pytest.mark.parametrize("pair", ["topic", "=batteries", " =x"])
def test_an_input_that_is_not_key_value_exits_2(pair: str) -> None:
    result = invoke("run", str(CREWS / "offline_crew.py"), "--input", pair)

    assert result.exit_code == 2
    assert "is not KEY=VALUE" in result.stderr


def test_a_bare_model_name_exits_2_suggesting_the_provider_prefix() -> None:
    result = invoke("run", str(CREWS / "offline_crew.py"), "-i", "topic=x", "--model", "gpt-4o")

    assert result.exit_code == 2
    assert "openai/gpt-4o" in result.stderr
    assert result.stdout == ""


def test_an_unknown_provider_exits_2() -> None:
    result = invoke("run", str(CREWS / "offline_crew.py"), "-i", "topic=x", "-m", "nope/model")

    assert result.exit_code == 2
    assert "unknown model provider 'nope'" in result.stderr


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("no_crew.py", "no_crew.py defines no Crew at module level; add one named `crew`"),
        ("two_crews.py", "two_crews.py defines 2 crews (first, second); name the one to run"),
        ("raises_on_import.py", "raised RuntimeError: boom while importing"),
        ("missing.py", "missing.py does not exist"),
        (".", "is a directory"),
    ],
)
def test_a_file_without_exactly_one_crew_exits_2(source: str, message: str) -> None:
    result = invoke("run", str(CREWS / source))

    assert result.exit_code == 2
    assert message in result.stderr
    assert "Traceback" not in result.output


def test_a_syntax_error_exits_2_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.py"
    path.write_text("from crewflow import Crew\n\ncrew = Crew(tasks=[\n")

    result = invoke("run", str(path))

    assert result.exit_code == 2
    assert "broken.py has a syntax error at line 3" in result.stderr
    assert "Traceback" not in result.output


def test_a_crew_attribute_that_is_not_a_crew_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "wrong.py"
    path.write_text("crew = 'not a crew'\n")

    result = invoke("run", str(path))

    assert result.exit_code == 2
    assert "`crew` in wrong.py is a str, not a Crew" in result.stderr


def test_an_invalid_crew_in_the_file_exits_2_with_its_message(tmp_path: Path) -> None:
    path = tmp_path / "cyclic.py"
    path.write_text(
        "from crewflow import Agent, Crew, Task\n"
        "agent = Agent(role='R', goal='G', llm='offline')\n"
        "crew = Crew(tasks=[Task('x', agent=agent)], process='no-such-process')\n"
    )

    result = invoke("run", str(path))

    assert result.exit_code == 2
    assert "no-such-process" in result.stderr
    assert "Traceback" not in result.output


def crew_file(tmp_path: Path, llm: str) -> Path:
    """A one-task crew file whose agent uses ``llm`` (Python source)."""
    path = tmp_path / "keyed.py"
    path.write_text(
        "from crewflow import Agent, Crew, Task\n"
        "from crewflow.llm import LiteLLM, OpenAIChat\n"
        f"agent = Agent(role='Writer', goal='Write', llm={llm})\n"
        "crew = Crew(tasks=[Task('Write a line', agent=agent)])\n",
        encoding="utf-8",
    )
    return path


# LiteLLM's Anthropic route, at a loopback address (allowed by the test guard, never called).
NO_KEY_CREW = "LiteLLM('anthropic/claude-sonnet-4-20250514', api_base='http://127.0.0.1:9/v1')"


@pytest.mark.parametrize("columns", [60, 80, 120])
def test_a_missing_api_key_exits_2_with_one_line_and_records_no_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, columns: int
) -> None:
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    env = {"COLUMNS": str(columns), "TTY_COMPATIBLE": "1", "TERM": "xterm-256color"}

    result = CliRunner().invoke(cli.app, ["run", str(crew_file(tmp_path, NO_KEY_CREW))], env=env)

    assert result.exit_code == 2
    shown = Text.from_ansi(result.stderr).plain
    message = " ".join(shown[shown.index("error: ") :].split())
    assert message.startswith(
        "error: no API key for 'anthropic/claude-sonnet-4-20250514': set ANTHROPIC_API_KEY (or "
        "ANTHROPIC_AUTH_TOKEN), or pass LiteLLM(..., api_key=...)."
    )
    assert len(message) < 250
    # Wrapped at words to the terminal's width, never in the middle of one.
    lines = [line.rstrip() for line in shown[shown.index("error: ") :].strip().splitlines()]
    assert all(len(line) <= columns for line in lines)
    assert " ".join(lines) == message
    assert "finish it later" not in result.stderr
    assert "Traceback" not in result.output
    assert invoke("runs", "--json").stdout.strip() == "[]"


def test_a_key_refused_on_the_first_call_exits_2_with_the_credentials_message(
    tmp_path: Path,
) -> None:
    with OpenAIServer().in_thread() as server:
        server.enqueue(Error(401, "Incorrect API key provided"))
        llm = f"OpenAIChat('test-model', base_url={server.base_url!r}, api_key='sk-fake-1234567')"

        result = invoke("run", str(crew_file(tmp_path, llm)))

    assert result.exit_code == 2
    assert "error: the API key for 'openai/test-model' was refused (HTTP 401" in result.stderr
    assert "check OPENAI_API_KEY, or pass OpenAIChat(..., api_key=...)" in result.stderr
    assert "sk-fake-1234567" not in result.output
    assert "finish it later" not in result.stderr  # resuming would not fix the key


# -- the installed command ----------------------------------------------------------------------


def _subprocess(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}  # conftest's guards against real calls go along
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.slow
def test_the_console_script_runs_a_crew_file(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "crewflow"
    assert script.exists(), "the crewflow console script is not installed in this environment"

    done = _subprocess(
        str(script), "run", str(CREWS / "offline_crew.py"), "--input", "topic=batteries",
        cwd=tmp_path,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert "Writer on: Summarise batteries in one line" in done.stdout
    assert "summary finished" in done.stderr


@pytest.mark.slow
def test_python_m_crewflow_runs_a_crew_with_sibling_imports(tmp_path: Path) -> None:
    done = _subprocess(
        sys.executable, "-m", "crewflow", "run", str(CREWS / "sibling_crew.py"), "--json",
        cwd=tmp_path,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["crew"] == "sibling-named"


@pytest.mark.slow
def test_python_m_crewflow_reports_a_failed_run_without_a_traceback(tmp_path: Path) -> None:
    done = _subprocess(
        sys.executable, "-m", "crewflow", "run", str(CREWS / "failing_crew.py"), cwd=tmp_path
    )

    assert done.returncode == 1
    assert "run failed" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr


@pytest.mark.slow
def test_python_m_crewflow_version(tmp_path: Path) -> None:
    done = _subprocess(sys.executable, "-m", "crewflow", "--version", cwd=tmp_path)

    assert done.returncode == 0
    assert done.stdout.strip() == f"crewflow {__version__}"


@pytest.mark.slow
def test_importing_crewflow_does_not_import_the_cli(tmp_path: Path) -> None:
    code = "import sys, crewflow; print(sorted({'crewflow.cli', 'typer'} & set(sys.modules)))"

    done = _subprocess(sys.executable, "-c", code, cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_failed_tool_call_shows_on_its_tasks_line_and_is_counted_when_it_finishes() -> None:
    result = invoke("run", str(CREWS / "tool_fails.py"))

    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert (
        "▶ facts running  a tool call failed: tool 'lookup' raised ConnectionError: the index "
        "is down"
    ) in lines
    assert any(
        line.startswith("✓ facts finished  in ")
        and line.endswith(" out) · 2 tool calls (1 failed)")
        for line in lines
    )
    assert "Tides: 42" in result.stdout


def test_a_failed_tool_calls_error_shows_its_first_line_cut_to_fit() -> None:
    view = cli.ProgressView(Console(file=io.StringIO(), width=200))
    long = "x" * 300

    for error in (f"first line\nsecond line {long}", long):
        view(
            events.ToolCalled(
                run_id="r", time=0.0, task="facts", tool="t", ok=False, duration=0.1, error=error
            )
        )
    view(events.ToolCalled(run_id="r", time=0.0, task="facts", tool="t", ok=True, duration=0.1))
    view(
        events.TaskFinished(
            run_id="r",
            time=1.0,
            task="facts",
            attempt=1,
            duration=1.0,
            prompt_tokens=10,
            completion_tokens=2,
        )
    )

    printed = view.console.file.getvalue().splitlines()  # type: ignore[attr-defined]
    assert printed == [
        "▶ facts running  a tool call failed: first line",
        f"▶ facts running  a tool call failed: {'x' * 119}…",
        "✓ facts finished  in 1.00 s · 12 tokens (10 in, 2 out) · 3 tool calls (2 failed)",
    ]


def test_skips_fallbacks_and_limit_waits_are_shown() -> None:
    view = cli.ProgressView(Console(file=io.StringIO(), width=200))

    view(events.TaskSkipped(run_id="r", time=0.0, task="draft", because=["facts"]))
    view(
        events.TaskFallback(
            run_id="r", time=0.0, task="facts", agent="Researcher", fallback="Backup", error="x"
        )
    )
    view(
        events.LimiterWait(
            run_id="r", time=0.0, task="notes", model="m", waited=1.5, reasons=["rpm:m"]
        )
    )

    printed = view.console.file.getvalue()  # type: ignore[attr-defined]
    assert "draft skipped  because facts failed" in printed
    assert "facts retrying  Researcher gave up; Backup takes over" in printed
    assert "notes running  waited 1.50 s for rpm:m" in printed


def test_default_inputs_count_as_given_on_the_command_line(tmp_path: Path) -> None:
    crew_file = tmp_path / "defaults.py"
    crew_file.write_text(
        "from crewflow import Agent, Crew, Task\n"
        "agent = Agent(role='Writer', goal='Write', llm='offline')\n"
        "crew = Crew(tasks=[Task('About {topic} for {who}', agent=agent)],\n"
        "            default_inputs={'topic': 'tides'})\n",
        encoding="utf-8",
    )

    missing = invoke("run", str(crew_file))
    given = invoke("run", str(crew_file), "--input", "who=sailors")

    assert missing.exit_code == 2
    assert "'who'" in missing.stderr
    assert "'topic'" not in missing.stderr
    assert given.exit_code == 0, given.output
    assert "About tides for sailors" in given.stdout


# -- the heap of crewflow's own process ------------------------------------------------------------


@pytest.mark.slow
def test_the_console_script_freezes_the_heap_it_loaded_before_the_run(tmp_path: Path) -> None:
    done = _subprocess(
        sys.executable, "-m", "crewflow", "run", str(CREWS / "heap_probe.py"), "--json",
        cwd=tmp_path,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["outputs"][0]["text"] == "frozen objects: True"


def test_the_app_run_inside_another_program_leaves_its_heap_alone() -> None:
    result = invoke("run", str(CREWS / "heap_probe.py"), "--json")

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["outputs"][0]["text"] == "frozen objects: False"
    assert gc.get_freeze_count() == 0
