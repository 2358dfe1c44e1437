"""The base of crewflow's specs (`Agent`, `Task`, `Crew`): frozen pydantic models with identity.

Two specs that look alike are still two specs: each gets a generated id at construction and
compares and hashes by it, so tasks can be dictionary keys and graph nodes, and a copy made with
``model_copy`` keeps the identity of its original. Pydantic's validation errors are turned into
`ConfigurationError` naming the spec and the field.
"""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from crewflow.exceptions import ConfigurationError


def new_id() -> str:
    """A fresh random id (32 hex digits)."""
    return uuid.uuid4().hex


class Spec(BaseModel):
    """A frozen pydantic model with identity by a generated ``id``."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    id: str = Field(default_factory=new_id, repr=False, exclude=True)
    """A generated id: what makes this spec this one."""

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigurationError(describe_validation_error(type(self).__name__, exc)) from None

    def __eq__(self, other: object) -> bool:
        return self is other or (isinstance(other, Spec) and other.id == self.id)

    def __hash__(self) -> int:
        return hash(self.id)


def describe_validation_error(what: str, exc: ValidationError) -> str:
    """Render pydantic's errors as one message: ``what`` and each field with its problem."""
    problems = []
    for error in exc.errors(include_url=False):
        location = ".".join(str(part) for part in error["loc"]) or "(input)"
        message = error["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        got = error.get("input")
        shown = f" (got {_short_repr(got)})" if error["type"] != "missing" and got is not None else ""
        problems.append(f"{location}: {message}{shown}")
    plural = "s" if len(problems) > 1 else ""
    return f"invalid {what}: " + "; ".join(problems) + (f" ({len(problems)} problem{plural})" if plural else "")


def _short_repr(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
