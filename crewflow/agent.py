"""Agents: a role, a goal, a model and tools; and the loop that turns a prompt into an answer.

The loop is provider-neutral: it talks to an `LLM` (which the runtime has already wrapped with
limits, retries, usage accounting and events) and to tools, until the model gives a final answer.
It knows nothing of crews, graphs or storage.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, Field, StrictInt, ValidationError, field_validator

from crewflow import _prompts
from crewflow._spec import Spec
from crewflow.exceptions import (
    ConfigurationError,
    MaxIterationsExceeded,
    OutputValidationError,
    ToolError,
)
from crewflow.llm._base import LLM
from crewflow.llm._models import check_model
from crewflow.llm._types import LLMRequest, Message, OutputSchema, ToolCall
from crewflow.tools import Tool, as_tool

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from crewflow.llm._types import ToolSpec

__all__ = ["Agent", "AgentAnswer", "ToolObserver"]


class ToolObserver(Protocol):
    """Told about every tool call the loop makes, as it ends: the tool's name as the model
    called it, the seconds it took, and what ended it when it did not return: the `ToolError`
    whose message the model was sent (its ``__cause__`` is what the tool raised), or the
    cancellation that cut it short. The runtime records it on the attempt, logs a failure and
    emits a `crewflow.events.ToolCalled` event."""

    def __call__(self, tool: str, *, duration: float, error: BaseException | None) -> None: ...


@dataclass(frozen=True, slots=True)
class AgentAnswer:
    """The final answer of one agent run.

    Attributes:
        text: The answer's text (the validated JSON when an output model was asked for).
        data: The parsed output model instance, or ``None``.
        iterations: LLM calls made.
        tool_calls: Tool calls made.
    """

    text: str
    data: BaseModel | None
    iterations: int
    tool_calls: int


class Agent(Spec):
    """Someone who does tasks: a role and goal, a model, and tools.

    Example:
        ```python
        researcher = Agent(
            role="Researcher",
            goal="Find accurate, recent facts",
            llm="openai/gpt-4o-mini",
            tools=[search],
        )
        ```

    Args:
        role: Who the agent is; opens its system prompt.
        goal: What it is trying to achieve.
        backstory: Extra guidance for the system prompt.
        llm: A model string (``"offline"``, ``"openai/gpt-4o"``, ``"anthropic/claude-sonnet-4"``,
            ...) or an `crewflow.llm.LLM` object. ``None`` uses ``CREWFLOW_MODEL``, else
            ``"offline"``.
        tools: Tools the model may call (`crewflow.tool`-decorated functions, or plain
            functions, which are wrapped).
        max_iterations: How many LLM calls one task may take before
            `MaxIterationsExceeded`.
        output_retries: How many times a structured answer that fails validation is re-asked.
        stream: Ask the model to stream its answers; the run then emits
            `crewflow.events.TokenDelta` events as text arrives, and a
            `crewflow.events.TokenDeltaReset` when text streamed so far is dropped (a retry,
            the model's next call).
        group: A limit group for this agent's LLM calls (see `crewflow.Limits`).
        max_context_tokens: The model's context window in tokens, prompt and answer together.
            ``None`` looks the model up in crewflow's table of well-known windows, else sets no
            limit. A task's context outputs are cut to fit 80 % of it (see the context
            budget guide).
    """

    role: str = Field(min_length=1)
    goal: str = Field(min_length=1)
    backstory: str = ""
    llm: str | LLM | None = None
    tools: tuple[Tool, ...] = ()
    max_iterations: int = Field(default=10, ge=1)
    output_retries: int = Field(default=2, ge=0)
    stream: bool = False
    group: str | None = Field(default=None, min_length=1)
    max_context_tokens: StrictInt | None = Field(default=None, gt=0)

    @field_validator("role", "goal")
    @classmethod
    def _check_text(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value

    @field_validator("llm", mode="before")
    @classmethod
    def _check_llm(cls, value: Any) -> Any:
        if isinstance(value, str):
            return check_model(value)
        if value is not None and not isinstance(value, LLM):
            raise ValueError(
                "llm must be a model string such as 'openai/gpt-4o-mini' or a crewflow.llm.LLM"
            )
        return value

    @field_validator("tools", mode="before")
    @classmethod
    def _check_tools(cls, value: Any) -> Any:
        if value is None:
            return ()
        if callable(value):
            value = [value]
        if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
            raise ValueError(
                "tools must be a list of tools (functions decorated with @crewflow.tool), "
                "e.g. tools=[search]"
            )
        tools = tuple(as_tool(item) for item in value)
        names = [t.name for t in tools]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"two tools share the name(s) {duplicates}: rename one")
        return tools

    @property
    def system_prompt(self) -> str:
        """The system message this agent sends."""
        return _prompts.system_prompt(self.role, self.goal, self.backstory)

    @classmethod
    def from_yaml(cls, name_or_path: str | Path, **overrides: Any) -> Agent:
        """Load an agent from the catalogue (``"researcher"``) or from a YAML file.

        The catalogue ships with crewflow: researcher, writer, critic, analyst, manager, editor.
        A YAML file holds the constructor's fields (``role``, ``goal``, ``backstory``, ``llm``,
        ``max_iterations``, ...).

        Args:
            name_or_path: A catalogue name, or the path of a ``.yaml`` file.
            **overrides: Fields that replace the file's (e.g. ``llm="openai/gpt-4o"``).

        Raises:
            ConfigurationError: Unknown name, unreadable file, or an invalid field (the message
                names the file and the field).
        """
        from crewflow._catalogue import load_agent_fields

        path, fields = load_agent_fields(name_or_path)
        fields.update(overrides)
        try:
            return cls(**fields)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{path}: {exc}") from None

    async def run(
        self,
        prompt: str,
        *,
        llm: LLM,
        output_model: type[BaseModel] | None = None,
        on_tool: ToolObserver | None = None,
    ) -> AgentAnswer:
        """Run the loop: LLM ⇄ tools until a final answer.

        Several tool calls in one turn run concurrently; a tool's error is sent back to the model
        as the tool's result. With ``output_model``, the provider's structured output is used
        where supported (else a JSON instruction), the answer is validated, and an invalid one is
        re-asked with the errors, up to ``output_retries`` times.

        Args:
            prompt: The user message (the task, its expected output and context).
            llm: The model to call.
            output_model: The pydantic model the answer must match, if any.
            on_tool: Told about each tool call. Without one, a failed tool call is logged at
                WARNING with its traceback.

        Raises:
            MaxIterationsExceeded: ``max_iterations`` calls made without a final answer.
            OutputValidationError: The answer never validated against ``output_model``.
            LLMError: A provider call failed (after the runtime's retries).
        """
        schema = _output_schema(output_model)
        native = schema is not None and llm.supports_output_schema
        if schema is not None and not native:
            prompt += _prompts.json_instruction(schema.schema)
        messages = [_system_message(self.system_prompt), Message("user", prompt)]
        tools = {t.name: t for t in self.tools}
        specs: list[ToolSpec] = [t.spec for t in self.tools]
        if on_tool is None:
            on_tool = _LoggedTools(self.role)
        failures: list[ValidationError | ValueError] = []
        tool_calls = 0
        for iteration in range(1, self.max_iterations + 1):
            # A copy per request: the conversation grows, a request (recorded, cached, logged)
            # must keep the messages it was sent with.
            response = await llm.complete(
                LLMRequest(
                    list(messages),
                    tools=specs,
                    output=schema if native else None,
                    stream=self.stream,
                )
            )
            if response.tool_calls:
                tool_calls += len(response.tool_calls)
                messages.append(Message("assistant", response.content, response.tool_calls))
                messages.extend(await _call_tools(response.tool_calls, tools, on_tool))
                continue
            text = response.content or ""
            if output_model is None:
                return AgentAnswer(text, None, iteration, tool_calls)
            try:
                answer = _prompts.extract_json(text)
                _prompts.check_finite(answer)
                data = output_model.model_validate_json(answer)
            except (ValidationError, ValueError) as exc:
                failures.append(exc)
                if len(failures) > self.output_retries or iteration == self.max_iterations:
                    break
                messages.append(Message("assistant", text))
                messages.append(Message("user", _prompts.validation_feedback(exc)))
                continue
            return AgentAnswer(data.model_dump_json(), data, iteration, tool_calls)
        else:
            raise MaxIterationsExceeded(
                f"agent {self.role!r} made {self.max_iterations} LLM calls without a final "
                "answer; raise Agent(max_iterations=...) or make the task narrower",
                max_iterations=self.max_iterations,
            )
        raise _validation_error(output_model, failures, text)


@functools.lru_cache(maxsize=256)
def _system_message(text: str) -> Message:
    """The system message of an agent's `system_prompt`, made once per text: a run's requests
    and their records all hold it (a 10,000-task run kept as many copies, each one more object
    for the garbage collector to walk)."""
    return Message("system", text)


def _output_schema(output_model: type[BaseModel] | None) -> OutputSchema | None:
    if output_model is None:
        return None
    return OutputSchema(output_model.__name__, output_model.model_json_schema())


async def _call_tools(
    calls: Sequence[ToolCall], tools: dict[str, Tool], on_tool: ToolObserver
) -> list[Message]:
    """Run one turn's tool calls (concurrently when several) and return their result messages."""
    if len(calls) == 1:
        return [await _call_tool(calls[0], tools, on_tool)]
    import anyio

    results: list[Message | None] = [None] * len(calls)

    async def call(index: int, tool_call: ToolCall) -> None:
        results[index] = await _call_tool(tool_call, tools, on_tool)

    async with anyio.create_task_group() as group:
        for index, tool_call in enumerate(calls):
            group.start_soon(call, index, tool_call)
    return [message for message in results if message is not None]


async def _call_tool(call: ToolCall, tools: dict[str, Tool], on_tool: ToolObserver) -> Message:
    started = time.perf_counter()
    tool = tools.get(call.name)
    error: ToolError | None = None
    try:
        if tool is None:
            raise ToolError(
                f"unknown tool {call.name!r}; available tools: {sorted(tools) or 'none'}",
                tool=call.name,
            )
        content = await tool.run(call.arguments)
    except ToolError as exc:
        error = exc
        content = f"Error: {exc}"
    except BaseException as exc:  # cancelled while the tool ran: told, then on its way
        on_tool(call.name, duration=time.perf_counter() - started, error=exc)
        raise
    on_tool(call.name, duration=time.perf_counter() - started, error=error)
    return Message("tool", content, tool_call_id=call.id, name=call.name)


class _LoggedTools:
    """The observer of an agent run outside a crew: logs failed tool calls."""

    def __init__(self, agent: str) -> None:
        self.agent = agent

    def __call__(self, tool: str, *, duration: float, error: BaseException | None) -> None:
        if isinstance(error, Exception):
            # Here, not at the top: `from crewflow import Agent` must not load logging.
            from crewflow._logging import get_logger

            get_logger().warning(
                "tool call failed", agent=self.agent, tool=tool, error=str(error), exc_info=error
            )


def _validation_error(
    output_model: type[BaseModel], failures: Sequence[ValidationError | ValueError], text: str
) -> OutputValidationError:
    last = failures[-1]
    errors = last.errors(include_url=False) if isinstance(last, ValidationError) else [str(last)]
    return OutputValidationError(
        f"the answer did not match {output_model.__name__} after {len(failures)} tries "
        f"({len(failures) - 1} re-asks): {last}. Simplify the model, describe its fields, or "
        "use a model that supports structured output",
        errors=errors,
        text=text,
    )
