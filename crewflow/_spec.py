"""The bases of crewflow's models: specs (`Agent`, `Task`, `Crew`) and values (`RetryPolicy`,
`Limit`), both frozen pydantic models.

Two specs that look alike are still two specs: each gets a generated id at construction and
compares and hashes by it, so tasks can be dictionary keys and graph nodes, and a copy made with
``model_copy`` keeps the identity of its original. Values are settings: two that look alike are
equal and hash alike. Pydantic's validation errors are turned into `ConfigurationError` naming
the model and the field.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from crewflow.exceptions import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Iterable


# The fields-sets that frozen models given the same fields share: a few distinct ones per model.
_FIELDS_SETS: dict[frozenset[str], set[str]] = {}


def share_fields_set(model: BaseModel) -> None:
    """Give the frozen ``model`` the fields-set that models given the same fields share.

    pydantic gives every instance a set of the fields it was given (``model_fields_set``), as
    big as a small record's values (200 to 730 bytes) and one more object for the garbage
    collector to walk. A frozen model's set never changes (`model_copy` copies it before it
    adds to it), so instances given the same fields can share one. Called from
    ``model_post_init``."""
    given = model.__pydantic_fields_set__
    shared = fields_set_of(given)
    if shared is not given:
        object.__setattr__(model, "__pydantic_fields_set__", shared)


def fields_set_of(names: Iterable[str]) -> set[str]:
    """The shared fields-set (`share_fields_set`) of models given the fields ``names``: the
    set ``names`` itself when it is the first of its kind."""
    given = names if isinstance(names, set) else set(names)
    return _FIELDS_SETS.setdefault(frozenset(given), given)


def new_id() -> str:
    """A fresh random id (32 hex digits)."""
    return uuid.uuid4().hex


class Spec(BaseModel):
    """A frozen pydantic model with identity by a generated ``id``."""

    # Schemas are built on first construction, not at import: `import crewflow` stays light.
    model_config = ConfigDict(
        frozen=True, extra="forbid", arbitrary_types_allowed=True, defer_build=True
    )

    id: str = Field(default_factory=new_id, repr=False, exclude=True)
    """A generated id: what makes this spec this one."""

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            # A whole-spec check (``model_post_init``) raises a ConfigurationError that already
            # names what is wrong; pydantic would bury it under the whole input.
            raise _configuration_error(type(self), exc, anywhere=False) from None

    @field_validator("*", mode="after")
    @classmethod
    def _whole_text(cls, value: Any) -> Any:
        # A lone surrogate (text decoded with ``surrogateescape``, say) cannot become UTF-8:
        # not in the crew's fingerprint, a prompt, or a record. Refused here, where it was given.
        if isinstance(value, str) and not value.isascii():
            try:
                value.encode()
            except UnicodeEncodeError as exc:
                raise ValueError(
                    f"holds a lone surrogate at position {exc.start}, which is not text: "
                    "decode the source with errors='replace'"
                ) from None
        return value

    def model_post_init(self, context: Any, /) -> None:
        # A 10,000-task crew's tasks share a few sets instead of 10,000 (2-3 MB, and as many
        # objects fewer for the garbage collector to walk while the crew runs).
        share_fields_set(self)

    def __eq__(self, other: object) -> bool:
        return self is other or (isinstance(other, Spec) and other.id == self.id)

    def __hash__(self) -> int:
        return hash(self.id)


class Value(BaseModel):
    """A frozen pydantic model compared and hashed by value: a setting users configure.

    Its validators raise `ConfigurationError` with a message that says how to fix the value; that
    error is raised as it is, wherever it was found, and pydantic's own errors are described
    like a spec's.
    """

    # Schemas are built on first construction, not at import: `import crewflow` stays light.
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise _configuration_error(type(self), exc, anywhere=True) from None


def describe_validation_error(
    what: str, exc: ValidationError, *, fields: Iterable[str] = ()
) -> str:
    """Render pydantic's errors as one message: ``what`` and each field with its problem.

    Args:
        what: What was being built (``"Agent"``).
        exc: Pydantic's error.
        fields: The valid field names, listed when a field is unknown.

    Example:
        ``invalid Agent: role: String should have at least 1 character (got '')``
    """
    known = sorted(name for name in fields if name != "id")
    problems = []
    for error in exc.errors(include_url=False):
        location = ".".join(str(part) for part in error["loc"]) or "(input)"
        message = error["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        if error["type"] == "extra_forbidden":
            message = "unknown field" + (f"; valid fields: {', '.join(known)}" if known else "")
        shown = "" if error["type"] == "missing" else f" (got {short_repr(error.get('input'))})"
        problems.append(f"{location}: {message}{shown}")
    count = f" ({len(problems)} problems)" if len(problems) > 1 else ""
    return f"invalid {what}: " + "; ".join(problems) + count


def _configuration_error(
    model: type[BaseModel], exc: ValidationError, *, anywhere: bool
) -> ConfigurationError:
    """The error to raise for ``exc``: a `ConfigurationError` one of our validators raised (the
    whole model's, or ``anywhere``), else one describing pydantic's errors."""
    for error in exc.errors(include_url=False):
        cause = error.get("ctx", {}).get("error")
        if (anywhere or not error["loc"]) and isinstance(cause, ConfigurationError):
            return cause
    return ConfigurationError(
        describe_validation_error(model.__name__, exc, fields=model.model_fields)
    )


def short_repr(value: object) -> str:
    """``repr(value)``, cut to 60 characters (for error messages)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
