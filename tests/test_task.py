"""Tests for `crewflow.task`: construction, templating and `TaskOutput`."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from crewflow import Agent, Crew, Task, TaskOutput
from crewflow._records import TaskKind, TaskStatus
from crewflow.exceptions import ConfigurationError
from crewflow.llm import Usage
from crewflow.llm.offline import OfflineLLM
from crewflow.task import fill_template


class Post(BaseModel):
    title: str


def test_description_can_be_given_by_position() -> None:
    assert Task("Write a haiku").description == "Write a haiku"


def test_description_can_be_given_by_keyword() -> None:
    assert Task(description="Write a haiku").description == "Write a haiku"


def test_description_given_both_ways_is_an_error() -> None:
    with pytest.raises(TypeError, match="both by position and by keyword"):
        Task("one", description="two")


def test_a_task_needs_a_description() -> None:
    with pytest.raises(ConfigurationError, match="description: Field required"):
        Task()


def test_an_empty_description_is_rejected() -> None:
    with pytest.raises(ConfigurationError, match="description: String should have at least"):
        Task("")


def test_defaults() -> None:
    task = Task("Do it")

    assert task.expected_output == ""
    assert task.agent is None
    assert task.context is None
    assert task.name is None
    assert task.output_model is None
    assert task.timeout is None


def test_the_agent_is_kept_as_the_same_object() -> None:
    agent = Agent(role="Writer", goal="Write")

    assert Task("Do it", agent=agent).agent is agent


def test_undeclared_context_and_explicitly_empty_context_differ() -> None:
    undeclared, empty = Task("a"), Task("b", context=[])

    assert undeclared.context is None
    assert empty.context == ()


def test_context_keeps_tasks_and_names_in_order() -> None:
    facts = Task("facts", name="facts")

    task = Task("Write", context=[facts, "style"])

    assert task.context == (facts, "style")
    assert task.context is not None
    assert task.context[0] is facts


@pytest.mark.parametrize("single", [Task("facts"), "facts"])
def test_context_given_as_a_single_task_or_name_is_a_clear_error(single: Task | str) -> None:
    with pytest.raises(ConfigurationError, match=r"context must be a list.*context=\[facts\]"):
        Task("Write", context=single)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["", "   ", " padded", "padded "])
def test_invalid_names_are_rejected(name: str) -> None:
    with pytest.raises(ConfigurationError, match="name: a task name must be non-empty"):
        Task("Do it", name=name)


@pytest.mark.parametrize("timeout", [0, -1, -0.5])
def test_a_timeout_must_be_positive(timeout: float) -> None:
    with pytest.raises(ConfigurationError, match="timeout: Input should be greater than 0"):
        Task("Do it", timeout=timeout)


def test_output_model_must_be_a_model_class() -> None:
    assert Task("Do it", output_model=Post).output_model is Post
    with pytest.raises(ConfigurationError, match="output_model"):
        Task("Do it", output_model=Post(title="x"))  # type: ignore[arg-type]


def test_unknown_fields_are_rejected() -> None:
    with pytest.raises(ConfigurationError, match="descripton: unknown field"):
        Task("Do it", descripton="typo")


def test_tasks_have_identity() -> None:
    first, second = Task("Same"), Task("Same")

    assert first != second
    assert {first: 1, second: 2}[first] == 1


def test_tasks_are_frozen() -> None:
    task = Task("Do it")

    with pytest.raises(ValueError, match="frozen"):
        task.name = "renamed"  # type: ignore[misc]


# --- templating -------------------------------------------------------------------------------


def test_placeholders_are_the_identifiers_in_braces_of_description_and_expected_output() -> None:
    task = Task("Write about {topic} for {audience}", expected_output="{count} bullets")

    assert task.placeholders == frozenset({"topic", "audience", "count"})


def test_json_in_a_description_is_not_a_placeholder() -> None:
    task = Task('Answer like {"title": "x", "tags": [1]} or {} or { spaced } or {0}')

    assert task.placeholders == frozenset()
    assert task.render({}) == (task.description, "")


def test_double_braces_keep_a_literal_placeholder() -> None:
    task = Task("Fill {{name}} in, about {topic}")

    assert task.placeholders == frozenset({"topic"})
    assert task.render({"topic": "x", "name": "ignored"})[0] == "Fill {name} in, about x"


def test_render_fills_strings_as_they_are() -> None:
    task = Task("Write about {topic}", expected_output="A {form}")

    assert task.render({"topic": 'sodium "batteries"', "form": "haiku"}) == (
        'Write about sodium "batteries"',
        "A haiku",
    )


def test_render_fills_other_values_as_json() -> None:
    task = Task("Use {items}, {limit}, {strict}, {nothing}, {where}")

    description, _ = task.render(
        {
            "items": ["a", "b"],
            "limit": 3,
            "strict": True,
            "nothing": None,
            "where": {"city": "Zürich"},
        }
    )

    assert description == 'Use ["a", "b"], 3, true, null, {"city": "Zürich"}'


def test_render_without_an_input_raises_key_error_naming_it() -> None:
    with pytest.raises(KeyError, match="topic"):
        Task("Write about {topic}").render({})


def test_fill_template_without_braces_returns_the_text() -> None:
    assert fill_template("plain text", {}) == "plain text"


def test_repeated_placeholders_are_all_filled() -> None:
    assert fill_template("{x} and {x}", {"x": "y"}) == "y and y"


# --- display ----------------------------------------------------------------------------------


def test_repr_and_str_use_the_name() -> None:
    task = Task("Collect facts", name="facts")

    assert repr(task) == "Task('facts')"
    assert str(task) == "facts"


def test_repr_and_str_without_a_name_shorten_the_description() -> None:
    task = Task("word " * 30)

    assert repr(task) == "Task('word word word word word word word word…')"
    assert str(task).endswith("…")
    assert len(str(task)) == 60


def test_task_output_str_is_its_text() -> None:
    output = TaskOutput(task="facts", agent="Researcher", text="- one\n- two")

    assert str(output) == "- one\n- two"


def test_task_output_defaults() -> None:
    output = TaskOutput(task="facts", agent="Researcher", text="x", data=Post(title="t"))

    assert output.usage == Usage()
    assert output.model == ""
    assert output.data == Post(title="t")


async def test_a_runs_records_share_their_fields_sets_without_mixing_them_up() -> None:
    # Four records a task (output, timeline line, attempt, prompts) each carried a fields-set of
    # its own, ~3 KB a task; frozen records given the same fields now share one.
    agent = Agent(role="Writer", goal="G", llm=OfflineLLM())
    crew = Crew(tasks=[Task("One", agent=agent), Task("Two", agent=agent)], store=None)

    result = await crew.kickoff()

    one, two = result.timeline
    assert one.model_fields_set is two.model_fields_set
    assert one.attempts[0].model_fields_set is two.attempts[0].model_fields_set
    assert (
        one.attempts[0].prompts[0].model_fields_set is two.attempts[0].prompts[0].model_fields_set
    )
    assert result["task_1"].model_fields_set is result["task_2"].model_fields_set
    # Copying with an update gives the copy a set of its own; the shared one is unchanged.
    before = set(one.model_fields_set)
    copied = one.model_copy(update={"task": "Three"})
    assert copied.model_fields_set is not one.model_fields_set
    assert one.model_fields_set == two.model_fields_set == before
    assert TaskOutput(task="a", agent="b", text="c").model_fields_set == {"task", "agent", "text"}


async def test_the_records_a_run_builds_unvalidated_are_what_validation_would_make() -> None:
    # The runtime builds its per-task records with `Compact.built` (no validation, a third of
    # the cost): each value must already be what the field's validation would make of it.
    agent = Agent(role="Writer", goal="G", llm=OfflineLLM())
    crew = Crew(tasks=[Task("One", agent=agent), Task("Two", agent=agent)], store=None)

    result = await crew.kickoff()

    line = result.timeline[1]
    attempt = line.attempts[0]
    records = [line, attempt, attempt.prompts[0], result["task_2"]]
    for record in records:
        validated = type(record)(**record.__dict__)
        assert validated == record
        assert list(record.__dict__) == list(type(record).model_fields)
        for name, value in record.__dict__.items():
            assert type(value) is type(validated.__dict__[name]), (type(record).__name__, name)
    assert attempt.status is TaskStatus.COMPLETED
    assert line.kind is TaskKind.DELIVERABLE


def test_a_record_built_from_some_fields_takes_fresh_defaults_and_refuses_unknown_ones() -> None:
    one = TaskOutput.built(task="a", agent="b", text="c")
    two = TaskOutput.built(task="d", agent="e", text="f")

    assert one == TaskOutput(task="a", agent="b", text="c")
    assert one.model_fields_set == {"task", "agent", "text"}
    assert one.model_fields_set is two.model_fields_set
    assert one.usage == Usage()
    assert one.usage is not two.usage  # a factory's default is fresh
    with pytest.raises(TypeError, match="TaskOutput has no field txt"):
        TaskOutput.built(task="a", agent="b", txt="c")


def test_tasks_and_agents_given_the_same_fields_share_their_fields_set() -> None:
    # A 10,000-task crew carried 10,000 sets: 2-3 MB, and as many objects for the collector.
    one, two = Task("One", name="one"), Task("Two", name="two")
    other = Task("Three", expected_output="a list")
    assert one.model_fields_set is two.model_fields_set
    assert other.model_fields_set == {"description", "expected_output"}
    assert Agent(role="A", goal="G").model_fields_set is Agent(role="B", goal="H").model_fields_set
    copied = one.model_copy(update={"expected_output": "x"})
    assert copied.model_fields_set == {"description", "name", "expected_output"}
    assert one.model_fields_set == two.model_fields_set == {"description", "name"}
