"""Tools: plain Python functions an agent's model may call.

`@tool` reads the function's signature and docstring into a JSON schema (via pydantic), so the
model sees typed, described parameters and its arguments are validated before the function runs.
Async functions are awaited; sync functions run in a daemon thread of their own, so they never
block the event loop, nor keep the process alive once nothing waits for them.

A thread cannot be stopped. When the task waiting for a sync tool gives up on it (its timeout,
a cancelled run), the wait ends at once and the thread is *abandoned*: it runs on until the
function returns, and is counted against its tool meanwhile. A tool with `MAX_ABANDONED` such
threads still running is not called again until one returns, so a hung tool cannot take thread
after thread. The runtime reads which calls an attempt abandoned (`watch_abandoned`) to decide
whether the attempt may be retried.

A tool made with ``executor=`` (a `crewflow.executors.RayExecutor`) runs elsewhere: each call is
handed to its `ToolExecutor` with the validated arguments, and what comes back is handled as a
local call's result or raise. Cancelling the call cancels the remote work; nothing is abandoned.
"""

from __future__ import annotations

import inspect
import json
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from contextlib import suppress
from contextvars import ContextVar, copy_context
from functools import partial
from typing import TYPE_CHECKING, Any, overload

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from pydantic.json_schema import GenerateJsonSchema
from pydantic_core import to_jsonable_python

from crewflow._caller import warn
from crewflow._logging import get_logger
from crewflow.exceptions import ConfigurationError, ToolError
from crewflow.llm._types import ToolSpec

if TYPE_CHECKING:
    from pydantic_core import CoreSchema

__all__ = ["MAX_ABANDONED", "Tool", "ToolExecutor", "tool"]

MAX_ABANDONED = 3
"""Abandoned calls of one sync tool that may be running at once; while that many are, further
calls of the tool fail at once with `ToolError`."""

_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_ARGS_HEADER = re.compile(r"^\s*(Args|Arguments|Parameters):\s*$")
_SECTION_HEADER = re.compile(r"^\s*[A-Z][A-Za-z ]*:\s*$")
_ARG_LINE = re.compile(r"^\s*(\*{0,2}\w+)\s*(\([^)]*\))?\s*:\s*(.*)$")


class ToolExecutor(ABC):
    """Where a tool made with ``@tool(executor=...)`` runs its calls, when not in this process.

    crewflow ships one: `crewflow.executors.RayExecutor`, which runs each call as a Ray task.
    """

    @abstractmethod
    async def call_tool(self, tool: Tool, args: list[Any], kwargs: dict[str, Any]) -> Any:
        """Call ``tool``'s function with ``args`` and ``kwargs`` (validated) and return what it
        returned; raise what it raised. Cancelling the call must stop the work it started."""


