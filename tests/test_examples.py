"""Every example runs offline, quickly, and prints what it promises.

Examples are found by glob, so a new ``examples/*.py`` is covered without touching this file;
give it an entry in ``MARKERS`` to check more than "exits 0 and prints something".
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))

pytestmark = pytest.mark.slow

# Per example: extra command-line arguments, and strings its stdout must contain.
ARGS: dict[str, list[str]] = {
    "quickstart.py": ["--topic", "tidal power"],
}
MARKERS: dict[str, list[str]] = {
    "quickstart.py": ["[offline model]", "tidal power", "(3 tasks,"],
    "tools_and_structured.py": [
        "tool called: lookup_customer (ok=True",
        "parsed Triage:",
        "category:",
        "priority:",
    ],
    "testing_your_crew.py": ["passed: test_", "tests passed"],
    "openai_compatible.py": ["HTTP 503 from the server; retrying", "HTTP statuses [503, 200, 200]"],
    "parallel_research.py": ["process=parallel, max_concurrency=3", "  glossary |", "7 tasks in"],
    "control_a_run.py": [
        "  1.5 s  run_paused",
        "  4.5 s  task_started  ch5",
        "status=completed, 6 outputs in 6.5 s",
        "finished before the cancel: ['ch1', 'ch2']",
    ],
    "failures_and_fallbacks.py": [
        "reviews: Reviews analyst gave up, Backup analyst takes over",
        "reviews   by Backup analyst (offline)",
        "pricing   after 1 attempt(s): LLMError",
        "skipped:\n  discount, summary",
        "stopped: 'pricing' failed",
    ],
    "custom_process.py": [
        "  + step.3 (task, Researcher)",
        "  ~ step.2: HTTP 503, retrying",
        "failed at 'step.2'; finished: ['brief', 'plan.1', 'step.1', 'step.3']",
        "restored ['brief', 'plan.1', 'step.1', 'step.3']",
        "{'plan': 1, 'Survey': 1, 'sites': 1, 'costs': 3, 'ecology': 1, 'answer': 1}",
        "recorded as added: ['plan.1', 'step.1', 'step.2', 'step.3', 'answer']",
        "final output from 'answer'",
    ],
    "hierarchical_report.py": [
        "  ? plan           asked of Manager",
        "  + analysis.2     Analyst after analysis.1",
        "  + report.1       Writer after research.1, analysis.2",
        "  → report         delivered by report.2",
        "  + analysis.1.r1  Researcher after research.1, analysis.2",
        "  + report.1.r1    Writer after research.1, report.2, analysis.2.r1",
        "  → analysis       delivered by analysis.2.r1",
        "  analysis.2   Analyst     Weigh the figures",
        "review.1: redo analysis: Quantify the risks",
        "review.2: accepted",
        "final answer (final_answer):",
        "Manager on: Write the final answer",
    ],
    # Only what the graph decides: what follows rests on measured durations, which a loaded
    # machine changes (test_the_adaptive_example_in_virtual_time checks those exactly).
    "adaptive.py": [
        "  1  parallel    no",
        "predicted 3 task units (graph) against 4 task units for sequential (graph)",
        "lower bound 4 task units",
    ],
    "auto_concurrency.py": [
        "rate_limited",
        "40 tasks done; the provider served 40",
        "never held more than 8 at once (its hidden capacity: 8)",
    ],
    "alerts_webhook.py": [
        "webhook got: [stalled] run ",
        "+ task 'draft' has made no progress for 1 s",
        "webhook got: [ok] run ",
        "- stalled draft: over",
        "draft: [offline model] Writer on:",
    ],
    "resume_a_run.py": [
        "checkpointed before the failure: ['costs', 'efficiency', 'installation']",
        "restored ['costs', 'efficiency', 'installation'], ran the rest",
        "report: The report.",
        "4 replies from the cache, 0 requests",
        "'completed', 1)]",
        "Critical path of heat-pump-report",
    ],
}
TIMEOUT = 60


def offline_env() -> dict[str, str]:
    """The environment of a fresh shell with no model or key configured and real calls
    forbidden."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"OPENAI_API_KEY", "OPENAI_BASE_URL", "CREWFLOW_MODEL", "CREWFLOW_LOG_LEVEL"}
    }
    env["CREWFLOW_FORBID_REAL_LLM_CALLS"] = "1"
    env["LITELLM_MODE"] = "PRODUCTION"
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    return env


