"""Fingerprints: what a run's outputs depend on, as hashes `Crew.resume` and ``history()`` compare.

A `Fingerprint` is structured: a hash per task (its name, templates, dependencies, output schema,
the agent doing it with its model and tools, its fallback agent), and a hash of the process with
its configuration (``Process.config()``). Two digests come of it:

- the **crew key**, the task hashes alone: runs with one crew key compute the same things,
  whichever process ran them (what the adaptive process learns from);
- the **digest**, the crew key with the process: what a resumed run must match.

The digest of a crew whose process has no configuration is the same hash as before tasks had
their own (schema v3), so runs recorded then still resume.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, JsonValue

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from crewflow.agent import Agent
    from crewflow.graph import TaskGraph
    from crewflow.llm._base import LLM
    from crewflow.task import Task

__all__ = ["Fingerprint", "fingerprint", "task_hash"]


class Fingerprint(BaseModel):
    """The structured fingerprint of a crew under a process (see the module's docstring).

    Attributes:
        digest: The hash a resumed run must match (tasks, agents, models, process, its
            configuration).
        crew_key: The hash of the tasks, agents and models alone.
        tasks: Each task's own hash, by name, in declaration order.
        process: The process's name.
        process_config: What the process said of its configuration (``Process.config()``).
    """

    model_config = ConfigDict(frozen=True, defer_build=True)

    digest: str
    crew_key: str
    tasks: dict[str, str]
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
    return {
        "name": name,
        "description": task.description,
        "expected_output": task.expected_output,
        "depends_on": list(depends_on),
        "output_schema": task.output_model.model_json_schema() if task.output_model else None,
        "agent": _agent(agent, override),
        "fallback_agent": _agent(task.fallback_agent, override),
    }


def _hash(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=repr)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def task_hash(
    name: str,
    task: Task,
    agent: Agent,
    depends_on: Sequence[str],
    llm: str | LLM | None = None,
) -> str:
    """The hash of one task as it runs: ``name`` in the run, done by ``agent``, after the tasks
    named ``depends_on`` (``llm``: the model every agent is made to use, if any)."""
    return _hash(_entry(name, task, agent, depends_on, llm))


def fingerprint(
    graph: TaskGraph,
    process: str,
    config: Mapping[str, JsonValue] | None = None,
    llm: str | LLM | None = None,
) -> Fingerprint:
    """The fingerprint of ``graph``'s tasks under ``process``.

    Args:
        graph: The crew's task graph (its deliverables count).
        process: The process's name.
        config: The process's configuration (``Process.config()``).
        llm: The model every agent is made to use (``kickoff(llm=...)``), if any.
    """
    entries = [
        _entry(
            name,
            graph.task(name),
            graph.agent_of(graph.task(name)),
            graph.dependency_names(name),
            llm,
        )
        for name in graph.deliverables
    ]
    config = dict(config or {})
    whole: dict[str, Any] = {"process": process, "tasks": entries}
    if config:
        whole["config"] = config
    return Fingerprint(
        digest=_hash(whole),
        crew_key=_hash({"tasks": entries}),
        tasks={entry["name"]: _hash(entry) for entry in entries},
        process=process,
        process_config=config,
    )
