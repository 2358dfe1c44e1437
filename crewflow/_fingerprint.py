"""Fingerprints: what a run's outputs depend on, as hashes `Crew.resume` and ``history()`` compare.

A `Fingerprint` is structured: a hash per task (its name, templates, dependencies, output schema,
the agent doing it with its model and tools, its fallback agent), and a hash of the process with
its configuration (``Process.config()``). Two digests come of it:

- the **crew key**, the task hashes alone: runs with one crew key compute the same things,
  whichever process ran them (what the adaptive process learns from);
- the **digest**, the crew key with the process: what a resumed run must match.

The digest of a crew whose process has no configuration is the same hash as before tasks had
their own (schema v3), so runs recorded then still resume.

Beside each task's hash, a fingerprint keeps a short digest of each of its `ASPECTS` (its
description, its agent, the agent's model...), so that a refused resume can say what changed in
a task and not only that it changed. They are 4 hex characters each, 32 per task: they never
decide whether a task changed (its 64-bit hash does), they only explain it, and a 10,000-task
crew's record keeps them in a few hundred kilobytes.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any, Final

from pydantic import BaseModel, ConfigDict, JsonValue

from crewflow.task import OptionalContext, function_name

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from crewflow.agent import Agent
    from crewflow.graph import TaskGraph
    from crewflow.llm._base import LLM
    from crewflow.task import Task

__all__ = ["ASPECTS", "Fingerprint", "changed_aspects", "fingerprint", "task_hash"]

ASPECTS: Final = (
    "description",
    "expected output",
    "dependencies",
    "output model",
    "agent",
    "model",
    "tools",
    "fallback agent",
)
"""What a task's aspect digests cover, in their order: the task's own text, what it depends
on, its output schema; its agent (role, goal, backstory, iterations), the agent's model, the
agent's tools; its fallback agent (all of it)."""

_ASPECT_CHARS: Final = 4


class Fingerprint(BaseModel):
    """The structured fingerprint of a crew under a process (see the module's docstring).

    Attributes:
        digest: The hash a resumed run must match (tasks, agents, models, process, its
            configuration).
        crew_key: The hash of the tasks, agents and models alone.
        tasks: Each task's own hash, by name, in declaration order.
        aspects: Each task's aspect digests (`ASPECTS`, 4 hex characters each, concatenated),
            by name: what `changed_aspects` compares.
        process: The process's name.
        process_config: What the process said of its configuration (``Process.config()``).
    """

    model_config = ConfigDict(frozen=True, defer_build=True)

    digest: str
    crew_key: str
    tasks: dict[str, str]
    aspects: dict[str, str]
    process: str
    process_config: dict[str, JsonValue]

    def __str__(self) -> str:
        return self.digest


def _model(of: str | LLM | None, override: str | LLM | None) -> str:
    from crewflow.llm._models import default_model

    chosen = override if override is not None else of
    if chosen is None:
        return default_model()
    return chosen if isinstance(chosen, str) else chosen.model


def _agent(spec: Agent | None, override: str | LLM | None) -> dict[str, Any] | None:
    if spec is None:
        return None
    return {
        "role": spec.role,
        "goal": spec.goal,
        "backstory": spec.backstory,
        "model": _model(spec.llm, override),
        "tools": [[tool.name, tool.description, tool.parameters] for tool in spec.tools],
        "max_iterations": spec.max_iterations,
    }


def _entry(
    name: str,
    task: Task,
    agent: Agent,
    depends_on: Sequence[str],
    override: str | LLM | None,
) -> dict[str, Any]:
    entry = {
        "name": name,
        "description": task.description,
        "expected_output": task.expected_output,
        "depends_on": list(depends_on),
        "output_schema": task.output_model.model_json_schema() if task.output_model else None,
        "agent": _agent(agent, override),
        "fallback_agent": _agent(task.fallback_agent, override),
        **_workflow(task),
    }
    if task.guardrail is not None:
        entry["guardrail"] = _guardrail(task)
    return entry


def _guardrail(task: Task) -> list[Any]:
    """A guarded task's guardrail, by qualified name (a task without one has no key: its hash
    is the one it had before guardrails were)."""
    assert task.guardrail is not None
    return [function_name(task.guardrail), task.guardrail_retries]


