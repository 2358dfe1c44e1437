"""`RayExecutor`: whole kickoffs on a local Ray cluster's workers, results in input order."""

from __future__ import annotations

import os
import socket
import sys
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from crewflow import Agent, Crew, Task
from crewflow.crew import CrewResult
from crewflow.exceptions import ConfigurationError, KickoffsFailed, TaskFailed
from crewflow.store import MemoryStore, SQLiteStore, resolve_store
from crewflow.testing import Error, FunctionLLM, OpenAIServer

if TYPE_CHECKING:
    from pathlib import Path

    from crewflow.llm._types import LLMRequest

pytestmark = pytest.mark.slow


def topic(request: LLMRequest) -> str:
    content = request.messages[1].content
    assert content is not None
    return content.splitlines()[0].removeprefix("about ")


def answer(request: LLMRequest) -> str | Error:
    which = topic(request)
    if which == "bad":
        return Error(400, f"cannot do {which}")
    return f"on {which} in {os.getpid()}"


def topic_crew(llm: Any, store: Any) -> Crew:
    agent = Agent(role="W", goal="G", llm=llm)
    return Crew(tasks=[Task("about {topic}", agent=agent, name="about")], store=store)


def executor() -> Any:
    from crewflow.executors import RayExecutor

    return RayExecutor(workers=2)


def test_results_come_back_in_input_order_from_the_workers(
    ray_cluster: Any, tmp_path: Path
) -> None:
    crew = topic_crew(FunctionLLM(answer), tmp_path / "runs.db")
    inputs = [{"topic": str(i)} for i in range(5)]

    results = anyio.run(lambda: crew.kickoff_for_each(inputs, executor=executor()))

    assert all(isinstance(r, CrewResult) for r in results)
    assert [r.text.split(" in ")[0] for r in results] == [f"on {i}" for i in range(5)]
    pids = {int(r.text.split(" in ")[1]) for r in results}
    assert os.getpid() not in pids  # each kickoff's calls ran in a worker
    assert len({r.run_id for r in results}) == 5


def test_a_failing_input_fails_alone_as_kickoffs_failed(ray_cluster: Any, tmp_path: Path) -> None:
    crew = topic_crew(FunctionLLM(answer), tmp_path / "runs.db")
    inputs = [{"topic": "0"}, {"topic": "bad"}, {"topic": "2"}]

    with pytest.raises(KickoffsFailed) as caught:
        anyio.run(lambda: crew.kickoff_for_each(inputs, executor=executor()))

    failed = caught.value
    assert list(failed.failures) == [1]
    assert isinstance(failed.failures[1], TaskFailed)
    assert "cannot do bad" in str(failed.failures[1])
    assert failed.results[0].text.startswith("on 0")
    assert failed.results[2].text.startswith("on 2")

    kept = anyio.run(
        lambda: crew.kickoff_for_each(inputs, executor=executor(), return_exceptions=True)
    )
    assert isinstance(kept[1], TaskFailed)


def test_every_kickoff_records_its_run_in_the_shared_file_under_its_own_lease(
    ray_cluster: Any, tmp_path: Path
) -> None:
    path = str((tmp_path / "runs.db").resolve())

    async def leased(request: LLMRequest) -> str:
        # Inside the worker, during the kickoff: its run is recorded running, leased by this
        # process (a worker runs several kickoffs at once, each under its own lease).
        store = resolve_store(path)
        assert store is not None
        running = [r for r in await store.list_runs(limit=None) if r.lease is not None]
        mine = [r for r in running if r.lease is not None and r.lease.owner.pid == os.getpid()]
        return f"{len(mine)} {os.getpid()}"

    crew = topic_crew(FunctionLLM(leased), path)
    results = anyio.run(
        lambda: crew.kickoff_for_each([{"topic": str(i)} for i in range(4)], executor=executor())
    )

    counts = [r.text.split() for r in results]
    assert all(1 <= int(leased) <= 4 for leased, _ in counts)
    assert all(int(pid) != os.getpid() for _, pid in counts)
    store = SQLiteStore(path)
    runs = anyio.run(lambda: store.list_runs(limit=None))
    assert sorted(r.run_id for r in runs) == sorted(r.run_id for r in results)
    assert {r.status for r in runs} == {"completed"}
    assert all(r.lease is None for r in runs)  # each kickoff released its lease at the end


def test_the_offline_model_runs_on_the_workers(ray_cluster: Any, tmp_path: Path) -> None:
    crew = topic_crew("offline", tmp_path / "runs.db")
    results = anyio.run(
        lambda: crew.kickoff_for_each([{"topic": "a"}, {"topic": "b"}], executor=executor())
    )
    assert [r.crew for r in results] == [crew.name] * 2
    assert all(r.text for r in results)


