"""The few prompt texts crewflow sends: lean, native, and the same for every provider.

No ReAct scaffolding: tools and structured output use the provider's function calling and JSON
schema. What is here is what users pay tokens for on every call, so it stays short.
"""

from __future__ import annotations

import json
import math
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pydantic import ValidationError

_OPENING = re.compile(r"[{\[]")
_MAX_TRIES = 100
"""Openings `extract_json` tries to parse from: a failed try costs up to the text's length, so a
reply of brackets (``{{{{...``, megabytes of it) would otherwise take time quadratic in its
length, on the event loop."""
_FENCE = re.compile(r"```[A-Za-z0-9_-]*[ \t]*\n?(.*?)```", re.DOTALL)


def system_prompt(role: str, goal: str, backstory: str) -> str:
    """The system message of an agent."""
    # "You are a researcher.. Your goal" reads badly: the sentence supplies its own full stop.
    text = f"You are {role.strip().rstrip('.')}. Your goal: {goal.strip()}"
    return f"{text}\n\n{backstory}" if backstory else text


def task_prompt(
    description: str, expected_output: str, context: Sequence[tuple[str, str]] = ()
) -> str:
    """The user message of a task: what to do, what good looks like, and earlier outputs.

    Args:
        description: The rendered task description.
        expected_output: The rendered expected output ("" when not given).
        context: ``(task name, output text)`` pairs, in dependency order.
    """
    parts = [description]
    if expected_output:
        parts.append(f"Expected output: {expected_output}")
    if context:
        blocks = "\n".join(
            f'<context task="{_attribute(name)}">\n{text}\n</context>' for name, text in context
        )
        parts.append(f"Context from earlier tasks:\n{blocks}")
    return "\n\n".join(parts)


def cut_note(cut: int, before: int) -> str:
    """The line that ends a context output cut to fit the model's context budget."""
    return (
        f"[crewflow: cut {cut:,} of this output's {before:,} characters to fit the context window]"
    )


def cut_context(
    context: Sequence[tuple[str, str]], room: int
) -> tuple[list[tuple[str, str]], dict[str, tuple[int, int]]]:
    """Context outputs cut to ``room`` characters together, notes included: largest first.

    The policy (deterministic: the same outputs and room give the same cut): the outputs that
    fit under a common length are kept whole, and every longer one is cut to that length
    (largest first: the shortest output is cut last), the one length chosen so that everything
    fits; characters left over by rounding go to the earlier outputs, in dependency order. A
    cut output keeps its beginning and ends with a one-line note (`cut_note`) saying how much
    was cut; the notes count toward ``room``. An output of which nothing fits keeps only its
    note.

    Args:
        context: ``(task name, output text)`` pairs, in dependency order.
        room: The characters the outputs' texts may take together.

    Returns:
        The pairs with their texts cut, and the outputs cut, by name: ``(characters before,
        characters after)``; empty when all fit whole (the pairs are then ``context``'s).
    """
    sizes = [len(text) for _, text in context]
    if sum(sizes) <= room:
        return list(context), {}
    cut: set[int] = set()
    while True:
        notes = sum(len(cut_note(sizes[i], sizes[i])) + 1 for i in cut)
        level, extra = _level(sizes, max(0, room - notes))
        over = {i for i, size in enumerate(sizes) if size > level}
        if over <= cut:
            break
        cut |= over
    pairs: list[tuple[str, str]] = []
    outputs: dict[str, tuple[int, int]] = {}
    for index, (name, text) in enumerate(context):
        if index not in cut:
            pairs.append((name, text))
            continue
        keep = level + (1 if extra > 0 and len(text) > level + 1 else 0)
        extra -= keep - level
        keep = min(keep, len(text))
        note = cut_note(len(text) - keep, len(text))
        pairs.append((name, f"{text[:keep]}\n{note}" if keep else note))
        outputs[name] = (len(text), keep)
    return pairs, outputs


