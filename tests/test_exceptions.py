"""The error tree: its shape, its fields, and the drawing of it in the module docstring."""

from __future__ import annotations

import builtins
import inspect
import pickle
import re
from datetime import UTC, datetime

import pytest

from crewflow import exceptions
from crewflow.exceptions import (
    ConfigurationError,
    ContextLengthExceeded,
    CredentialsError,
    CrewChange,
    CrewChanged,
    CrewflowError,
    CrewPartialFailure,
    CrewRunError,
    DuplicateRunError,
    InvalidPlan,
    KickoffsFailed,
    LeaseLost,
    LLMError,
    LoopLimitReached,
    MaxIterationsExceeded,
    OutputValidationError,
    RunCancelled,
    RunInProgress,
    SchemaVersionError,
    StateUpdateError,
    StoreError,
    TaskFailed,
    TaskTimeout,
    ToolError,
    UnknownRunError,
    WorkflowError,
)
from crewflow.processes import PlanProblem, ProblemKind
from crewflow.store import LeaseOwner
from crewflow.task import Task, TaskOutput

OUTPUT = TaskOutput(task="facts", agent="Researcher", text="five facts")


def make(cls: type[CrewflowError]) -> CrewflowError:
    """One instance of each class, with its fields filled."""
    cause = ValueError("root cause")
    failed = TaskFailed("failed", task="t", attempts=2, cause=cause)
    factories: dict[type[CrewflowError], CrewflowError] = {
        CrewflowError: CrewflowError("base"),
        ConfigurationError: ConfigurationError("bad spec"),
        CrewRunError: CrewRunError("run failed"),
        TaskFailed: failed,
        CrewPartialFailure: CrewPartialFailure("partial", failures={"t": failed}, skipped=["u"]),
        TaskTimeout: TaskTimeout("slow", task="t", timeout=1.5),
        LLMError: LLMError("HTTP 429", model="m", status_code=429, retryable=True, retry_after=3),
        CredentialsError: CredentialsError(
            "no API key", model="groq/llama3", variables=["GROQ_API_KEY"], status_code=None
        ),
        ContextLengthExceeded: ContextLengthExceeded(
            "too long", model="openai/gpt-4o", status_code=400
        ),
        ToolError: ToolError("tool broke", tool="search"),
        OutputValidationError: OutputValidationError("invalid", errors=[{"loc": ("a",)}], text="x"),
        MaxIterationsExceeded: MaxIterationsExceeded("too many", max_iterations=10),
        StateUpdateError: StateUpdateError("reducer raised", field="facts", reducer="append"),
        LoopLimitReached: LoopLimitReached("still not approved", loop="drafting", rounds=3),
        WorkflowError: WorkflowError(
            "the router broke", task="triage", step="router", function="'pick'"
        ),
        RunCancelled: RunCancelled("cancelled"),
        InvalidPlan: InvalidPlan(
            "bad plan",
            problems=[PlanProblem(ProblemKind.CYCLE, "p.1", "depends on itself through p.2")],
            plan=[Task("step", name="p.1")],
        ),
        KickoffsFailed: KickoffsFailed(
            "1 of 2 failed", results=[None, failed], failures={1: failed}
        ),
        CrewChanged: CrewChanged("changed", run_id="r1", changes=[CrewChange("added", "x")]),
        StoreError: StoreError("disk full"),
        UnknownRunError: UnknownRunError("r1"),
        DuplicateRunError: DuplicateRunError("r1"),
        SchemaVersionError: SchemaVersionError("runs.db", 9, 2),
        RunInProgress: RunInProgress(
            "r1", LeaseOwner(host="h", pid=7), datetime(2026, 1, 1, tzinfo=UTC)
        ),
        LeaseLost: LeaseLost("r1", LeaseOwner(host="h", pid=7)),
    }
    return factories[cls]


MODULE_CLASSES = {
    name: value
    for name, value in vars(exceptions).items()
    if isinstance(value, type)
    and issubclass(value, BaseException)
    and value.__module__ == exceptions.__name__
}
# The errors; the module also has a warning (CrewflowWarning), drawn beside the tree.
ERRORS = {name: cls for name, cls in MODULE_CLASSES.items() if not issubclass(cls, Warning)}


def drawn_tree() -> dict[str, tuple[str | None, str]]:
    """The docstring's drawing: each class name with its parent and the rest of its line."""
    doc = inspect.getdoc(exceptions)
    assert doc is not None
    block = re.search(r"```\n(.*?)```", doc, re.DOTALL)
    assert block is not None, "the module docstring draws the tree in a code block"
    tree: dict[str, tuple[str | None, str]] = {}
    stack: list[str] = []
    for line in block.group(1).splitlines():
        match = re.match(r"^((?:[│ ] {3})*)(?:[├└]── )?(\w+)(.*)$", line)
        assert match is not None, f"cannot read the tree line {line!r}"
        prefix, name, rest = match.groups()
        depth = len(prefix) // 4 + (1 if "──" in line[: len(prefix) + 4] else 0)
        del stack[depth:]
        tree[name] = (stack[-1] if stack else None, rest)
        stack.append(name)
    return tree