def run(
    *args: str, forbid: bool = True, home: Path | None = None, **extra_env: str
) -> subprocess.CompletedProcess[str]:
    env = {**offline_env(), **extra_env}
    if not forbid:
        del env["CREWFLOW_FORBID_REAL_LLM_CALLS"]
    if home is not None:
        env["CREWFLOW_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def test_there_are_examples() -> None:
    assert {p.name for p in EXAMPLES} >= set(MARKERS)


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs_offline_and_prints_its_result(example: Path) -> None:
    done = run(str(example.relative_to(ROOT)), *ARGS.get(example.name, []))

    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert done.stdout.strip(), "an example must print something meaningful"
    for marker in MARKERS.get(example.name, []):
        assert marker in done.stdout, f"{marker!r} not in the output:\n{done.stdout}"


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_docstring_says_what_it_shows_and_how_to_run_it(example: Path) -> None:
    docstring = ast.get_docstring(ast.parse(example.read_text(encoding="utf-8"))) or ""

    assert len(docstring.splitlines()) >= 3, f"{example.name} needs a module docstring"
    assert f"python examples/{example.name}" in docstring


def test_quickstart_runs_under_the_cli_with_an_input() -> None:
    done = run(
        "-m", "crewflow", "run", "examples/quickstart.py", "--input", "topic=tidal power", "--json"
    )

    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert [o["task"] for o in result["outputs"]] == ["research", "outline", "article"]
    assert "[offline model]" in result["outputs"][-1]["text"]
    assert "tidal power" in result["outputs"][-1]["text"]


def test_the_custom_process_example_runs_under_the_cli() -> None:
    done = run(
        "-m",
        "crewflow",
        "run",
        "examples/custom_process.py",
        "--input",
        "audience=a council",
        "--json",
    )

    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["process"] == "planner"
    assert [o["task"] for o in result["outputs"]] == ["brief"]
    assert result["final_task"] == "answer"
    assert result["internal"][0]["task"] == "plan.1"


def test_the_hierarchical_example_runs_under_the_cli() -> None:
    done = run(
        "-m",
        "crewflow",
        "run",
        "examples/hierarchical_report.py",
        "--input",
        "topic=tidal power",
        "--json",
    )

    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["process"] == "hierarchical"
    assert [o["task"] for o in result["outputs"]] == ["research", "analysis", "report"]
    assert result["final_task"] == "final_answer"
    internal = [o["task"] for o in result["internal"]]
    assert internal[0] == "plan"
    assert internal[-2:] == ["review.2", "final_answer"]
    assert {"review.1", "analysis.2", "analysis.2.r1", "report.2.r1"} <= set(internal)


def test_the_adaptive_example_learns_across_cli_runs() -> None:
    # Both runs record in this test's own run database: the second reads the first.
    choices = []
    for _ in range(2):
        done = run(
            "-m",
            "crewflow",
            "run",
            "examples/adaptive.py",
            "--input",
            "topic=tidal power",
            "--json",
        )
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert result["process"] == "adaptive"
        assert [o["task"] for o in result["outputs"]] == ["brief", "market", "tech", "report"]
        choice = result["process_choice"]
        runs = {p["process"]: p["runs"] for p in choice["predictions"]}
        choices.append((choice["process"], runs))

    # The first run has only the graph (parallel); the second reads the first's record, and
    # measures sequential, the candidate measured least (whether as an exploration or as the
    # best prediction depends on how fast this machine ran the first).
    assert choices == [
        ("parallel", {"parallel": 0, "sequential": 0}),
        ("sequential", {"parallel": 1, "sequential": 0}),
    ]


def test_the_adaptive_example_in_virtual_time() -> None:
    # The offline model's latency in virtual time: every duration exact, so every choice is.
    import importlib.util

    from crewflow.testing import run_virtual

    spec = importlib.util.spec_from_file_location("adaptive_example", ROOT / "examples/adaptive.py")
    assert spec is not None
    assert spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        run_virtual(example.main)
    # The table's rows (log lines may come between them when another test configured logging).
    rows = [
        line.split()[:4]
        for line in output.getvalue().splitlines()
        if re.match(r"\s+\d+  (parallel|sequential) ", line)
    ]

    assert rows == [
        ["1", "parallel", "no", "0.30"],
        ["2", "sequential", "yes", "0.40"],
        ["3", "parallel", "no", "0.30"],
        ["4", "sequential", "yes", "0.40"],
        ["5", "parallel", "no", "0.30"],
        ["6", "parallel", "no", "0.30"],
    ]
    text = output.getvalue()
    assert "sequential: exploring, to measure it (0 settled runs so far); the best predic" in text
    assert "measured 0.3 s against 0.4 s for sequential over 2 runs each" in text
    assert "sequential 0.4 s (from 2 runs; lower bound 4 task units" in text


def test_quickstart_fails_clearly_without_an_api_key_for_a_real_model() -> None:
    # Without the guard: with no key the client refuses at open, before anything is sent.
    done = run("examples/quickstart.py", "--model", "openai/gpt-4o-mini", forbid=False)

    assert done.returncode == 2
    assert "OPENAI_API_KEY" in done.stderr


def test_the_testing_example_is_a_pytest_module() -> None:
    done = run("-m", "pytest", "-q", "-p", "no:cacheprovider", "examples/testing_your_crew.py")

    assert done.returncode == 0, done.stdout + done.stderr
    assert " passed" in done.stdout
    assert "failed" not in done.stdout


@pytest.mark.parametrize(
    "how",
    [
        ["examples/testing_your_crew.py"],
        ["-m", "pytest", "-q", "-p", "no:cacheprovider", "examples/testing_your_crew.py"],
    ],
    ids=["python", "pytest"],
)
def test_the_testing_example_records_nothing_in_the_users_database(
    how: list[str], tmp_path: Path
) -> None:
    home = tmp_path / "home"
    done = run(*how, home=home)

    assert done.returncode == 0, done.stdout + done.stderr
    assert not (home / "runs.db").exists()  # it follows the testing docs' own advice


# Examples that `crewflow run` cannot run as they are, and why.
NOT_CLI_CREWS = {
    "openai_compatible.py": "its crew is built around a local server that main() starts",
    "resume_a_run.py": "its crews are built in main(), around a temporary store and a failure",
    "testing_your_crew.py": "a pytest module: its crews are built by each test",
}


def test_the_examples_that_are_not_cli_crews_are_the_listed_ones() -> None:
    without = {
        p.name
        for p in EXAMPLES
        if not any(
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "crew" for t in node.targets)
            for node in ast.parse(p.read_text(encoding="utf-8")).body
        )
    }

    assert without == set(NOT_CLI_CREWS)


