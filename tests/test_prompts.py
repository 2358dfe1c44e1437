"""Tests for `crewflow._prompts`: the texts sent to models, and pulling JSON out of answers."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel, ValidationError

from crewflow import _prompts
from crewflow._prompts import extract_json, json_instruction, task_prompt, validation_feedback


class Answer(BaseModel):
    title: str
    score: int


def test_system_prompt_states_role_and_goal() -> None:
    assert _prompts.system_prompt("Researcher", "Find facts", "") == (
        "You are Researcher. Your goal: Find facts"
    )


def test_system_prompt_adds_the_backstory_as_its_own_paragraph() -> None:
    text = _prompts.system_prompt("Writer", "Write", "Ten years at a newspaper.")

    assert text.endswith("Your goal: Write\n\nTen years at a newspaper.")


def test_system_prompt_does_not_double_a_full_stop_ending_the_role() -> None:
    text = _prompts.system_prompt("a careful researcher.", "Find facts", "")

    assert text.startswith("You are a careful researcher. Your goal")


def test_task_prompt_without_extras_is_just_the_description() -> None:
    assert task_prompt("Write a haiku", "") == "Write a haiku"


def test_task_prompt_lays_out_description_expected_output_and_context_blocks() -> None:
    text = task_prompt(
        "Write a post",
        "Three paragraphs",
        [("facts", "- fact one\n- fact two"), ("style", "friendly")],
    )

    assert text == (
        "Write a post\n\n"
        "Expected output: Three paragraphs\n\n"
        "Context from earlier tasks:\n"
        '<context task="facts">\n- fact one\n- fact two\n</context>\n'
        '<context task="style">\nfriendly\n</context>'
    )


def test_task_prompt_keeps_context_in_the_order_given() -> None:
    text = task_prompt("Do it", "", [("b", "B"), ("a", "A")])

    assert text.index('task="b"') < text.index('task="a"')
    assert "Expected output" not in text


def test_json_instruction_embeds_the_schema_compactly() -> None:
    schema = Answer.model_json_schema()

    text = json_instruction(schema)

    assert text.startswith("\n\nAnswer with one JSON object")
    assert json.loads(text.rsplit("\n", 1)[1]) == schema
    assert ": " not in text.rsplit("\n", 1)[1]


def test_validation_feedback_lists_each_field_error() -> None:
    with pytest.raises(ValidationError) as caught:
        Answer.model_validate({"score": "high"})

    text = validation_feedback(caught.value)

    assert "- title: Field required" in text
    assert "- score: Input should be a valid integer" in text
    assert text.endswith("Answer again with only the corrected JSON object.")


def test_validation_feedback_for_a_plain_value_error() -> None:
    text = validation_feedback(ValueError("no JSON found"))

    assert "- no JSON found" in text


def test_validation_feedback_names_a_whole_answer_error() -> None:
    with pytest.raises(ValidationError) as caught:
        Answer.model_validate_json("not json")

    assert "- (answer): Invalid JSON" in validation_feedback(caught.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a": 1}', '{"a": 1}'),
        ('  {"a": 1}\n', '{"a": 1}'),
        ('```json\n{"a": 1}\n```', '{"a": 1}'),
        ('```\n{"a": 1}\n```', '{"a": 1}'),
        ('```json {"a": 1}```', '{"a": 1}'),
        ('Here it is:\n```json\n{"a": 1}\n```\nHope that helps!', '{"a": 1}'),
        ('Sure! {"a": {"b": [1, {"c": 2}]}} Anything else?', '{"a": {"b": [1, {"c": 2}]}}'),
        ('{"a": 1}\nThat is my answer.', '{"a": 1}'),
        ('Use {name} here. Answer:\n```json\n{"a": 1}\n```', '{"a": 1}'),
        ('I counted [3] items: {"a": 3}', '{"a": 3}'),
        ('```python\nprint("x")\n```\n```json\n{"a": 2}\n```', '{"a": 2}'),
        ('[{"a": 1}, {"a": 2}]', '[{"a": 1}, {"a": 2}]'),
        ('{"text": "a } inside"} and more', '{"text": "a } inside"}'),
    ],
)
def test_extract_json_finds_the_json_answer(text: str, expected: str) -> None:
    assert extract_json(text) == expected


def test_extract_json_of_a_cut_off_fence_returns_its_body_for_validation_to_report() -> None:
    assert extract_json('```json\n{"a": 1') == '{"a": 1'


def test_extract_json_of_prose_without_json_returns_the_text() -> None:
    assert extract_json("  I cannot answer that. ") == "I cannot answer that."


def test_extract_json_of_broken_json_returns_the_braced_part() -> None:
    assert extract_json("Answer: {title: 'x'} thanks") == "{title: 'x'}"


def test_extract_json_of_a_scalar_answer_returns_it() -> None:
    assert extract_json("42") == "42"


def test_extracted_json_validates_against_the_model() -> None:
    answer = 'Here you go:\n```json\n{"title": "T", "score": 3}\n```'

    assert Answer.model_validate_json(extract_json(answer)) == Answer(title="T", score=3)


def test_a_task_name_with_quotes_cannot_break_the_context_delimiter() -> None:
    prompt = _prompts.task_prompt("Do it", "", [('say "hi" & go', "earlier text")])

    assert '<context task="say &quot;hi&quot; &amp; go">' in prompt
    assert prompt.count('"') == 2


class CountingDecoder(json.JSONDecoder):
    tries = 0

    def raw_decode(self, s: str, idx: int = 0) -> tuple[object, int]:
        CountingDecoder.tries += 1
        return super().raw_decode(s, idx)


def test_extract_json_tries_a_bounded_number_of_brackets(monkeypatch: pytest.MonkeyPatch) -> None:
    # Found by tests/test_fuzz.py: a reply of 100,000 "{" took minutes of the event loop (each
    # failed try costs up to the text's length), and no timeout could fire meanwhile.
    monkeypatch.setattr(_prompts.json, "JSONDecoder", CountingDecoder)
    CountingDecoder.tries = 0

    assert extract_json("{" * 100_000) == "{" * 100_000

    assert CountingDecoder.tries <= 2 * _prompts._MAX_TRIES  # the fenced blocks, then the text


def test_extract_json_still_finds_an_object_after_some_stray_brackets() -> None:
    text = "Using {x} and [y] and {z}: " + '{"title": "T"}'
    assert extract_json(text) == '{"title": "T"}'


@pytest.mark.parametrize("text", ["[" * 100_000, '{"a": ' * 100_000, "[" * 100_000 + "]" * 100_000])
def test_json_nested_too_deep_for_python_is_an_answer_that_does_not_validate(text: str) -> None:
    # Found by tests/test_fuzz.py: the task failed with a RecursionError instead of asking again.
    answer = extract_json(text)
    _prompts.check_finite(answer)

    with pytest.raises(ValidationError):
        Answer.model_validate_json(answer)
