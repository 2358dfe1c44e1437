"""Every run is recorded: the run, each attempt, each finished output (checkpointed before any
dependant starts), and how the run ended; resume continues from those records."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import pytest
from pydantic import BaseModel

from crewflow import Agent, Crew, RetryPolicy, Task
from crewflow._runtime.recording import run_source
from crewflow.events import LLMCallFinished
from crewflow.exceptions import (
    ConfigurationError,
    CrewChange,
    CrewChanged,
    CrewPartialFailure,
    OutputValidationError,
    RunCancelled,
    StoreError,
    TaskFailed,
    UnknownRunError,
)
from crewflow.llm import OpenAIChat
from crewflow.store import MemoryStore, RunStatus, SQLiteStore, default_store_path
from crewflow.testing import (
    Error,
    FunctionLLM,
    OpenAIServer,
    Text,
    capture_events,
    run_virtual,
)
from tests.stores import STORE_KINDS, store_name

if TYPE_CHECKING:
    from pathlib import Path

    from crewflow.llm._types import LLMRequest
    from crewflow.store import OutputRow


def task_of(request: LLMRequest) -> str:
    """The task a request is for: the first word of its task description ("do <name>")."""
    user = next(m.content for m in request.messages if m.role == "user")
    assert user is not None
    return user.split("do ", 1)[1].split()[0]


class Calls:
    """An LLM answering ``<task> done``, counting calls per task; ``fail`` names tasks that
    raise while they are in it."""

    def __init__(self, fail: set[str] | None = None) -> None:
        self.count: dict[str, int] = {}
        self.fail = fail if fail is not None else set()
        self.llm = FunctionLLM(self.answer, model="calls")

    def answer(self, request: LLMRequest) -> Any:
        name = task_of(request)
        self.count[name] = self.count.get(name, 0) + 1
        if name in self.fail:
            return ValueError(f"{name} broke")
        return f"{name} done"


def chain(calls: Calls, *names: str, **crew: Any) -> Crew:
    agent = Agent(role="Worker", goal="Work", llm=calls.llm)
    tasks: list[Task] = []
    for name in names:
        tasks.append(Task(f"do {name}", agent=agent, name=name, context=tasks[-1:]))
    crew.setdefault("retry", RetryPolicy(max_attempts=1))
    return Crew(tasks=tasks, name="chain", **crew)


# -- what a run records -------------------------------------------------------------------------


async def test_a_run_records_its_run_attempts_and_outputs() -> None:
    store, calls = MemoryStore(), Calls()
    crew = chain(calls, "a", "b", store=store, max_concurrency=3, process="parallel")

    result = await crew.kickoff()

    record = await store.get_run(result.run_id)
    assert record is not None
    assert (record.crew, record.process, record.status) == ("chain", "parallel", "completed")
    assert record.fingerprint == crew.fingerprint().digest
    assert record.crew_key == crew.fingerprint().crew_key
    assert list(record.task_hashes) == ["a", "b"]
    assert record.fingerprint.startswith("sha256:")
    assert record.graph == {"a": [], "b": ["a"]}
    assert record.max_concurrency == 3
    assert record.source is None
    assert (record.started, record.ended) == (result.start, result.end)
    assert record.usage.requests == result.usage.requests == 2
    outputs = await store.outputs(result.run_id)
    assert {name: row.text for name, row in outputs.items()} == {"a": "a done", "b": "b done"}
    attempts = await store.attempts(result.run_id)
    assert [(row.task, row.number, row.status, row.agent, row.model) for row in attempts] == [
        ("a", 1, "completed", "Worker", "calls"),
        ("b", 1, "completed", "Worker", "calls"),
    ]
    assert attempts[0].end == result.timeline[0].attempts[0].end


async def test_inputs_and_the_cli_source_are_recorded() -> None:
    store = MemoryStore()
    agent = Agent(role="W", goal="G", llm="offline")
    crew = Crew(tasks=[Task("About {topic}", agent=agent)], store=store)

    with run_source("/crews/research.py", "crew"):
        result = await crew.kickoff({"topic": "tides"})

    record = await store.get_run(result.run_id)
    assert record is not None
    assert record.inputs == {"topic": "tides"}
    assert record.source is not None
    assert (record.source.file, record.source.attribute) == ("/crews/research.py", "crew")


async def test_structured_outputs_are_stored_as_json() -> None:
    class Fact(BaseModel):
        claim: str
        year: int

    store = MemoryStore()
    agent = Agent(role="W", goal="G", llm="offline")
    crew = Crew(tasks=[Task("One fact", agent=agent, name="fact", output_model=Fact)], store=store)

    result = await crew.kickoff()

    row = (await store.outputs(result.run_id))["fact"]
    assert isinstance(result["fact"].data, Fact)
    assert row.data == result["fact"].data.model_dump(mode="json")


async def test_the_default_store_is_the_database_in_crewflow_home() -> None:
    calls = Calls()

    result = await chain(calls, "a").kickoff()

    async with SQLiteStore(default_store_path()) as store:
        record = await store.get_run(result.run_id)
    assert record is not None
    assert record.status == "completed"


async def test_store_none_records_nothing() -> None:
    result = await chain(Calls(), "a", store=None).kickoff()

    assert result.output.text == "a done"
    assert not default_store_path().exists()


def test_a_bad_store_is_refused_at_construction() -> None:
    with pytest.raises(ConfigurationError, match="store must be"):
        chain(Calls(), "a", store=42)


async def test_failed_attempts_and_the_failed_run_are_recorded() -> None:
    store, calls = MemoryStore(), Calls(fail={"b"})
    crew = chain(
        calls,
        "a",
        "b",
        "c",
        store=store,
        retry=RetryPolicy(max_attempts=2, initial=0, retry_on=(ValueError,)),
    )

    with pytest.raises(TaskFailed) as caught:
        await crew.kickoff()

    run_id = caught.value.run_id
    assert run_id is not None
    record = await store.get_run(run_id)
    assert record is not None
    assert record.status == "failed"
    assert record.ended is not None
    rows = await store.attempts(run_id)
    assert [(r.task, r.number, r.status, r.error_type) for r in rows] == [
        ("a", 1, "completed", None),
        ("b", 1, "failed", "ValueError"),
        ("b", 2, "failed", "ValueError"),
    ]
    assert list(await store.outputs(run_id)) == ["a"]


async def test_attempts_cancelled_in_flight_are_recorded_as_cancelled() -> None:
    store = MemoryStore()
    entered, never = anyio.Event(), anyio.Event()

    async def hang(request: LLMRequest) -> str:
        entered.set()
        await never.wait()
        return "never"

    agent = Agent(role="W", goal="G", llm=FunctionLLM(hang))
    crew = Crew(tasks=[Task("do stuck", agent=agent, name="stuck")], store=store)

    handle = crew.start()
    with anyio.fail_after(5):
        await entered.wait()
        handle.cancel()
        with pytest.raises(RunCancelled):
            await handle.result()

    record = await store.get_run(handle.run_id)
    assert record is not None
    assert record.status == "cancelled"
    rows = await store.attempts(handle.run_id)
    assert [(r.task, r.status) for r in rows] == [("stuck", "cancelled")]


class WatchedStore(MemoryStore):
    """A store that logs its checkpoints, so a test can order them against LLM calls."""

    def __init__(self, log: list[str]) -> None:
        super().__init__()
        self.log = log

    async def save_task(
        self, output: OutputRow, attempts: Any = (), *, lease: str | None = None
    ) -> None:
        await anyio.lowlevel.checkpoint()  # a real write takes a while: others run meanwhile
        await super().save_task(output, attempts, lease=lease)
        self.log.append(f"saved {output.task}")


@pytest.mark.parametrize("process", ["sequential", "parallel"])
async def test_an_output_is_committed_before_any_dependant_starts(process: str) -> None:
    log: list[str] = []

    def answer(request: LLMRequest) -> str:
        log.append(f"call {task_of(request)}")
        return "ok"

    agent = Agent(role="W", goal="G", llm=FunctionLLM(answer))
    a = Task("do a", agent=agent, name="a", context=[])
    b = Task("do b", agent=agent, name="b", context=[])
    join = Task("do join", agent=agent, name="join", context=[a, b])
    crew = Crew(tasks=[a, b, join], process=process, store=WatchedStore(log))

    await crew.kickoff()

    assert log.index("call join") > max(log.index("saved a"), log.index("saved b"))


async def test_a_failing_checkpoint_fails_the_run_and_keeps_the_output() -> None:
    class Broken(MemoryStore):
        async def save_task(
            self, output: OutputRow, attempts: Any = (), *, lease: str | None = None
        ) -> None:
            from crewflow.exceptions import StoreError

            raise StoreError("disk full")

    crew = chain(Calls(), "a", "b", store=Broken())

    with pytest.raises(Exception, match="could not be checkpointed: disk full") as caught:
        await crew.kickoff()

    assert list(caught.value.outputs) == ["a"]  # type: ignore[attr-defined]


# -- resume -------------------------------------------------------------------------------------


async def failed_run(store: MemoryStore, calls: Calls, **crew: Any) -> tuple[Crew, str]:
    crew_ = chain(calls, "a", "b", "c", store=store, **crew)
    with pytest.raises((TaskFailed, CrewPartialFailure)) as caught:
        await crew_.kickoff()
    run_id = caught.value.run_id
    assert run_id is not None
    return crew_, run_id


async def test_resume_runs_only_what_had_not_finished_under_the_same_run_id() -> None:
    store, calls = MemoryStore(), Calls(fail={"b"})
    crew, run_id = await failed_run(store, calls)
    calls.fail.clear()

    result = await crew.resume(run_id)

    assert result.run_id == run_id
    assert calls.count == {"a": 1, "b": 2, "c": 1}
    assert result.restored == ["a"]
    assert [o.text for o in result.outputs] == ["a done", "b done", "c done"]
    assert [r.status for r in result.timeline] == ["completed"] * 3
    record = await store.get_run(run_id)
    assert record is not None
    assert (record.status, record.resumed) == (RunStatus.COMPLETED, 1)
    assert record.usage.requests == 4  # the failed run's calls count too
    rows = await store.attempts(run_id)
    assert [(r.task, r.number, r.status) for r in rows] == [
        ("a", 1, "completed"),
        ("b", 1, "failed"),
        ("b", 2, "completed"),
        ("c", 1, "completed"),
    ]


async def test_resuming_a_completed_run_runs_nothing() -> None:
    store, calls = MemoryStore(), Calls()
    crew = chain(calls, "a", "b", store=store)
    first = await crew.kickoff()

    again = await crew.resume(first.run_id)

    assert calls.count == {"a": 1, "b": 1}
    assert again.restored == ["a", "b"]
    assert [o.text for o in again.outputs] == [o.text for o in first.outputs]


async def test_resume_restores_structured_outputs_as_their_model() -> None:
    class Fact(BaseModel):
        claim: str

    store = MemoryStore()
    fails = {"on": True}

    def answer(request: LLMRequest) -> Any:
        if task_of(request) == "after" and fails["on"]:
            return ValueError("not yet")
        return {"claim": "water is wet"} if task_of(request) == "fact" else "fine"

    agent = Agent(role="W", goal="G", llm=FunctionLLM(answer))
    fact = Task("do fact", agent=agent, name="fact", output_model=Fact)
    after = Task("do after", agent=agent, name="after", context=[fact])
    crew = Crew(tasks=[fact, after], store=store, retry=RetryPolicy(max_attempts=1))
    with pytest.raises(TaskFailed) as caught:
        await crew.kickoff()
    fails["on"] = False

    assert caught.value.run_id is not None
    result = await crew.resume(caught.value.run_id)

    assert result["fact"].data == Fact(claim="water is wet")


async def test_resume_refuses_a_changed_crew_and_says_what_changed() -> None:
    store, calls = MemoryStore(), Calls(fail={"b"})
    _, run_id = await failed_run(store, calls)
    changed = chain(calls, "a", "b", "c", "d", store=store)

    with pytest.raises(CrewChanged, match="task 'd' was added") as caught:
        await changed.resume(run_id)

    assert caught.value.run_id == run_id
    assert caught.value.changes == [CrewChange("added", "d")]


async def test_resume_refuses_a_changed_description_even_with_the_same_graph() -> None:
    store, calls = MemoryStore(), Calls(fail={"b"})
    _, run_id = await failed_run(store, calls)
    agent = Agent(role="Worker", goal="Work harder", llm=calls.llm)
    tasks: list[Task] = []
    for name in ("a", "b", "c"):
        tasks.append(Task(f"do {name}", agent=agent, name=name, context=tasks[-1:]))
    other = Crew(tasks=tasks, name="chain", store=store)

    with pytest.raises(CrewChanged, match="task 'a': agent changed") as caught:
        await other.resume(run_id)

    # Each task's agent changed (its goal): each is named, with what changed in it.
    assert [str(change) for change in caught.value.changes] == [
        "task 'a': agent changed",
        "task 'b': agent changed",
        "task 'c': agent changed",
    ]
    assert str(caught.value).endswith("may not fit this one; pass force=True to resume anyway")
    assert caught.value.action == "resume anyway"


async def test_force_resumes_a_changed_crew() -> None:
    store, calls = MemoryStore(), Calls(fail={"b"})
    _, run_id = await failed_run(store, calls)
    calls.fail.clear()
    changed = chain(calls, "a", "b", "c", "d", store=store)

    result = await changed.resume(run_id, force=True)

    assert result.restored == ["a"]
    assert calls.count == {"a": 1, "b": 2, "c": 1, "d": 1}


async def test_resume_of_an_unknown_run_or_without_a_store_fails_clearly() -> None:
    with pytest.raises(UnknownRunError, match="no run 'nope'"):
        await chain(Calls(), "a", store=MemoryStore()).resume("nope")
    with pytest.raises(ConfigurationError, match="store=None"):
        await chain(Calls(), "a", store=None).resume("nope")


async def test_resume_after_continue_reruns_the_failed_and_skipped_tasks_only() -> None:
    store, calls = MemoryStore(), Calls(fail={"b"})
    agent = Agent(role="W", goal="G", llm=calls.llm)
    a = Task("do a", agent=agent, name="a", context=[])
    b = Task("do b", agent=agent, name="b", context=[])
    after_b = Task("do after_b", agent=agent, name="after_b", context=[b])
    crew = Crew(
        tasks=[a, b, after_b],
        process="parallel",
        on_failure="continue",
        store=store,
        retry=RetryPolicy(max_attempts=1),
    )
    with pytest.raises(CrewPartialFailure) as caught:
        await crew.kickoff()
    calls.fail.clear()

    assert caught.value.run_id is not None
    result = await crew.resume(caught.value.run_id)

    assert calls.count == {"a": 1, "b": 2, "after_b": 1}
    assert result.restored == ["a"]


# -- the reply cache ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", STORE_KINDS)
async def test_a_cached_crew_makes_no_call_the_second_time(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    chosen = MemoryStore() if kind == "memory" else store_name(kind, request, tmp_path)
    calls = Calls()
    crew = chain(calls, "a", "b", store=chosen, cache=True)

    first = await crew.kickoff()
    with capture_events() as events:
        second = await crew.kickoff()

    assert calls.count == {"a": 1, "b": 1}
    assert [o.text for o in second.outputs] == [o.text for o in first.outputs]
    assert second.usage.requests == 0
    assert all(r.attempts[0].cache_hits == 1 for r in second.timeline)
    finished = events.of_type(LLMCallFinished)
    assert [e.cached for e in finished] == [True, True]
    rows = await crew.resolved_store().attempts(second.run_id)  # type: ignore[union-attr]
    assert [r.cache_hits for r in rows] == [1, 1]


async def test_without_a_store_the_cache_lasts_one_run() -> None:
    calls = Calls()
    agent = Agent(role="W", goal="G", llm=calls.llm)
    same = [Task("do a", agent=agent, name=f"a{i}", context=[]) for i in range(2)]
    crew = Crew(tasks=same, store=None, cache=True)

    await crew.kickoff()
    await crew.kickoff()

    assert calls.count == {"a": 2}  # one per run: the second task of each run hit


async def test_a_task_opts_out_of_the_crews_cache_and_in_to_it() -> None:
    calls = Calls()
    agent = Agent(role="W", goal="G", llm=calls.llm)
    tasks = [
        Task("do fresh", agent=agent, name="fresh", cache=False, context=[]),
        Task("do kept", agent=agent, name="kept", context=[]),
    ]
    crew = Crew(tasks=tasks, store=MemoryStore(), cache=True)

    await crew.kickoff()
    await crew.kickoff()

    assert calls.count == {"fresh": 2, "kept": 1}

    only = Crew(
        tasks=[Task("do opted", agent=agent, name="opted", cache=True)], store=MemoryStore()
    )
    await only.kickoff()
    await only.kickoff()
    assert calls.count["opted"] == 1


async def test_a_retry_after_a_failure_is_not_served_from_the_cache() -> None:
    attempts = {"n": 0}

    def answer(request: LLMRequest) -> Any:
        attempts["n"] += 1
        return {"n": attempts["n"]}

    class Even(BaseModel):
        n: int

        def model_post_init(self, context: Any, /) -> None:
            if self.n % 2:
                raise ValueError("odd")

    agent = Agent(role="W", goal="G", llm=FunctionLLM(answer), output_retries=0)
    task = Task("do even", agent=agent, output_model=Even, name="even")
    crew = Crew(
        tasks=[task],
        store=MemoryStore(),
        cache=True,
        retry=RetryPolicy(max_attempts=2, initial=0, retry_on=(OutputValidationError,)),
    )

    result = await crew.kickoff()

    assert result["even"].data == Even(n=2)
    assert attempts["n"] == 2


# -- measured durations -------------------------------------------------------------------------


def test_measured_durations_order_the_parallel_process() -> None:
    store = MemoryStore()
    seconds = {"short": 1.0, "long": 5.0}  # virtual seconds: exact, and no real wait
    order: list[str] = []

    async def answer(request: LLMRequest) -> str:
        name = task_of(request)
        order.append(name)
        await anyio.sleep(seconds[name])
        return "ok"

    agent = Agent(role="W", goal="G", llm=FunctionLLM(answer))
    tasks = [Task(f"do {n}", agent=agent, name=n, context=[]) for n in ("short", "long")]
    crew = Crew(tasks=tasks, process="parallel", max_concurrency=1, store=store)

    run_virtual(crew.kickoff)  # nothing measured yet: declaration order
    run_virtual(crew.kickoff)  # "long" measured longer: it goes first

    assert order == ["short", "long", "long", "short"]


# -- secrets ------------------------------------------------------------------------------------


async def test_no_api_key_reaches_the_database(server: OpenAIServer, tmp_path: Path) -> None:
    canary = "sk-canary-0a1b2c3d4e5f60718293"
    server.enqueue(Text("first"), Error(401, f"bad key {canary}"))
    llm = OpenAIChat("loop-model", base_url=server.base_url, api_key=canary)
    agent = Agent(role="W", goal="G", llm=llm)
    path = tmp_path / "runs.db"
    crew = Crew(
        tasks=[Task("do one", agent=agent), Task("do two", agent=agent)],
        store=str(path),
        cache=True,
        on_failure="continue",
    )

    with pytest.raises(CrewPartialFailure):
        await crew.kickoff({})
    await crew.resolved_store().close()  # type: ignore[union-attr]

    assert server.requests[0].has_auth  # the key was used...
    assert files_holding(tmp_path, canary) == []  # ...and is in no file (the WAL included)
    async with SQLiteStore(path) as store:
        (run,) = await store.list_runs()
        rows = await store.attempts(run.run_id)
    assert rows[-1].error is not None
    assert "401" in rows[-1].error


def files_holding(directory: Path, text: str) -> list[str]:
    return [file.name for file in directory.iterdir() if text.encode() in file.read_bytes()]


async def test_a_database_that_cannot_be_created_fails_the_kickoff_clearly(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the database's directory should be")
    crew = chain(Calls(), "a", store=str(blocker / "runs.db"))

    with pytest.raises(StoreError, match="store=None to record nothing"):
        await crew.kickoff()


async def test_a_sqlite_store_writes_a_finished_output_as_the_output_row_it_stands_for(
    tmp_path: Path,
) -> None:
    # The runtime hands SQLiteStore a finished output's fields, without an OutputRow; what
    # is stored reads back as the row save_task would have stored, "data" and all.
    class Post(BaseModel):
        title: str

    agent = Agent(role="W", goal="G", llm=FunctionLLM(lambda _: '{"title": "é \ud800"}'))
    plain = Task("do a", agent=agent, name="a")
    shaped = Task("do b", agent=agent, name="b", output_model=Post, context=[plain])
    store = SQLiteStore(tmp_path / "runs.db")
    result = await Crew(tasks=[plain, shaped], store=store).kickoff()

    stored = await store.outputs(result.run_id)
    attempts = {a.task: a for a in await store.attempts(result.run_id)}
    for output in result.outputs:
        name = output.task
        row = stored[name]
        assert (row.run_id, row.task, row.text, row.agent, row.model) == (
            result.run_id,
            name,
            output.text,
            output.agent,
            output.model,
        )
        assert row.finished_at == attempts[name].end
    assert stored["a"].data is None
    assert stored["b"].data == {"title": "é \ufffd"}
    await store.close()


async def test_a_sqlite_store_subclass_s_own_save_task_is_what_a_run_calls(
    tmp_path: Path,
) -> None:
    saved: list[str] = []

    class Watched(SQLiteStore):
        async def save_task(
            self, output: OutputRow, attempts: Any = (), *, lease: str | None = None
        ) -> None:
            saved.append(output.task)
            await super().save_task(output, attempts, lease=lease)

    store = Watched(tmp_path / "runs.db")
    crew = chain(Calls(), "a", "b", store=store)
    result = await crew.kickoff()

    assert saved == ["a", "b"]
    assert set(await store.outputs(result.run_id)) == {"a", "b"}
    await store.close()


async def test_a_finished_task_waits_for_its_checkpoint_holding_only_its_records(
    tmp_path: Path,
) -> None:
    # In a wide graph many finished tasks wait for one commit at once; what each holds meanwhile
    # is what the garbage collector walks. Its attempts' working state (the retry count, the
    # streamed text, the prompt's parts) is no longer needed once its records are made.
    import gc

    from crewflow._runtime.attempts import TaskAttempts

    alive: dict[str, int] = {}

    class Watched(SQLiteStore):
        async def save_task(
            self, output: OutputRow, attempts: Any = (), *, lease: str | None = None
        ) -> None:
            alive[output.task] = sum(
                type(o) is TaskAttempts and o.run.run_id == output.run_id for o in gc.get_objects()
            )
            assert [a.task for a in attempts] == [output.task]
            await super().save_task(output, attempts, lease=lease)

    store = Watched(tmp_path / "runs.db")
    crew = chain(Calls(), "a", "b", store=store)
    result = await crew.kickoff()

    assert alive == {"a": 0, "b": 0}
    assert set(await store.outputs(result.run_id)) == {"a", "b"}
    await store.close()


async def test_a_started_run_keeps_no_copy_of_the_graph_its_record_wrote() -> None:
    # Each task's dependencies are written with the run; a 10,000-task run kept them all (a
    # list a task, for the garbage collector to walk) for no later write's use.
    from crewflow._runtime.recording import Recorder
    from crewflow.store import RunRecord

    store = MemoryStore()
    graph = {"a": [], "b": ["a"]}
    record = RunRecord(run_id="r1", crew="c", started=datetime.now(UTC), graph=graph)
    recorder = Recorder(store, record)

    await recorder.started(datetime.now(UTC))

    stored = await store.get_run("r1")
    assert stored is not None
    assert stored.graph == graph
    assert recorder.record.graph == {}
    assert recorder.record.run_id == "r1"
    assert recorder.lease is not None
    assert recorder.record.lease == recorder.lease
