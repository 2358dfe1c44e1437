"""Guardrails: a task's check of each output before it is accepted (`Task.guardrail`).

The convention: the guardrail returns ``True`` or ``None`` to accept the output, a ``str`` (the
reason) or ``False`` to reject it; anything else is a bug in the guardrail. A sync guardrail
runs in a worker thread, so that it never blocks the event loop, and within the attempt's
timeout (the thread is abandoned when the timeout ends the attempt).

A rejected output is asked for again with the reason, as a marked block at the end of the
task's user message (`feedback`): the request is the task's own, plus the reason, not the whole
rejected answer, so a round costs the task's prompt again and a few tokens more.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from crewflow.exceptions import OutputValidationError
from crewflow.task import function_name

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from crewflow.task import TaskOutput

__all__ = ["GuardrailBroke", "check", "exhausted", "feedback"]


class GuardrailBroke(Exception):
    """The guardrail raised, or returned something that is neither ok nor a reason: the task
    fails at once (a guardrail's bug is not retried)."""

    def __init__(self, name: str, error: Exception) -> None:
        super().__init__(f"guardrail {name!r} raised {type(error).__name__}: {error}")
        self.name = name
        self.error = error


async def check(guardrail: Callable[..., Any], output: TaskOutput) -> str | None:
    """Run ``guardrail`` on ``output``: ``None`` when it accepts it, else the reason.

    Raises:
        GuardrailBroke: It raised, or returned neither ok nor a reason.
    """
    try:
        if _is_async(guardrail):
            verdict = await guardrail(output)
        else:
            import anyio.to_thread

            verdict = await anyio.to_thread.run_sync(guardrail, output, abandon_on_cancel=True)
            if inspect.isawaitable(verdict):  # a sync function that returned a coroutine
                verdict = await verdict
    except Exception as exc:
        raise GuardrailBroke(function_name(guardrail), exc) from exc
    if verdict is None or verdict is True:
        return None
    if verdict is False:
        return "the output was rejected (the guardrail gave no reason)"
    if isinstance(verdict, str):
        return verdict if verdict.strip() else "the output was rejected (no reason given)"
    error = TypeError(
        f"returned {_shown(verdict)}; return True or None to accept the output, or a reason "
        "(a str) or False to reject it"
    )
    raise GuardrailBroke(function_name(guardrail), error)


def feedback(prompt: str, reason: str) -> str:
    """The user message of a guardrail round: the task's, then the last reason, marked."""
    return (
        f"{prompt}\n\n<rejected>\nYour previous answer was rejected: {reason}\n</rejected>\n"
        "Answer the task again, fixing that."
    )


def exhausted(
    guardrail: Callable[..., Any], reasons: Sequence[str], output: TaskOutput
) -> OutputValidationError:
    """The error of a task whose guardrail rejected every output."""
    name = function_name(guardrail)
    rounds = len(reasons) - 1
    return OutputValidationError(
        f"guardrail {name!r} rejected {len(reasons)} outputs ({rounds} guardrail "
        f"round{'s' if rounds != 1 else ''}), last because: {reasons[-1]}. Make the task say "
        "what the guardrail wants, or raise Task(guardrail_retries=...)",
        text=output.text,
        guardrail=name,
        reasons=reasons,
        output=output,
    )


def _is_async(guardrail: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(guardrail) or inspect.iscoroutinefunction(
        getattr(guardrail, "__call__", None)  # noqa: B004 - a callable object's own method
    )


def _shown(value: object) -> str:
    text = repr(value)
    if len(text) > 80:
        text = text[:79] + "…"
    return f"{text} ({type(value).__name__})"
