"""Text as every store can hold it: valid UTF-8 without NUL.

Whatever a model or a tool returns is data. A lone UTF-16 surrogate (``"\\ud800"``, which JSON
allows) cannot be encoded as UTF-8, so SQLite (and PostgreSQL) refuse the whole row; PostgreSQL
refuses NUL in text too. Text that reaches a record holds U+FFFD in their place instead.
"""

from __future__ import annotations

import re
from typing import Any

import pydantic_core
from pydantic import BaseModel

__all__ = ["json_text", "valid_json", "valid_text", "valid_values"]

_INVALID = re.compile("[\x00\ud800-\udfff]")


def valid_text(text: str) -> str:
    """``text`` with lone surrogates and NUL replaced by U+FFFD (``text`` itself when it has
    none)."""
    if text.isascii():
        return text.replace("\x00", "\ufffd") if "\x00" in text else text
    return _INVALID.sub("\ufffd", text) if _INVALID.search(text) else text


def valid_json(value: Any) -> Any:
    """``value`` (JSON-like: strings, numbers, lists, tuples, dicts) with every string in it,
    keys too, passed through `valid_text`; ``value`` itself when none changes."""
    if isinstance(value, str):
        return valid_text(value)
    if isinstance(value, dict):
        items = [(valid_json(key), valid_json(item)) for key, item in value.items()]
        pairs = zip(items, value.items(), strict=True)
        if all(a is key and b is item for (a, b), (key, item) in pairs):
            return value
        return dict(items)
    if isinstance(value, (list, tuple)):
        found = [valid_json(item) for item in value]
        if all(new is old for new, old in zip(found, value, strict=True)):
            return value
        return type(value)(found) if isinstance(value, tuple) else found
    return value


def json_text(value: Any, **options: Any) -> str:
    """``value`` (a pydantic model, a dataclass, or JSON-like values) as JSON text with every
    string in it valid (`valid_json`); ``options`` as `pydantic_core.to_json` takes them.

    The usual case costs one encoding: the value is encoded again, repaired, only when the
    first encoding fails on a lone surrogate or holds a NUL."""
    try:
        text = pydantic_core.to_json(value, **options).decode()
    except pydantic_core.PydanticSerializationError as exc:
        if not isinstance(exc.__cause__, UnicodeError) and "surrogate" not in str(exc):
            raise
    else:
        if "\\u0000" not in text:
            return text
    if isinstance(value, BaseModel):
        plain = value.model_dump(**options)  # Python values: no string is encoded yet
    else:
        plain = pydantic_core.to_jsonable_python(valid_json(value), **options)
    return pydantic_core.to_json(valid_json(plain)).decode()


def valid_values(values: tuple[Any, ...]) -> tuple[Any, ...]:
    """``values`` (a statement's parameters) with each string passed through `valid_text`;
    ``values`` itself when all are plain ASCII without NUL (the usual case, checked first)."""
    for value in values:
        if type(value) is str and (not value.isascii() or "\x00" in value):
            return tuple([valid_text(item) if type(item) is str else item for item in values])
    return values