def _workflow(task: Task) -> dict[str, Any]:
    """What steers a task's course (``{"workflow": {...}}``), or nothing when nothing does: a
    task without workflow features hashes as it did before they existed. Functions count by
    their qualified names; tasks a router maps to, and optional context, by their names."""
    found: dict[str, Any] = {}
    if task.condition is not None:
        found["condition"] = function_name(task.condition)
    router = task.router
    if isinstance(router, dict):
        found["router"] = {
            "field": task.router_field,
            "routes": sorted([repr(value), _label(target)] for value, target in router.items()),
        }
    elif router is not None:
        found["router"] = function_name(router)
    marked = [ref for ref in task.context or () if isinstance(ref, OptionalContext)]
    if marked:
        found["optional"] = sorted(_label(ref.task) for ref in marked)
    return {"workflow": found} if found else {}


def _loops(graph: TaskGraph) -> str:
    """The ``"loops": [...], `` part of the crew's JSON (nothing without loops: a crew without
    them keeps the fingerprint it had before loops were): each loop's name, tasks, predicate
    (by qualified name) and bounds."""
    found = graph.loops
    if not found:
        return ""
    described = [
        {
            "max_rounds": loop.max_rounds,
            "max_tokens": loop.max_tokens,
            "name": label,
            "on_limit": loop.on_limit,
            "tasks": list(names),
            "until": function_name(loop.until),
        }
        for label, (loop, names) in found.items()
    ]
    return f'"loops": {_json(described)}, '


def _label(task: Task | str) -> str:
    return task if isinstance(task, str) else task.name or task.description


def _json(value: Any) -> str:
    if type(value) is str:
        return _string(value)
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=repr)


_string: Callable[[str], str] = json.encoder.encode_basestring
"""A string's JSON, as json.dumps writes it with ``ensure_ascii=False``."""


def _digest(*parts: str) -> str:
    """The hash of the text ``parts`` make together (fed in pieces: a 10,000-task crew's whole
    JSON is never built as one string)."""
    hashed = hashlib.sha256()
    for part in parts:
        hashed.update(part.encode())
    return "sha256:" + hashed.hexdigest()


def _task_digest(entry_json: str) -> str:
    # 64 bits tell a changed task apart (one task against its own earlier self, not against
    # every hash ever made); a run record keeps one per task, so they are kept short.
    return "sha256:" + hashlib.sha256(entry_json.encode()).hexdigest()[:16]


def _short(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:_ASPECT_CHARS]


def _task_aspects(task: Task, depends_on: Sequence[str], output_model: str) -> str:
    """The digests of a task's own aspects (the first four of `ASPECTS`; the output model's is
    given, hashed once per model). ``repr`` of strings and lists of strings is exact, and
    cheaper than JSON ten thousand times over."""
    return (
        _short(repr(task.description))
        + _short(repr(task.expected_output))
        + _short(repr(list(depends_on)))
        + output_model
    )


def _entry_json(
    name: str,
    task: Task,
    agent: str,
    depends_on: Sequence[str],
    fallback_agent: str,
    output_schema: str,
) -> str:
    """``_json(_entry(...))`` of a task, written from its parts, the agents' and the output
    schema's JSON given (written once per agent and model): the same text, in sorted keys,
    as json.dumps writes it, at a third of the cost on a 10,000-task crew."""
    # Inline: most tasks have nothing that steers them (checked without a call of its own).
    context = task.context
    steered = task.condition is not None or task.router is not None
    if not steered and context:
        steered = OptionalContext in map(type, context)
    workflow = _workflow(task) if steered else None
    guarded = "" if task.guardrail is None else f'"guardrail": {_json(_guardrail(task))}, '
    return (
        f'{{"agent": {agent}, "depends_on": [{", ".join(map(_string, depends_on))}], '
        f'"description": {_json(task.description)}, '
        f'"expected_output": {_json(task.expected_output)}, '
        f'"fallback_agent": {fallback_agent}, {guarded}"name": {_json(name)}, '
        f'"output_schema": {output_schema}'
        + ("}" if workflow is None else f', "workflow": {_json(workflow["workflow"])}}}')
    )


