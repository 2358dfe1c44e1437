"""The records a store keeps: runs, the tasks a process added, task attempts, finished outputs.

Frozen pydantic models, serialised as JSON (never pickled), so that any store, the CLI and the
optimizer read the same shapes. Attempts are the runtime's own `AttemptRecord`, kept unchanged.
Datetimes must carry a timezone. Nothing here holds secrets: no record has a field for API keys,
headers or client settings, and a store never takes any.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, JsonValue, field_validator
from pydantic_core import to_jsonable_python

from crewflow._records import ProcessChoice, RunStatus, TaskKind
from crewflow._text import valid_json
from crewflow._usage import Usage
from crewflow.store._lease import Lease

if TYPE_CHECKING:
    from crewflow.events import RunHealth

__all__ = [
    "AddedTaskRecord",
    "BatchItem",
    "BatchRecord",
    "DecisionRecord",
    "OutputRow",
    "RunRecord",
    "RunSource",
]


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)


class RunSource(_Record):
    """How a run was started by the CLI: the file and the crew's attribute in it.

    Attributes:
        file: The path given to ``crewflow run``.
        attribute: The name of the crew object in that file, when one was named or found.
    """

    file: str
    attribute: str | None = None


HEALTH_KEY = "health"
"""Where a run record's ``details`` keep the run's last health (`Store.record_health`)."""


class RunRecord(_Record):
    """One kickoff of a crew.

    Attributes:
        run_id: The run's id (as in logs, events and `CrewResult.run_id`).
        crew: The crew's name.
        fingerprint: A hash of the crew's tasks, agents, models, process and its configuration;
            resume compares it.
        crew_key: A hash of the crew's tasks, agents and models without the process: the runs
            of one crew key computed the same things, whichever process ran them (the process
            context's ``history()`` reads them).
        task_hashes: Each crew task's own hash, by name, in declaration order (a resume that
            finds the fingerprint changed names the tasks that did).
        process_config: The process's configuration as it ran (``Process.config()``).
        source: How the CLI started it, or ``None`` when started from code.
        process: The crew's process.
        chosen: The process a choosing process (adaptive) picked to run the crew, when one did.
        process_reason: Why the crew ran under that process (a choosing process explains
            itself, recorded when it chooses).
        inputs: The kickoff inputs, as JSON (values JSON cannot hold are stored as text).
        status: ``running``, ``completed``, ``failed`` or ``cancelled``, as recorded; a store
            reads a ``running`` run whose lease lapsed (or that holds none) as ``interrupted``.
        started: When it began.
        ended: When it ended, ``None`` while running.
        usage: Requests, tokens and cost of the whole run.
        graph: Each crew task's name with the names of the tasks it depends on, in declaration
            order (the optimizer's critical path and what-if estimates use it). Tasks the
            process added are `AddedTaskRecord` rows.
        max_concurrency: The crew's ``max_concurrency`` (``None``: unbounded).
        resumed: How many times the run was resumed.
        paused: Whether the run was ever paused (its duration then says little about speed).
        details: More about the run, for features that need no query of their own.
        lease: The lease of the process executing the run, while one is (`Lease`): its owner's
            host and pid, and when it expires unless renewed. Writing the run's end releases it.
    """

    run_id: str = Field(min_length=1)
    crew: str
    fingerprint: str = ""
    crew_key: str = ""
    task_hashes: dict[str, str] = Field(default_factory=dict)
    process_config: dict[str, JsonValue] = Field(default_factory=dict)
    source: RunSource | None = None
    process: str = ""
    chosen: str | None = None
    process_reason: str = ""
    inputs: dict[str, JsonValue] = Field(default_factory=dict)
    status: RunStatus = RunStatus.RUNNING
    started: AwareDatetime
    ended: AwareDatetime | None = None
    usage: Usage = Field(default_factory=Usage)
    graph: dict[str, list[str]] = Field(default_factory=dict)
    max_concurrency: int | None = Field(default=None, ge=1)
    resumed: int = Field(default=0, ge=0)
    paused: bool = False
    details: dict[str, JsonValue] = Field(default_factory=dict)
    lease: Lease | None = None

    @field_validator("inputs", mode="before")
    @classmethod
    def _jsonable_inputs(cls, value: Any) -> Any:
        # Inputs are user values of any type; a record must hold them as JSON, never pickled.
        return to_jsonable_python(valid_json(value), fallback=repr)

    @property
    def choice(self) -> ProcessChoice | None:
        """What a choosing process (adaptive) recorded of its choice: its features and each
        candidate's prediction (``None`` when no process chose)."""
        found = self.details.get("choice")
        if not isinstance(found, dict):
            return None
        try:
            return ProcessChoice.model_validate(found)
        except ValueError:
            return None  # written by another version: the choice is still in `chosen`

    @property
    def health(self) -> RunHealth | None:
        """The run's health as it last changed while the run went (`Store.record_health`);
        ``None`` when the run was never watched (`crewflow.health`)."""
        from crewflow.events import RunHealth

        found = self.details.get(HEALTH_KEY)
        if not isinstance(found, dict):
            return None
        try:
            return RunHealth.model_validate(found)
        except ValueError:
            return None  # written by another version

    @property
    def ran(self) -> str:
        """The process that ran the tasks: the chosen one, else the crew's."""
        return self.chosen or self.process


class AddedTaskRecord(_Record):
    """A task a process added to a run while it ran (a plan step, a manager's question).

    A resumed run replays its process, which adds the same tasks again under the same names;
    each is checked against its ``spec_hash`` here, so a finished one is never redone for a
    different task.

    Attributes:
        name: The task's name in the run (chosen by the process, e.g. ``"plan"``,
            ``"research.1"``).
        kind: ``internal`` (the process's own work) or ``deliverable``.
        step: ``"task"`` for a task added with ``add_tasks``, ``"ask"`` for a question asked
            with ``ask``.
        agent: The role of the agent that does it.
        depends_on: The names of the tasks it depends on.
        spec_hash: A hash of what the task is (description, agent, model, dependencies,
            output schema).
        added: When it was added.
    """

    name: str = Field(min_length=1)
    kind: TaskKind = TaskKind.INTERNAL
    step: Literal["task", "ask"] = "task"
    agent: str = ""
    depends_on: list[str] = Field(default_factory=list)
    spec_hash: str = ""
    added: AwareDatetime


class DecisionRecord(_Record):
    """A decision a run made about its own course: a task's condition, a router's choice, a
    map's items, a loop's round, or a task skipped.

    A decision is committed before anything acts on it, and a resumed run replays it instead
    of deciding again (``skip`` records excepted: they say what happened and why, and a resumed
    run skips again for the same reason, or runs what a failure had skipped).

    Attributes:
        key: What was decided, unique in the run (``"condition:review"``,
            ``"router:triage"``, ``"map:summarise"``, ``"loop:drafting#2"``, ``"skip:review"``).
        kind: ``condition``, ``router``, ``map``, ``loop`` or ``skip``.
        task: The task the decision is about.
        value: What was decided, as JSON: a condition's boolean, the names a router chose, a
            map's items, whether a loop goes on.
        reason: Why, in words (a skipped task's reason).
        at: When it was decided.
    """

    key: str = Field(min_length=1)
    kind: Literal["condition", "router", "skip", "map", "loop"]
    task: str
    value: JsonValue = None
    reason: str = ""
    at: AwareDatetime

    @field_validator("value", mode="before")
    @classmethod
    def _jsonable_value(cls, value: Any) -> Any:
        return to_jsonable_python(valid_json(value), fallback=repr)


class OutputRow(_Record):
    """A finished task's output: the checkpoint a resumed run starts from.

    Attributes:
        run_id: The run it belongs to.
        task: The task's name.
        text: The answer as text.
        data: The structured answer as JSON (``output_model`` dumped in JSON mode), or ``None``.
        agent: The role of the agent that produced it.
        model: The model that answered.
        finished_at: When the task finished.
    """

    run_id: str = Field(min_length=1)
    task: str
    text: str
    data: JsonValue = None
    agent: str = ""
    model: str = ""
    finished_at: AwareDatetime


BatchStatus = Literal["pending", "completed", "failed"]
"""Where one input of a batch stands: not finished yet, or how its run ended."""


class BatchItem(_Record):
    """One input of a batch: its place in the inputs file and the run that carries it out.

    Attributes:
        index: The input's 0-based place among the batch's inputs.
        run_id: The id its run has (or will have: ids are given before any run starts, so a
            resumed batch resumes an interrupted run instead of starting another).
        status: ``pending`` until the run ends, then ``completed`` or ``failed``.
    """

    index: int = Field(ge=0)
    run_id: str = Field(min_length=1)
    status: Literal["pending", "completed", "failed"] = "pending"


class BatchRecord(_Record):
    """A batch: one kickoff of a crew per input, started together (``crewflow batch``).

    Attributes:
        batch_id: The batch's id (``crewflow batch --resume BATCH_ID``).
        crew: The crew's name.
        fingerprint: The crew's fingerprint when the batch was created.
        inputs_hash: A SHA-256 of the inputs, as read (a resume with other inputs is refused).
        created: When the batch was created.
        items: One per input, in input order.
        details: More about the batch (the CLI keeps the crew file, its attribute, the inputs
            file and the ``--model`` here, so that ``--resume`` needs only the id).
    """

    batch_id: str = Field(min_length=1)
    crew: str
    fingerprint: str = ""
    inputs_hash: str
    created: AwareDatetime
    items: list[BatchItem] = Field(default_factory=list)
    details: dict[str, JsonValue] = Field(default_factory=dict)