def _level(sizes: Sequence[int], room: int) -> tuple[int, int]:
    """The length every output longer than it is cut to so that all fit ``room``, and the
    characters left over below it (at most one for each output cut)."""
    remaining = room
    ascending = sorted(sizes)
    for index, size in enumerate(ascending):
        left = len(ascending) - index
        if size * left > remaining:
            return remaining // left, remaining % left
        remaining -= size
    return ascending[-1], 0


def json_instruction(schema: dict[str, Any]) -> str:
    """Appended to the task prompt when the provider cannot enforce a schema itself."""
    return (
        "\n\nAnswer with one JSON object that matches this JSON schema, and nothing else:\n"
        + json.dumps(schema, separators=(",", ":"))
    )


def validation_feedback(error: ValidationError | ValueError) -> str:
    """The re-ask message after an answer failed validation."""
    from pydantic import ValidationError

    if isinstance(error, ValidationError):
        lines = [
            f"- {'.'.join(str(p) for p in e['loc']) or '(answer)'}: {e['msg']}"
            for e in error.errors(include_url=False)[:20]
        ]
        detail = "\n".join(lines)
    else:
        detail = f"- {error}"
    return (
        "Your answer does not match the required JSON schema:\n"
        f"{detail}\nAnswer again with only the corrected JSON object."
    )


def extract_json(text: str) -> str:
    """The JSON inside ``text``: code fences and prose around it are dropped.

    Looks in fenced code blocks first, then anywhere in the text; an object is preferred over an
    array (``"[1]"`` in prose is rarely the answer); the first 100 brackets are tried. When
    nothing parses, the likeliest candidate is returned as it is, so that validation reports
    what is wrong with it.
    """
    stripped = text.strip()
    blocks = [match.group(1).strip() for match in _FENCE.finditer(stripped)]
    if not blocks and stripped.startswith("```"):
        # An unclosed fence (the answer was cut off): what follows the opening line.
        blocks = [stripped.split("\n", 1)[1].strip() if "\n" in stripped else ""]
    for candidate in (*blocks, stripped):
        found = _first_json(candidate)
        if found is not None:
            return found
    fallback = blocks[0] if blocks else stripped
    start, end = fallback.find("{"), fallback.rfind("}")
    return fallback[start : end + 1] if 0 <= start < end else fallback


class _NotFinite(ValueError):
    pass


def _reject_constant(constant: str) -> Any:
    raise _NotFinite(constant)


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _NotFinite(text)
    return value


def check_finite(text: str) -> None:
    """Refuse a JSON answer that holds NaN or Infinity (or a number too large for a float).

    Python's JSON reader and pydantic's accept them, but JSON has no such numbers, and no
    record could hold them: they count as an answer that does not validate, so the model is
    asked again. Text that is not JSON at all passes here, for validation to describe.

    Raises:
        ValueError: The number that is not finite, as the answer wrote it.
    """
    try:
        json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except _NotFinite as exc:
        raise ValueError(
            f"{exc} is not a JSON number; every number must be finite (write null if unknown)"
        ) from None
    except (ValueError, RecursionError):
        pass


def _first_json(text: str) -> str | None:
    """The first JSON object in ``text`` outside any array, else the first array, as written."""
    decoder = json.JSONDecoder()
    first_array: str | None = None
    position = 0
    for _ in range(_MAX_TRIES):
        match = _OPENING.search(text, position)
        if match is None:
            break
        start = match.start()
        try:
            value, end = decoder.raw_decode(text, start)
        except (ValueError, RecursionError):  # nested too deep for Python's reader: not JSON
            position = start + 1
            continue
        if isinstance(value, dict):
            return text[start:end]
        first_array = first_array or text[start:end]
        position = end  # An object inside an array is not the answer: skip the whole array.
    return first_array


def _attribute(value: str) -> str:
    """``value`` made safe inside a double-quoted attribute of the context delimiters."""
    return value.replace("&", "&amp;").replace('"', "&quot;")
