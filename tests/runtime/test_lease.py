"""A run holds its lease while it goes on, renews it (pauses included) and releases it when it
ends; a resumed run takes over the lease of the process that died.

Renewals are timed in virtual seconds (`run_virtual`): ten paused minutes take no real time.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import anyio
import pytest

from crewflow import Agent, Crew, RetryPolicy, Task
from crewflow.exceptions import (
    CrewRunError,
    LeaseLost,
    RunCancelled,
    RunInProgress,
    StoreError,
    TaskFailed,
)
from crewflow.store import (
    Lease,
    LeaseOwner,
    MemoryStore,
    RunRecord,
    RunStatus,
    SQLiteStore,
    Store,
    read_history,
)
from crewflow.store._lease import RENEW_SECONDS
from crewflow.testing import Error, FunctionLLM, run_virtual
from tests.store.test_lease import dead_pid
from tests.stores import STORE_KINDS, made_store

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from crewflow.llm._types import LLMRequest


class Renewals(MemoryStore):
    """A `MemoryStore` that notes when each renewal came (loop time), and can fail them."""

    def __init__(self, *, failing: int = 0, taken_over: bool = False) -> None:
        super().__init__()
        self.at: list[float] = []
        self.running: list[tuple[str, ...] | None] = []
        self.failing = failing
        self.taken_over = taken_over

    async def renew_lease(
        self, run_id: str, token: str, expires: datetime, *, running: Sequence[str] | None = None
    ) -> bool:
        self.at.append(anyio.current_time())
        self.running.append(None if running is None else tuple(running))
        if self.failing:
            self.failing -= 1
            raise StoreError("the run database is locked")
        if self.taken_over:
            return False
        return await super().renew_lease(run_id, token, expires, running=running)


def the_crew(store: Store, answer: FunctionLLM, **settings: object) -> Crew:
    agent = Agent(role="Worker", goal="Work", llm=answer)
    tasks = [Task("first", agent=agent, name="first"), Task("second", agent=agent, name="second")]
    return Crew(tasks=tasks, store=store, retry=RetryPolicy(max_attempts=1), **settings)  # type: ignore[arg-type]


ELSEWHERE = LeaseOwner(host="another-host", boot_id="another-boot", pid=4242)
HOUR = timedelta(hours=1)


async def failed_second(store: Store) -> tuple[Crew, str, list[str]]:
    """A crew whose run failed at its second task (which succeeds from now on), its run id,
    and the prompts its model was sent (the task names)."""
    asked: list[str] = []
    broken = {"on": True}

    def answer(request: LLMRequest) -> object:
        name = "second" if "second" in request.messages[-1].content else "first"
        asked.append(name)
        return Error(400, "no") if name == "second" and broken["on"] else f"{name} done"

    crew = the_crew(store, FunctionLLM(answer))
    with pytest.raises(TaskFailed) as failed:
        await crew.kickoff()
    broken["on"] = False
    assert failed.value.run_id is not None
    return crew, failed.value.run_id, asked


async def only_run(store: Store) -> RunRecord:
    (run,) = await store.list_runs()
    return run


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    return made_store(request.param, request, tmp_path)


async def test_a_run_holds_this_processs_lease_while_it_runs_and_releases_it_at_the_end(
    store: Store,
) -> None:
    seen: list[RunRecord] = []

    async def answer(request: LLMRequest) -> str:
        seen.append(await only_run(store))
        return "done"

    result = await the_crew(store, FunctionLLM(answer)).kickoff()

    assert [(run.status, run.lease is not None) for run in seen] == [("running", True)] * 2
    # One lease for the whole run (its expiry and tasks in flight are rewritten as it goes).
    assert all(run.lease and run.lease.token == seen[0].lease.token for run in seen)
    assert seen[0].lease is not None
    assert seen[0].lease.owner == LeaseOwner.current()
    assert seen[0].lease.expires > datetime.now(UTC)
    ended = await only_run(store)
    assert (ended.run_id, ended.status, ended.lease) == (result.run_id, "completed", None)
    await store.close()


async def test_a_failed_run_releases_its_lease(store: Store) -> None:
    def answer(request: LLMRequest) -> object:
        return Error(400, "no") if "second" in request.messages[-1].content else "done"

    with pytest.raises(TaskFailed):
        await the_crew(store, FunctionLLM(answer)).kickoff()

    ended = await only_run(store)
    assert (ended.status, ended.lease) == ("failed", None)
    await store.close()


async def test_a_cancelled_run_releases_its_lease() -> None:
    store = MemoryStore()
    started = anyio.Event()

    async def answer(request: LLMRequest) -> str:
        started.set()
        await anyio.sleep_forever()
        raise AssertionError("cancelled before")

    handle = the_crew(store, FunctionLLM(answer)).start()
    await started.wait()
    assert (await only_run(store)).status == "running"
    handle.cancel()
    with pytest.raises(RunCancelled):
        await handle.result()

    ended = await only_run(store)
    assert (ended.status, ended.lease) == ("cancelled", None)


def test_a_paused_run_renews_its_lease_every_twenty_seconds() -> None:
    store = Renewals()

    async def scenario() -> tuple[RunRecord, RunRecord]:
        handle = the_crew(store, FunctionLLM(lambda request: "done")).start()
        handle.pause()
        await anyio.sleep(600)  # ten minutes paused, in virtual seconds
        paused = await only_run(store)
        handle.resume()
        await handle.result()
        return paused, await only_run(store)

    paused, ended = run_virtual(scenario)

    assert store.at[:29] == [RENEW_SECONDS * n for n in range(1, 30)]
    assert paused.status == RunStatus.RUNNING  # held all along, though no task ran
    assert paused.lease is not None
    assert paused.lease.expires > datetime.now(UTC)
    assert (ended.status, ended.lease) == ("completed", None)


def test_the_lease_shows_the_tasks_in_flight_rewritten_at_most_once_a_second() -> None:
    store = Renewals()
    seen: dict[str, tuple[str, ...]] = {}

    async def answer(request: LLMRequest) -> str:
        name = request.messages[-1].content.split()[0]
        await anyio.sleep(3.5 if name == "slow" else 0.35)  # virtual seconds
        run = await only_run(store)
        assert run.lease is not None
        seen[name] = run.lease.running
        return "done"

    # Twelve quick tasks in a chain (0.35 s each, 4.2 s in all) beside one slow task (3.5 s).
    agent = Agent(role="Worker", goal="Work", llm=FunctionLLM(answer))
    quick: list[Task] = []
    for index in range(12):
        quick.append(Task(f"quick{index}", agent=agent, name=f"quick{index}", context=quick[-1:]))
    slow = Task("slow", agent=agent, name="slow", context=[])
    crew = Crew(tasks=[*quick, slow], store=store, process="parallel")

    run_virtual(crew.kickoff)

    # Written at once when the first tasks started, then at most once a second while the
    # chain moved on: 5 writes for 26 changes, each with what was in flight then.
    assert store.at == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert store.running == [
        ("quick0", "slow"),  # in the order they started
        ("slow", "quick2"),  # quick2 runs from 0.7 s to 1.05 s
        ("slow", "quick5"),
        ("slow", "quick8"),
        ("quick11",),  # the slow task ended at 3.5 s
    ]
    # What a task saw as it ended: the last write, which had it in flight once it was due.
    assert seen["quick1"] == ("quick0", "slow")  # at 0.7 s: the next write was not yet due
    assert seen["quick5"] == ("slow", "quick5")
    assert seen["slow"] == ("slow", "quick8")
    ended = run_virtual(only_run, store)
    assert (ended.status, ended.lease) == (RunStatus.COMPLETED, None)  # released at the end


def test_a_store_whose_renew_lease_predates_running_still_renews_the_lease() -> None:
    class OlderStore(MemoryStore):
        """A store written before `Store.renew_lease` took ``running=``."""

        def __init__(self) -> None:
            super().__init__()
            self.at: list[float] = []

        async def renew_lease(self, run_id: str, token: str, expires: datetime) -> bool:
            self.at.append(anyio.current_time())
            return await super().renew_lease(run_id, token, expires)

    store = OlderStore()

    async def slow(request: LLMRequest) -> str:
        await anyio.sleep(50)  # virtual seconds
        return "done"

    result = run_virtual(the_crew(store, FunctionLLM(slow)).kickoff)

    # Renewed at once (the first task in flight) and on, without its tasks in flight.
    assert store.at[:3] == [0.0, 20.0, 40.0]
    assert [output.text for output in result.outputs] == ["done", "done"]


def test_a_renewal_that_fails_is_logged_and_tried_again_without_ending_the_run(
    capsys: pytest.CaptureFixture[str],
) -> None:
    store = Renewals(failing=1)

    async def slow(request: LLMRequest) -> str:
        await anyio.sleep(50)  # virtual seconds: two renewals' time
        return "done"

    result = run_virtual(the_crew(store, FunctionLLM(slow)).kickoff)

    # The first write, of the first task in flight, failed; the next came a renewal's time
    # later and went on, renewing every 20 s; the next task's start was written at once.
    assert store.at[:4] == [0.0, 20.0, 40.0, 50.0]
    assert store.running[:4] == [("first",), ("first",), ("first",), ("second",)]
    assert [output.text for output in result.outputs] == ["done", "done"]
    logged = capsys.readouterr().err
    assert "could not renew the run's lease" in logged
    assert "the run database is locked" in logged


def test_a_run_whose_lease_was_taken_over_stops_renewing_it_and_running_tasks() -> None:
    store = Renewals(taken_over=True)
    asked: list[str] = []

    async def slow(request: LLMRequest) -> str:
        asked.append(request.messages[-1].content)
        await anyio.sleep(50)
        return "done"

    with pytest.raises(CrewRunError, match=r"the run stopped: run .* is no longer") as stopped:
        run_virtual(the_crew(store, FunctionLLM(slow)).kickoff)

    assert store.at == [0.0]  # the first write of the lease (the first task in flight) found it
    assert isinstance(stopped.value.__cause__, LeaseLost)
    assert len(asked) == 1  # stopped in the first task: the second was never sent


async def test_an_interrupted_run_resumes_as_a_failed_one_taking_over_its_lease(
    store: Store,
) -> None:
    broken = {"on": True}
    during: list[RunRecord] = []

    async def answer(request: LLMRequest) -> object:
        if "second" not in request.messages[-1].content:
            return "first done"
        if broken["on"]:
            return Error(400, "no")
        during.append(await only_run(store))
        return "second done"

    crew = the_crew(store, FunctionLLM(answer))
    with pytest.raises(TaskFailed) as failed:
        await crew.kickoff()
    run_id = failed.value.run_id
    assert run_id is not None
    # As a process killed while running leaves it: running, held by a lease that lapsed.
    owner = LeaseOwner(host="another-host", boot_id="another-boot", pid=4242)
    dead = Lease(token="dead", owner=owner, expires=datetime.now(UTC) - timedelta(seconds=1))
    assert await store.take_lease(run_id, dead, replacing=None)
    await store.reopen_run(run_id)
    assert (await only_run(store)).status == RunStatus.INTERRUPTED
    broken["on"] = False

    result = await crew.resume(run_id)

    assert result.restored == ["first"]
    assert [output.text for output in result.outputs] == ["first done", "second done"]
    (resuming,) = during
    assert resuming.status == RunStatus.RUNNING
    assert resuming.lease is not None
    assert resuming.lease.owner == LeaseOwner.current()
    ended = await only_run(store)
    assert (ended.status, ended.lease) == ("completed", None)
    await store.close()


async def test_a_resume_that_finds_its_lease_taken_meanwhile_is_refused() -> None:
    class TakenMeanwhile(MemoryStore):
        async def take_lease(self, run_id: str, lease: Lease, *, replacing: str | None) -> bool:
            theirs = Lease(token="theirs", owner=ELSEWHERE, expires=datetime.now(UTC) + HOUR)
            assert await super().take_lease(run_id, theirs, replacing=replacing)
            return False

    store = TakenMeanwhile()
    crew, run_id, asked = await failed_second(store)

    with pytest.raises(RunInProgress) as refused:
        await crew.resume(run_id)

    assert refused.value.owner == ELSEWHERE
    assert "another-host, pid 4242" in str(refused.value)
    assert asked == ["first", "second"]  # the resume sent nothing
    run = await only_run(store)  # theirs, untouched: neither reopened nor ended by this one
    assert (run.status, run.resumed, run.lease and run.lease.token) == ("failed", 0, "theirs")


async def test_history_counts_no_interrupted_run(store: Store) -> None:
    crew = the_crew(store, FunctionLLM(lambda request: "done"))
    done = await crew.kickoff()
    dead = await crew.kickoff()
    await store.reopen_run(dead.run_id)  # running again, but held by no lease: interrupted
    assert (await store.get_run(dead.run_id)).status == RunStatus.INTERRUPTED  # type: ignore[union-attr]

    history = await read_history(store, crew.fingerprint().crew_key)

    assert history.runs == 1
    assert done.run_id != dead.run_id
    await store.close()


# -- one process executes a run at a time ---------------------------------------------------------


async def test_a_resume_while_the_kickoff_still_runs_is_refused_at_once(store: Store) -> None:
    asked: list[str] = []
    asking = anyio.Event()
    go_on = anyio.Event()

    async def answer(request: LLMRequest) -> str:
        asked.append(request.messages[-1].content)
        if len(asked) == 1:  # the kickoff's first task holds on; any other call goes through
            asking.set()
            await go_on.wait()
        return "done"

    crew = the_crew(store, FunctionLLM(answer))
    handle = crew.start()
    await asking.wait()

    with pytest.raises(RunInProgress) as refused:
        await crew.resume(handle.run_id)

    here = LeaseOwner.current()
    assert refused.value.owner == here
    assert f"{here.host}, pid {here.pid}" in str(refused.value)
    assert len(asked) == 1  # the resume sent nothing
    go_on.set()
    result = await handle.result()
    assert [output.text for output in result.outputs] == ["done", "done"]
    assert len(asked) == 2
    ended = await only_run(store)
    assert (ended.status, ended.resumed, ended.lease) == ("completed", 0, None)
    await store.close()


async def test_a_resume_of_a_run_held_on_another_host_is_refused_until_its_lease_expires(
    store: Store,
) -> None:
    crew, run_id, asked = await failed_second(store)
    theirs = Lease(token="theirs", owner=ELSEWHERE, expires=datetime.now(UTC) + HOUR)
    assert await store.take_lease(run_id, theirs, replacing=None)
    await store.reopen_run(run_id, lease="theirs")

    with pytest.raises(RunInProgress, match=r"another-host, pid 4242") as refused:
        await crew.resume(run_id)

    assert (refused.value.run_id, refused.value.owner) == (run_id, ELSEWHERE)
    assert asked == ["first", "second"]
    run = await only_run(store)
    assert (run.status, run.resumed, run.lease) == (RunStatus.RUNNING, 1, theirs)
    await store.close()


async def test_a_resume_takes_over_a_run_whose_process_on_this_machine_died(
    store: Store,
) -> None:
    crew, run_id, asked = await failed_second(store)
    here = LeaseOwner.current()
    dead = LeaseOwner(host=here.host, boot_id=here.boot_id, pid=dead_pid(), process_start="1")
    # Its lease has not expired yet: the dead pid is what frees the run.
    held = Lease(token="dead", owner=dead, expires=datetime.now(UTC) + HOUR)
    assert await store.take_lease(run_id, held, replacing=None)
    await store.reopen_run(run_id, lease="dead")

    result = await crew.resume(run_id)

    assert result.restored == ["first"]
    assert asked == ["first", "second", "second"]
    run = await only_run(store)
    assert (run.status, run.resumed, run.lease) == ("completed", 2, None)
    await store.close()


async def test_a_failed_run_another_resume_took_over_but_not_reopened_yet_is_refused(
    store: Store,
) -> None:
    # Between a resume's taking of the lease and its reopening of the run, the run reads as
    # failed with a lease that holds: a second resume must see the first, not take it over.
    crew, run_id, asked = await failed_second(store)
    first = Lease.new()
    assert await store.take_lease(run_id, first, replacing=None)
    assert (await store.get_run(run_id)).status == RunStatus.FAILED  # type: ignore[union-attr]

    with pytest.raises(RunInProgress) as refused:
        await crew.resume(run_id)

    assert refused.value.owner == LeaseOwner.current()
    assert asked == ["first", "second"]  # nothing sent again
    held = await store.get_run(run_id)
    assert held is not None
    assert held.lease is not None
    assert held.lease.token == first.token  # still the first resume's
    await store.close()


async def test_of_two_resumes_at_once_exactly_one_runs_the_unfinished_tasks(
    tmp_path: Path,
) -> None:
    path = tmp_path / "runs.db"
    asked: list[str] = []
    broken = {"on": True}
    ended = {"refused": 0, "asking": 0}
    both = anyio.Event()  # each resume reached the model, or was refused

    def settle(what: str) -> None:
        ended[what] += 1
        if sum(ended.values()) == 2:
            both.set()

    async def answer(request: LLMRequest) -> object:
        name = "second" if "second" in request.messages[-1].content else "first"
        asked.append(name)
        if broken["on"]:
            return Error(400, "no") if name == "second" else "first done"
        settle("asking")
        await both.wait()
        return "second done"

    def crew() -> Crew:  # each resume with its own store: another connection to the file
        return the_crew(SQLiteStore(path), FunctionLLM(answer))

    with pytest.raises(TaskFailed) as failed:
        await crew().kickoff()
    run_id = failed.value.run_id
    assert run_id is not None
    broken["on"] = False
    results = []
    refusals: list[RunInProgress] = []

    async def resume() -> None:
        try:
            results.append(await crew().resume(run_id))
        except RunInProgress as exc:
            refusals.append(exc)
            settle("refused")

    async with anyio.create_task_group() as group:
        group.start_soon(resume)
        group.start_soon(resume)

    assert len(results) == len(refusals) == 1
    assert asked == ["first", "second", "second"]  # the unfinished task, sent once
    assert refusals[0].owner == LeaseOwner.current()
    assert [output.text for output in results[0].outputs] == ["first done", "second done"]
    async with SQLiteStore(path) as store:
        run = await only_run(store)
    assert (run.status, run.resumed, run.lease) == ("completed", 1, None)


async def test_a_stalled_run_whose_lease_was_taken_writes_nothing_more_and_stops(
    store: Store,
) -> None:
    asked: list[str] = []

    async def answer(request: LLMRequest) -> str:
        asked.append(request.messages[-1].content)
        # Meanwhile another process finds the run lapsed and takes it over.
        run = await only_run(store)
        assert run.lease is not None
        theirs = Lease(token="theirs", owner=ELSEWHERE, expires=datetime.now(UTC) + HOUR)
        assert await store.take_lease(run.run_id, theirs, replacing=run.lease.token)
        return "first done"

    with pytest.raises(CrewRunError, match="could not be checkpointed") as stopped:
        await the_crew(store, FunctionLLM(answer)).kickoff()

    lost = stopped.value.__cause__
    assert isinstance(lost, LeaseLost)
    assert lost.owner == ELSEWHERE
    assert "another-host, pid 4242 holds it now" in str(lost)
    assert len(asked) == 1  # the second task never started
    assert [output.text for output in stopped.value.outputs.values()] == ["first done"]
    run = await only_run(store)
    # Nothing of the stalled owner's was written: no checkpoint, no attempt, no end.
    assert (run.status, run.ended, run.lease and run.lease.token) == ("running", None, "theirs")
    assert await store.outputs(run.run_id) == {}
    assert await store.attempts(run.run_id) == []
    await store.close()