@pytest.mark.parametrize(
    "example",
    [p for p in EXAMPLES if p.name not in NOT_CLI_CREWS],
    ids=[p.name for p in EXAMPLES if p.name not in NOT_CLI_CREWS],
)
def test_crewflow_run_runs_every_example_crew_as_it_is(example: Path) -> None:
    # No --input: each example crew carries default inputs.
    done = run("-m", "crewflow", "run", str(example.relative_to(ROOT)))

    # failures_and_fallbacks.py's crew fails on purpose (a provider is down): exit 1.
    expected = 1 if example.name == "failures_and_fallbacks.py" else 0
    assert done.returncode == expected, done.stderr
    assert "missing inputs" not in done.stderr
    assert done.stdout.strip()


def test_the_alerts_example_posts_each_change_of_health_to_the_webhook_it_is_given() -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    received: list[dict[str, Any]] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/"
        done = run("examples/alerts_webhook.py", CREWFLOW_ALERT_URL=url)
    finally:
        server.shutdown()
        server.server_close()

    assert done.returncode == 0, done.stderr
    assert "webhook got" not in done.stdout  # the given webhook, not the script's own
    events = [body["event"] for body in received]
    assert [event["kind"] for event in events] == ["run_health_changed"] * 2
    assert [event["health"]["status"] for event in events] == ["stalled", "ok"]
    assert [issue["subject"] for issue in events[0]["raised"]] == ["draft"]
    assert [issue["subject"] for issue in events[1]["cleared"]] == ["draft"]
    assert received[0]["text"].startswith("[stalled] run ")
