"""Tests for `crewflow._spec`: identity by id, freezing, and readable validation errors."""

from __future__ import annotations

import re

import pytest
from pydantic import BaseModel, Field, ValidationError, field_validator

from crewflow._spec import Spec, Value, describe_validation_error, new_id
from crewflow.exceptions import ConfigurationError


class Sample(Spec):
    label: str = Field(min_length=1)
    size: int = Field(default=1, ge=1)


class Setting(Value):
    level: int = 1

    @field_validator("level")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value < 1:
            raise ConfigurationError(f"Setting(level={value}): use a level >= 1, e.g. level=2")
        return value


class Plain(BaseModel):
    label: str = Field(min_length=1)
    size: int = Field(default=1, ge=1)


def errors_of(**data: object) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        Plain.model_validate(data)
    return caught.value


def test_new_ids_are_32_hex_digits_and_unique() -> None:
    ids = {new_id() for _ in range(100)}

    assert len(ids) == 100
    assert all(re.fullmatch(r"[0-9a-f]{32}", value) for value in ids)


def test_equal_looking_specs_are_different_specs() -> None:
    first, second = Sample(label="x"), Sample(label="x")

    assert first != second
    assert len({first, second}) == 2


def test_a_spec_equals_itself_and_its_copies() -> None:
    spec = Sample(label="x")
    copy = spec.model_copy(update={"size": 3})

    assert copy == spec
    assert hash(copy) == hash(spec)
    assert {spec: "value"}[copy] == "value"


def test_a_spec_never_equals_a_non_spec() -> None:
    assert Sample(label="x") != "x"


def test_specs_are_frozen() -> None:
    spec = Sample(label="x")

    with pytest.raises(ValidationError, match="frozen"):
        spec.label = "y"  # type: ignore[misc]


def test_values_that_look_alike_are_equal() -> None:
    assert Setting(level=2) == Setting(level=2)
    assert len({Setting(level=2), Setting(level=2), Setting(level=3)}) == 2


def test_values_are_frozen() -> None:
    with pytest.raises(ValidationError, match="frozen"):
        Setting().level = 2  # type: ignore[misc]


def test_a_values_own_error_is_raised_as_it_is() -> None:
    with pytest.raises(ConfigurationError, match=r"^Setting\(level=0\): use a level") as caught:
        Setting(level=0)

    assert caught.value.__suppress_context__


def test_pydantics_errors_on_a_value_name_the_field() -> None:
    with pytest.raises(ConfigurationError, match=r"^invalid Setting: level: .*\(got 'high'\)$"):
        Setting(level="high")  # type: ignore[arg-type]


def test_the_id_is_not_part_of_a_dump() -> None:
    assert Sample(label="x").model_dump() == {"label": "x", "size": 1}


def test_validation_errors_become_configuration_errors_naming_the_field() -> None:
    with pytest.raises(ConfigurationError, match=r"^invalid Sample: size: .*equal to 1 \(got 0\)$"):
        Sample(label="x", size=0)


def test_configuration_errors_do_not_chain_pydantics_error() -> None:
    with pytest.raises(ConfigurationError) as caught:
        Sample(label="")

    assert caught.value.__suppress_context__


def test_unknown_fields_are_named_with_the_valid_ones() -> None:
    with pytest.raises(ConfigurationError) as caught:
        Sample(label="x", colour="red")

    assert str(caught.value) == (
        "invalid Sample: colour: unknown field; valid fields: label, size (got 'red')"
    )


def test_describe_names_each_field_and_what_was_given() -> None:
    text = describe_validation_error("Plain", errors_of(label="", size=0))

    assert text.startswith("invalid Plain: label: String should have at least 1 character (got '')")
    assert "; size: Input should be greater than or equal to 1 (got 0)" in text
    assert text.endswith("(2 problems)")


def test_describe_shows_no_input_for_a_missing_field() -> None:
    assert describe_validation_error("Plain", errors_of()) == "invalid Plain: label: Field required"


def test_describe_shows_none_when_none_was_given() -> None:
    text = describe_validation_error("Plain", errors_of(label=None))

    assert text == "invalid Plain: label: Input should be a valid string (got None)"


def test_describe_drops_pydantics_value_error_prefix() -> None:
    class Validated(BaseModel):
        value: int

        @field_validator("value")
        @classmethod
        def _positive(cls, value: int) -> int:
            if value < 0:
                raise ValueError("must be positive")
            return value

    with pytest.raises(ValidationError) as caught:
        Validated(value=-1)

    assert describe_validation_error("Validated", caught.value) == (
        "invalid Validated: value: must be positive (got -1)"
    )


def test_describe_shortens_long_inputs() -> None:
    text = describe_validation_error("Plain", errors_of(label="x", size="y" * 200))

    shown = text.split("(got ", 1)[1]
    assert shown.endswith("...)")
    assert len(shown) <= 62


@pytest.mark.parametrize("field", ["description", "expected_output", "name"])
def test_a_lone_surrogate_in_a_spec_is_refused_where_it_is_given(field: str) -> None:
    # Found by tests/test_fuzz.py: the crew's fingerprint (and any record) cannot encode it,
    # so it failed at kickoff with a UnicodeEncodeError.
    from crewflow import Task

    fields = {"description": "Say hi", field: "bad \udc80 text"}

    with pytest.raises(ConfigurationError, match=f"^invalid Task: {field}: ") as caught:
        Task(**fields)
    assert "lone surrogate at position 4" in str(caught.value) or "unicode" in str(caught.value)


def test_text_that_is_not_ascii_or_holds_nul_is_kept_in_a_spec() -> None:
    from crewflow import Task

    assert Task("héllo \x00 🌍", expected_output="ü").description == "héllo \x00 🌍"
