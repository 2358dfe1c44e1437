"""`RayExecutor`: whole kickoffs on the workers of a Ray cluster.

The driver (the process that calls `Crew.kickoff_for_each`) checks every input, connects to the
cluster, pickles the crew once (`crewflow.executors._ship`) and hands each input to one of a
pool of worker actors, at most ``concurrency`` at once, to the least busy worker. A worker is a
long-lived Ray actor, one process, that runs many kickoffs at once on its own event loop, as a
process of crewflow does: the agent loops, the LLM calls and the per-call layer (limits, cache,
events, cancellation, HTTP clients) stay in that process and are shared by its kickoffs, and
each kickoff records its run, with its lease, in the crew's store like any other. The limits'
counts are the exception: they live in one actor per pool that every worker asks
(`crewflow.executors._limits`), so they hold cluster-wide. Results come back in input order;
a kickoff's `CrewflowError` comes back as a value, so the driver reports failures exactly as the
local `kickoff_for_each` does.

Why actors rather than one Ray task per kickoff: kickoffs mostly wait on models, so a task per
kickoff either holds a CPU while it waits or, with a fraction of a CPU each, makes Ray start a
worker process per kickoff in flight and stop it again once idle (a process start, with its
imports, costs about as much CPU as a hundred kickoffs). ``benchmarks/scale_out.py`` measured
both on a 2-CPU local cluster, 16 kickoffs at once: 600 ms of wall time and 470 ms of CPU more
than in one process per kickoff with tasks, against a few milliseconds with the pool.

What crosses the wire: the pickled crew (its store given as a path or URL, never a `Store`
object; no LLM client holding a key), the inputs, the ``llm`` override's name, and crewflow's
version. API keys travel in the workers' environment (``runtime_env["env_vars"]``), taken from
the driver's environment; they are never logged or recorded by crewflow.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from crewflow import _version
from crewflow._spec import new_id
from crewflow.exceptions import ConfigurationError, CrewflowError, CrewRunError, RunInProgress
from crewflow.executors._limits import SharedLimits, declared_limits
from crewflow.executors._limits import start as start_limits
from crewflow.executors._limits import stop as stop_limits
from crewflow.executors._limits import use as use_limits
from crewflow.executors._ray_tools import Prepared, Raised, raise_again, run_tool
from crewflow.executors._ship import Shipment, by_value, ship
from crewflow.tools import ToolExecutor

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping, Sequence

    from crewflow.crew import Crew, CrewResult
    from crewflow.limits import Limit
    from crewflow.llm._base import LLM
    from crewflow.tools import Tool

__all__ = ["RayExecutor"]

EXTRA_HINT: Final = "RayExecutor needs Ray: pip install 'crewflow[ray]'"

KICKOFF_RETRIES: Final = 3
"""How many times a kickoff is run again after its worker died (killed, out of memory, its
node lost). Each retry resumes the run from its checkpoints: it never starts the run over."""

CONNECT_TIMEOUT: Final = 5.0
"""Seconds the driver waits for the head's port to accept a connection before it says the head
is unreachable (no kickoff has started then)."""

CANCEL_GRACE: Final = 30.0
"""Seconds a cancelled driver waits for each of its kickoffs to end on its worker and record
the run as cancelled. A kickoff still running after that is left to its worker."""


class RayExecutor(ToolExecutor):
    """Run the kickoffs of `Crew.kickoff_for_each`, or each call of a tool, on the workers of
    a Ray cluster.

    The same crew file runs on a laptop and on a cluster; only the executor (and, past one
    machine, the store) changes. A SQLite store is allowed only while every node of the
    cluster is this machine (the workers write the same file); a cluster of several machines
    needs a store they all reach (a PostgreSQL URL).

    The kickoffs run in a pool of worker actors spread over the cluster's nodes, each a
    long-lived process running many kickoffs at once on its event loop (kickoffs mostly wait
    on models). The pool is made on the first `kickoff_for_each` and kept for the next ones
    of this process with the same options, so only the first pays for starting the workers
    (about a second each); `close` stops it, as does the end of this process.

    Args:
        address: The cluster's head (``"10.0.0.5:6379"``, ``"ray://head:10001"``, ``"auto"``).
            ``None`` joins the cluster this process is already connected to, else the one
            ``RAY_ADDRESS`` names, else starts a local one.
        num_cpus: The CPUs of a local cluster this executor starts (``address=None``).
        runtime_env: Ray's runtime environment for the workers (``pip``, ``working_dir``,
            ``env_vars``, ...). The provider variables the crew's models read
            (``OPENAI_API_KEY``, ``ANTHROPIC_API_KEY``, ...) and ``CREWFLOW_*`` are added to
            its ``env_vars`` from this process's environment; values given here win.
        workers: How many worker actors run the kickoffs (``None``: one per CPU of the
            cluster when the pool is made). ``concurrency`` kickoffs are spread over them,
            the least busy first.
        worker_cpus: The CPUs Ray reserves for each worker. ``0`` (the default) reserves
            none: the workers mostly wait on models, and CPU-heavy tools run as Ray tasks of
            their own, which reserve theirs.
        tool_cpus: The CPUs Ray reserves for each call of a tool made with
            ``@tool(executor=...)`` (CPU-heavy tools want a whole one).
        shared_limits: Share the limits (concurrency, rpm, tpm, Retry-After pauses) across
            every worker through one Ray actor, so the cluster as a whole keeps them (a round
            trip of a few ms per LLM call; see "Scaling out"). ``False``: each worker keeps
            them on its own. Until a limit is declared there is nothing to share and no actor.

    A worker that dies in the middle of a kickoff (killed, out of memory, its node lost) does
    not lose the kickoff: each input's run id is chosen here before it is submitted, and Ray
    restarts the worker and runs the kickoff again (up to `KICKOFF_RETRIES` times), which
    resumes that run from its checkpoints, taking over the dead worker's lease: on the same
    machine at once (its process is gone), elsewhere once the lease expires. What had finished
    is neither lost nor asked for again. A crew with ``store=None`` has no checkpoints: its
    retried kickoff starts over.

    Raises:
        ConfigurationError: Ray is not installed (the message names the extra), or an
            argument is invalid.

    Example:
        ```python
        from crewflow.executors import RayExecutor

        results = await crew.kickoff_for_each(
            [{"topic": t} for t in topics], executor=RayExecutor("ray-head:6379")
        )
        ```
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        num_cpus: int | None = None,
        runtime_env: Mapping[str, Any] | None = None,
        workers: int | None = None,
        worker_cpus: float = 0.0,
        tool_cpus: float = 1.0,
        shared_limits: bool = True,
    ) -> None:
        try:
            import ray
        except ImportError:
            raise ConfigurationError(EXTRA_HINT) from None
        if num_cpus is not None and num_cpus < 1:
            raise ConfigurationError(f"num_cpus must be at least 1, not {num_cpus}")
        if num_cpus is not None and address is not None:
            raise ConfigurationError(
                "num_cpus sizes a local cluster this executor starts; a cluster at an address "
                "has its own CPUs (drop num_cpus, or address)"
            )
        if workers is not None and workers < 1:
            raise ConfigurationError(f"workers must be at least 1, not {workers}")
        for name, cpus in (("worker_cpus", worker_cpus), ("tool_cpus", tool_cpus)):
            if cpus < 0:
                raise ConfigurationError(f"{name} cannot be negative, not {cpus}")
        self._ray = ray
        self.address = address
        self.num_cpus = num_cpus
        self.runtime_env = dict(runtime_env or {})
        self.workers = workers
        self.worker_cpus = worker_cpus
        self.tool_cpus = tool_cpus
        self.shared_limits = shared_limits
        self._pool: _Pool | None = None
        self._tools: dict[int, tuple[Tool, Prepared]] = {}

    def __repr__(self) -> str:
        return f"RayExecutor(address={self.address!r})"

    def __getstate__(self) -> dict[str, Any]:
        # A tool's executor travels with a shipped crew: its settings, not this process's
        # Ray module, worker pool or the object references it holds.
        return {
            "address": self.address,
            "num_cpus": self.num_cpus,
            "runtime_env": self.runtime_env,
            "workers": self.workers,
            "worker_cpus": self.worker_cpus,
            "tool_cpus": self.tool_cpus,
            "shared_limits": self.shared_limits,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        import ray

        self.__dict__.update(state, _ray=ray, _pool=None, _tools={})

    async def call_tool(self, tool: Tool, args: list[Any], kwargs: dict[str, Any]) -> Any:
        """Call ``tool``'s function in a Ray task, and return what it returned there.

        The first call of a tool joins the cluster and puts the function, pickled by value, in
        the object store; later calls send the arguments only. Cancelling the call cancels the
        Ray task (``ray.cancel``, which interrupts the function in its worker).

        Raises:
            Exception: What the function raised in the worker (or one of the same class name
                and message, when it cannot travel back); a `RuntimeError` when the Ray task
                itself failed (its worker died).
        """
        import anyio

        found = self._tools.get(id(tool))
        prepared = found[1] if found is not None else None
        if prepared is None:
            prepared = await anyio.to_thread.run_sync(self._prepare_tool, tool)
            self._tools[id(tool)] = (tool, prepared)
        ref = prepared.remote.remote(
            prepared.digest, prepared.function, args, kwargs, _version.__version__
        )
        try:
            outcome = await ref
        except anyio.get_cancelled_exc_class():
            self._ray.cancel(ref)
            raise
        except self._ray.exceptions.RayError as exc:
            raise RuntimeError(f"its Ray task failed ({_last_line(exc)})") from None
        if isinstance(outcome, Raised):
            raise_again(outcome)
        return outcome

    def _prepare_tool(self, tool: Tool) -> Prepared:
        """Join the cluster and ready ``tool`` for calls (in a worker thread: both block)."""
        self._join()
        payload = by_value(tool.fn)
        ray = self._ray
        remote = _remote(ray, run_tool).options(
            num_cpus=self.tool_cpus, runtime_env=self.runtime_env or None
        )
        return Prepared(remote, ray.put(payload), hashlib.sha256(payload).hexdigest())

    def _join(self) -> None:
        """Join (or start) the cluster unless this process is in one already."""
        ray = self._ray
        address = self.address or os.environ.get("RAY_ADDRESS") or None
        if address not in (None, "auto", "local"):
            _check_reachable(address)
        if not ray.is_initialized():
            try:
                ray.init(address=self.address, num_cpus=self.num_cpus, log_to_driver=False)
            except ConnectionError as exc:
                raise ConfigurationError(
                    f"cannot join the Ray cluster at {address!r} ({exc}); nothing was "
                    "started. Start the head with `ray start --head`, or check the address"
                ) from None

    def close(self) -> None:
        """Stop the worker actors this executor used (kickoffs still running on them fail).
        Nothing to do if it never ran a kickoff; the workers also stop when this process
        ends."""
        pool, self._pool = self._pool, None
        if pool is not None:
            _POOLS.pop(pool.key, None)
            for worker in pool.workers:
                self._ray.kill(worker)
            if pool.limits is not None:
                stop_limits(self._ray, pool.limits)

    async def kickoffs(
        self,
        crew: Crew,
        inputs: Sequence[Mapping[str, Any]],
        *,
        concurrency: int | None,
        llm: str | LLM | None,
        run_ids: Sequence[str] | None = None,
        on_start: Callable[[int], None] | None = None,
        on_end: Callable[[int, CrewResult | CrewflowError], Awaitable[None]] | None = None,
    ) -> list[CrewResult | CrewflowError]:
        """Run one kickoff of ``crew`` per input on the cluster, at most ``concurrency`` at once.

        Called by `Crew.kickoff_for_each` once the inputs are checked. Every setup error
        (an unreachable head, a store the cluster cannot share, a crew that cannot be shipped,
        mismatched versions) is raised before the first kickoff starts.

        Each input's run id is chosen before its kickoff is submitted (``run_ids`` gives them,
        as ``crewflow batch`` does): a worker resumes a run its store already holds (reads a
        completed one back) instead of kicking off another, which is also what a kickoff
        retried after its worker died does. ``on_start(index)`` is called as an input's
        kickoff is submitted, and ``await on_end(index, outcome)`` as it ends (``crewflow
        batch`` shows and records each as it goes).

        Returns:
            A `CrewResult` or the kickoff's `CrewflowError`, per input, in input order.
        """
        import anyio

        if llm is not None and not isinstance(llm, str):
            raise ConfigurationError(
                "with RayExecutor, pass llm as a model string (e.g. 'openai/gpt-4o'): each "
                "worker makes its own client"
            )
        shipment = ship(crew, llm)
        limits = declared_limits(crew.limits) if self.shared_limits else {}
        pool, crew_ref = await anyio.to_thread.run_sync(self._connect, shipment, limits)
        results: list[CrewResult | CrewflowError | None] = [None] * len(inputs)
        limiter = anyio.CapacityLimiter(concurrency or max(1, len(inputs)))
        busy = [0] * len(pool.workers)
        version = _version.__version__

        async def one(index: int, values: Mapping[str, Any]) -> None:
            async with limiter:
                which = busy.index(min(busy))
                busy[which] += 1
                worker = pool.workers[which]
                run_id = new_id() if run_ids is None else run_ids[index]
                if on_start is not None:
                    on_start(index)
                ref = worker.kickoff.remote(
                    shipment.digest, crew_ref, dict(values), llm, version, run_id, pool.limits
                )
                try:
                    outcome = await ref
                except anyio.get_cancelled_exc_class():
                    self._ray.cancel(ref)
                    await self._wait_out(ref)
                    raise
                except self._worker_died as exc:
                    outcome = _died(run_id, exc)
                except self._ray.exceptions.RayError as exc:
                    raise _worker_failed(exc) from None
                finally:
                    busy[which] -= 1
                if isinstance(outcome, _VersionMismatch):
                    raise ConfigurationError(str(outcome))
                results[index] = outcome
                if on_end is not None:
                    await on_end(index, outcome)

        try:
            async with anyio.create_task_group() as group:
                for index, values in enumerate(inputs):
                    group.start_soon(one, index, values)
        except* ConfigurationError as caught:
            # A worker that cannot run kickoffs at all (another version, no crewflow): the
            # first such error, as it was raised, not wrapped in a group.
            raise caught.exceptions[0] from None
        return [r for r in results if r is not None]

    async def _wait_out(self, ref: Any) -> None:
        """Wait, shielded and for at most `CANCEL_GRACE` seconds, for a cancelled kickoff to
        end on its worker, so that once the driver's cancellation is through, the run is
        recorded as cancelled in the store (as a local kickoff's is) rather than still running."""
        import anyio

        # TaskCancelledError is the expected end; another RayError, a worker that died meanwhile.
        with (
            anyio.CancelScope(shield=True),
            anyio.move_on_after(CANCEL_GRACE),
            contextlib.suppress(self._ray.exceptions.RayError),
        ):
            await ref

    def _connect(self, shipment: Shipment, limits: dict[str, Limit]) -> tuple[_Pool, Any]:
        """Join (or start) the cluster, refuse a SQLite store on a multi-machine cluster, make
        (or reuse) the worker pool and check its crewflow, declare ``limits`` to the pool's
        limit actor (started with the first limits), and put the crew in the object store.
        Runs in a worker thread: joining blocks for seconds."""
        ray = self._ray
        self._join()
        if shipment.sqlite is not None:
            _refuse_remote_nodes(ray.nodes(), ray.util.get_node_ip_address(), shipment.sqlite)
        env = {**shipment.env, **self.runtime_env.get("env_vars", {})}
        runtime_env = {**self.runtime_env, "env_vars": env}
        self._pool = pool = self._workers(runtime_env)
        try:
            versions = ray.get([worker.version.remote() for worker in pool.workers])
        except ray.exceptions.RayError as exc:
            self.close()
            raise _worker_failed(exc) from None
        for worker_version, host in versions:
            if worker_version != _version.__version__:
                raise ConfigurationError(
                    str(_VersionMismatch(_version.__version__, worker_version, host))
                )
        if limits or pool.limits is not None:
            pool.limits = start_limits(ray, limits, pool.limits)
        return pool, ray.put(shipment.payload)

    def _workers(self, runtime_env: dict[str, Any]) -> _Pool:
        """The pool for these options in the cluster this process is connected to: the one
        made earlier, else a new one."""
        ray = self._ray
        count = self.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        digest = hashlib.sha256(
            json.dumps(
                [runtime_env, count, self.worker_cpus, self.shared_limits], sort_keys=True
            ).encode()
        ).hexdigest()
        key = (ray.get_runtime_context().get_job_id(), digest)
        pool = _POOLS.get(key)
        if pool is None:
            actor = _worker_class(ray).options(
                num_cpus=self.worker_cpus,
                runtime_env=runtime_env,
                max_concurrency=WORKER_CONCURRENCY,
                max_restarts=-1,
                max_task_retries=KICKOFF_RETRIES,
                scheduling_strategy="SPREAD",
            )
            pool = _POOLS[key] = _Pool(key, [actor.remote() for _ in range(count)])
        return pool

    @property
    def _worker_died(self) -> tuple[type[Exception], ...]:
        """Ray's errors for a call whose worker or node died (after its retries)."""
        errors = self._ray.exceptions
        return (
            errors.RayActorError,
            errors.WorkerCrashedError,
            errors.NodeDiedError,
            errors.OutOfMemoryError,
        )


@dataclass
class _Pool:
    """Worker actors made for one set of options in one connection to a cluster."""

    key: tuple[str, str]
    workers: list[Any]
    limits: SharedLimits | None = None
    """The pool's limit actor, once limits were declared (then kept, as a process keeps its
    limits: the most recent declaration of a key wins, the others stay)."""


_POOLS: dict[tuple[str, str], _Pool] = {}

WORKER_CONCURRENCY: Final = 10_000
"""The most calls a worker actor takes at once (Ray's ``max_concurrency``): far above any
``concurrency`` a driver passes, which is what bounds the kickoffs in flight."""


def _check_reachable(address: str) -> None:
    """Raise a clear error when nothing listens at the head's address (Ray itself would retry
    for a long while, then fail with a less helpful message)."""
    parts = urlsplit(address if "://" in address else f"ray://{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if not host or port is None:
        raise ConfigurationError(
            f"the Ray address {address!r} is not host:port (e.g. '10.0.0.5:6379' or "
            "'ray://head:10001')"
        )
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT):
            pass
    except OSError as exc:
        raise ConfigurationError(
            f"cannot reach the Ray head at {address!r} ({exc.strerror or exc}); no kickoff "
            "was started. Start it with `ray start --head`, or check the address"
        ) from None


def _refuse_remote_nodes(nodes: Sequence[Mapping[str, Any]], local_ip: str, path: str) -> None:
    """A SQLite store is one file on one machine: refuse a cluster with a node elsewhere."""
    remote = sorted(
        {
            str(node.get("NodeManagerAddress"))
            for node in nodes
            if node.get("Alive") and node.get("NodeManagerAddress") != local_ip
        }
    )
    if remote:
        raise ConfigurationError(
            f"the crew's store is the SQLite file {path!r}, which only this machine "
            f"({local_ip}) can write, but the Ray cluster has nodes at {', '.join(remote)}. "
            "A cluster of several machines needs a store they all reach: "
            "Crew(store='postgresql://...') (pip install 'crewflow[postgres]')"
        )


def _last_line(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[-1]}" if text else type(exc).__name__


def _died(run_id: str, exc: Exception) -> CrewRunError:
    """A kickoff's error when its worker died on every try: its run keeps what finished."""
    error = CrewRunError(
        f"the Ray worker running this kickoff died, {KICKOFF_RETRIES + 1} times "
        f"({_last_line(exc)}); run {run_id!r} keeps every task that finished: "
        f"`crewflow resume {run_id}` finishes it"
    )
    error.run_id = run_id
    return error


def _worker_failed(exc: Exception) -> ConfigurationError:
    first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    return ConfigurationError(
        f"a Ray worker could not run the kickoff ({type(exc).__name__}: {first}). Is crewflow "
        f"{_version.__version__} installed on every node (pip install 'crewflow[ray]')?"
    )


class _VersionMismatch:
    """What a worker returns instead of running a kickoff when its crewflow differs."""

    def __init__(self, driver: str, worker: str, host: str) -> None:
        self.driver, self.worker, self.host = driver, worker, host

    def __str__(self) -> str:
        return (
            f"crewflow versions differ: the driver runs {self.driver}, a Ray worker on "
            f"{self.host} runs {self.worker}. Install the same crewflow on every node, or pass "
            "RayExecutor(runtime_env={'pip': ['crewflow==" + self.driver + "']})"
        )


_REMOTE: dict[tuple[int, str], Any] = {}
_WORKER_CLASS: dict[int, Any] = {}
CREWS_KEPT: Final = 4
"""How many unpickled crews a worker keeps (by digest), so its next kickoffs of the same crew
skip unpickling."""


def _worker_class(ray: Any) -> Any:
    remote = _WORKER_CLASS.get(id(ray))
    if remote is None:
        remote = _WORKER_CLASS[id(ray)] = ray.remote(KickoffWorker)
    return remote


def _remote(ray: Any, function: Any, *, retries: int = 0) -> Any:
    """``function`` as a Ray remote function, made once per process."""
    key = (id(ray), function.__name__)
    remote = _REMOTE.get(key)
    if remote is None:
        remote = _REMOTE[key] = ray.remote(max_retries=retries)(function)
    return remote


class KickoffWorker:
    """A worker actor: runs kickoffs, many at once, on the event loop of its Ray process,
    with the crews it was sent unpickled once each."""

    def __init__(self) -> None:
        self._crews: dict[str, Crew] = {}

    async def version(self) -> tuple[str, str]:
        """The crewflow version this worker runs, and its host (asked before every
        `kickoff_for_each` submits a kickoff)."""
        return _version.__version__, socket.gethostname()

    async def kickoff(
        self,
        digest: str,
        payload: bytes,
        inputs: dict[str, Any],
        llm: str | None,
        driver_version: str,
        run_id: str,
        limits: SharedLimits | None = None,
    ) -> CrewResult | CrewflowError | _VersionMismatch:
        """Bring run ``run_id`` of the crew ``payload`` pickles to its end (kicked off under
        that id, or resumed when the store has it: a batch resumed, or this kickoff run again
        after the worker running it died), its error returned as a value. With ``limits``, its
        LLM calls take their permits from the pool's limit actor."""
        if _version.__version__ != driver_version:
            return _VersionMismatch(driver_version, _version.__version__, socket.gethostname())
        use_limits(limits)
        crew = self._crews.get(digest)
        if crew is None:
            from crewflow.executors._ship import unship

            crew = unship(payload)
            while len(self._crews) >= CREWS_KEPT:
                self._crews.pop(next(iter(self._crews)))
            self._crews[digest] = crew
        try:
            return await _kickoff_or_resume(crew, run_id, inputs, llm)
        except CrewflowError as exc:
            return exc


async def _kickoff_or_resume(
    crew: Crew, run_id: str, inputs: dict[str, Any], llm: str | None
) -> CrewResult:
    """`Crew._carry_out`, waiting out the lease of a worker that died on another machine (on
    this one, its process is gone and the lease is taken over at once)."""
    import anyio

    if crew.resolved_store() is None:
        return await crew.kickoff(inputs, llm=llm, progress=False, run_id=run_id)
    while True:
        try:
            return await crew._carry_out(inputs, run_id, llm)
        except RunInProgress as busy:
            if busy.expires is None:
                raise
            left = (busy.expires - datetime.now(UTC)).total_seconds()
            await anyio.sleep(max(0.0, left) + 1.0)
