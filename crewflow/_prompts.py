"""The few prompt texts crewflow sends: lean, native, and the same for every provider.

No ReAct scaffolding: tools and structured output use the provider's function calling and JSON
schema. What is here is what users pay tokens for on every call, so it stays short.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError


def system_prompt(role: str, goal: str, backstory: str) -> str:
    """The system message of an agent."""
    text = f"You are {role}. Your goal: {goal}"
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
            f'<context task="{name}">\n{text}\n</context>' for name, text in context
        )
        parts.append(f"Context from earlier tasks:\n{blocks}")
    return "\n\n".join(parts)


def json_instruction(schema: dict[str, Any]) -> str:
    """Appended to the task prompt when the provider cannot enforce a schema itself."""
    return (
        "\n\nAnswer with one JSON object that matches this JSON schema, and nothing else:\n"
        + json.dumps(schema, separators=(",", ":"))
    )


def validation_feedback(error: ValidationError | ValueError) -> str:
    """The re-ask message after an answer failed validation."""
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
    """The JSON object inside ``text``: code fences and prose around it are dropped."""
    stripped = text.strip()
    if stripped.startswith("```"):
        stripped = stripped.split("\n", 1)[1] if "\n" in stripped else ""
        stripped = stripped.rsplit("```", 1)[0].strip()
    if stripped.startswith(("{", "[")):
        return stripped
    start, end = stripped.find("{"), stripped.rfind("}")
    return stripped[start : end + 1] if 0 <= start < end else stripped
