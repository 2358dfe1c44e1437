"""Supervisors: ``crewflow run --restart N`` restarts a child whose process died (and only then),
resuming its run from its checkpoints; ``crewflow resume --interrupted`` resumes every run whose
process died, and two of them at once never run one run twice.

The crew (``cli_crews/supervised.py``) kills its own process with SIGKILL at the start of its
second task, as many times as the test asks; the loopback server counts each task's requests,
so "nothing finished is sent again" is a count, not a guess.
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import pytest
from rich.console import Console
from typer.testing import CliRunner

from crewflow import cli
from crewflow.cli import _supervise
from crewflow.cli._supervise import Resumed, death, parse_delay, supervise_run
from crewflow.store import RunRecord, SQLiteStore
from crewflow.testing import Error, OpenAIServer, Text
from tests import canary

if TYPE_CHECKING:
    from collections.abc import Iterator

    from crewflow.testing import ReceivedRequest

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")

CREW = str(Path(__file__).parent / "cli_crews" / "supervised.py")


class Loopback:
    """The loopback server the crew calls: it counts requests per ``"TASK of TOPIC"``, answers
    400 to the tasks in ``refuse``, and holds those in ``hold`` in flight (``arrived`` set)."""

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()
        self.refuse: set[str] = set()
        self.hold: set[str] = set()
        self.arrived = threading.Event()
        self.server = OpenAIServer(responder=self.respond)

    async def respond(self, request: ReceivedRequest) -> Text | Error:
        name = request.last_user_message.split("do ", 1)[1].split("\n")[0].strip()
        self.requests[name] += 1
        task = name.split()[0]
        if task in self.refuse:
            return Error(400, f"{task} is refused")
        if task in self.hold:
            self.arrived.set()
            await asyncio.sleep(3600)  # until the server stops
        return Text(f"result of {name}")


@pytest.fixture
def loopback() -> Iterator[Loopback]:
    served = Loopback()
    with served.server.in_thread():
        yield served


@pytest.fixture
def state(tmp_path: Path) -> Path:
    directory = tmp_path / "state"
    directory.mkdir()
    return directory


def environment(loopback: Loopback, state: Path, *, kills: int = 0) -> dict[str, str]:
    (state / "kills").write_text(str(kills))
    return {
        **os.environ,
        "CLI_TEST_STATE": str(state),
        "OPENAI_BASE_URL": canary.with_userinfo(loopback.server.base_url),
        "OPENAI_API_KEY": canary.KEY,
        "COLUMNS": "200",
    }


def crewflow(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crewflow", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )


def runs(db: Path) -> list[RunRecord]:
    async def read() -> list[RunRecord]:
        async with SQLiteStore(db) as store:
            return await store.list_runs(limit=None)

    return anyio.run(read)


def every_task(*topics: str) -> Counter[str]:
    return Counter(
        f"{task} of {topic}" for topic in topics for task in ("alpha", "bravo", "charlie")
    )


# -- crewflow run --restart ---------------------------------------------------------------------


def test_a_run_killed_by_sigkill_is_restarted_and_nothing_finished_is_sent_again(
    loopback: Loopback, state: Path, tmp_path: Path
) -> None:
    db = tmp_path / "runs.db"
    env = environment(loopback, state, kills=1)

    done = crewflow(
        "run", CREW, "-i", "topic=t1", "--db", str(db), "--restart", "2", "--restart-delay", "0",
        env=env,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    (run,) = runs(db)
    assert f"restart 1 of 2: run {run.run_id}'s process died (killed by SIGKILL)" in done.stderr
    assert "restart 2" not in done.stderr
    assert (run.status, run.resumed) == ("completed", 1)
    # alpha was checkpointed before the kill: it was sent once, and so was everything else.
    assert loopback.requests == every_task("t1")
    assert "result of charlie of t1" in done.stdout


def test_when_the_restarts_are_spent_it_says_so_and_exits_1(
    loopback: Loopback, state: Path, tmp_path: Path
) -> None:
    db = tmp_path / "runs.db"
    env = environment(loopback, state, kills=5)

    done = crewflow(
        "run", CREW, "-i", "topic=t1", "--db", str(db), "--restart", "1", "--restart-delay", "0ms",
        env=env,
    )  # fmt: skip

    assert done.returncode == 1
    (run,) = runs(db)
    said = " ".join(done.stderr.split())
    assert said.count("restart 1 of 1") == 1
    assert (
        f"error: run {run.run_id} was not finished: its process died (killed by SIGKILL), "
        f"2 time(s) in all, and --restart 1 allows no more restarts. Finish it with: "
        f"crewflow resume {run.run_id} --db {db}"
    ) in said
    assert run.status == "interrupted"
    assert loopback.requests == Counter({"alpha of t1": 1})
    assert (state / "kills").read_text() == "3"  # two processes started, no third


def test_a_run_that_fails_on_its_own_terms_is_not_restarted(
    loopback: Loopback, state: Path, tmp_path: Path
) -> None:
    loopback.refuse.add("bravo")
    db = tmp_path / "runs.db"

    done = crewflow(
        "run", CREW, "-i", "topic=t1", "--db", str(db), "--restart", "3", "--restart-delay", "0",
        env=environment(loopback, state),
    )  # fmt: skip

    assert done.returncode == 1
    assert "restart" not in done.stderr
    assert "bravo is refused" in done.stderr
    (run,) = runs(db)
    assert run.status == "failed"
    assert loopback.requests == Counter({"alpha of t1": 1, "bravo of t1": 1})


def signalled_while_bravo_is_held(
    loopback: Loopback, state: Path, db: Path, signum: signal.Signals
) -> tuple[int, str]:
    """Start ``crewflow run --restart 3`` with no terminal (so the supervisor alone gets the
    signal), send it ``signum`` while bravo's request is held at the server, and return its
    exit code and stderr."""
    loopback.hold.add("bravo")
    command = [sys.executable, "-m", "crewflow", "run", CREW, "-i", "topic=t1", "--db", str(db)]
    supervisor = subprocess.Popen(
        [*command, "--restart", "3", "--restart-delay", "0"],
        env=environment(loopback, state),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert loopback.arrived.wait(60), "bravo's request never arrived"
        supervisor.send_signal(signum)
        _, stderr = supervisor.communicate(timeout=60)
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.communicate()
    return supervisor.returncode, stderr


def test_ctrl_c_stops_the_child_and_never_restarts_it(
    loopback: Loopback, state: Path, tmp_path: Path
) -> None:
    db = tmp_path / "runs.db"

    code, stderr = signalled_while_bravo_is_held(loopback, state, db, signal.SIGINT)

    assert code == 130
    (run,) = runs(db)
    assert f"cancelled; run {run.run_id} was not restarted" in " ".join(stderr.split())
    assert "restart 1" not in stderr
    assert run.status == "cancelled"
    assert loopback.requests == Counter({"alpha of t1": 1, "bravo of t1": 1})


def test_sigterm_to_the_supervisor_stops_the_child_and_never_restarts_it(
    loopback: Loopback, state: Path, tmp_path: Path
) -> None:
    db = tmp_path / "runs.db"

    code, stderr = signalled_while_bravo_is_held(loopback, state, db, signal.SIGTERM)

    assert code == 128 + signal.SIGTERM
    (run,) = runs(db)
    said = " ".join(stderr.split())
    assert f"run {run.run_id}'s process was sent SIGTERM and not restarted" in said
    assert f"crewflow resume {run.run_id}" in said
    assert "restart 1" not in stderr
    assert run.status == "interrupted"  # its process is gone: resumable at once
    assert loopback.requests == Counter({"alpha of t1": 1, "bravo of t1": 1})


def scripted_children(monkeypatch: pytest.MonkeyPatch, *codes: int) -> list[list[str]]:
    """Children that end with ``codes``, in turn, without starting a process."""
    started: list[list[str]] = []
    left = list(codes)

    def run_child(command: list[str]) -> int:
        started.append(command)
        return left.pop(0)

    monkeypatch.setattr(_supervise, "_run_child", run_child)
    return started


def test_each_restart_waits_the_delay_and_reruns_the_same_command_for_the_same_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started = scripted_children(monkeypatch, -signal.SIGKILL, 137, 0)
    waits: list[float] = []
    err = Console(file=io.StringIO(), width=200)

    code = supervise_run(
        ["crew.py", "--quiet"], restarts=3, delay=10.0, run_id="r1", stderr=err, sleep=waits.append
    )

    assert code == 0
    assert waits == [10.0, 10.0]
    assert (
        started
        == [[sys.executable, "-m", "crewflow", "run", "crew.py", "--quiet", "--run-id", "r1"]] * 3
    )
    told = err.file.getvalue()  # type: ignore[attr-defined]
    assert (
        "restart 1 of 3: run r1's process died (killed by SIGKILL); resuming it from its "
        "checkpoints in 10 s" in told
    )
    assert "restart 2 of 3: run r1's process died (exit code 137)" in told


@pytest.mark.parametrize("code", [0, 1, 2, 130, -signal.SIGINT])
def test_crewflows_own_exit_codes_and_ctrl_c_are_not_deaths(
    code: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = scripted_children(monkeypatch, code)
    waits: list[float] = []

    supervise_run(
        ["crew.py"], restarts=3, delay=1.0, stderr=Console(file=io.StringIO()), sleep=waits.append
    )

    assert (len(started), waits) == (1, [])
    assert death(code) is None


def test_deaths_are_named_by_their_signal_or_exit_code() -> None:
    assert death(-signal.SIGKILL) == "killed by SIGKILL"
    assert death(-signal.SIGSEGV) == "killed by SIGSEGV"
    assert death(137) == "exit code 137"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("10s", 10.0),
        ("500ms", 0.5),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("0", 0.0),
        ("2.5", 2.5),
        (" 3 s", 3.0),
    ],
)
def test_restart_delays_take_a_unit(text: str, seconds: float) -> None:
    assert parse_delay(text) == seconds


@pytest.mark.parametrize("text", ["", "-1s", "ten", "5x", "1.s", "10 seconds"])
def test_a_bad_restart_delay_is_a_usage_error_before_anything_runs(
    text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = scripted_children(monkeypatch)
    result = CliRunner().invoke(
        cli.app, ["run", CREW, "--restart", "1", "--restart-delay", text], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 2
    assert "is not a delay" in result.output
    assert started == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", CREW, "--restart", "-1"], "--restart"),
        (["run", CREW, "--run-id", "-x"], "is not a run id"),
        (["resume"], "give the RUN_ID to resume, or --interrupted"),
        (["resume", "abcd", "--interrupted"], "it takes no RUN_ID"),
        (["resume", "--interrupted", "--rerun"], "it takes no --rerun"),
        (["resume", "abcd", "--parallel", "2"], "--crew and --parallel go with --interrupted"),
    ],
)
def test_supervisor_options_used_wrongly_are_usage_errors(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli.app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 2
    assert message in " ".join(result.output.replace("│", " ").split())


@pytest.mark.parametrize("columns", [60, 80, 120])
def test_restart_lines_and_outcomes_render_at_the_terminal_width(
    columns: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    scripted_children(monkeypatch, -signal.SIGKILL, -signal.SIGKILL)
    err = Console(file=io.StringIO(), width=columns, force_terminal=True)
    run_id = "0123456789abcdef0123456789abcdef"

    code = supervise_run(["crew.py"], restarts=1, delay=0, run_id=run_id, stderr=err)
    for outcome in (
        Resumed(run_id, "supervised", "completed"),
        Resumed(run_id, "supervised", "failed", "run failed: task 'bravo' failed " * 3),
        Resumed(run_id, "supervised", "skipped", "another process (host, pid 42) is running it"),
    ):
        _supervise._report(err, outcome, as_json=False)

    assert code == 1
    shown = err.file.getvalue()  # type: ignore[attr-defined]
    assert "Traceback" not in shown
    assert "restart 1 of 1" in shown
    assert "gave up" not in shown
    assert "allows no more restarts" in " ".join(shown.split())


# -- crewflow resume --interrupted ---------------------------------------------------------------


def interrupt(topics: list[str], loopback: Loopback, state: Path, db: Path) -> None:
    """A run of the crew per topic, each killed (SIGKILL) at bravo's start."""
    for topic in topics:
        env = environment(loopback, state, kills=1)
        killed = crewflow("run", CREW, "-i", f"topic={topic}", "--db", str(db), "-q", env=env)
        assert killed.returncode == -signal.SIGKILL, killed.stderr


