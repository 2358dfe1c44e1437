"""`read_history`: what a process learns of earlier runs (``ProcessContext.history()``), on
every store."""

from __future__ import annotations

from crewflow.store import Store, read_history
from tests.test_optimizer import add_run, attempt


async def test_task_seconds_leave_out_the_time_calls_waited_for_limits(store: Store) -> None:
    # A task held 3 s by a Retry-After pause took 4 s, but is a 1 s task: a prediction for a
    # process that would not be throttled must not count the pause.
    rows = [attempt("a", 0, 4, limit_wait=3.0), attempt("b", 4, 6)]
    await add_run(store, "run", rows, crew_key="k")

    history = await read_history(store, "k")

    assert history.task_seconds == {"a": 1.0, "b": 2.0}


async def test_recent_lists_which_process_ran_each_settled_run_newest_first(store: Store) -> None:
    for index, (process, chosen) in enumerate([("sequential", None), ("adaptive", "parallel")]):
        rows = [attempt("a", 100 * index, 100 * index + 1)]
        await add_run(
            store,
            f"run-{index}",
            rows,
            started=100 * index,
            crew_key="k",
            process=process,
            chosen=chosen,
        )

    history = await read_history(store, "k")

    assert history.recent == ["parallel", "sequential"]
    assert set(history.processes) == {"parallel", "sequential"}
