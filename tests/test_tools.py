"""Tests for `crewflow.tools`: schemas from signatures and docstrings, validation, calling.

No ``from __future__ import annotations`` here: tools defined inside tests use local names.
"""

import dataclasses
import datetime as dt
import json
import re
import threading
from functools import partial
from typing import Any, Literal, Optional

import anyio
import pytest
from pydantic import BaseModel

from crewflow import CrewflowWarning, Tool, tool
from crewflow.exceptions import ConfigurationError, ToolError
from crewflow.tools import MAX_ABANDONED, as_tool
from tests.held import Held, captured_logs


class Filter(BaseModel):
    field: str
    op: Literal["eq", "ne"] = "eq"


@dataclasses.dataclass
class Point:
    x: int
    y: int


def search(query: str, limit: int = 5, kind: Literal["web", "news"] = "web") -> str:
    """Search the web for QUERY.

    Results come back newest first.

    Args:
        query (str): What to look for,
            in plain words.
        limit: How many results to return.
        kind: Which index to search.

    Returns:
        The results, one per line.
    """
    return f"{query}|{limit}|{kind}"


# --- schema ---------------------------------------------------------------------------------


def test_description_is_the_docstrings_first_paragraph() -> None:
    assert tool(search).description == "Search the web for QUERY."


def test_each_parameter_gets_its_description_from_the_args_section() -> None:
    properties = tool(search).parameters["properties"]

    assert properties["query"]["description"] == "What to look for, in plain words."
    assert properties["limit"]["description"] == "How many results to return."
    assert properties["kind"]["description"] == "Which index to search."


def test_parameters_without_defaults_are_required_and_defaults_are_in_the_schema() -> None:
    parameters = tool(search).parameters

    assert parameters["required"] == ["query"]
    assert parameters["properties"]["limit"]["default"] == 5
    assert parameters["properties"]["limit"]["type"] == "integer"


def test_literal_parameters_become_enums() -> None:
    assert tool(search).parameters["properties"]["kind"]["enum"] == ["web", "news"]


def test_optional_list_and_model_parameters_are_described() -> None:
    def find(ids: list[int], note: Optional[str] = None, where: Filter | None = None) -> str:  # noqa: UP045 - Optional is what we test
        """Find things."""
        return ""

    parameters = tool(find).parameters
    properties = parameters["properties"]

    assert properties["ids"] == {"items": {"type": "integer"}, "type": "array"}
    assert {"type": "null"} in properties["note"]["anyOf"]
    assert {"type": "string"} in properties["note"]["anyOf"]
    assert parameters["required"] == ["ids"]
    assert {"$ref": "#/$defs/Filter"} in properties["where"]["anyOf"]
    assert parameters["$defs"]["Filter"]["properties"]["op"]["enum"] == ["eq", "ne"]


def test_schema_leaves_out_titles_that_repeat_the_names() -> None:
    parameters = tool(search).parameters

    assert "title" not in parameters
    assert all("title" not in prop for prop in parameters["properties"].values())


def test_unknown_arguments_are_forbidden_in_the_schema() -> None:
    assert tool(search).parameters["additionalProperties"] is False


def test_the_spec_offered_to_the_model_carries_name_description_and_schema() -> None:
    search_tool = tool(search)

    assert search_tool.spec.name == "search"
    assert search_tool.spec.description == search_tool.description
    assert search_tool.spec.parameters == search_tool.parameters


def test_nested_lines_with_colons_continue_a_parameters_description() -> None:
    def pick(mode: str, note: str = "") -> str:
        """Pick a mode.

        Args:
            mode: One of:
                fast: quick and rough,
                slow: careful.

            note: Free text.

        Raises:
            ValueError: never documented as a parameter.
        """
        return mode

    properties = tool(pick).parameters["properties"]

    assert properties["mode"]["description"] == "One of: fast: quick and rough, slow: careful."
    assert properties["note"]["description"] == "Free text."
    assert set(properties) == {"mode", "note"}


def test_undocumented_parameters_have_no_description() -> None:
    def lookup(key: str, strict: bool = False) -> str:
        """Look KEY up.

        Args:
            key: The key.
        """
        return key

    assert "description" not in tool(lookup).parameters["properties"]["strict"]


def test_a_function_without_a_docstring_is_described_by_its_name() -> None:
    def lookup(key: str) -> str:
        return key

    assert tool(lookup).description == "lookup"


def test_unannotated_parameters_accept_anything() -> None:
    def echo(value):  # type: ignore[no-untyped-def]
        return value

    with pytest.warns(CrewflowWarning, match="parameter 'value' has no type hint"):
        made = tool(echo)

    assert made.parameters["properties"]["value"] == {}