def _agent_aspects(entry: Mapping[str, Any]) -> str:
    """The digests of the aspects a task takes from its agents (the last four of `ASPECTS`)."""
    agent = dict(entry["agent"])
    model, tools = agent.pop("model"), agent.pop("tools")
    parts = (agent, model, tools, entry["fallback_agent"])
    return "".join(_short(_json(part)) for part in parts)


def changed_aspects(before: str, after: str) -> tuple[str, ...]:
    """The `ASPECTS` whose digests differ between two of a task's aspect strings (none when
    either is not one: a record that kept none)."""
    size = _ASPECT_CHARS * len(ASPECTS)
    if len(before) != size or len(after) != size:
        return ()
    return tuple(
        aspect
        for index, aspect in enumerate(ASPECTS)
        if before[index * _ASPECT_CHARS : (index + 1) * _ASPECT_CHARS]
        != after[index * _ASPECT_CHARS : (index + 1) * _ASPECT_CHARS]
    )


def task_hash(
    name: str,
    task: Task,
    agent: Agent,
    depends_on: Sequence[str],
    llm: str | LLM | None = None,
) -> str:
    """The hash of one task as it runs: ``name`` in the run, done by ``agent``, after the tasks
    named ``depends_on`` (``llm``: the model every agent is made to use, if any)."""
    return _task_digest(_json(_entry(name, task, agent, depends_on, llm)))


def fingerprint(
    graph: TaskGraph,
    process: str,
    config: Mapping[str, JsonValue] | None = None,
    llm: str | LLM | None = None,
    *,
    state: Mapping[str, Any] | None = None,
) -> Fingerprint:
    """The fingerprint of ``graph``'s tasks under ``process``.

    Args:
        graph: The crew's task graph (its deliverables count).
        process: The process's name.
        config: The process's configuration (``Process.config()``).
        llm: The model every agent is made to use (``kickoff(llm=...)``), if any.
        state: The crew's shared state, as its schema and initial values, if it has one (part
            of ``digest``, not of ``crew_key``).
    """
    texts: dict[str, str] = {}
    aspects: dict[str, str] = {}
    # Most tasks share their agents and output models: each is written and hashed once.
    of_agents: dict[object, str] = {}  # an agent's JSON, by id (None: no fallback agent)
    of_pairs: dict[tuple[object, object], str] = {}  # agent and fallback agent's aspects
    of_models: dict[object, tuple[str, str]] = {}  # an output schema's JSON, and its digest
    for name in graph.deliverables:
        task = graph.task(name)
        agent = graph.agent_of(task)
        fallback = task.fallback_agent
        pair = (agent.id, None if fallback is None else fallback.id)
        if pair not in of_pairs:
            entry = _entry(name, task, agent, (), llm)
            of_agents[pair[0]] = _json(entry["agent"])
            of_agents[pair[1]] = _json(entry["fallback_agent"])
            of_pairs[pair] = _agent_aspects(entry)
        schema = of_models.get(task.output_model)
        if schema is None:
            text = _json(task.output_model.model_json_schema() if task.output_model else None)
            schema = of_models[task.output_model] = (text, _short(text))
        depends_on = graph.dependency_names(name)
        texts[name] = _entry_json(
            name, task, of_agents[pair[0]], depends_on, of_agents[pair[1]], schema[0]
        )
        aspects[name] = _task_aspects(task, depends_on, schema[1]) + of_pairs[pair]
    # The JSON text of {"config": ..., "process": ..., "tasks": [...]} with sorted keys, as
    # json.dumps writes it (and wrote it before tasks had hashes of their own: schema v3 runs'
    # digests still match), fed to the hash piece by piece.
    tasks = ", ".join(texts.values())
    config = dict(config or {})
    head = f'"config": {_json(config)}, ' if config else ""
    shared = f'"state": {_json(dict(state))}, ' if state is not None else ""
    loops = _loops(graph)
    return Fingerprint(
        digest=_digest(
            "{",
            head,
            loops,
            f'"process": {_json(process)}, ',
            shared,
            '"tasks": [',
            tasks,
            "]}",
        ),
        crew_key=_digest("{", loops, '"tasks": [', tasks, "]}"),
        tasks={name: _task_digest(text) for name, text in texts.items()},
        aspects=aspects,
        process=process,
        process_config=config,
    )
