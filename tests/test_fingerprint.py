"""Fingerprints: a hash per task, the crew key, and the digest a resume compares."""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel

from crewflow import Agent, Crew, Task
from crewflow._fingerprint import ASPECTS, _entry, changed_aspects, fingerprint, task_hash


class Post(BaseModel):
    title: str


def crew(process: str = "parallel", *, goal: str = "Write «well»", draft: str = "Draft") -> Crew:
    writer = Agent(role="Writer", goal=goal, llm="openai/gpt-4o-mini")
    facts = Task("Facts about {topic} 🔋", agent=writer, name="facts", expected_output="5")
    post = Task(draft, agent=writer, name="post", context=[facts], output_model=Post)
    return Crew(tasks=[facts, post], process=process)


def whole_json_hash(value: object) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=repr)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def test_the_digest_is_the_hash_of_the_whole_json_as_runs_before_v4_recorded_it() -> None:
    graph = crew().graph
    entries = [
        _entry(n, graph.task(n), graph.agent_of(graph.task(n)), graph.dependency_names(n), None)
        for n in graph.deliverables
    ]

    plain = fingerprint(graph, "parallel")
    configured = fingerprint(graph, "parallel", {"manager": "openai/gpt-4o"})

    # Hashed piece by piece, never built whole: the same text json.dumps writes.
    assert plain.digest == whole_json_hash({"process": "parallel", "tasks": entries})
    assert configured.digest == whole_json_hash(
        {"process": "parallel", "tasks": entries, "config": {"manager": "openai/gpt-4o"}}
    )
    assert plain.crew_key == whole_json_hash({"tasks": entries})
    assert configured.crew_key == plain.crew_key


def test_a_changed_task_changes_its_own_hash_and_those_of_nothing_else() -> None:
    before, after = crew().fingerprint(), crew(draft="Draft it again").fingerprint()

    assert before.tasks["facts"] == after.tasks["facts"]
    assert before.tasks["post"] != after.tasks["post"]
    assert before.crew_key != after.crew_key
    assert before.digest != after.digest


def test_an_agent_change_changes_every_task_it_does() -> None:
    before, after = crew().fingerprint(), crew(goal="Write briefly").fingerprint()

    assert all(before.tasks[name] != after.tasks[name] for name in ("facts", "post"))


def test_each_task_keeps_a_short_digest_per_aspect() -> None:
    before = crew().fingerprint()
    after = crew(draft="Draft it again").fingerprint("openai/gpt-4o")

    assert all(len(digest) == 4 * len(ASPECTS) for digest in before.aspects.values())
    assert list(before.aspects) == list(before.tasks)
    assert changed_aspects(before.aspects["facts"], after.aspects["facts"]) == ("model",)
    assert changed_aspects(before.aspects["post"], after.aspects["post"]) == (
        "description",
        "model",
    )
    assert changed_aspects(before.aspects["post"], before.aspects["post"]) == ()


def test_aspects_not_kept_or_of_another_format_tell_nothing() -> None:
    kept = crew().fingerprint().aspects["post"]

    assert changed_aspects("", kept) == ()
    assert changed_aspects(kept[:-4], kept) == ()


def test_the_crew_key_leaves_the_process_out_but_not_a_model_override() -> None:
    parallel, sequential = crew("parallel"), crew("sequential")

    # Every context is declared, so both processes run the same graph: one crew key.
    assert parallel.fingerprint().crew_key == sequential.fingerprint().crew_key
    assert parallel.fingerprint().digest != sequential.fingerprint().digest
    overridden = parallel.fingerprint("openai/gpt-4o")
    assert overridden.crew_key != parallel.fingerprint().crew_key
    assert str(overridden) == overridden.digest


def test_an_added_task_is_hashed_as_a_crew_task_would_be() -> None:
    built = crew()
    graph = built.graph
    facts = graph.task("facts")

    assert (
        task_hash("facts", facts, graph.agent_of(facts), []) == built.fingerprint().tasks["facts"]
    )


def test_each_task_is_hashed_as_json_dumps_writes_its_entry_whatever_its_text() -> None:
    from crewflow import tool

    @tool
    def search(query: str) -> str:
        """Search for QUERY."""
        return query

    helper = Agent(role='Help "er"', goal="g\\n\u2028", backstory="é", llm="offline")
    writer = Agent(role="Writer", goal="Write «well»", llm="openai/gpt-4o-mini", tools=[search])
    first = Task('Say "hi"\\ \x00 \x7f', agent=writer, name="fïrst")
    second = Task("Then 🔋", agent=helper, name="second", context=[first], fallback_agent=writer)
    third = Task(
        "Last",
        agent=writer,
        name="3",
        context=[second, first],
        output_model=Post,
        expected_output="a post",
    )
    graph = Crew(tasks=[first, second, third], process="parallel").graph

    for llm in (None, "openai/gpt-4o"):
        found = fingerprint(graph, "parallel", llm=llm)
        for name in graph.deliverables:
            task = graph.task(name)
            entry = _entry(name, task, graph.agent_of(task), graph.dependency_names(name), llm)
            assert found.tasks[name] == task_hash(
                name, task, graph.agent_of(task), graph.dependency_names(name), llm
            )
            assert found.tasks[name] == whole_json_hash(entry)[: len("sha256:") + 16]