def test_parameters_named_like_pydantic_attributes_or_private_names_work() -> None:
    def fetch(json: str, schema: int, _hint: str = "") -> str:
        """Fetch."""
        return f"{json}/{schema}/{_hint}"

    fetch_tool = tool(fetch)

    assert set(fetch_tool.parameters["properties"]) == {"json", "schema", "_hint"}
    assert anyio.run(fetch_tool.run, {"json": "j", "schema": 2, "_hint": "h"}) == "j/2/h"


# --- names and decorator forms ----------------------------------------------------------------


def test_decorator_with_arguments_sets_name_and_description() -> None:
    @tool(name="web-search", description="Look things up.")
    def anything(query: str) -> str:
        """Ignored summary."""
        return query

    assert isinstance(anything, Tool)
    assert anything.name == "web-search"
    assert anything.description == "Look things up."


@pytest.mark.parametrize("name", ["has space", "?", "ä", "x" * 65, "semi;colon"])
def test_invalid_tool_names_are_rejected(name: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(f"tool name {name!r} is invalid")):
        Tool(search, name=name)


def test_a_lambda_needs_a_name() -> None:
    with pytest.raises(ConfigurationError, match=r"'<lambda>' is invalid.*name="):
        tool(lambda x: x)


def test_star_args_are_rejected_with_a_clear_error() -> None:
    def spread(*items: str) -> str:
        return ""

    with pytest.raises(ConfigurationError, match=r"\*items cannot be described.*declare each"):
        tool(spread)


def test_star_star_kwargs_are_rejected_with_a_clear_error() -> None:
    def options(**settings: str) -> str:
        return ""

    with pytest.raises(ConfigurationError, match=r"\*\*settings cannot be described"):
        tool(options)


def test_parameter_types_pydantic_cannot_describe_are_a_configuration_error() -> None:
    class Opaque:
        pass

    def use(thing: Opaque) -> str:
        return ""

    with pytest.raises(ConfigurationError, match="'use' has parameter types"):
        tool(use)


def test_unresolvable_annotations_are_a_configuration_error() -> None:
    def broken(value: "NotDefinedAnywhere") -> str:  # type: ignore[name-defined]  # noqa: F821
        return ""

    with pytest.raises(ConfigurationError, match="cannot read the signature of tool 'broken'"):
        tool(broken)


def test_something_not_callable_is_not_a_tool() -> None:
    with pytest.raises(ConfigurationError, match="is not a tool"):
        tool("search")  # type: ignore[call-overload]


def test_as_tool_wraps_functions_and_passes_tools_through() -> None:
    made = tool(search)

    assert as_tool(made) is made
    assert as_tool(search).name == "search"


def test_a_partial_is_named_and_described_after_its_function() -> None:
    bound = tool(partial(search, limit=2))

    assert bound.name == "search"
    assert bound.description == "Search the web for QUERY."
    assert anyio.run(bound.run, {"query": "q"}) == "q|2|web"


def test_a_callable_object_with_an_async_call_is_awaited() -> None:
    class Lookup:
        """Look a key up."""

        async def __call__(self, key: str) -> str:
            return key.upper()

    lookup = tool(Lookup())

    assert lookup.name == "Lookup"
    assert lookup.is_async
    assert lookup.description == "Look a key up."
    assert anyio.run(lookup.run, {"key": "k"}) == "K"


def test_a_callable_object_without_a_class_docstring_uses_its_calls_docstring() -> None:
    class Counter:
        def __call__(self, step: int = 1) -> int:
            """Count up by STEP."""
            return step

    counter = tool(Counter(), name="count")

    assert counter.description == "Count up by STEP."
    assert not counter.is_async
    assert counter.parameters["properties"]["step"]["default"] == 1


def test_repr_names_the_tool() -> None:
    assert repr(tool(search)) == "Tool(name='search')"


# --- running ----------------------------------------------------------------------------------


def test_calling_the_tool_object_calls_the_function_directly() -> None:
    assert tool(search)("direct", limit=1) == "direct|1|web"


async def test_run_accepts_json_text_and_fills_defaults() -> None:
    assert await tool(search).run('{"query": "cats"}') == "cats|5|web"


async def test_run_coerces_arguments_to_the_annotated_types() -> None:
    seen: list[Any] = []

    @tool
    def record(count: int, when: dt.date, where: Filter) -> str:
        seen.extend([count, when, where])
        return "ok"

    await record.run({"count": "3", "when": "2024-05-01", "where": {"field": "a"}})

    assert seen == [3, dt.date(2024, 5, 1), Filter(field="a")]