class Tool:
    """A function the model may call, with its JSON schema.

    Build one with the `tool` decorator rather than directly.

    Attributes:
        name: The name the model calls it by.
        description: What it does, from the docstring's first paragraph.
        parameters: The JSON schema of its arguments.
        idempotent: Calling it again with the same arguments is safe, even while an earlier
            call still runs (see `tool`).
        executor: Where its calls run (see `tool`), or ``None``: in this process.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        idempotent: bool = False,
        executor: ToolExecutor | None = None,
    ) -> None:
        if not callable(fn):
            raise ConfigurationError(
                f"{fn!r} is not a tool: decorate a function with @crewflow.tool"
            )
        if executor is not None and not isinstance(executor, ToolExecutor):
            raise ConfigurationError(
                f"@tool(executor=...) takes a crewflow.executors.RayExecutor, not "
                f"{type(executor).__name__} ({executor!r}); leave it out to run the tool in "
                "this process"
            )
        self.fn = fn
        self.executor = executor
        self.name = name or _default_name(fn)
        if not _NAME_RE.match(self.name):
            raise ConfigurationError(
                f"tool name {self.name!r} is invalid: use 1-64 letters, digits, '_' or '-' "
                "(give another with @tool(name=...))"
            )
        summary, arg_docs = _parse_docstring(_docstring(fn))
        self.description = description or summary or self.name
        self.is_async = inspect.iscoroutinefunction(_signature_owner(fn))
        self._args_model, self._params = _arguments_model(fn, self.name, arg_docs)
        schema = self._args_model.model_json_schema(schema_generator=_NoFieldTitles)
        schema.pop("title", None)
        self.parameters: dict[str, Any] = schema
        self.spec = ToolSpec(self.name, self.description, self.parameters)
        self.idempotent = idempotent
        self._abandoned = 0

    @property
    def abandoned(self) -> int:
        """Calls of this sync tool that were given up on (a timeout, a cancelled run) while their
        thread ran, and whose thread is still running.

        Counted across every run in the process that uses this tool, as the threads are.
        """
        return self._abandoned

    async def run(self, arguments: str | dict[str, Any]) -> str:
        """Validate ``arguments`` (JSON text or a dict), call the function, return its result
        as text (strings as they are, bytes decoded as UTF-8 with U+FFFD for what does not
        decode, anything else as JSON).

        A sync function runs in a daemon thread. If the caller is cancelled meanwhile (a task's
        timeout, a cancelled run), this returns at once and the thread is abandoned: it runs on
        until the function returns, a warning names the tool, and `abandoned` counts it.

        Raises:
            ToolError: The arguments do not match the schema, the function raised, its result
                cannot be turned into text, or it is a sync tool with `MAX_ABANDONED`
                abandoned calls still running.
        """
        try:
            raw = json.loads(arguments or "{}") if isinstance(arguments, str) else arguments
            if not isinstance(raw, dict):
                raise TypeError("arguments must be a JSON object")
            parsed = self._args_model.model_validate(raw)
        except (ValueError, TypeError) as exc:
            detail = _short_validation(exc)
            raise ToolError(
                f"invalid arguments for tool {self.name!r}: {detail}", tool=self.name
            ) from exc
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        for field, (param, positional) in self._params.items():
            value = getattr(parsed, field)
            if positional:
                args.append(value)
            else:
                kwargs[param] = value
        if not self.is_async and self.executor is None:
            self._refuse_when_hung()
        try:
            result = await self._call(args, kwargs)
        except Exception as exc:
            raise ToolError(
                f"tool {self.name!r} raised {type(exc).__name__}: {exc}", tool=self.name
            ) from exc
        try:
            return _to_text(result)
        except Exception as exc:
            raise ToolError(
                f"tool {self.name!r} returned a {type(result).__name__} that cannot be sent as "
                f"text ({type(exc).__name__}: {exc}); return a str, or a JSON-encodable value",
                tool=self.name,
            ) from exc

    async def _call(self, args: list[Any], kwargs: dict[str, Any]) -> Any:
        if self.executor is not None:
            return await self.executor.call_tool(self, args, kwargs)
        if self.is_async:
            return await self.fn(*args, **kwargs)
        import anyio.to_thread

        call = _ThreadCall(self, partial(self.fn, *args, **kwargs))
        try:
            # As many threads at once as anyio's own calls may use (the limit is per loop).
            async with anyio.to_thread.current_default_thread_limiter():
                return await _in_daemon_thread(call)
        finally:
            if call.leave():
                _report_abandoned(call)

    def _refuse_when_hung(self) -> None:
        running = self._abandoned
        if running >= MAX_ABANDONED:
            raise ToolError(
                f"tool {self.name!r} is not called: {running} earlier calls of it were given up "
                "on (timed out or cancelled) and their threads are still running; it is called "
                "again once one returns. Make the tool return: give its blocking I/O a timeout",
                tool=self.name,
            )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the wrapped function directly, as if undecorated."""
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"Tool(name={self.name!r})"


