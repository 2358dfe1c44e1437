"""Workflows killed with SIGKILL resume to the same result: a map halfway through, a router's
decision (replayed, not made again). The crew runs in its own process (``crewflow run``) against
the loopback server, as in ``tests/test_kill_and_resume.py``."""

from __future__ import annotations

import sys
import textwrap
from typing import TYPE_CHECKING

import pytest

from crewflow.store import SQLiteStore
from crewflow.testing import Text
from tests.test_kill_and_resume import kill_and_resume

if TYPE_CHECKING:
    from pathlib import Path

    from crewflow.testing import ReceivedRequest

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")

MAP_FILE = """
from crewflow import Agent, Crew, Task

agent = Agent(role="Worker", goal="Work", llm="openai/loop-model")
docs = Task("do docs", name="docs", agent=agent, context=[])
each = Task("do {item}", name="each", agent=agent, context=[docs], map_over="docs",
            max_concurrency=1)
combine = Task("do combine", name="combine", agent=agent, context=[each])
crew = Crew(tasks=[docs, each, combine], name="mapped", process="parallel")
"""

ROUTER_FILE = """
import os
from pathlib import Path

from crewflow import Agent, Crew, Task, optional

agent = Agent(role="Worker", goal="Work", llm="openai/loop-model")


def pick(output):
    return Path(os.environ["ROUTE_FILE"]).read_text().strip()


triage = Task("do triage", name="triage", agent=agent, context=[], router=pick)
left = Task("do left", name="left", agent=agent, context=[triage])
right = Task("do right", name="right", agent=agent, context=[triage])
after = Task("do after", name="after", agent=agent, context=[left])
join = Task("do join", name="join", agent=agent, context=[optional(left), optional(right)])
crew = Crew(tasks=[triage, left, right, after, join], name="routed", process="parallel")
"""


async def test_a_map_killed_halfway_resumes_its_unfinished_items_only(tmp_path: Path) -> None:
    crew_file = tmp_path / "mapped.py"
    crew_file.write_text(textwrap.dedent(MAP_FILE))
    home = tmp_path / "home"
    items = ["doc0", "doc1", "doc2", "doc3"]

    def reply(name: str) -> Text:
        return Text('["doc0", "doc1", "doc2", "doc3"]' if name == "docs" else f"result of {name}")

    killed = await kill_and_resume(crew_file, home, "doc2", reply=reply)

    assert killed.finished_before >= {"docs", "each[0]", "each[1]"}
    # Finished items were not asked for again, nor the list; the item in flight was.
    assert killed.requests == {"docs": 1, "doc0": 1, "doc1": 1, "doc2": 2, "doc3": 1, "combine": 1}
    async with SQLiteStore(home / "runs.db") as store:
        outputs = await store.outputs(killed.run_id)
        record = await store.get_run(killed.run_id)
    assert record is not None
    assert record.status == "completed"
    assert outputs["each"].data == [f"result of {doc}" for doc in items]
    assert outputs["combine"].text == "result of combine"


@pytest.mark.parametrize("first", ["left", "right"])
async def test_a_router_decision_made_before_a_kill_is_replayed(tmp_path: Path, first: str) -> None:
    crew_file = tmp_path / "routed.py"
    crew_file.write_text(textwrap.dedent(ROUTER_FILE))
    home = tmp_path / "home"
    route = tmp_path / "route"
    route.write_text(first)
    other = "right" if first == "left" else "left"

    async def change_the_route(run_id: str) -> None:
        route.write_text(other)  # asked again, the router would choose the other branch

    killed = await kill_and_resume(
        crew_file,
        home,
        first,
        env={"ROUTE_FILE": str(route)},
        before_resume=change_the_route,
    )

    assert killed.requests.get(other, 0) == 0
    assert killed.requests[first] == 2  # killed in flight, sent again
    async with SQLiteStore(home / "runs.db") as store:
        outputs = await store.outputs(killed.run_id)
        decisions = {d.key: d for d in await store.decisions(killed.run_id)}
    assert set(outputs) == {"triage", first, "join"} | ({"after"} if first == "left" else set())
    assert decisions["router:triage"].value == [first]
    assert decisions[f"skip:{other}"].reason == "not chosen by the router of 'triage'"


LOOP_FILE = """
from crewflow import Agent, Crew, Loop, Task

agent = Agent(role="Worker", goal="Work", llm="openai/loop-model")
write = Task("do write", name="write", agent=agent, context=[])
critique = Task("do critique", name="critique", agent=agent, context=[write])
publish = Task("do publish", name="publish", agent=agent, context=[write, critique])


def approved(outputs):
    return outputs["critique"].text == "APPROVED"


crew = Crew(
    tasks=[Loop([write, critique], until=approved, max_rounds=3), publish],
    name="looped",
    process="parallel",
)
"""


def loop_task(request: ReceivedRequest) -> str:
    """The task and round a request is for: ``write``, ``critique``, ``write#2``, ..."""
    text = request.last_user_message
    name = text.split("do ", 1)[1].split()[0]
    second = 'task="critique#1"' in text or 'task="write#2"' in text
    return f"{name}#2" if second else name


async def test_a_loop_killed_in_its_second_round_resumes_in_that_round(tmp_path: Path) -> None:
    crew_file = tmp_path / "looped.py"
    crew_file.write_text(textwrap.dedent(LOOP_FILE))
    home = tmp_path / "home"

    def reply(name: str) -> Text:
        return Text("APPROVED" if name == "critique#2" else f"result of {name}")

    killed = await kill_and_resume(crew_file, home, "critique#2", reply=reply, name_of=loop_task)

    assert killed.finished_before >= {"write#1", "critique#1", "write#2"}
    assert killed.requests == {
        "write": 1,
        "critique": 1,
        "write#2": 1,
        "critique#2": 2,
        "publish": 1,
    }
    async with SQLiteStore(home / "runs.db") as store:
        outputs = await store.outputs(killed.run_id)
        decisions = {d.key: d.value for d in await store.decisions(killed.run_id)}
    assert (outputs["write"].text, outputs["critique"].text) == ("result of write#2", "APPROVED")
    assert decisions == {"loop:write#1": False, "loop:write#2": True}