def test_the_api_key_reaches_the_workers_through_the_environment_only(
    ray_cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = "sk-ray-test-0123456789abcdef"
    db = tmp_path / "runs.db"
    with OpenAIServer().in_thread() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", key)
        crew = topic_crew("openai/test-model", db)
        results = anyio.run(
            lambda: crew.kickoff_for_each(
                [{"topic": str(i)} for i in range(3)], executor=executor()
            )
        )
        requests = list(server.requests)

    assert len(results) == 3
    assert len(requests) == 3
    assert all(r.has_auth for r in requests)
    stored = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("runs.db"))
    assert key.encode() not in stored
    assert all(key not in repr(r) for r in results)


def test_an_unreachable_head_is_a_clear_error_before_any_work(
    ray_cluster: Any, tmp_path: Path
) -> None:
    from crewflow.executors import RayExecutor

    with socket.socket() as sock:  # a loopback port that nothing listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    calls: list[str] = []
    crew = topic_crew(FunctionLLM(lambda r: calls.append("x") or "x"), tmp_path / "runs.db")

    with pytest.raises(
        ConfigurationError, match=rf"cannot reach the Ray head at '127.0.0.1:{port}'"
    ):
        anyio.run(
            lambda: crew.kickoff_for_each(
                [{"topic": "a"}], executor=RayExecutor(f"127.0.0.1:{port}")
            )
        )
    assert calls == []
    assert not (tmp_path / "runs.db").exists()