@overload
def tool(fn: Callable[..., Any], /) -> Tool: ...
@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    idempotent: bool = False,
    executor: ToolExecutor | None = None,
) -> Callable[[Callable[..., Any]], Tool]: ...
def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    idempotent: bool = False,
    executor: ToolExecutor | None = None,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Make a tool from a sync or async function.

    The JSON schema comes from the type hints; the description from the docstring's first
    paragraph, and each parameter's description from its ``Args:`` section.

    Example:
        ```python
        @tool
        async def search(query: str, limit: int = 5) -> str:
            \"\"\"Search the web.

            Args:
                query: What to look for.
                limit: How many results to return.
            \"\"\"
        ```

    Tools run at least once: a retried or resumed attempt may call a tool again. A sync tool's
    thread cannot be stopped, so when an attempt times out (or its run is cancelled) while one
    runs, the thread is abandoned and runs on; the attempt is then not retried while that
    thread is alive, unless the tool is ``idempotent``.

    Args:
        fn: The function (when used as ``@tool``).
        name: The name the model sees (default: the function's name).
        description: Overrides the docstring's summary.
        idempotent: Calling it again with the same arguments is safe, even while an earlier
            call still runs (a lookup, a read): an attempt that timed out during a call of it
            may be retried.
        executor: Run each call elsewhere: a `crewflow.executors.RayExecutor` runs it as a Ray
            task on a cluster's workers (for CPU- or tool-heavy work), while the agent loop
            stays in this process. The function travels by value and its arguments are the
            validated ones; its result or its raise comes back as a local call's would, and
            cancelling the call (a timeout, a cancelled run) cancels the Ray task. Anything
            else than a `ToolExecutor` is refused here.
    """

    def wrap(func: Callable[..., Any]) -> Tool:
        return Tool(
            func, name=name, description=description, idempotent=idempotent, executor=executor
        )

    return wrap(fn) if fn is not None else wrap


def as_tool(value: Tool | Callable[..., Any]) -> Tool:
    """Accept a `Tool` or a plain function (wrapped as if decorated)."""
    if isinstance(value, Tool):
        return value
    return Tool(value)


class AbandonedCalls:
    """The sync tool calls abandoned inside one `watch_abandoned` block.

    Args:
        log: The logger that warns of each abandoned call (default: crewflow's).
        context: Bound to ``log`` for those warnings (run, task, attempt), only when one is
            given: most attempts abandon nothing.
    """

    __slots__ = ("_calls", "_log", "context")

    def __init__(self, log: Any = None, **context: Any) -> None:
        self._log = log
        self.context = context
        self._calls: list[_ThreadCall] = []

    @property
    def log(self) -> Any:
        """The logger for this block's warnings, with its context bound."""
        log = self._log if self._log is not None else get_logger()
        return log.bind(**self.context) if self.context else log

    def running(self) -> tuple[Tool, ...]:
        """The tools with a call abandoned here whose thread is still running, once each."""
        return tuple(dict.fromkeys(call.tool for call in self._calls if call.alive))


_watch: ContextVar[AbandonedCalls | None] = ContextVar("crewflow_abandoned_calls", default=None)


class watch_abandoned:  # lower case: used as a function is, `with watch_abandoned(...) as calls`
    """Collect the sync tool calls abandoned in this block (and the tasks it starts).

    Args:
        log: A logger to warn through (default: crewflow's).
        context: What to bind to it in a warning (run, task, attempt).
    """

    __slots__ = ("_token", "calls")

    def __init__(self, log: Any = None, **context: Any) -> None:
        self.calls = AbandonedCalls(log, **context)

    def __enter__(self) -> AbandonedCalls:
        self._token = _watch.set(self.calls)
        return self.calls

    def __exit__(self, *exc: object) -> None:
        _watch.reset(self._token)


# Guards each call's state and each tool's count: worker threads and the loop both change them.
# A condition, notified when an abandoned thread returns, so that waiting for it needs no polling.
_lock = threading.Condition()


class _ThreadCall:
    """One call of a sync tool in a worker thread, as the thread and its waiter see it."""

    __slots__ = ("abandoned", "function", "returned", "started", "tool")

    def __init__(self, tool: Tool, function: Callable[[], Any]) -> None:
        self.tool = tool
        self.function = function
        self.started = False
        self.returned = False
        self.abandoned = False

    @property
    def alive(self) -> bool:
        """Abandoned while its thread ran, and the thread still runs."""
        return self.abandoned and self.started and not self.returned

    def body(self) -> Any:
        """Run the function (in the worker thread), unless the waiter left before it began."""
        with _lock:
            if self.abandoned:
                return None
            self.started = True
        try:
            return self.function()
        finally:
            with _lock:
                self.returned = True
                if self.abandoned:
                    self.tool._abandoned -= 1
                    _lock.notify_all()

    def leave(self) -> bool:
        """The waiter is done (on the loop): whether it left the thread running."""
        with _lock:
            if self.returned:
                return False
            self.abandoned = True
            if not self.started:
                return False
            self.tool._abandoned += 1
            return True


async def _in_daemon_thread(call: _ThreadCall) -> Any:
    """Run ``call`` in a thread of its own and wait for it; cancelling the wait abandons it.

    Not anyio's worker threads: the interpreter waits for those at exit, so one hung tool would
    keep ``python crew.py`` and ``crewflow run`` from ever exiting. A daemon thread dies with
    the process. Starting one costs tens of microseconds, next to a tool call's own I/O.
    """
    import asyncio

    loop = asyncio.get_running_loop()
    done: asyncio.Future[Any] = loop.create_future()
    context = copy_context()  # the caller's context variables, as anyio's threads get them

    def settle(result: Any, error: BaseException | None) -> None:
        if done.done():  # the wait was cancelled: the call was abandoned
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)

    def work() -> None:
        result: Any = None
        error: BaseException | None = None
        try:
            result = context.run(call.body)
        except StopIteration as exc:  # a future cannot hold StopIteration
            error = RuntimeError("the tool raised StopIteration")
            error.__cause__ = exc
        except BaseException as exc:  # handed to the waiter, which raises it
            error = exc
        with suppress(RuntimeError):  # the loop has closed: nobody waits any more
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=work, name=f"crewflow tool {call.tool.name}", daemon=True).start()
    return await done


