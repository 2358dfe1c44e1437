"""Bad input, at random: agent files, templates, task graphs, CLI arguments and model replies.

Whatever comes in, the outcome is a success or one of crewflow's own errors: a
`ConfigurationError` for specs and inputs, a `CrewRunError` for what a model replies, and on the
command line an exit status of 0, 1 or 2 with no traceback. Text holds anything: unicode, NUL,
lone surrogates, megabytes.
"""

from __future__ import annotations

import json
import os
import uuid
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from typer.testing import CliRunner

from crewflow import Agent, Crew, Task, cli
from crewflow.exceptions import (
    ConfigurationError,
    CredentialsError,
    CrewflowWarning,
    CrewRunError,
)
from crewflow.llm import OpenAIChat
from crewflow.store import MemoryStore, SQLiteStore
from crewflow.testing import (
    Disconnect,
    Error,
    FakeClock,
    FunctionLLM,
    Malformed,
    OpenAIServer,
    Text,
    ToolCall,
    ToolCalls,
    use_clock,
)
from tests import canary

if TYPE_CHECKING:
    from collections.abc import Iterator

    from crewflow import CrewResult
    from crewflow.llm import LLMRequest

# CREWFLOW_FUZZ_EXAMPLES=500 for a longer hunt; the default keeps the file a few seconds long.
FUZZ = settings(
    max_examples=int(os.environ.get("CREWFLOW_FUZZ_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Any code point, lone surrogates included (hypothesis leaves them out unless told).
ANY_CHAR = st.characters(exclude_categories=[])
TEXT = st.text(ANY_CHAR, max_size=40) | st.sampled_from(
    ["", "\x00", "\ud800", "{", "}", "{x}", "{{x}}", "{0}", "{x!r}", "{x:>{y}}", "\udfff{a}\x00"]
)
HUGE = st.sampled_from(["x" * 2_000_000, "\ud800\x00é" * 300_000, "{" * 100_000, "[" * 100_000])
JSON_SCALAR = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT | HUGE
JSON = st.recursive(
    JSON_SCALAR,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
)
ANY_VALUE = JSON | st.floats() | st.binary(max_size=20) | st.sets(st.integers(), max_size=2)
# YAML is written and read in pure Python: a file's values stay under a megabyte.
FILE_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | TEXT | st.just("x" * 200_000),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
)


def llm_saying(text: str) -> FunctionLLM:
    return FunctionLLM(lambda _: text)


def settled(run: Any) -> Any:
    """What ``run()`` gave: its value or a crewflow error; anything else fails the test. (A
    `CrewflowWarning` is a likely mistake that still runs: it is not an outcome.)"""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CrewflowWarning)
            return run()  # type: ignore[no-any-return]
    except (ConfigurationError, CrewRunError) as error:
        return error


# -- agent files -------------------------------------------------------------------------------

AGENT_FIELDS = st.dictionaries(
    st.sampled_from(
        ["role", "goal", "backstory", "llm", "max_iterations", "tools", "output_retries"]
    )
    | TEXT,
    FILE_VALUE,
    max_size=5,
)


@FUZZ
@given(
    document=st.one_of(
        AGENT_FIELDS.map(lambda fields: yaml.safe_dump(fields, allow_unicode=False).encode()),
        st.binary(max_size=200),
        TEXT.map(lambda text: text.encode("utf-8", "surrogatepass")),
    )
)
def test_any_agent_file_loads_or_raises_a_configuration_error(
    tmp_path: Path, document: bytes
) -> None:
    path = tmp_path / "agent.yaml"
    path.write_bytes(document)

    outcome = settled(lambda: Agent.from_yaml(path))

    assert isinstance(outcome, Agent | ConfigurationError), outcome


@FUZZ
@given(name=TEXT)
def test_any_catalogue_name_loads_or_raises_a_configuration_error(name: str) -> None:
    outcome = settled(lambda: Agent.from_yaml(name))

    assert isinstance(outcome, Agent | ConfigurationError), outcome


# -- templates and inputs ----------------------------------------------------------------------


@FUZZ
@given(
    description=TEXT | HUGE,
    expected=st.none() | TEXT,
    inputs=st.none() | st.dictionaries(TEXT, ANY_VALUE, max_size=3),
)
def test_any_template_and_inputs_run_or_raise_a_configuration_error(
    description: str, expected: str | None, inputs: dict[str, Any] | None
) -> None:
    agent = Agent(role="R", goal="G", llm=llm_saying("done"))

    def run() -> CrewResult:
        task = Task(description, expected_output=expected, agent=agent)
        return Crew(tasks=[task], store=MemoryStore()).kickoff_sync(inputs)

    outcome = settled(run)
    assert not isinstance(outcome, CrewRunError), outcome


# -- task graphs -------------------------------------------------------------------------------

GRAPHS = st.integers(1, 5).flatmap(
    lambda size: st.tuples(
        st.lists(st.none() | TEXT, min_size=size, max_size=size),
        st.lists(
            st.none() | st.lists(st.integers(-1, size), max_size=3), min_size=size, max_size=size
        ),
        st.sampled_from(["sequential", "parallel", "adaptive", "hierarchical", "nonsense"]),
    )
)


@FUZZ
@given(graph=GRAPHS)
def test_any_task_graph_runs_or_raises_a_configuration_error(
    graph: tuple[list[str | None], list[list[int] | None], str],
) -> None:
    names, contexts, process = graph
    agent = Agent(role="R", goal="G", llm=llm_saying("done"))
    stranger = Task("Not in the crew", agent=agent)

    def run() -> CrewResult:
        tasks: list[Task] = []
        for index, (name, context) in enumerate(zip(names, contexts, strict=True)):
            # -1 is a task outside the crew; the others point back at earlier tasks.
            refs = None
            if context is not None:
                refs = [stranger if i < 0 or not tasks else tasks[i % len(tasks)] for i in context]
            tasks.append(Task(f"Step {index}", agent=agent, name=name, context=refs))
        return Crew(tasks=tasks, process=process, store=MemoryStore()).kickoff_sync()

    outcome = settled(run)
    assert not isinstance(outcome, CrewRunError), outcome


# -- the command line --------------------------------------------------------------------------

OFFLINE_CREW = str(Path(__file__).parent / "cli_crews" / "offline_crew.py")
ARGUMENT = TEXT | st.sampled_from(
    ["--json", "--full", "--prompts", "--limit", "-n", "0", "-1", "99999999999999999999",
     "--force", "--rerun", "--crew", "--model", "-m", "offline", "nonsense/model", "--help",
     "--", "-", ".", "/", "--db", "runs.db", "--file", OFFLINE_CREW, "-i", "--input",
     "topic=tides", "topic", "=", "topic=[1, {}]", "topic=NaN", "topic=\ud800", "--format",
     "dot", "json", "-o"]
)  # fmt: skip
COMMANDS = st.sampled_from(
    [["run", OFFLINE_CREW], ["run"], ["show", "{run}"], ["show"], ["resume", "{run}"],
     ["resume"], ["runs"], ["report", "{run}"], ["optimize"], ["graph", OFFLINE_CREW]]
)  # fmt: skip


@pytest.fixture
def recorded_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The id of an offline run recorded in this test's home, for commands to be given; the
    test runs in its own directory (``crewflow report`` writes there) and opens no browser."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("webbrowser.open", lambda *args, **kwargs: True)
    result = CliRunner().invoke(cli.app, ["run", OFFLINE_CREW, "-i", "topic=tides", "--json"])
    assert result.exit_code == 0, result.output
    return str(json.loads(result.output)["run_id"])


@FUZZ
@given(
    command=COMMANDS,
    arguments=st.lists(ARGUMENT, max_size=4),
    width=st.sampled_from(["60", "80", "120"]),
)
def test_any_cli_arguments_exit_0_1_or_2_without_a_traceback(
    recorded_run: str, command: list[str], arguments: list[str], width: str
) -> None:
    given = [part.replace("{run}", recorded_run) for part in command] + arguments

    result = CliRunner().invoke(cli.app, given, env={"COLUMNS": width})

    assert result.exit_code in (0, 1, 2), (result.exit_code, result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert "Traceback" not in result.output


# -- model replies -----------------------------------------------------------------------------


class Verdict(BaseModel):
    score: int
    reason: str


REPLIES = st.one_of(
    TEXT,
    HUGE,
    JSON.map(lambda value: json.dumps(value, ensure_ascii=False)),
    st.builds(lambda score, reason: json.dumps({"score": score, "reason": reason}),
              JSON_SCALAR, TEXT),
    st.builds(
        lambda name, arguments: ToolCalls([ToolCall(name, arguments)]),
        st.sampled_from(["lookup", "nothing"]) | TEXT,
        st.dictionaries(TEXT, JSON, max_size=2),
    ),
)  # fmt: skip


def lookup(term: str) -> str:
    """Look a term up.

    Args:
        term: What to look up.
    """
    return f"about {term}"


@FUZZ
@given(replies=st.lists(REPLIES, min_size=1, max_size=3), structured=st.booleans())
def test_any_model_reply_succeeds_or_raises_a_run_error_and_the_store_stays_usable(
    tmp_path: Path, replies: list[Any], structured: bool
) -> None:
    answered: list[LLMRequest] = []

    def reply(request: LLMRequest) -> Any:
        answered.append(request)
        return replies[min(len(answered), len(replies)) - 1]

    store = SQLiteStore(tmp_path / "runs.db")
    agent = Agent(role="R", goal="G", llm=FunctionLLM(reply), tools=[lookup], max_iterations=3)
    first = Task(
        "Judge it", agent=agent, output_model=Verdict if structured else None, name="a", context=[]
    )
    second = Task(
        "Then this", agent=Agent(role="W", goal="G", llm=llm_saying("ok")), name="b", context=[]
    )
    crew = Crew(tasks=[first, second], process="parallel", store=store, on_failure="continue")

    outcome = settled(crew.kickoff_sync)

    assert not isinstance(outcome, ConfigurationError), outcome
    if isinstance(outcome, CrewRunError):
        assert "b" in outcome.outputs  # the other task's output is never lost
    # The store is usable afterwards, and the run is recorded as finished either way.
    again = Crew(tasks=[Task("Once more", agent=Agent(role="W", goal="G", llm=llm_saying("ok")))],
                 store=store).kickoff_sync()  # fmt: skip
    assert again.output.text == "ok"


@pytest.mark.parametrize("text", ["\ud800", "\x00", "\udfff\x00\ud83d", "é\ud800" * 100_000])
def test_a_reply_no_database_can_hold_comes_back_repaired(tmp_path: Path, text: str) -> None:
    agent = Agent(role="R", goal="G", llm=llm_saying(text))
    crew = Crew(tasks=[Task("Say it", agent=agent)], store=SQLiteStore(tmp_path / "runs.db"))

    result = crew.kickoff_sync()

    assert "\x00" not in result.output.text
    assert result.output.text.encode("utf-8")  # no lone surrogate left


# -- model replies over HTTP -------------------------------------------------------------------

WIRE_REPLIES = st.one_of(
    TEXT.map(Text),
    HUGE.map(Text),
    JSON.map(lambda value: Text(json.dumps(value))),
    TEXT.map(lambda body: Malformed(body.encode("utf-8", "replace").decode())),
    st.builds(Error, st.sampled_from([400, 401, 404, 408, 422, 429, 500, 503]), TEXT),
    st.just(Disconnect()),
)


@pytest.fixture
def http_server() -> Iterator[OpenAIServer]:
    with OpenAIServer().in_thread() as running, use_clock(FakeClock()):
        yield running


@pytest.mark.slow
@FUZZ
@given(replies=st.lists(WIRE_REPLIES, min_size=1, max_size=4), structured=st.booleans())
def test_any_reply_over_http_succeeds_or_raises_a_run_error(
    http_server: OpenAIServer, tmp_path: Path, replies: list[Any], structured: bool
) -> None:
    # The real client, with the session's canary as its key and in its base URL.
    llm = OpenAIChat(
        "loop-model", base_url=canary.with_userinfo(http_server.base_url), api_key=canary.KEY
    )
    key = uuid.uuid4().hex  # what one example leaves queued is never another's
    http_server.enqueue_for(key, *replies)
    agent = Agent(role="R", goal="G", llm=llm, max_iterations=2)
    task = Task(f"Judge {key}", agent=agent, output_model=Verdict if structured else None)
    crew = Crew(tasks=[task], store=SQLiteStore(tmp_path / "runs.db"))

    outcome = settled(crew.kickoff_sync)

    assert not isinstance(outcome, ConfigurationError) or isinstance(outcome, CredentialsError)
    assert http_server.count_for(key) >= 1