# What an error carries that is not an error itself: exported beside the tree, not drawn in it.
PAYLOADS = {"CrewChange": CrewChange}


def test_every_class_of_the_module_is_exported_and_drawn() -> None:
    assert set(MODULE_CLASSES) | set(PAYLOADS) == set(exceptions.__all__)
    assert set(drawn_tree()) == set(MODULE_CLASSES)
    defined = {
        name
        for name, value in vars(exceptions).items()
        if isinstance(value, type) and value.__module__ == exceptions.__name__
    }
    assert defined == set(exceptions.__all__)


def test_a_crew_change_says_itself_in_a_line() -> None:
    lines = [
        str(CrewChange("changed", "draft", ("description", "model"))),
        str(CrewChange("added", "notes")),
        str(CrewChange("removed", "old")),
        str(CrewChange("changed", "b", ("dependencies",), "it depends on ['a'] instead of []")),
        str(CrewChange("changed", "c", detail="its description or agent")),
        str(CrewChange("process", detail="the process changed from 'a' to 'b'")),
    ]

    assert lines == [
        "task 'draft': description, model changed",
        "task 'notes' was added",
        "task 'old' was removed",
        "task 'b': dependencies changed (it depends on ['a'] instead of [])",
        "task 'c' changed (its description or agent)",
        "the process changed from 'a' to 'b'",
    ]


def test_the_drawing_shows_each_class_under_its_real_parent() -> None:
    for name, (parent, rest) in drawn_tree().items():
        cls = MODULE_CLASSES[name]
        ours = [base.__name__ for base in cls.__bases__ if base.__name__ in MODULE_CLASSES]
        # A second base of our own is drawn as a claim ("also a ConfigurationError").
        also = [base for base in re.findall(r"also an? (\w+)", rest) if base in MODULE_CLASSES]
        assert ours == ([parent] if parent else []) + also, name


def test_the_drawing_tells_the_truth_about_its_also_bases() -> None:
    claims = {name: re.findall(r"also an? (\w+)", rest) for name, (_, rest) in drawn_tree().items()}

    assert claims["ConfigurationError"] == ["ValueError"]
    assert claims["TaskTimeout"] == ["TimeoutError"]
    assert claims["CredentialsError"] == ["ConfigurationError"]
    for name, bases in claims.items():
        for base in bases:
            other = MODULE_CLASSES.get(base) or getattr(builtins, base)
            assert issubclass(MODULE_CLASSES[name], other), (name, base)


def test_the_fields_drawn_exist_on_instances() -> None:
    for name, (_, rest) in drawn_tree().items():
        if name not in ERRORS:
            continue
        instance = make(ERRORS[name])
        for field in re.findall(r"\.(\w+)", rest):
            assert hasattr(instance, field), f"{name}.{field}"


@pytest.mark.parametrize("cls", list(ERRORS.values()), ids=list(ERRORS))
def test_every_error_is_a_crewflow_error(cls: type[CrewflowError]) -> None:
    assert issubclass(cls, CrewflowError)
    assert isinstance(make(cls), CrewflowError)


def test_configuration_errors_are_value_errors_and_timeouts_are_timeout_errors() -> None:
    assert issubclass(ConfigurationError, ValueError)
    assert issubclass(TaskTimeout, TimeoutError)
    assert not issubclass(ConfigurationError, CrewRunError)


@pytest.mark.parametrize(
    "cls",
    [c for c in MODULE_CLASSES.values() if issubclass(c, CrewRunError)],
    ids=lambda c: c.__name__,
)
def test_every_run_error_has_outputs_even_when_none_were_given(cls: type[CrewRunError]) -> None:
    error = make(cls)

    assert isinstance(error, CrewRunError)
    assert dict(error.outputs) == {}


def test_outputs_are_a_read_only_snapshot() -> None:
    outputs = {"facts": OUTPUT}

    error = CrewRunError("failed", outputs=outputs)
    outputs["later"] = OUTPUT

    assert list(error.outputs) == ["facts"]
    with pytest.raises(TypeError):
        error.outputs["x"] = OUTPUT  # type: ignore[index]


def test_fields_are_kept_apart_from_the_message() -> None:
    error = LLMError("HTTP 429: slow down", model="openai/x", status_code=429, retryable=True)

    assert str(error) == "HTTP 429: slow down"
    assert (error.model, error.status_code, error.retryable, error.retry_after) == (
        "openai/x",
        429,
        True,
        None,
    )


@pytest.mark.parametrize("cls", list(ERRORS.values()), ids=list(ERRORS))
def test_errors_survive_pickling_with_their_fields(cls: type[CrewflowError]) -> None:
    error = make(cls)
    if isinstance(error, CrewRunError):
        error.outputs = {"facts": OUTPUT}

    again = pickle.loads(pickle.dumps(error))

    assert type(again) is cls
    assert str(again) == str(error)
    # Fields holding other errors compare by identity; their own pickling is tested above.
    skip = ("outputs", "cause", "failures", "results")
    fields = {k: v for k, v in vars(error).items() if k not in skip}
    assert {k: v for k, v in vars(again).items() if k in fields} == fields
    if isinstance(error, CrewRunError):
        assert dict(again.outputs) == {"facts": OUTPUT}
