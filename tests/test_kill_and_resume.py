"""A crew killed with SIGKILL at different moments resumes: nothing finished is lost or redone.

The crew runs in its own OS process (``crewflow run``) against the loopback server, which counts
requests per task and holds chosen requests in flight, so the kill lands at a known moment
without sleeping: when the server receives the request of task X, every task X depends on has
already been checkpointed (a finished output is committed before any dependant starts). After
``kill -9``, ``crewflow resume RUN_ID`` finishes the run in a new process.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
import pytest
from typer.testing import CliRunner

from crewflow import cli
from crewflow.store import SQLiteStore
from crewflow.testing import Error, OpenAIServer, Text
from tests import canary

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

    from crewflow.testing.server import ReceivedRequest

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")

CREW_FILE = """
import json
import os

from crewflow import Agent, Crew, Task

agent = Agent(role="Worker", goal="Work", llm="openai/loop-model")
names = os.environ["KILL_TASKS"].split(",")
edges = dict(pair.split(":") for pair in os.environ["KILL_EDGES"].split(",") if pair)
tasks = {}
for name in names:
    context = [tasks[dep] for dep in edges.get(name, "").split("+") if dep]
    tasks[name] = Task(f"do {name}", agent=agent, name=name, context=context)
crew = Crew(tasks=list(tasks.values()), name="killed", process=os.environ["KILL_PROCESS"])
"""

# Each case: process, tasks, dependencies ("task:dep+dep"), and the task whose request arriving
# is the moment of the kill (held in flight meanwhile), with the tasks held with it.
CASES = {
    "before anything finished": ("sequential", "alpha,bravo,charlie", "", "alpha", ()),
    "in the middle of a chain": ("sequential", "alpha,bravo,charlie,delta", "", "charlie", ()),
    "parallel, with work in flight": (
        "parallel",
        "alpha,bravo,charlie,join",
        "join:alpha+bravo",
        "join",
        ("charlie",),
    ),
    "parallel, before the join": (
        "parallel",
        "alpha,bravo,join",
        "join:alpha+bravo",
        "bravo",
        (),
    ),
}


def task_of(request: ReceivedRequest) -> str:
    return request.last_user_message.split("do ", 1)[1].split()[0].rstrip(":")


def crewflow(*args: str) -> list[str]:
    return [sys.executable, "-m", "crewflow", *args]


@dataclass
class Killed:
    """What a crew killed with SIGKILL and resumed by ``crewflow resume`` left to check.

    Attributes:
        run_id: The run.
        requests: Requests the server received per task, in both processes.
        sent_before: Those received before the kill.
        finished_before: Tasks whose outputs were checkpointed before the kill.
        added_before: Tasks the process had recorded as added before the kill.
    """

    run_id: str
    requests: dict[str, int]
    sent_before: dict[str, int]
    finished_before: set[str]
    added_before: list[str]

    def assert_nothing_finished_was_sent_again(self, tasks: list[str]) -> None:
        """Every task of ``tasks`` that had not finished was sent once more; none that had."""
        for name in tasks:
            again = 0 if name in self.finished_before else 1
            expected = self.sent_before.get(name, 0) + again
            assert self.requests.get(name, 0) == expected, (name, self.requests, self)


async def kill_and_resume(
    crew_file: Path,
    home: Path,
    kill_at: str,
    *,
    held: tuple[str, ...] = (),
    reply: Callable[[str], Text] = lambda name: Text(f"result of {name}"),
    env: dict[str, str] | None = None,
    name_of: Callable[[ReceivedRequest], str] = task_of,
    before_resume: Callable[[str], Awaitable[None]] | None = None,
) -> Killed:
    """``crewflow run crew_file``, killed (SIGKILL) when the server receives the request of task
    ``kill_at`` (held in flight, with those of ``held``), then ``crewflow resume RUN_ID``.

    ``name_of`` names the task a request is for (default: the word after "do ");
    ``before_resume`` is awaited with the run's id between the kill and the resume."""
    arrived = anyio.Event()
    killed = False
    requests: dict[str, int] = {}

    async def respond(request: ReceivedRequest) -> Text:
        name = name_of(request)
        requests[name] = requests.get(name, 0) + 1
        if not killed and (name == kill_at or name in held):
            if name == kill_at:
                arrived.set()
            await anyio.sleep_forever()  # held in flight until the process dies
        return reply(name)

    async with OpenAIServer(responder=respond) as server:
        environment = {
            **os.environ,
            **(env or {}),
            "CREWFLOW_HOME": str(home),
            "OPENAI_BASE_URL": canary.with_userinfo(server.base_url),
            "OPENAI_API_KEY": canary.KEY,
        }
        with anyio.fail_after(60):
            child = await anyio.open_process(
                crewflow("run", str(crew_file)),
                env=environment,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                await arrived.wait()
                child.send_signal(signal.SIGKILL)
                assert await child.wait() == -signal.SIGKILL
            finally:
                if child.returncode is None:
                    # Interrupted (a failure, or pytest-timeout's signal, which is no
                    # cancellation): the child waits on a held request, so closing would wait
                    # for it for ever.
                    child.kill()
                await child.aclose()
            killed = True

            async with SQLiteStore(home / "runs.db") as store:
                (run,) = await store.list_runs()
                # It never got to say so, but its lease tells: its process is gone.
                assert run.status == "interrupted"
                assert run.lease is not None
                assert run.lease.owner.pid == child.pid
                finished_before = set(await store.outputs(run.run_id))
                added_before = [task.name for task in await store.added_tasks(run.run_id)]
            sent_before = dict(requests)
            if before_resume is not None:
                await before_resume(run.run_id)

            resumed = await anyio.run_process(
                crewflow("resume", run.run_id), env=environment, check=False
            )
        assert resumed.returncode == 0, resumed.stderr.decode()
    return Killed(run.run_id, requests, sent_before, finished_before, added_before)


@pytest.mark.parametrize("case", list(CASES))
async def test_a_crew_killed_at_any_moment_resumes_without_redoing_finished_work(
    case: str, tmp_path: Path
) -> None:
    process, names, edges, kill_at, held = CASES[case]
    crew_file = tmp_path / "killed.py"
    crew_file.write_text(textwrap.dedent(CREW_FILE))
    home = tmp_path / "home"

    env = {"KILL_TASKS": names, "KILL_EDGES": edges, "KILL_PROCESS": process}
    killed = await kill_and_resume(crew_file, home, kill_at, held=held, env=env)

    every = names.split(",")
    async with SQLiteStore(home / "runs.db") as store:
        record = await store.get_run(killed.run_id)
        outputs = await store.outputs(killed.run_id)
    assert record is not None
    assert (record.status, record.resumed) == ("completed", 1)
    assert sorted(outputs) == sorted(every)
    assert all(outputs[name].text == f"result of {name}" for name in every)
    # Nothing that had finished was sent to the LLM again; everything else was, once more.
    killed.assert_nothing_finished_was_sent_again(every)
    assert kill_at not in killed.finished_before
    # The kill came after the request of `kill_at`: what it depends on had been checkpointed.
    assert killed.finished_before >= dependencies(process, every, edges, kill_at)


async def test_a_killed_run_is_shown_interrupted_with_the_command_that_finishes_it(
    tmp_path: Path,
) -> None:
    crew_file = tmp_path / "killed.py"
    crew_file.write_text(textwrap.dedent(CREW_FILE))
    home = tmp_path / "home"
    shown: dict[str, list[str]] = {}

    async def look(run_id: str) -> None:
        runner = CliRunner(env={"CREWFLOW_HOME": str(home), "COLUMNS": "200"})
        for command in (["runs"], ["show", run_id]):
            # In a thread: the commands run their own event loop.
            result = await anyio.to_thread.run_sync(runner.invoke, cli.app, command)
            assert result.exit_code == 0, result.output
            shown[command[0]] = result.stdout.splitlines()

    env = {"KILL_TASKS": "alpha,bravo", "KILL_EDGES": "", "KILL_PROCESS": "sequential"}
    killed = await kill_and_resume(crew_file, home, "bravo", env=env, before_resume=look)

    row = next(line for line in shown["runs"] if line.startswith(killed.run_id))
    assert row.split()[3] == "interrupted"
    assert f"  crewflow resume {killed.run_id}" in shown["runs"]
    header = [" ".join(line.split()) for line in shown["show"]]
    assert "status interrupted" in header
    assert any(line.startswith("why its process (") and "is gone" in line for line in header)
    assert f"  crewflow resume {killed.run_id}" in shown["show"]
    killed.assert_nothing_finished_was_sent_again(["alpha", "bravo"])


def dependencies(process: str, names: list[str], edges: str, task: str) -> set[str]:
    if process == "sequential":
        return set(names[: names.index(task)])
    declared = dict(pair.split(":") for pair in edges.split(",") if pair)
    return set(declared.get(task, "").split("+")) - {""}


PLANNING_FILE = """
from pydantic import BaseModel

from crewflow import Agent, Crew, Task
from crewflow.processes import Process, ProcessContext


class Step(BaseModel):
    name: str
    after: list[str]


class Plan(BaseModel):
    steps: list[Step]


class Planner(Process):
    \"\"\"Asks a planner for steps, adds them, and runs them with the crew's task.\"\"\"

    name = "planner"

    async def run(self, ctx: ProcessContext) -> None:
        plan = await ctx.ask("plan", planner, "do plan: list the steps", output_model=Plan)
        steps = [
            Task(f"do {step.name}", name=step.name, agent=worker, context=step.after)
            for step in plan.data.steps
        ]
        await ctx.add_tasks(steps)
        await ctx.run_ready()


planner = Agent(role="Planner", goal="Plan", llm="openai/loop-model")
worker = Agent(role="Worker", goal="Work", llm="openai/loop-model")
crew = Crew(
    tasks=[Task("do brief", agent=worker, name="brief")],
    name="planned",
    process=Planner(),
    max_concurrency=2,
)
"""

PLAN = {
    "steps": [
        {"name": "step.1", "after": []},
        {"name": "step.2", "after": []},
        {"name": "step.3", "after": ["step.1", "step.2"]},
        {"name": "step.4", "after": ["step.3"]},
    ]
}

# Each case: the request whose arrival is the moment of the kill (held in flight meanwhile),
# and the tasks that have finished by then for certain.
PLANNING_CASES = {
    "after the plan": ("step.1", {"plan"}),
    "halfway through the added steps": ("step.3", {"plan", "step.1", "step.2"}),
}


@pytest.mark.parametrize("case", list(PLANNING_CASES))
async def test_a_process_that_adds_tasks_resumes_without_asking_for_its_plan_again(
    case: str, tmp_path: Path
) -> None:
    kill_at, finished = PLANNING_CASES[case]
    crew_file = tmp_path / "planned.py"
    crew_file.write_text(textwrap.dedent(PLANNING_FILE))
    home = tmp_path / "home"

    def reply(name: str) -> Text:
        return Text(json.dumps(PLAN) if name == "plan" else f"result of {name}")

    killed = await kill_and_resume(crew_file, home, kill_at, reply=reply)

    steps = [step["name"] for step in PLAN["steps"]]
    async with SQLiteStore(home / "runs.db") as store:
        record = await store.get_run(killed.run_id)
        outputs = await store.outputs(killed.run_id)
        added = await store.added_tasks(killed.run_id)
    assert record is not None
    assert (record.status, record.resumed) == ("completed", 1)
    # The plan and its steps were recorded as they were added, before the kill.
    assert killed.added_before == ["plan", *steps]
    assert [task.name for task in added] == ["plan", *steps]
    assert [task.step for task in added] == ["ask", "task", "task", "task", "task"]
    assert sorted(outputs) == sorted(["brief", "plan", *steps])
    assert killed.finished_before >= finished
    assert kill_at not in killed.finished_before
    # The plan was asked for once, and no finished step was sent again.
    assert killed.requests["plan"] == 1
    killed.assert_nothing_finished_was_sent_again(["brief", *steps])


HIERARCHICAL_FILE = """
from crewflow import Agent, Crew, Task

manager = Agent(role="Manager", goal="Lead the team", llm="openai/loop-model")
researcher = Agent(role="Researcher", goal="Find facts", llm="openai/loop-model")
analyst = Agent(role="Analyst", goal="Weigh facts", llm="openai/loop-model")
writer = Agent(role="Writer", goal="Write reports", llm="openai/loop-model")
research = Task("Gather facts on tidal power", name="research", expected_output="Facts")
analysis = Task(
    "Weigh the facts", name="analysis", expected_output="An analysis", context=[research]
)
report = Task("Write it up", name="report", expected_output="A report", context=[analysis])
crew = Crew(
    tasks=[research, analysis, report],
    agents=[researcher, analyst, writer],
    name="managed",
    process="hierarchical",
    manager=manager,
)
"""

# The manager's plan: every step's instructions start with "do <step>:", which names its
# request (a redo round's steps get ".r1", see `hierarchical_task_of`).
MANAGER_PLAN = {
    "research": [
        {"worker": "Researcher", "instructions": "do research.1: find sources"},
        {"worker": "Researcher", "instructions": "do research.2: extract facts"},
    ],
    "analysis": [{"worker": "Analyst", "instructions": "do analysis.1: weigh", "after": []}],
    "report": [
        {"worker": "Writer", "instructions": "do report.1: draft", "after": []},
        {"worker": "Writer", "instructions": "do report.2: polish", "after": []},
    ],
}
# One review, which sends the analysis back: it and the report that depends on it run again.
MANAGER_REVIEW = {"accept": False, "redo": [{"task": "analysis", "feedback": "weigh the costs"}]}
FIRST_ROUND = ["research.1", "research.2", "analysis.1", "report.1", "report.2"]
REDO_ROUND = ["analysis.1.r1", "report.1.r1", "report.2.r1"]
EVERY_REQUEST = ["plan", *FIRST_ROUND, "review.1", *REDO_ROUND, "final_answer"]


def hierarchical_task_of(request: ReceivedRequest) -> str:
    """The internal task a request of the hierarchical crew is for."""
    text = request.last_user_message
    for opening, name in (
        ("Plan your team's work", "plan"),
        ("Review your team's results", "review.1"),
        ("Write the final answer", "final_answer"),
    ):
        if text.startswith(opening):
            return name
    step = task_of(request)
    # A redo's first step carries the manager's feedback; its later steps follow redone ones.
    redone = "asks for a revision" in text or '.r1">' in text
    return f"{step}.r1" if redone else step


def manager_reply(name: str) -> Text:
    if name == "plan":
        return Text(json.dumps(MANAGER_PLAN))
    if name == "review.1":
        return Text(json.dumps(MANAGER_REVIEW))
    return Text(f"result of {name}")


# Each case: the request whose arrival is the moment of the kill (held in flight meanwhile).
# Everything sent before it has finished by then: the requests of this crew form one chain.
HIERARCHICAL_CASES = {
    "while the plan is asked for": "plan",
    "during a first-round step": "research.2",
    "while the results are reviewed": "review.1",
    "during a redone step": "report.1.r1",
    "while the final answer is written": "final_answer",
}


@pytest.mark.parametrize("case", list(HIERARCHICAL_CASES))
async def test_a_hierarchical_crew_killed_at_any_moment_resumes_from_its_recorded_plan(
    case: str, tmp_path: Path
) -> None:
    kill_at = HIERARCHICAL_CASES[case]
    crew_file = tmp_path / "managed.py"
    crew_file.write_text(textwrap.dedent(HIERARCHICAL_FILE))
    home = tmp_path / "home"

    killed = await kill_and_resume(
        crew_file, home, kill_at, reply=manager_reply, name_of=hierarchical_task_of
    )

    async with SQLiteStore(home / "runs.db") as store:
        record = await store.get_run(killed.run_id)
        outputs = await store.outputs(killed.run_id)
        added = await store.added_tasks(killed.run_id)
    assert record is not None
    assert (record.status, record.resumed) == ("completed", 1)
    # The manager's steps and the workers' were recorded as they were added, each once: the
    # resumed run replayed the recorded ones instead of adding them again.
    assert [task.name for task in added] == EVERY_REQUEST
    assert killed.added_before == EVERY_REQUEST[: len(killed.added_before)]
    assert kill_at in killed.added_before
    # The kill came when `kill_at` was asked for: every request before it had been answered and
    # checkpointed, none after it had been sent.
    before = EVERY_REQUEST[: EVERY_REQUEST.index(kill_at)]
    assert killed.finished_before >= set(before)
    assert kill_at not in killed.finished_before
    assert killed.sent_before == {name: 1 for name in [*before, kill_at]}
    # The plan, the review and the answer were asked for once, or once more if the kill cut
    # the request short; no finished step was sent again, and everything else once more.
    for manager_step in ("plan", "review.1", "final_answer"):
        assert killed.requests[manager_step] == (2 if manager_step == kill_at else 1)
    killed.assert_nothing_finished_was_sent_again(EVERY_REQUEST)
    assert sorted(killed.requests) == sorted(EVERY_REQUEST)
    # Every crew task ends with its last step: the report and analysis with their redone ones.
    assert {name: outputs[name].text for name in ("research", "analysis", "report")} == {
        "research": "result of research.2",
        "analysis": "result of analysis.1.r1",
        "report": "result of report.2.r1",
    }
    assert outputs["final_answer"].text == "result of final_answer"
    assert set(outputs) >= {*EVERY_REQUEST, "research", "analysis", "report"}


async def test_two_resumes_at_once_send_each_unfinished_task_once(tmp_path: Path) -> None:
    crew_file = tmp_path / "killed.py"
    crew_file.write_text(textwrap.dedent(CREW_FILE))
    home = tmp_path / "home"
    requests: dict[str, int] = {}
    failing = {"bravo": True}
    ended = anyio.Event()  # a resume ended (or, were both let through, both asked for bravo)

    async def respond(request: ReceivedRequest) -> Text | Error:
        name = task_of(request)
        requests[name] = requests.get(name, 0) + 1
        if name == "bravo":
            if failing["bravo"]:
                return Error(400, "no")
            if requests[name] == 3:
                ended.set()
            await ended.wait()  # the first resume holds on here until the other has ended
        return Text(f"result of {name}")

    async with OpenAIServer(responder=respond) as server:
        environment = {
            **os.environ,
            "KILL_TASKS": "alpha,bravo",
            "KILL_EDGES": "",
            "KILL_PROCESS": "sequential",
            "CREWFLOW_HOME": str(home),
            "OPENAI_BASE_URL": canary.with_userinfo(server.base_url),
            "OPENAI_API_KEY": canary.KEY,
        }
        with anyio.fail_after(60):
            first = await anyio.run_process(
                crewflow("run", str(crew_file)), env=environment, check=False
            )
            assert first.returncode == 1, first.stderr.decode()
            async with SQLiteStore(home / "runs.db") as store:
                (run,) = await store.list_runs()
            failing["bravo"] = False
            resumes: list[subprocess.CompletedProcess[bytes]] = []

            async def resume() -> None:
                resumes.append(
                    await anyio.run_process(
                        crewflow("resume", run.run_id), env=environment, check=False
                    )
                )
                ended.set()

            async with anyio.create_task_group() as group:
                group.start_soon(resume)
                group.start_soon(resume)

    assert sorted(done.returncode for done in resumes) == [0, 2], resumes
    assert requests == {"alpha": 1, "bravo": 2}  # bravo: the failed run's, then one resume's
    refused = next(done for done in resumes if done.returncode == 2).stderr.decode()
    said = " ".join(refused.split())
    assert f"run {run.run_id!r} is being executed by another process (" in said
    assert re.search(r"\(\S+, pid \d+\)", said), said
    assert "Traceback" not in refused
    async with SQLiteStore(home / "runs.db") as store:
        record = await store.get_run(run.run_id)
    assert record is not None
    assert (record.status, record.resumed) == ("completed", 1)
