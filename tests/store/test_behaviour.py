"""The behaviour every store shares, checked against `MemoryStore` and `SQLiteStore` alike."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from crewflow.llm._types import Message, ToolCall, Usage
from crewflow.store import (
    AddedTaskRecord,
    AttemptRecord,
    DecisionRecord,
    DuplicateRunError,
    Lease,
    LeaseLost,
    LeaseOwner,
    OutputRow,
    PromptRecord,
    RunRecord,
    RunSource,
    RunStatus,
    Store,
    TaskKind,
    TaskStatus,
    ToolCallRecord,
    UnknownRunError,
)
from tests.store.conftest import at, run_record

IST = timezone(timedelta(hours=5, minutes=30))


def full_run() -> RunRecord:
    return RunRecord(
        run_id="run-ü-1",
        crew="recherche",
        fingerprint="sha256:abc",
        crew_key="sha256:def",
        task_hashes={"faits": "sha256:1", "brouillon": "sha256:2", "critique": "sha256:3"},
        process_config={"branches": 3, "model": None, "weights": [0.5, 1.5]},
        source=RunSource(file="examples/research.py", attribute="crew"),
        process="adaptive",
        chosen="parallel",
        process_reason="3 independent branches; measured critical path 12 s vs 30 s sequential",
        inputs={"topic": "batteries au sodium 🔋", "n": 3, "tags": ["a", None], "deep": {"x": 1.5}},
        status=RunStatus.RUNNING,
        started=datetime(2026, 3, 1, 17, 30, 0, 123456, tzinfo=IST),
        usage=Usage(requests=2, prompt_tokens=10, completion_tokens=5, cost=0.0125),
        graph={"faits": [], "brouillon": ["faits"], "critique": ["faits", "brouillon"]},
        max_concurrency=4,
        resumed=1,
        paused=True,
        details={"note": "relancé ✓", "branches": [["faits"], ["brouillon"]], "n": None},
        lease=Lease(
            token="jeton-1",
            owner=LeaseOwner(host="hôte-b", boot_id="b00t", pid=4242, process_start="987"),
            expires=datetime.now(IST) + timedelta(hours=1),
        ),
    )


def full_attempt(**changes: object) -> AttemptRecord:
    data: dict[str, object] = {
        "task": "facts",
        "number": 2,
        "agent": "Chercheur",
        "start": datetime(2026, 3, 1, 7, 0, tzinfo=ZoneInfo("America/New_York")),  # at(0)
        "end": at(7.25),
        "duration": 7.125,
        "status": TaskStatus.FAILED,
        "error_type": "LLMError",
        "error": "429 trop de requêtes",
        "model": "openai/gpt-4o-mini",
        "usage": Usage(requests=3, prompt_tokens=120, completion_tokens=40, cost=0.000321),
        "cache_hits": 2,
        "llm_retries": 2,
        "limit_wait": 1.75,
        "limit_waits": {"concurrency:search": 1.5, "rpm:openai|default|gpt-4o-mini": 0.25},
        "details": {"fallback": False, "tools": ["search", "fetch"], "score": 0.5, "why": "ü"},
    }
    data.update(changes)
    return AttemptRecord.model_validate(data)


def added_task(name: str, *, added: float = 0, **changes: object) -> AddedTaskRecord:
    return AddedTaskRecord.model_validate({"name": name, "added": at(added), **changes})


async def test_a_run_record_round_trips_with_every_field(store: Store) -> None:
    record = full_run()
    await store.start_run(record)

    loaded = await store.get_run(record.run_id)

    assert loaded == record
    assert loaded is not None
    assert loaded.started.utcoffset() == timedelta(hours=5, minutes=30)


async def test_an_unknown_run_is_none(store: Store) -> None:
    assert await store.get_run("nope") is None
    assert await store.outputs("nope") == {}
    assert await store.attempts("nope") == []


async def test_starting_a_run_twice_is_refused_and_keeps_the_first(store: Store) -> None:
    await store.start_run(run_record(crew="first"))

    with pytest.raises(DuplicateRunError) as caught:
        await store.start_run(run_record(crew="second"))

    assert caught.value.run_id == "run-1"
    loaded = await store.get_run("run-1")
    assert loaded is not None
    assert loaded.crew == "first"


async def test_finishing_a_run_sets_status_end_and_usage(store: Store) -> None:
    await store.start_run(full_run())

    await store.finish_run("run-ü-1", RunStatus.COMPLETED, at(90), Usage(4, 100, 50, 0.5))

    loaded = await store.get_run("run-ü-1")
    assert loaded is not None
    assert loaded.status is RunStatus.COMPLETED
    assert loaded.ended == at(90)
    assert loaded.usage == Usage(requests=4, prompt_tokens=100, completion_tokens=50, cost=0.5)
    assert loaded.lease is None  # ending the run released it
    assert loaded.model_copy(update={"status": "x", "ended": None, "usage": None}) == (
        full_run().model_copy(update={"status": "x", "ended": None, "usage": None, "lease": None})
    )


async def test_finishing_an_unknown_run_fails(store: Store) -> None:
    with pytest.raises(UnknownRunError):
        await store.finish_run("nope", RunStatus.FAILED, at(1), Usage())


async def test_an_attempt_round_trips_with_every_field(store: Store) -> None:
    await store.start_run(run_record())
    row = full_attempt()

    await store.record_attempt("run-1", row)

    [loaded] = await store.attempts("run-1")
    assert loaded == row
    assert loaded.start.utcoffset() == timedelta(hours=-5)
    assert type(loaded.cache_hits) is int
    assert loaded.cache_hits == 2, "a count of cache hits, not a flag"
    assert loaded.details == {
        "fallback": False,
        "tools": ["search", "fetch"],
        "score": 0.5,
        "why": "ü",
    }


def prompted(row: AttemptRecord) -> AttemptRecord:
    """``row`` with two tool calls and two LLM calls recorded, in every shape a message takes."""
    ask = ToolCall("call-1", "search", '{"q": "sodium 🔋"}')
    return row.model_copy(
        update={
            "tool_calls": (
                ToolCallRecord(tool="search", ok=True, duration=0.25),
                ToolCallRecord(
                    tool="fetch", ok=False, duration=1.5, error_type="ValueError", error="ü"
                ),
            ),
            "prompts": (
                PromptRecord(
                    messages=(Message("system", "Tu es chercheur"), Message("user", "Trouve")),
                    reply=Message("assistant", None, (ask,)),
                    tools=("search", "fetch"),
                    output="Facts",
                ),
                PromptRecord(
                    repeated=3,
                    messages=(Message("tool", "résultat", tool_call_id="call-1", name="search"),),
                    error="LLMError: HTTP 500",
                    cut=12,
                ),
            ),
        }
    )


async def test_attempts_keep_their_tool_calls_and_prompts_come_apart(store: Store) -> None:
    await store.start_run(run_record())
    row = prompted(full_attempt())
    plain = full_attempt(task="draft", number=2, start=at(30), end=at(31))
    await store.save_task(OutputRow(run_id="run-1", task="t", text="", finished_at=at(0)), [row])
    await store.record_attempt("run-1", plain)

    loaded = await store.attempts("run-1")
    prompts = await store.prompts("run-1")

    # Prompts can be large: what the optimizer and history read leaves them out.
    assert loaded == [row.model_copy(update={"prompts": ()}), plain]
    assert loaded[0].details == full_attempt().details
    assert prompts == {(row.task, row.number): list(row.prompts)}
    assert await store.prompts("run-2") == {}


async def test_recording_an_attempt_again_replaces_its_prompts(store: Store) -> None:
    await store.start_run(run_record())
    await store.record_attempt("run-1", prompted(full_attempt()))

    await store.record_attempt("run-1", full_attempt())

    assert await store.prompts("run-1") == {}
    assert [row.tool_calls for row in await store.attempts("run-1")] == [()]


async def test_recording_the_same_attempt_again_replaces_it(store: Store) -> None:
    await store.start_run(run_record())
    await store.record_attempt("run-1", full_attempt(end=at(5), duration=5.0))

    await store.record_attempt("run-1", full_attempt(status="completed", error=None))

    [row] = await store.attempts("run-1")
    assert row.status is TaskStatus.COMPLETED
    assert (row.end, row.duration, row.error) == (at(7.25), 7.125, None)


async def test_attempts_come_back_by_start_time_for_their_run_only(store: Store) -> None:
    await store.start_run(run_record("run-1"))
    await store.start_run(run_record("run-2"))
    late = full_attempt(task="draft", number=1, start=at(50), end=at(51))
    early = full_attempt(task="facts", number=1, start=at(10), end=at(11))
    retry = full_attempt(task="facts", number=2, start=at(20), end=at(21))
    for row in (late, retry, early):
        await store.record_attempt("run-1", row)
    await store.record_attempt("run-2", full_attempt(start=at(0)))

    assert await store.attempts("run-1") == [early, retry, late]


async def test_recording_for_an_unknown_run_fails(store: Store) -> None:
    with pytest.raises(UnknownRunError) as caught:
        await store.record_attempt("ghost", full_attempt())
    assert caught.value.run_id == "ghost"
    with pytest.raises(UnknownRunError):
        await store.save_output(OutputRow(run_id="ghost", task="t", text="", finished_at=at(0)))


async def test_outputs_round_trip_with_structured_data_and_unicode(store: Store) -> None:
    await store.start_run(run_record())
    structured = OutputRow(
        run_id="run-1",
        task="draft",
        text='{"title": "Natrium – 钠"}',
        data={"title": "Natrium – 钠", "bullets": ["a", "b"], "score": 0.5, "ok": True, "n": None},
        agent="Writer",
        model="anthropic/claude-sonnet-4",
        finished_at=datetime(2026, 3, 1, 13, 1, tzinfo=timezone(timedelta(hours=1))),
    )
    plain = OutputRow(run_id="run-1", task="facts", text="5 bullets 🙂", finished_at=at(30))
    empty = OutputRow(run_id="run-1", task="empty", text="", data=[], finished_at=at(45))

    for row in (structured, plain, empty):
        await store.save_output(row)

    outputs = await store.outputs("run-1")
    assert outputs == {"facts": plain, "empty": empty, "draft": structured}
    assert list(outputs) == ["facts", "empty", "draft"], "in the order they finished"
    assert outputs["facts"].data is None
    assert outputs["empty"].data == []


async def test_saving_an_output_again_replaces_it(store: Store) -> None:
    await store.start_run(run_record())
    await store.save_output(OutputRow(run_id="run-1", task="t", text="old", finished_at=at(1)))

    await store.save_output(OutputRow(run_id="run-1", task="t", text="new", finished_at=at(2)))

    assert [row.text for row in (await store.outputs("run-1")).values()] == ["new"]


async def test_list_runs_is_newest_first_by_start_instant(store: Store) -> None:
    # Inserted out of order, and with offsets: 12:30+02:00 is 10:30 UTC, before 11:00 UTC.
    offset = timezone(timedelta(hours=2))
    starts = {
        "middle": datetime(2026, 3, 1, 11, 0, tzinfo=UTC),
        "oldest": datetime(2026, 3, 1, 12, 30, tzinfo=offset),
        "newest": datetime(2026, 3, 1, 12, 0, tzinfo=UTC),
    }
    for run_id, started in starts.items():
        await store.start_run(RunRecord(run_id=run_id, crew="c", started=started))

    runs = await store.list_runs()

    assert [run.run_id for run in runs] == ["newest", "middle", "oldest"]


async def test_list_runs_breaks_ties_by_the_later_insert(store: Store) -> None:
    for run_id in ("a", "b", "c"):
        await store.start_run(run_record(run_id, started=5))

    assert [run.run_id for run in await store.list_runs()] == ["c", "b", "a"]


async def test_list_runs_filters_by_crew_and_limits(store: Store) -> None:
    for index in range(30):
        crew = "alpha" if index % 3 else "beta"
        await store.start_run(run_record(f"run-{index:02}", crew=crew, started=index))

    default = await store.list_runs()
    alpha = await store.list_runs(crew="alpha", limit=3)
    everything = await store.list_runs(limit=None)

    assert [run.run_id for run in default] == [f"run-{i:02}" for i in range(29, 9, -1)]
    assert [run.run_id for run in alpha] == ["run-29", "run-28", "run-26"]
    assert len(everything) == 30
    assert await store.list_runs(crew="nobody") == []


@pytest.mark.parametrize("limit", [0, -1])
async def test_list_runs_refuses_a_limit_below_one(store: Store, limit: int) -> None:
    with pytest.raises(ValueError, match="limit must be at least 1"):
        await store.list_runs(limit=limit)


async def test_the_cache_keeps_replaces_and_clears_values(store: Store) -> None:
    assert await store.cache_get("k1") is None
    await store.cache_put("k1", "réponse 1")
    await store.cache_put("k2", "v2")
    await store.cache_put("k1", "réponse 2")

    assert await store.cache_get("k1") == "réponse 2"
    assert await store.cache_clear() == 2
    assert await store.cache_get("k1") is None
    assert await store.cache_clear() == 0


async def test_inputs_json_cannot_hold_are_stored_as_text(store: Store) -> None:
    class Topic:
        def __repr__(self) -> str:
            return "Topic('sodium')"

    await store.start_run(
        RunRecord(run_id="r", crew="c", started=at(0), inputs={"topic": Topic(), "n": (1, 2)})
    )

    loaded = await store.get_run("r")
    assert loaded is not None
    assert loaded.inputs == {"topic": "Topic('sodium')", "n": [1, 2]}


async def test_a_store_works_again_after_close(store: Store) -> None:
    await store.start_run(run_record())
    await store.close()

    await store.cache_put("k", "v")

    assert await store.cache_get("k") == "v"


async def test_save_task_records_attempts_and_output_together(store: Store) -> None:
    await store.start_run(run_record())
    first = full_attempt(task="t", number=1, start=at(1), end=at(2))
    second = full_attempt(
        task="t", number=2, start=at(2), end=at(3), status="completed", error=None
    )
    output = OutputRow(run_id="run-1", task="t", text="done", data={"ok": True}, finished_at=at(3))

    await store.save_task(output, [first, second])

    assert await store.attempts("run-1") == [first, second]
    assert await store.outputs("run-1") == {"t": output}


async def test_save_task_for_an_unknown_run_records_nothing(store: Store) -> None:
    await store.start_run(run_record())
    attempt = full_attempt(task="t", number=1, start=at(1), end=at(2))
    output = OutputRow(run_id="ghost", task="t", text="x", finished_at=at(2))

    with pytest.raises(UnknownRunError) as caught:
        await store.save_task(output, [attempt])

    assert caught.value.run_id == "ghost"
    assert (await store.attempts("ghost"), await store.outputs("ghost")) == ([], {})
    assert (await store.attempts("run-1"), await store.outputs("run-1")) == ([], {})


async def test_reopening_a_run_marks_it_running_and_counts_the_resume(store: Store) -> None:
    await store.start_run(run_record())
    await store.finish_run("run-1", RunStatus.FAILED, at(5), Usage(requests=3))
    lease = Lease.new()

    assert await store.take_lease("run-1", lease, replacing=None)  # as a resume does first
    await store.reopen_run("run-1")
    await store.reopen_run("run-1")

    reopened = await store.get_run("run-1")
    assert reopened is not None
    assert (reopened.status, reopened.ended, reopened.resumed) == (RunStatus.RUNNING, None, 2)
    assert reopened.usage.requests == 3
    assert reopened.lease == lease


async def test_reopening_an_unknown_run_fails(store: Store) -> None:
    with pytest.raises(UnknownRunError):
        await store.reopen_run("nope")


async def test_reopening_a_run_keeps_its_choice_and_pause(store: Store) -> None:
    await store.start_run(full_run())
    await store.finish_run("run-ü-1", RunStatus.FAILED, at(5), Usage())

    await store.reopen_run("run-ü-1")

    reopened = await store.get_run("run-ü-1")
    assert reopened is not None
    assert (reopened.chosen, reopened.paused, reopened.details) == (
        "parallel",
        True,
        full_run().details,
    )


# -- what a process records while the run goes on --------------------------------------------


async def test_recording_a_choice_keeps_the_crews_process_and_sets_the_chosen_one(
    store: Store,
) -> None:
    await store.start_run(run_record().model_copy(update={"process": "adaptive"}))

    await store.record_choice("run-1", "parallel", "3 independent branches; 12 s vs 30 s")

    loaded = await store.get_run("run-1")
    assert loaded is not None
    assert (loaded.process, loaded.chosen, loaded.ran) == ("adaptive", "parallel", "parallel")
    assert loaded.process_reason == "3 independent branches; 12 s vs 30 s"
    assert loaded.status is RunStatus.RUNNING


async def test_recording_a_choice_again_replaces_it(store: Store) -> None:
    await store.start_run(run_record().model_copy(update={"process": "adaptive"}))
    await store.record_choice("run-1", "parallel", "first guess")

    await store.record_choice("run-1", "sequential", "a chain after all")

    loaded = await store.get_run("run-1")
    assert loaded is not None
    assert (loaded.chosen, loaded.process_reason) == ("sequential", "a chain after all")


async def test_a_run_without_a_choice_ran_under_the_crews_process(store: Store) -> None:
    await store.start_run(run_record().model_copy(update={"process": "sequential"}))

    loaded = await store.get_run("run-1")

    assert loaded is not None
    assert (loaded.chosen, loaded.ran) == (None, "sequential")


async def test_recording_a_pause_marks_the_run_paused_for_good(store: Store) -> None:
    await store.start_run(run_record())
    before = await store.get_run("run-1")

    await store.record_pause("run-1")
    await store.record_pause("run-1")
    await store.finish_run("run-1", RunStatus.COMPLETED, at(9), Usage(requests=1))

    loaded = await store.get_run("run-1")
    assert before is not None
    assert not before.paused
    assert loaded is not None
    assert (loaded.paused, loaded.status) == (True, RunStatus.COMPLETED)


async def test_choices_and_pauses_of_an_unknown_run_fail(store: Store) -> None:
    with pytest.raises(UnknownRunError) as caught:
        await store.record_choice("ghost", "parallel", "why not")
    assert caught.value.run_id == "ghost"
    with pytest.raises(UnknownRunError):
        await store.record_pause("ghost")
    assert await store.get_run("ghost") is None


async def test_added_tasks_round_trip_with_every_field(store: Store) -> None:
    await store.start_run(run_record())
    plan = AddedTaskRecord(
        name="plan",
        kind=TaskKind.INTERNAL,
        step="task",
        agent="Gérant",
        depends_on=[],
        spec_hash="sha256:p",
        added=datetime(2026, 3, 1, 17, 30, 0, 250, tzinfo=IST),
    )
    question = AddedTaskRecord(
        name="research.1 ❓",
        kind=TaskKind.DELIVERABLE,
        step="ask",
        agent="Chercheur",
        depends_on=["plan", "facts"],
        spec_hash="sha256:q",
        added=at(1),
    )

    await store.add_tasks("run-1", [plan, question])

    loaded = await store.added_tasks("run-1")
    assert loaded == [plan, question]
    assert loaded[0].added.utcoffset() == timedelta(hours=5, minutes=30)


async def test_added_tasks_come_back_in_the_order_added_for_their_run_only(
    store: Store,
) -> None:
    await store.start_run(run_record("run-1"))
    await store.start_run(run_record("run-2"))
    await store.add_tasks("run-1", [added_task("plan", added=1)])
    await store.add_tasks("run-2", [added_task("elsewhere", added=2)])
    await store.add_tasks(
        "run-1",
        [
            added_task("step.2", added=3, depends_on=["plan"]),
            added_task("step.1", added=3, depends_on=["plan"]),
        ],
    )
    await store.add_tasks("run-1", [added_task("review", added=4, depends_on=["step.1"])])

    names = [task.name for task in await store.added_tasks("run-1")]

    assert names == ["plan", "step.2", "step.1", "review"]
    assert [task.name for task in await store.added_tasks("run-2")] == ["elsewhere"]
    assert await store.added_tasks("nope") == []


async def test_adding_a_task_of_the_same_name_again_replaces_it(store: Store) -> None:
    await store.start_run(run_record())
    await store.add_tasks("run-1", [added_task("plan", spec_hash="sha256:old")])

    await store.add_tasks("run-1", [added_task("plan", spec_hash="sha256:new", agent="Lead")])

    [plan] = await store.added_tasks("run-1")
    assert (plan.spec_hash, plan.agent) == ("sha256:new", "Lead")


async def test_adding_no_task_records_nothing(store: Store) -> None:
    await store.start_run(run_record())

    await store.add_tasks("run-1", [])

    assert await store.added_tasks("run-1") == []


async def test_adding_tasks_to_an_unknown_run_fails_and_adds_none(store: Store) -> None:
    with pytest.raises(UnknownRunError) as caught:
        await store.add_tasks("ghost", [added_task("plan")])

    assert caught.value.run_id == "ghost"
    assert await store.added_tasks("ghost") == []


# -- the runs of one crew key -------------------------------------------------------------------


async def test_runs_of_key_are_that_keys_runs_newest_first(store: Store) -> None:
    for index in range(12):
        key = "key-a" if index % 3 else "key-b"
        await store.start_run(run_record(f"run-{index:02}", started=index, crew_key=key))
    await store.start_run(run_record("no-key", started=99))

    found = await store.runs_of_key("key-a")

    assert [run.run_id for run in found] == [
        f"run-{index:02}" for index in range(11, -1, -1) if index % 3
    ]
    assert {run.crew_key for run in found} == {"key-a"}
    assert [run.run_id for run in await store.runs_of_key("key-b")] == [
        "run-09",
        "run-06",
        "run-03",
        "run-00",
    ]
    assert await store.runs_of_key("key-c") == []


async def test_runs_of_key_are_ordered_by_start_instant_then_later_insert(store: Store) -> None:
    # 12:30+02:00 is 10:30 UTC, before 11:00 UTC.
    offset = timezone(timedelta(hours=2))
    starts = {
        "middle": datetime(2026, 3, 1, 11, 0, tzinfo=UTC),
        "oldest": datetime(2026, 3, 1, 12, 30, tzinfo=offset),
        "tie-1": datetime(2026, 3, 1, 12, 0, tzinfo=UTC),
        "tie-2": datetime(2026, 3, 1, 12, 0, tzinfo=UTC),
    }
    for run_id, started in starts.items():
        await store.start_run(RunRecord(run_id=run_id, crew="c", crew_key="k", started=started))

    found = await store.runs_of_key("k")

    assert [run.run_id for run in found] == ["tie-2", "tie-1", "middle", "oldest"]


async def test_runs_of_key_keep_at_most_limit_runs(store: Store) -> None:
    for index in range(60):
        await store.start_run(run_record(f"run-{index:02}", started=index, crew_key="k"))

    default = await store.runs_of_key("k")
    three = await store.runs_of_key("k", limit=3)
    everything = await store.runs_of_key("k", limit=None)

    assert [run.run_id for run in default] == [f"run-{i:02}" for i in range(59, 9, -1)]
    assert [run.run_id for run in three] == ["run-59", "run-58", "run-57"]
    assert len(everything) == 60


@pytest.mark.parametrize("limit", [0, -1])
async def test_runs_of_key_refuses_a_limit_below_one(store: Store, limit: int) -> None:
    with pytest.raises(ValueError, match="limit must be at least 1"):
        await store.runs_of_key("k", limit=limit)


async def test_decisions_round_trip_in_the_order_made_for_their_run_only(store: Store) -> None:
    await store.start_run(run_record())
    await store.start_run(run_record("run-2"))
    condition = DecisionRecord(
        key="condition:revue ✓",
        kind="condition",
        task="revue ✓",
        value=False,
        reason="the draft is short",
        at=datetime(2026, 3, 1, 17, 30, 0, 250, tzinfo=IST),
    )
    router = DecisionRecord(
        key="router:triage", kind="router", task="triage", value=["billing"], at=at(1)
    )
    items = DecisionRecord(
        key="map:summarise", kind="map", task="summarise", value=[{"a": 1}, "b\x00"], at=at(2)
    )
    elsewhere = DecisionRecord(key="skip:x", kind="skip", task="x", reason="why", at=at(0))

    await store.record_decisions("run-1", [router, items])
    await store.record_decisions("run-1", [condition])
    await store.record_decisions("run-2", [elsewhere])

    loaded = await store.decisions("run-1")
    assert [d.key for d in loaded] == ["condition:revue ✓", "router:triage", "map:summarise"]
    assert loaded[0] == condition
    assert loaded[0].at.utcoffset() == timedelta(hours=5, minutes=30)
    assert loaded[2].value == [{"a": 1}, "b\ufffd"]  # a NUL is not text a record keeps
    assert await store.decisions("run-2") == [elsewhere]
    assert await store.decisions("ghost") == []


async def test_a_decision_made_again_replaces_the_first(store: Store) -> None:
    await store.start_run(run_record())
    first = DecisionRecord(key="loop:l#1", kind="loop", task="l", value=True, at=at(1))
    again = DecisionRecord(key="loop:l#1", kind="loop", task="l", value=False, at=at(3))

    await store.record_decisions("run-1", [first])
    await store.record_decisions("run-1", [again])

    assert await store.decisions("run-1") == [again]


async def test_decisions_of_an_unknown_run_or_a_lost_lease_are_refused(store: Store) -> None:
    decision = DecisionRecord(key="skip:x", kind="skip", task="x", at=at(1))
    with pytest.raises(UnknownRunError):
        await store.record_decisions("ghost", [decision])
    record = run_record()
    assert record.lease is not None
    await store.start_run(record)

    with pytest.raises(LeaseLost):
        await store.record_decisions("run-1", [decision], lease="another process's")
    assert await store.decisions("run-1") == []
    await store.record_decisions("run-1", [decision], lease=record.lease.token)
    assert await store.decisions("run-1") == [decision]


# -- a run's health ----------------------------------------------------------------------------


def stalled_health(task: str = "écrire\x00🔋") -> dict[str, object]:
    issue = {"kind": "stalled", "subject": task, "detail": f"task {task!r} stalled", "since": 5.0}
    return {"status": "stalled", "time": 5.0, "issues": [issue], "recorded": "2026-03-01T12:00:05Z"}


async def test_recording_health_replaces_the_last_and_keeps_the_other_details(
    store: Store,
) -> None:
    await store.start_run(run_record().model_copy(update={"details": {"note": "kept"}}))

    await store.record_health("run-1", {"status": "degraded", "issues": []})
    await store.record_health("run-1", stalled_health())

    loaded = await store.get_run("run-1")
    assert loaded is not None
    assert loaded.details["note"] == "kept"
    assert loaded.health is not None
    assert loaded.health.status == "stalled"
    # Text is data: the task's name comes back as a database keeps it (NUL replaced).
    assert [issue.subject for issue in loaded.health.issues] == ["écrire\ufffd🔋"]


async def test_recording_no_health_removes_it(store: Store) -> None:
    await store.start_run(run_record())
    await store.record_health("run-1", stalled_health())

    await store.record_health("run-1", None)

    loaded = await store.get_run("run-1")
    assert loaded is not None
    assert (loaded.health, "health" in loaded.details) == (None, False)


async def test_health_of_an_unknown_run_or_a_lost_lease_is_refused(store: Store) -> None:
    with pytest.raises(UnknownRunError):
        await store.record_health("ghost", stalled_health())
    record = run_record()
    assert record.lease is not None
    await store.start_run(record)

    with pytest.raises(LeaseLost):
        await store.record_health("run-1", stalled_health(), lease="another process's")
    loaded = await store.get_run("run-1")
    assert loaded is not None
    assert loaded.health is None
    await store.record_health("run-1", stalled_health(), lease=record.lease.token)
    loaded = await store.get_run("run-1")
    assert loaded is not None
    assert loaded.health is not None