def test_two_supervisors_at_once_resume_each_interrupted_run_exactly_once(
    loopback: Loopback, state: Path, tmp_path: Path
) -> None:
    db = tmp_path / "runs.db"
    topics = ["t1", "t2"]
    interrupt(topics, loopback, state, db)
    assert {run.status for run in runs(db)} == {"interrupted"}
    env = environment(loopback, state)
    command = [sys.executable, "-m", "crewflow", "resume", "--interrupted", "--db", str(db)]

    pipe = subprocess.PIPE
    supervisors = [
        subprocess.Popen([*command, "-k", "2"], env=env, stdout=pipe, stderr=pipe, text=True)
        for _ in range(2)
    ]
    outputs = [supervisor.communicate(timeout=100) for supervisor in supervisors]

    assert [supervisor.returncode for supervisor in supervisors] == [0, 0], outputs
    # Every task of every run was sent exactly once, across the first runs and both supervisors.
    assert loopback.requests == every_task(*topics)
    recorded = runs(db)
    assert {run.status for run in recorded} == {"completed"}
    assert all(run.resumed == 1 for run in recorded)
    for run in recorded:
        told = [
            line for out, _ in outputs for line in out.splitlines() if line.startswith(run.run_id)
        ]
        assert told, outputs
        assert all(": completed" in line or ": skipped" in line for line in told), told