async def test_empty_arguments_mean_no_arguments() -> None:
    @tool
    def ping() -> str:
        return "pong"

    assert await ping.run("") == "pong"


@pytest.mark.parametrize(
    ("arguments", "detail"),
    [
        ('{"query": ', "invalid arguments for tool 'search'"),
        ("[1, 2]", "must be a JSON object"),
        ('{"limit": 2}', "query: Field required"),
        ('{"query": "q", "limit": "many"}', "limit: Input should be a valid integer"),
        ('{"query": "q", "kind": "books"}', "kind: Input should be 'web' or 'news'"),
        ('{"query": "q", "page": 2}', "page: Extra inputs are not permitted"),
    ],
)
async def test_invalid_arguments_raise_a_tool_error_naming_the_problem(
    arguments: str, detail: str
) -> None:
    with pytest.raises(ToolError, match="invalid arguments for tool 'search'") as caught:
        await tool(search).run(arguments)

    assert detail in str(caught.value)
    assert caught.value.tool == "search"


async def test_an_exception_in_the_function_becomes_a_tool_error_with_its_cause() -> None:
    @tool
    async def fail(reason: str) -> str:
        raise RuntimeError(reason)

    with pytest.raises(ToolError, match="tool 'fail' raised RuntimeError: disk full") as caught:
        await fail.run({"reason": "disk full"})

    assert isinstance(caught.value.__cause__, RuntimeError)


async def test_sync_tools_run_in_a_worker_thread() -> None:
    threads: list[threading.Thread] = []

    @tool
    def where() -> str:
        threads.append(threading.current_thread())
        return "here"

    assert await where.run({}) == "here"
    assert threads[0] is not threading.current_thread()


async def test_async_tools_run_in_the_event_loops_thread() -> None:
    threads: list[threading.Thread] = []

    @tool
    async def where() -> str:
        threads.append(threading.current_thread())
        return "here"

    await where.run({})

    assert threads == [threading.current_thread()]


# --- sync tools whose caller gives up ---------------------------------------------------------


async def call_and_give_up(held: Held, calls: int) -> None:
    """Call the tool, and cancel the call once ``calls`` calls are inside it."""
    async with anyio.create_task_group() as group:
        group.start_soon(held.tool.run, {"url": "u"})
        await held.wait_started(calls)
        group.cancel_scope.cancel()


async def test_a_cancelled_call_of_a_sync_tool_returns_at_once_and_abandons_its_thread() -> None:
    held = Held()
    try:
        await call_and_give_up(held, 1)

        assert held.returned == 0  # the caller is back while the thread still blocks
        assert held.tool.abandoned == 1
    finally:
        held.settle()
    assert held.tool.abandoned == 0  # it counts threads still running


async def test_an_abandoned_call_warns_naming_the_tool() -> None:
    held = Held("slow_lookup")
    try:
        with captured_logs() as logs:
            await call_and_give_up(held, 1)
    finally:
        held.settle()

    (warning,) = logs
    assert (warning["log_level"], warning["tool"], warning["running"]) == (
        "warning",
        "slow_lookup",
        1,
    )
    assert "abandoned" in warning["event"]


async def test_with_three_abandoned_calls_running_the_next_call_fails_at_once() -> None:
    held = Held("stuck")
    try:
        for calls in range(1, MAX_ABANDONED + 1):
            await call_and_give_up(held, calls)
        assert held.tool.abandoned == MAX_ABANDONED

        with pytest.raises(ToolError, match="tool 'stuck' is not called: 3 earlier") as caught:
            await held.tool.run({"url": "u"})

        assert caught.value.tool == "stuck"
        assert held.started == MAX_ABANDONED  # the refused call never reached the function
    finally:
        held.settle()
    # Once the threads returned, the tool is called again.
    assert await held.tool.run({"url": "u"}) == "the page at u"


async def test_a_call_that_returned_is_not_counted_as_abandoned() -> None:
    held = Held()
    held.release.set()

    assert await held.tool.run({"url": "u"}) == "the page at u"

    assert held.tool.abandoned == 0
    held.settle()


def test_tools_are_not_idempotent_unless_marked() -> None:
    def lookup(key: str) -> str:
        return key

    assert tool(lookup).idempotent is False
    assert tool(idempotent=True)(lookup).idempotent is True
    assert Tool(lookup, idempotent=True).idempotent is True