def _report_abandoned(call: _ThreadCall) -> None:
    watch = _watch.get()
    if watch is not None:
        watch._calls.append(call)
    log = watch.log if watch is not None else get_logger()
    tool = call.tool
    log.warning(
        "tool call abandoned: its thread cannot be stopped and runs on until the tool returns",
        tool=tool.name,
        running=tool.abandoned,
        limit=MAX_ABANDONED,
        idempotent=tool.idempotent,
    )


class _NoFieldTitles(GenerateJsonSchema):
    """Leaves out the per-field ``title`` pydantic derives from the name: the model already sees
    the name, and every token of a tool schema is paid for on every call."""

    def field_title_should_be_set(self, schema: CoreSchema) -> bool:
        return False


def _default_name(fn: Callable[..., Any]) -> str:
    target = _unwrap_partial(fn)
    name = getattr(target, "__name__", None)
    return name if isinstance(name, str) else type(target).__name__


def _unwrap_partial(fn: Callable[..., Any]) -> Callable[..., Any]:
    while isinstance(fn, partial):
        fn = fn.func
    return fn


def _signature_owner(fn: Callable[..., Any]) -> Callable[..., Any]:
    """What holds the annotations of ``fn``: itself, a partial's function, or the ``__call__``
    of a callable object."""
    target = _unwrap_partial(fn)
    if inspect.isroutine(target) or inspect.isclass(target):
        return target
    call: Callable[..., Any] = type(target).__call__
    return call


def _docstring(fn: Callable[..., Any]) -> str:
    target = _unwrap_partial(fn)
    doc = inspect.getdoc(target)
    if not doc and not inspect.isroutine(target):
        doc = inspect.getdoc(_signature_owner(fn))
    return doc or ""