def test_resume_interrupted_reports_a_failed_run_and_exits_1(
    loopback: Loopback, state: Path, tmp_path: Path
) -> None:
    db = tmp_path / "runs.db"
    interrupt(["t1"], loopback, state, db)
    loopback.refuse.add("bravo")

    done = crewflow(
        "resume",
        "--interrupted",
        "--crew",
        "supervised",
        "--db",
        str(db),
        env=environment(loopback, state),
    )

    assert done.returncode == 1
    (run,) = runs(db)
    (line,) = [line for line in done.stdout.splitlines() if line.startswith(run.run_id)]
    assert line.startswith(f"{run.run_id} (supervised): failed: run failed:")
    assert "0 completed, 1 failed, 0 skipped" in done.stderr
    # Nothing else to do: a second pass finds no interrupted run.
    again = crewflow("resume", "--interrupted", "--db", str(db), env=environment(loopback, state))
    assert again.returncode == 0
    assert "no interrupted runs" in again.stdout


def test_resume_interrupted_skips_other_crews_runs(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli.app, ["resume", "--interrupted", "--crew", "nobody", "--db", str(tmp_path / "none.db")],
        env={"COLUMNS": "200"},
    )  # fmt: skip
    assert result.exit_code == 0
    assert "no interrupted runs of crew 'nobody'" in result.output