async def test_positional_only_parameters_are_passed_by_position() -> None:
    @tool
    def power(base: int, exponent: int = 2, /) -> int:
        return int(base**exponent)

    assert await power.run({"base": 3}) == "9"
    assert await power.run({"base": 2, "exponent": 5}) == "32"


@pytest.mark.parametrize(
    ("result", "text"),
    [
        ({"a": 1, "b": [1, 2]}, {"a": 1, "b": [1, 2]}),
        ([Filter(field="x")], [{"field": "x", "op": "eq"}]),
        (Point(1, 2), {"x": 1, "y": 2}),
        (None, None),
        (3.5, 3.5),
        (dt.date(2024, 1, 2), "2024-01-02"),
    ],
)
async def test_non_string_results_become_json_text(result: Any, text: Any) -> None:
    @tool
    def produce() -> Any:
        return result

    assert json.loads(await produce.run({})) == text


async def test_a_model_result_is_its_json() -> None:
    @tool
    def make() -> Filter:
        return Filter(field="é")

    assert json.loads(await make.run({})) == {"field": "é", "op": "eq"}


async def test_string_results_are_returned_as_they_are() -> None:
    @tool
    def say() -> str:
        return '{"not": "parsed"}  '

    assert await say.run({}) == '{"not": "parsed"}  '


async def test_results_json_cannot_encode_fall_back_to_their_str() -> None:
    class Thing:
        def __str__(self) -> str:
            return "a thing"

    @tool
    def make() -> Any:
        return {"thing": Thing()}

    assert json.loads(await make.run({})) == {"thing": "a thing"}


@pytest.mark.parametrize("result", [b"caf\xc3\xa9 \xff\xfe", bytearray(b"caf\xc3\xa9 \xff\xfe")])
async def test_bytes_results_are_decoded_as_utf8_with_replacement_characters(result: Any) -> None:
    @tool
    def read() -> Any:
        return result

    assert await read.run({}) == "café \ufffd\ufffd"


async def test_a_result_that_cannot_become_text_is_a_tool_error_naming_the_tool() -> None:
    loop: dict[str, Any] = {}
    loop["self"] = loop

    @tool
    def tangle() -> Any:
        return loop

    with pytest.raises(ToolError, match="tool 'tangle' returned a dict that cannot be sent"):
        await tangle.run({})


async def test_nested_bytes_that_are_not_utf8_are_a_tool_error() -> None:
    @tool
    def blob() -> Any:
        return {"data": b"\xff\xfe"}

    with pytest.raises(ToolError, match="UnicodeDecodeError") as caught:
        await blob.run({})

    assert caught.value.tool == "blob"


def test_a_parameter_without_a_type_hint_warns_naming_the_tool_and_the_parameter() -> None:
    def lookup(query, limit: int = 3) -> str:  # type: ignore[no-untyped-def]
        """Look things up."""
        return f"{query} {limit}"

    with pytest.warns(
        CrewflowWarning, match="tool 'lookup': parameter 'query' has no type"
    ) as seen:
        made = tool(lookup)

    assert len(seen) == 1  # `limit` is typed
    assert seen[0].filename == __file__  # it points at the user's line, not at crewflow
    assert made.parameters["properties"]["query"] == {}  # what the model is told: nothing


def test_typed_parameters_warn_nothing() -> None:
    import warnings

    def lookup(query: str) -> str:
        """Look things up."""
        return query

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tool(lookup)


async def test_a_sync_tool_runs_in_a_daemon_thread_with_the_callers_context_variables() -> None:
    # A daemon thread: one that never returns cannot keep the process from exiting.
    from contextvars import ContextVar

    request: ContextVar[str] = ContextVar("request", default="none")
    seen: list[tuple[str, bool, bool]] = []

    @tool
    def lookup(query: str) -> str:
        """Look something up."""
        thread = threading.current_thread()
        seen.append((request.get(), thread.daemon, thread is threading.main_thread()))
        return query

    request.set("r-1")
    assert await lookup.run({"query": "q"}) == "q"

    assert seen == [("r-1", True, False)]


async def test_a_sync_tool_raising_stopiteration_is_a_tool_error() -> None:
    @tool
    def drained(query: str) -> str:
        """Read the next item."""
        return next(iter(()))

    with pytest.raises(ToolError, match="tool 'drained' raised RuntimeError: the tool raised Sto"):
        await drained.run({"query": "q"})


@pytest.mark.parametrize("executor", ["ray", object(), True])
def test_an_executor_that_is_not_one_is_refused_when_decorating(executor: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"executor=.*takes a crewflow.executors.Ray"):
        tool(executor=executor)(lambda_free)


def lambda_free(x: int) -> int:
    """Return X."""
    return x
