"""Deterministic example values for JSON schemas.

The offline LLM backends and the loopback test server need a plausible answer
for structured-output requests without calling a model. :func:`example_for_schema`
builds one from the JSON schema that pydantic v2 emits (``Model.model_json_schema()``):
the same schema and seed always give the same value, and the value validates
against the schema for every construct pydantic produces (patterns are best effort).

Only the standard library is imported: this module sits on the import path of
``crewflow.testing`` and of the offline backend, both of which must stay light.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["example_for_schema"]

_MAX_DEPTH = 64
_SEED_CHARS = 40
_ANNOTATIONS = frozenset(
    {"title", "description", "default", "examples", "deprecated", "readOnly", "writeOnly"}
)
_UUID_NAMESPACE = uuid.UUID("6f1c3a52-8f0e-4d5e-9c1b-2a7d4e6f8b90")


class _CycleError(Exception):
    """A ``$ref`` re-entered itself; the caller should pick a shorter option."""


@dataclass(frozen=True, slots=True)
class _Slot:
    """Where a value is being built: the name it is derived from and its position."""

    name: str
    variant: int = 0
    depth: int = 0

    def child(self, name: str, variant: int = 0) -> _Slot:
        """Return the slot of a nested value."""
        return _Slot(name, variant, self.depth + 1)


def example_for_schema(schema: Mapping[str, Any] | bool, *, seed: str = "") -> Any:
    """Build a deterministic value that validates against a JSON schema.

    Every object property is filled, required or not, except where filling it
    would recurse forever (recursive models get empty arrays, ``None`` or an
    omitted optional property at the point where a ``$ref`` re-enters itself).

    Args:
        schema: A JSON schema, typically ``Model.model_json_schema()``; ``True``
            (anything) is accepted too.
        seed: Text mixed into generated strings (e.g. the user's prompt) so that
            different requests get distinguishable, readable values.

    Returns:
        A JSON-compatible value (dict, list, str, int, float, bool or None).

    Raises:
        ValueError: If the schema cannot be satisfied (``false``, an unresolvable
            ``$ref``, an empty numeric range, or recursion that never terminates).
    """
    root = schema if isinstance(schema, Mapping) else {}
    builder = _Builder(root, seed)
    try:
        return builder.build(schema, _Slot(_root_name(root)))
    except _CycleError as exc:
        raise ValueError(f"schema recursion through {exc} has no finite instance") from exc


def _root_name(schema: Mapping[str, Any]) -> str:
    title = schema.get("title")
    return title.lower() if isinstance(title, str) and title else "value"


def _is_null_schema(schema: Any) -> bool:
    if not isinstance(schema, Mapping):
        return False
    return schema.get("type") == "null" or ("const" in schema and schema["const"] is None)


class _Builder:
    """Walks one schema document; holds its root (for ``$ref``) and the active refs."""

    def __init__(self, root: Mapping[str, Any], seed: str) -> None:
        self._root = root
        self._seed = " ".join(seed.split())[:_SEED_CHARS].strip()
        self._active: list[str] = []
        self._by_type: dict[str, Callable[[Mapping[str, Any], _Slot], Any]] = {
            "object": self._object,
            "array": self._array,
            "string": self._string,
            "integer": lambda s, slot: _number(s, slot, integer=True),
            "number": lambda s, slot: _number(s, slot, integer=False),
            "boolean": lambda _s, slot: slot.variant % 2 == 0,
            "null": lambda _s, _slot: None,
        }

    def build(self, schema: Mapping[str, Any] | bool, slot: _Slot) -> Any:
        """Return an example for ``schema`` at ``slot``."""
        if schema is True:
            return self._text(slot)
        if schema is False or not isinstance(schema, Mapping):
            raise ValueError("schema `false` accepts no value")
        if slot.depth > _MAX_DEPTH:
            raise ValueError(f"schema nesting deeper than {_MAX_DEPTH} levels")
        if "$ref" in schema:
            return self._ref(schema, slot)
        if "const" in schema:
            return schema["const"]
        if "enum" in schema:
            return _pick_enum(schema["enum"], slot.variant)
        if "allOf" in schema:
            return self.build(self._merge_all_of(schema), slot)
        branches = schema.get("anyOf") or schema.get("oneOf")
        if branches:
            return self._union(branches, slot)
        return self._by_type[_pick_type(schema)](schema, slot)

    # --- references and combinators -------------------------------------------------

    def _resolve(self, ref: str) -> Mapping[str, Any]:
        if not ref.startswith("#"):
            raise ValueError(f"only local $ref values are supported, got {ref!r}")
        node: Any = self._root
        for raw in ref[1:].split("/")[1:]:
            part = raw.replace("~1", "/").replace("~0", "~")
            if isinstance(node, Mapping) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise ValueError(f"unresolvable $ref {ref!r}")
        if not isinstance(node, Mapping):
            raise ValueError(f"$ref {ref!r} does not point at a schema object")
        return node

    def _ref(self, schema: Mapping[str, Any], slot: _Slot) -> Any:
        ref = str(schema["$ref"])
        if ref in self._active:
            raise _CycleError(ref)
        target = self._resolve(ref)
        # Keywords next to a $ref (e.g. a field's own constraints) still apply.
        extra = {k: v for k, v in schema.items() if k != "$ref" and k not in _ANNOTATIONS}
        self._active.append(ref)
        try:
            return self.build({**target, **extra} if extra else target, slot)
        finally:
            self._active.pop()

    def _merge_all_of(self, schema: Mapping[str, Any]) -> dict[str, Any]:
        merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
        for part in schema["allOf"]:
            if isinstance(part, Mapping) and "$ref" in part:
                if part["$ref"] in self._active:
                    raise _CycleError(str(part["$ref"]))
                part = {**self._resolve(str(part["$ref"])), **part}
                part.pop("$ref")
            if not isinstance(part, Mapping):
                continue
            for key, value in part.items():
                if key == "properties":
                    merged["properties"] = {**value, **merged.get("properties", {})}
                elif key == "required":
                    merged["required"] = [*merged.get("required", []), *value]
                else:
                    merged.setdefault(key, value)
        return merged

    def _union(self, branches: Sequence[Any], slot: _Slot) -> Any:
        # Prefer real content over null; fall back to later branches on recursion.
        ordered = [b for b in branches if not _is_null_schema(b)]
        ordered += [b for b in branches if _is_null_schema(b)]
        cycle: _CycleError | None = None
        for branch in ordered:
            try:
                return self.build(branch, slot)
            except _CycleError as exc:
                cycle = exc
        if cycle is not None:
            raise cycle
        raise ValueError("anyOf/oneOf without branches")

    # --- containers ---------------------------------------------------------------------

    def _object(self, schema: Mapping[str, Any], slot: _Slot) -> dict[str, Any]:
        props: Mapping[str, Any] = schema.get("properties") or {}
        required = set(schema.get("required") or ())
        out: dict[str, Any] = {}
        for key, sub in props.items():
            try:
                out[key] = self.build(sub, slot.child(key))
            except _CycleError:
                if key in required:
                    raise
        self._add_extra_entries(schema, slot, out, has_props=bool(props))
        return out

    def _add_extra_entries(
        self, schema: Mapping[str, Any], slot: _Slot, out: dict[str, Any], *, has_props: bool
    ) -> None:
        extra = schema.get("additionalProperties")
        min_props = int(schema.get("minProperties", 0))
        wanted = 1 if isinstance(extra, Mapping) and not has_props else 0
        wanted = max(wanted, min_props - len(out))
        if "maxProperties" in schema:
            wanted = min(wanted, int(schema["maxProperties"]) - len(out))
        value_schema: Mapping[str, Any] | bool = extra if isinstance(extra, Mapping) else True
        for index in range(max(wanted, 0)):
            key = self._key(schema, slot, index, out)
            try:
                out[key] = self.build(value_schema, slot.child(slot.name, index))
            except _CycleError:
                if len(out) < min_props:
                    raise
                return

    def _key(
        self, schema: Mapping[str, Any], slot: _Slot, index: int, taken: Mapping[str, Any]
    ) -> str:
        names = schema.get("propertyNames")
        if isinstance(names, Mapping):
            value = self.build(names, slot.child("key", index + len(taken)))
            return value if isinstance(value, str) else str(value)
        # Digit keys: pydantic emits no key schema for dict[int, ...], and "1" also
        # validates as str, int, float and Decimal keys.
        number = index + 1
        while str(number) in taken:
            number += 1
        return str(number)

    def _array(self, schema: Mapping[str, Any], slot: _Slot) -> list[Any]:
        prefix: Sequence[Any] = schema.get("prefixItems") or ()
        items = schema.get("items", True)
        min_items = max(int(schema.get("minItems", 0)), 0)
        count = max(min_items, len(prefix), 1)
        if "maxItems" in schema:
            count = min(count, int(schema["maxItems"]))
        if items is False:
            count = min(count, len(prefix))
        out: list[Any] = []
        for index in range(count):
            sub = prefix[index] if index < len(prefix) else items
            try:
                out.append(self.build(sub, slot.child(slot.name, index)))
            except _CycleError:
                if index < min_items:
                    raise
                break
        return out

    # --- strings ------------------------------------------------------------------------

    def _text(self, slot: _Slot) -> str:
        label = " ".join(slot.name.replace("_", " ").replace("-", " ").split()) or "value"
        if slot.variant:
            label = f"{label} {slot.variant + 1}"
        return f"offline {label} for {self._seed}" if self._seed else f"offline {label}"

    def _string(self, schema: Mapping[str, Any], slot: _Slot) -> str:
        fmt = schema.get("format")
        value = _format_value(fmt, slot, self._seed) if isinstance(fmt, str) else None
        if value is None:
            value = self._text(slot)
        low = int(schema.get("minLength", 0))
        high = schema.get("maxLength")
        high = None if high is None else int(high)
        pattern = schema.get("pattern")
        if isinstance(pattern, str):
            return _fit_pattern(value, pattern, low, high, slot)
        return _resize(value, low, high)


def _pick_type(schema: Mapping[str, Any]) -> str:
    declared = schema.get("type")
    if isinstance(declared, str):
        return declared
    if isinstance(declared, list) and declared:
        real = [t for t in declared if t != "null"]
        return str(real[0]) if real else "null"
    # Untyped schemas: infer from the keywords present, defaulting to a string.
    if {"properties", "additionalProperties", "required", "propertyNames"} & schema.keys():
        return "object"
    if {"items", "prefixItems", "minItems", "maxItems"} & schema.keys():
        return "array"
    if {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"} & (
        schema.keys()
    ):
        return "number"
    return "string"


def _pick_enum(options: Sequence[Any], variant: int) -> Any:
    if not options:
        raise ValueError("enum without values accepts nothing")
    real = [o for o in options if o is not None] or list(options)
    return real[variant % len(real)]


# --- formats, lengths and patterns ------------------------------------------------------


def _slug(name: str, sep: str = "_") -> str:
    words = re.findall(r"[a-z0-9]+", name.lower())
    return sep.join(words) or "value"


def _format_value(fmt: str, slot: _Slot, seed: str) -> str | None:
    day = 1 + slot.variant % 28
    simple = {
        "date": f"2024-01-{day:02d}",
        "date-time": f"2024-01-{day:02d}T09:30:00Z",
        "time": "09:30:00",
        "duration": f"PT{slot.variant + 1}H",
        "email": f"{_slug(slot.name, '.')}{slot.variant or ''}@example.com",
        "idn-email": f"{_slug(slot.name, '.')}{slot.variant or ''}@example.com",
        "hostname": f"{_slug(slot.name, '-')}.example.com",
        "ipv4": f"192.0.2.{1 + slot.variant % 254}",
        "ipv6": f"2001:db8::{1 + slot.variant % 65535:x}",
        "json-string": "null",
    }
    if fmt in simple:
        return simple[fmt]
    if fmt in {"uri", "iri", "uri-reference", "iri-reference", "url"}:
        return f"https://example.com/{_slug(slot.name, '-')}/{slot.variant + 1}"
    if fmt == "uuid":
        return str(uuid.uuid5(_UUID_NAMESPACE, f"{slot.name}\x00{slot.variant}\x00{seed}"))
    return None


def _resize(text: str, low: int, high: int | None) -> str:
    if len(text) < low:
        base = text or "x"
        text = " ".join([base] * (low // (len(base) + 1) + 1))
        high = low if high is None else high
    if high is not None:
        text = text[: max(high, 0)]
    # Trailing or leading blanks read badly and break `strip_whitespace` models.
    if text.endswith(" "):
        text = text[:-1] + "."
    if text.startswith(" "):
        text = "." + text[1:]
    return text


def _string_candidates(value: str, slot: _Slot) -> Iterator[str]:
    words = re.findall(r"[A-Za-z0-9]+", value)
    yield value
    yield "_".join(words)
    yield "-".join(words).lower()
    yield "".join(words).lower()
    yield "".join(w.capitalize() for w in words)
    yield "_".join(words).upper()
    yield _slug(slot.name)
    yield str(slot.variant + 1)
    yield "".join(str(i % 10) for i in range(1, 11))


def _fit_pattern(value: str, pattern: str, low: int, high: int | None, slot: _Slot) -> str:
    try:
        compiled = re.compile(pattern)
    except re.error:
        # A pattern Python cannot compile (e.g. Rust-only syntax): keep the plain value.
        return _resize(value, low, high)

    def fits(text: str) -> bool:
        return compiled.search(text) is not None and low <= len(text) <= (high or len(text))

    generated = [_sketch(pattern, reps) for reps in (0, 1, 3, 8)]
    for candidate in (*_string_candidates(value, slot), *generated):
        if candidate is None:
            continue
        for option in (candidate, _resize(candidate, low, high)):
            if fits(option):
                return option
    return _resize(value, low, high)


# --- a tiny regex sketcher: one matching string for simple patterns ---------------------

_CLASS_ESCAPES = {"d": "1", "w": "a", "s": " ", "D": "a", "W": "-", "S": "a"}
_ZERO_WIDTH = frozenset("bBAZz")
_SET_PROBES = "abcxyzABCXYZ0123456789-_. @:/+"
_SIMPLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v"}


class _Unsupported(Exception):
    """The sketcher met regex syntax it does not model."""


def _sketch(pattern: str, extra_reps: int) -> str | None:
    """Return a string matching ``pattern``, or None for syntax it does not handle.

    Args:
        pattern: A regular expression.
        extra_reps: Repetitions added beyond each quantifier's minimum (capped at
            its maximum), so callers can ask for longer matches.
    """
    try:
        parser = _Sketcher(pattern, extra_reps)
        text = parser.alternation()
        if parser.pos != len(pattern):
            raise _Unsupported(pattern)
    except (_Unsupported, IndexError, ValueError, re.error):
        return None
    return text


class _Sketcher:
    """Recursive-descent walk over a pattern that emits one match."""

    def __init__(self, pattern: str, extra_reps: int) -> None:
        self.pattern = pattern
        self.pos = 0
        self.extra = extra_reps

    def _peek(self) -> str:
        return self.pattern[self.pos] if self.pos < len(self.pattern) else ""

    def alternation(self) -> str:
        first = self.sequence()
        while self._peek() == "|":
            self.pos += 1
            self.sequence()  # Parsed only to skip it: the first branch is used.
        return first

    def sequence(self) -> str:
        parts: list[str] = []
        while self._peek() not in {"", "|", ")"}:
            atom = self.atom()
            parts.append(atom * self.quantifier())
        return "".join(parts)

    def atom(self) -> str:
        char = self.pattern[self.pos]
        self.pos += 1
        if char in "^$":
            return ""
        if char == ".":
            return "a"
        if char == "\\":
            return self.escape()
        if char == "[":
            return self.char_set()
        if char == "(":
            return self.group()
        return char

    def escape(self) -> str:
        char = self.pattern[self.pos]
        self.pos += 1
        if char in _CLASS_ESCAPES:
            return _CLASS_ESCAPES[char]
        if char in _ZERO_WIDTH:
            return ""
        if char in _SIMPLE_ESCAPES:
            return _SIMPLE_ESCAPES[char]
        if char.isdigit() or char in "pPk":
            raise _Unsupported(char)  # Back-references and Unicode classes.
        if char in "xu":
            width = 2 if char == "x" else 4
            code = self.pattern[self.pos : self.pos + width]
            self.pos += width
            return chr(int(code, 16))
        return char

    def char_set(self) -> str:
        start = self.pos - 1
        self.pos += 1 if self._peek() == "^" else 0
        self.pos += 1 if self._peek() == "]" else 0  # A leading ']' is a literal.
        while self.pattern[self.pos] != "]":
            self.pos += 2 if self.pattern[self.pos] == "\\" else 1
        self.pos += 1
        compiled = re.compile(self.pattern[start : self.pos])
        for probe in _SET_PROBES + "".join(map(chr, range(33, 127))):
            if compiled.fullmatch(probe):
                return probe
        raise _Unsupported("character set without a printable ASCII member")

    def group(self) -> str:
        if self._peek() == "?":
            self._group_prefix()
        text = self.alternation()
        if self._peek() != ")":
            raise _Unsupported("unbalanced group")
        self.pos += 1
        return text

    def _group_prefix(self) -> None:
        rest = self.pattern[self.pos :]
        if rest.startswith("?:"):
            self.pos += 2
        elif rest.startswith(("?P<", "?<")) and not rest.startswith(("?<=", "?<!")):
            self.pos = self.pattern.index(">", self.pos) + 1
        else:
            raise _Unsupported("lookaround or inline flags")

    def quantifier(self) -> int:
        char = self._peek()
        if char == "{":
            bounds = re.match(r"\{(\d*)(,?)(\d*)\}", self.pattern[self.pos :])
            if bounds is None:
                return 1  # A literal '{' handled as the next atom.
            self.pos += bounds.end()
            low = int(bounds.group(1) or 0)
            high = int(bounds.group(3)) if bounds.group(3) else (None if bounds.group(2) else low)
        elif char in {"*", "+", "?"}:
            self.pos += 1
            low, high = {"*": (0, None), "+": (1, None), "?": (0, 1)}[char]
        else:
            return 1
        if self._peek() in {"?", "+"}:
            self.pos += 1  # Lazy / possessive markers do not change what matches.
        wanted = max(low, 1 if high is None or high > 0 else 0) + self.extra
        return wanted if high is None else min(wanted, high)


# --- numbers ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Bounds:
    low: float | None
    low_exclusive: bool
    high: float | None
    high_exclusive: bool

    @classmethod
    def of(cls, schema: Mapping[str, Any]) -> _Bounds:
        low, high = schema.get("minimum"), schema.get("maximum")
        low_x, high_x = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
        # Draft-4 style booleans qualify minimum/maximum; later drafts give numbers.
        if isinstance(low_x, bool) or low_x is None:
            low_excl = bool(low_x)
        else:
            low, low_excl = (low_x, True) if low is None or low_x >= low else (low, False)
        if isinstance(high_x, bool) or high_x is None:
            high_excl = bool(high_x)
        else:
            high, high_excl = (high_x, True) if high is None or high_x <= high else (high, False)
        return cls(low, low_excl, high, high_excl)

    def contains(self, value: float) -> bool:
        if self.low is not None and (
            value < self.low or (self.low_exclusive and value == self.low)
        ):
            return False
        return not (
            self.high is not None
            and (value > self.high or (self.high_exclusive and value == self.high))
        )

    def anchors(self, preferred: float) -> Iterator[float]:
        yield preferred
        for edge, step in ((self.low, 1.0), (self.high, -1.0)):
            if edge is not None:
                yield from (edge, edge + step, math.floor(edge) + step, math.ceil(edge) + step)
        if self.low is not None and self.high is not None:
            yield (self.low + self.high) / 2
            yield self.low + (self.high - self.low) / 4


def _number(schema: Mapping[str, Any], slot: _Slot, *, integer: bool) -> int | float:
    bounds = _Bounds.of(schema)
    multiple = schema.get("multipleOf")
    for anchor in bounds.anchors(float(1 + slot.variant)):
        for value in _snapped(anchor, multiple, integer=integer):
            if bounds.contains(value):
                return int(value) if integer else float(value)
    raise ValueError(f"no {'integer' if integer else 'number'} satisfies {dict(schema)!r}")


def _snapped(anchor: float, multiple: Any, *, integer: bool) -> Iterator[float]:
    if not isinstance(multiple, int | float) or multiple <= 0:
        if integer:
            yield from (math.floor(anchor), math.ceil(anchor))
        else:
            yield anchor
        return
    for k in (math.floor(anchor / multiple), math.ceil(anchor / multiple)):
        value = round(k * multiple, 12)
        if not integer or float(value).is_integer():
            yield value