def test_a_sqlite_store_is_refused_on_a_cluster_with_another_machine(
    ray_cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nodes = ray_cluster.nodes()
    elsewhere = {**nodes[0], "NodeManagerAddress": "203.0.113.7", "Alive": True}  # never contacted
    monkeypatch.setattr(ray_cluster, "nodes", lambda: [*nodes, elsewhere])
    crew = topic_crew(FunctionLLM(answer), tmp_path / "runs.db")

    with pytest.raises(ConfigurationError, match=r"203\.0\.113\.7.*postgresql://"):
        anyio.run(lambda: crew.kickoff_for_each([{"topic": "a"}], executor=executor()))
    assert not (tmp_path / "runs.db").exists()


def test_different_crewflow_versions_are_a_clear_error(
    ray_cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import crewflow._version

    worker_version = crewflow._version.__version__
    monkeypatch.setattr(crewflow._version, "__version__", "0.0.1-driver")
    crew = topic_crew(FunctionLLM(answer), tmp_path / "runs.db")

    with pytest.raises(ConfigurationError) as caught:
        anyio.run(lambda: crew.kickoff_for_each([{"topic": "a"}], executor=executor()))
    assert "0.0.1-driver" in str(caught.value)
    assert worker_version in str(caught.value)


def test_what_cannot_travel_is_refused_before_any_work(ray_cluster: Any) -> None:
    from crewflow.llm.openai import OpenAIChat

    memory = topic_crew(FunctionLLM(answer), MemoryStore())
    with pytest.raises(ConfigurationError, match="MemoryStore lives in one process"):
        anyio.run(lambda: memory.kickoff_for_each([{"topic": "a"}], executor=executor()))

    keyed = topic_crew(OpenAIChat("m", api_key="sk-in-code-123"), None)
    with pytest.raises(ConfigurationError, match="API key") as caught:
        anyio.run(lambda: keyed.kickoff_for_each([{"topic": "a"}], executor=executor()))
    assert "sk-in-code-123" not in str(caught.value)


def test_a_crew_file_loaded_by_path_reaches_the_workers_by_value(
    ray_cluster: Any, tmp_path: Path
) -> None:
    from crewflow.cli._load import crew_from_file

    source = tmp_path / "files_crew_for_ray.py"
    source.write_text(
        "from crewflow import Agent, Crew, Task\n"
        "from crewflow.testing import FunctionLLM\n\n"
        "def shout(request):\n"
        "    return request.messages[1].content.splitlines()[0].upper()\n\n"
        f"crew = Crew(tasks=[Task('about {{topic}}', agent=Agent(role='W', goal='G', "
        f"llm=FunctionLLM(shout)))], store={str(tmp_path / 'runs.db')!r})\n"
    )
    with crew_from_file(source) as loaded:
        assert "files_crew_for_ray" in sys.modules
        results = anyio.run(
            lambda: loaded.crew.kickoff_for_each([{"topic": "ray"}], executor=executor())
        )
    assert results[0].text == "ABOUT RAY"


def test_without_ray_the_executor_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from crewflow.executors import RayExecutor

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ConfigurationError) as caught:
        RayExecutor()
    message = str(caught.value)
    assert "pip install 'crewflow[ray]'" in message
    assert "\n" not in message


def test_a_worker_of_another_version_runs_nothing() -> None:
    from crewflow.executors._ray import KickoffWorker

    # Asked per kickoff too (a worker restarted on a node that joined after the version check):
    # nothing is unpickled or run, and the driver gets what to say.
    worker = KickoffWorker()
    outcome = anyio.run(worker.kickoff, "digest", b"not a crew", {}, None, "0.0.1-driver", "run-id")
    assert "0.0.1-driver" in str(outcome)
    assert "Install the same crewflow on every node" in str(outcome)


def test_only_live_nodes_elsewhere_make_a_cluster_remote() -> None:
    from crewflow.executors._ray import _refuse_remote_nodes

    here = {"NodeManagerAddress": "127.0.0.1", "Alive": True}
    gone = {"NodeManagerAddress": "203.0.113.9", "Alive": False}
    _refuse_remote_nodes([here, gone], "127.0.0.1", "/tmp/runs.db")  # no error
    with pytest.raises(ConfigurationError, match="only this machine"):
        _refuse_remote_nodes([here, {**gone, "Alive": True}], "127.0.0.1", "/tmp/runs.db")


def test_concurrency_bounds_the_kickoffs_in_flight_across_workers(
    ray_cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Counted at the loopback server, which every worker calls: with room for 4 kickoffs at
    # once on the cluster, concurrency=1 still sends one request at a time.
    with OpenAIServer(latency=0.05).in_thread() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-ray-test-concurrency")
        crew = topic_crew("openai/test-model", tmp_path / "runs.db")
        inputs = [{"topic": str(i)} for i in range(4)]
        results = anyio.run(
            lambda: crew.kickoff_for_each(inputs, executor=executor(), concurrency=1)
        )
        most, count = server.max_in_flight, len(server.requests)

    assert len(results) == 4
    assert count == 4
    assert most == 1


def test_one_worker_runs_many_kickoffs_at_once_on_its_event_loop(
    ray_cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from crewflow.executors import RayExecutor

    # One worker process, concurrency=4: the server sees 4 requests at once, all from it.
    with OpenAIServer(latency=0.2).in_thread() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-ray-test-one-worker")
        crew = topic_crew("openai/test-model", tmp_path / "runs.db")
        inputs = [{"topic": str(i)} for i in range(8)]
        executor = RayExecutor(workers=1)
        try:
            results = anyio.run(
                lambda: crew.kickoff_for_each(inputs, executor=executor, concurrency=4)
            )
        finally:
            executor.close()
        most = server.max_in_flight

    assert len(results) == 8
    assert most == 4


def test_the_workers_are_kept_for_the_next_kickoffs_until_closed(
    ray_cluster: Any, tmp_path: Path
) -> None:
    from crewflow.executors import RayExecutor

    def pid_of(request: LLMRequest) -> str:
        return str(os.getpid())

    crew = topic_crew(FunctionLLM(pid_of), tmp_path / "runs.db")

    def pids(executor: Any) -> set[str]:
        results = anyio.run(
            lambda: crew.kickoff_for_each([{"topic": "a"}, {"topic": "b"}], executor=executor)
        )
        return {r.text for r in results}

    first = RayExecutor(workers=1)
    before = pids(first)
    again = RayExecutor(workers=1)  # another executor with the same options: the same worker
    assert pids(again) == before
    again.close()
    after = RayExecutor(workers=1)
    try:
        assert pids(after).isdisjoint(before)  # a new worker process once the pool was closed
    finally:
        after.close()


def test_each_kickoff_is_reported_as_it_ends_not_when_all_have(
    ray_cluster: Any, tmp_path: Path
) -> None:
    import time

    marker = tmp_path / "fast-ended"

    def answer_when_told(request: LLMRequest) -> str:
        # "slow" answers only once the driver has been told that "fast" ended (a file the
        # driver's on_end writes); gives up after 60 s, which fails the test.
        if topic(request) == "slow":
            deadline = time.monotonic() + 60
            while not marker.exists():
                if time.monotonic() > deadline:
                    return "gave up waiting"
                time.sleep(0.01)
        return "answered"

    crew = topic_crew(FunctionLLM(answer_when_told), tmp_path / "runs.db")
    started: list[int] = []
    ended: list[int] = []

    async def on_end(index: int, outcome: Any) -> None:
        ended.append(index)
        if index == 1:
            marker.write_text("ended")

    async def both() -> list[Any]:
        return await executor().kickoffs(
            crew,
            [{"topic": "slow"}, {"topic": "fast"}],
            concurrency=2,
            llm=None,
            on_start=started.append,
            on_end=on_end,
        )

    results = anyio.run(both)

    assert sorted(started) == [0, 1]
    assert ended == [1, 0]
    assert [r.text for r in results] == ["answered", "answered"]