def _arguments_model(
    fn: Callable[..., Any], tool_name: str, arg_docs: dict[str, str]
) -> tuple[type[BaseModel], dict[str, tuple[str, bool]]]:
    """The pydantic model of ``fn``'s arguments, and for each of its fields the parameter it
    fills and whether that parameter is positional-only.

    Fields get neutral names with the parameter's name as alias, so parameters named like
    BaseModel attributes (``json``, ``copy``, ``schema``) or starting with ``_`` work too.
    """
    try:
        hints = inspect.get_annotations(_signature_owner(fn), eval_str=True)
        signature = inspect.signature(fn)
    except Exception as exc:
        raise ConfigurationError(f"cannot read the signature of tool {tool_name!r}: {exc}") from exc
    fields: dict[str, Any] = {}
    params: dict[str, tuple[str, bool]] = {}
    for index, param in enumerate(signature.parameters.values()):
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ConfigurationError(
                f"tool {tool_name!r}: *{'*' if param.kind == param.VAR_KEYWORD else ''}"
                f"{param.name} cannot be described to a model; declare each parameter"
            )
        if param.name not in hints:
            warn(
                f"tool {tool_name!r}: parameter {param.name!r} has no type hint, so the model is "
                f"told nothing of what to pass; annotate it (e.g. {param.name}: str)"
            )
        annotation = hints.get(param.name, Any)
        default = ... if param.default is param.empty else param.default
        field = f"arg_{index}"
        fields[field] = (
            annotation,
            Field(default, alias=param.name, description=arg_docs.get(param.name)),
        )
        params[field] = (param.name, param.kind == param.POSITIONAL_ONLY)
    model_name = "".join(part.capitalize() for part in re.split(r"[_-]", tool_name)) + "Args"
    try:
        model: type[BaseModel] = create_model(
            model_name, __config__=ConfigDict(extra="forbid"), **fields
        )
    except Exception as exc:
        raise ConfigurationError(
            f"tool {tool_name!r} has parameter types pydantic cannot describe: {exc}"
        ) from exc
    return model, params


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """Split a Google-style docstring into its summary paragraph and per-argument docs."""
    lines = doc.splitlines()
    summary_lines: list[str] = []
    for line in lines:
        if not line.strip() or _SECTION_HEADER.match(line):
            break
        summary_lines.append(line.strip())
    args: dict[str, str] = {}
    in_args = False
    current: str | None = None
    current_indent = 0
    for line in lines:
        if _ARGS_HEADER.match(line):
            in_args = True
            continue
        if not in_args:
            continue
        if _SECTION_HEADER.match(line) or (line and not line[0].isspace()):
            break
        match = _ARG_LINE.match(line)
        indent = len(line) - len(line.lstrip())
        if match and (current is None or indent <= current_indent):
            current, current_indent = match.group(1).lstrip("*"), indent
            args[current] = match.group(3).strip()
        elif current and line.strip():
            args[current] = f"{args[current]} {line.strip()}".strip()
    return " ".join(summary_lines), args


def _short_validation(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'arguments'}: {err['msg']}"
            for err in exc.errors()
        )
    return str(exc)


def _to_text(result: Any) -> str:
    if isinstance(result, str):
        return result
    if isinstance(result, bytes | bytearray | memoryview):
        # Bytes are most often text read from a file or a socket: keep what decodes, and mark
        # what does not with U+FFFD rather than fail the call.
        return bytes(result).decode("utf-8", errors="replace")
    if isinstance(result, BaseModel):
        return result.model_dump_json()
    # pydantic's encoder handles models, dataclasses, dates, sets... nested anywhere.
    return json.dumps(to_jsonable_python(result, fallback=str), ensure_ascii=False)


ToolFunction = Callable[..., Any] | Callable[..., Awaitable[Any]]
