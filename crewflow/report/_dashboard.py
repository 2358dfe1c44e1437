"""The local dashboard (``crewflow dashboard``): a store's runs in a browser, live.

A Starlette app over one store, read only: the list of runs (filtered by crew and status), each
run's tasks and its `Report`, and two server-sent event streams that push the runs, or one run's
tasks, whenever the store changes, whichever process wrote it. It watches the store through
`Store.version` (cheap, polled twice a second) and reads the records again only when that moved.

It is a local tool that shows prompts and outputs, so it guards them as Jupyter does:

- it answers only requests whose ``Host`` is ``localhost`` or ``127.0.0.1`` (or the host it was
  told to bind to), which defeats DNS rebinding;
- every request carries the random token printed with its address, in the URL (``?token=``,
  which sets a same-site, HTTP-only cookie and redirects to the address without it) or that
  cookie;
- it has no endpoint that writes (anything but ``GET`` and ``HEAD`` is refused), and its pages
  run only its own script (a Content-Security-Policy), which sets ``textContent`` only.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from http.cookies import SimpleCookie
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode

from crewflow._records import RunStatus
from crewflow.report._status import in_flight

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from crewflow.store import RunRecord, Store

__all__ = [
    "COOKIE",
    "POLL_SECONDS",
    "RunRow",
    "TaskState",
    "changes",
    "create_app",
    "run_rows",
    "run_state",
]

POLL_SECONDS = 0.5
"""How often an event stream asks the store whether anything changed."""
HEARTBEAT_SECONDS = 15.0
"""How often a quiet event stream sends a comment, so that proxies and browsers keep it open."""
COOKIE = "crewflow_dashboard"
"""The cookie that carries the dashboard's token after the first visit."""
RUNS_SHOWN = 200
"""The most runs the list shows (the newest)."""

_LOCAL_HOSTS = ("localhost", "127.0.0.1")
_PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "connect-src 'self'; frame-src 'self'; img-src 'self' data:; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'self'"
)
_STATUSES = tuple(status.value for status in RunStatus)
_GUARD_HEADERS = ((b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"))


@dataclass(frozen=True, slots=True)
class RunRow:
    """One run as the list shows it; ``health`` is its last recorded health
    (`crewflow.store.RunRecord.health`: ``ok``, ``degraded`` or ``stalled``; empty when the
    run was never watched), ``issues`` what was wrong then, in words."""

    run_id: str
    crew: str
    status: str
    process: str
    started: str
    seconds: float | None
    tasks: int
    running: tuple[str, ...]
    health: str = ""
    issues: tuple[str, ...] = ()

    @classmethod
    def of(cls, run: RunRecord) -> RunRow:
        ended = run.ended or (datetime.now(UTC) if run.status == RunStatus.RUNNING else None)
        health = run.health
        return cls(
            run_id=run.run_id,
            crew=run.crew,
            status=run.status.value,
            process=run.chosen or run.process,
            started=run.started.astimezone().strftime("%Y-%m-%d %H:%M:%S"),
            seconds=None if ended is None else round((ended - run.started).total_seconds(), 1),
            tasks=len(run.graph),
            running=in_flight(run),
            health="" if health is None else health.status,
            issues=() if health is None else tuple(issue.detail for issue in health.issues),
        )

    def json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "crew": self.crew,
            "status": self.status,
            "process": self.process,
            "started": self.started,
            "seconds": self.seconds,
            "tasks": self.tasks,
            "running": list(self.running),
            "health": self.health,
            "issues": list(self.issues),
        }


@dataclass(frozen=True, slots=True)
class TaskState:
    """One task of a run as its live table shows it: ``completed``, ``running`` (in flight),
    ``failed``, ``skipped``, ``cancelled``, ``pending`` (not started while the run goes on) or
    ``not run``."""

    name: str
    status: str
    attempts: int


async def run_rows(store: Store, *, crew: str | None, status: str | None) -> list[RunRow]:
    """The newest runs (at most `RUNS_SHOWN`), of ``crew`` and in ``status`` when given."""
    runs = await store.list_runs(crew=crew, limit=RUNS_SHOWN)
    return [RunRow.of(run) for run in runs if not status or run.status == status]


async def run_state(store: Store, run_id: str) -> dict[str, Any] | None:
    """Run ``run_id`` and each of its tasks' state, as JSON values; ``None``: no such run."""
    from crewflow.report._status import decision_notes, skip_reasons, task_names, task_statuses

    run = await store.get_run(run_id)
    if run is None:
        return None
    attempts = await store.attempts(run_id)
    finished = await store.outputs(run_id)
    added = await store.added_tasks(run_id)
    names = task_names(run, added, attempts, finished)
    depends_on = {**{task.name: task.depends_on for task in added}, **run.graph}
    decisions = await store.decisions(run_id)
    reasons = skip_reasons(decisions)
    decided = decision_notes(decisions)
    statuses = task_statuses(run, names, attempts, finished, depends_on, reasons)
    tried: dict[str, int] = {}
    for attempt in attempts:
        tried[attempt.task] = tried.get(attempt.task, 0) + 1
    tasks = [TaskState(name, statuses[name], tried.get(name, 0)) for name in names]
    return {
        "run": RunRow.of(run).json(),
        "tasks": [
            {
                "name": t.name,
                "status": t.status,
                "attempts": t.attempts,
                "reason": reasons.get(t.name, "") if t.status == "skipped" else "",
                "decision": decided.get(t.name, ""),
            }
            for t in tasks
        ],
    }


def create_app(
    store: Store,
    *,
    token: str,
    hosts: Sequence[str] = _LOCAL_HOSTS,
    poll: float = POLL_SECONDS,
) -> Starlette:
    """The dashboard's ASGI app over ``store``: it answers requests whose ``Host`` is one of
    ``hosts`` and that carry ``token``; its event streams poll the store every ``poll``
    seconds."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.routing import Route

    views = _Views(store, poll)
    get = ["GET"]  # Starlette adds HEAD; anything else is answered 405
    routes = [
        Route("/", views.runs_page, methods=get),
        Route("/api/runs", views.runs_json, methods=get),
        Route("/events", views.runs_events, methods=get),
        Route("/runs/{run_id}", views.run_page, methods=get),
        Route("/api/runs/{run_id}", views.run_json, methods=get),
        Route("/runs/{run_id}/events", views.run_events, methods=get),
        Route("/runs/{run_id}/report", views.run_report, methods=get),
        Route("/dashboard.js", views.script, methods=get),
    ]
    middleware = [
        Middleware(TrustedHostMiddleware, allowed_hosts=list(hosts)),
        Middleware(_TokenGate, token=token),
    ]
    return Starlette(routes=routes, middleware=middleware)


class _Views:
    """The dashboard's endpoints over one store."""

    def __init__(self, store: Store, poll: float) -> None:
        from crewflow.report._html import environment

        self.store = store
        self.poll = poll
        self.pages = environment()

    def _page(self, name: str, **values: Any) -> Response:
        from starlette.responses import HTMLResponse

        html = self.pages.get_template(name).render(statuses=_STATUSES, **values)
        return HTMLResponse(html, headers={"Content-Security-Policy": _PAGE_POLICY})

    async def _rows(self, request: Request) -> list[RunRow]:
        crew = request.query_params.get("crew") or None
        status = request.query_params.get("status") or None
        return await run_rows(self.store, crew=crew, status=status)

    async def runs_page(self, request: Request) -> Response:
        crews = sorted({run.crew for run in await self.store.list_runs(limit=RUNS_SHOWN)})
        return self._page(
            "dashboard_runs.html.j2",
            rows=await self._rows(request),
            crews=crews,
            crew=request.query_params.get("crew", ""),
            status=request.query_params.get("status", ""),
        )

    async def runs_json(self, request: Request) -> Response:
        from starlette.responses import JSONResponse

        return JSONResponse([row.json() for row in await self._rows(request)])

    async def runs_events(self, request: Request) -> Response:
        async def snapshot() -> Any:
            return [row.json() for row in await self._rows(request)]

        return _event_stream(request, self.store, snapshot, self.poll)

    async def run_page(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        state = await run_state(self.store, run_id)
        if state is None:
            return _no_run(run_id)
        return self._page("dashboard_run.html.j2", state=state)

    async def run_json(self, request: Request) -> Response:
        from starlette.responses import JSONResponse

        run_id = request.path_params["run_id"]
        state = await run_state(self.store, run_id)
        return _no_run(run_id) if state is None else JSONResponse(state)

    async def run_events(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]

        async def snapshot() -> Any:
            return await run_state(self.store, run_id)

        return _event_stream(request, self.store, snapshot, self.poll)

    async def run_report(self, request: Request) -> Response:
        from starlette.responses import HTMLResponse

        from crewflow.report._model import Report

        run_id = request.path_params["run_id"]
        if await self.store.get_run(run_id) is None:
            return _no_run(run_id)
        report = await Report.from_store(self.store, run_id)
        # The report's own policy (a meta tag) lets its one inline script run by its hash.
        return HTMLResponse(report.html())

    async def script(self, request: Request) -> Response:
        from importlib import resources

        from starlette.responses import Response

        folder = resources.files("crewflow.report").joinpath("templates")
        text = folder.joinpath("dashboard.js").read_text("utf-8")
        return Response(text, media_type="text/javascript; charset=utf-8")


def _no_run(run_id: str) -> Response:
    from starlette.responses import PlainTextResponse

    return PlainTextResponse(f"no run {run_id} in this store", status_code=404)


def _event_stream(
    request: Request, store: Store, snapshot: Callable[[], Awaitable[Any]], poll: float
) -> Response:
    from starlette.responses import StreamingResponse

    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(
        changes(store, snapshot, poll, disconnected=request.is_disconnected),
        media_type="text/event-stream",
        headers=headers,
    )


async def changes(
    store: Store,
    snapshot: Callable[[], Awaitable[Any]],
    poll: float = POLL_SECONDS,
    *,
    disconnected: Callable[[], Awaitable[bool]] | None = None,
) -> AsyncIterator[str]:
    """Server-sent events: ``snapshot()`` as JSON at once, then again each time it differs
    (read when `Store.version` moved, or every ``poll`` seconds from a store that cannot
    tell), with a comment when nothing was sent for `HEARTBEAT_SECONDS`; until the client goes
    (``disconnected``)."""
    import anyio

    seen: object = object()
    sent: str | None = None
    quiet = 0.0
    while disconnected is None or not await disconnected():
        version = await store.version()
        if version is None or version != seen:
            seen = version
            data = json.dumps(await snapshot(), ensure_ascii=False)
            if data != sent:
                sent, quiet = data, 0.0
                yield f"data: {data}\n\n"
        if quiet >= HEARTBEAT_SECONDS:
            quiet = 0.0
            yield ": still here\n\n"
        await anyio.sleep(poll)
        quiet += poll


class _TokenGate:
    """Lets through the requests that carry the token: in the URL (then sets the cookie and
    redirects to the address without it) or in the cookie. Others get 403."""

    def __init__(self, app: ASGIApp, *, token: str) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        given = query.pop("token", [None])[-1]
        if given is not None and secrets.compare_digest(given, self.token):
            rest = urlencode(query, doseq=True)
            where = scope.get("root_path", "") + scope["path"] + (f"?{rest}" if rest else "")
            await _redirect(send, where, self.token)
            return
        if self._cookie(scope) is not None:

            async def guarded(message: Message) -> None:
                if message["type"] == "http.response.start":
                    # No browser guesses a type (a 404's text is text), and no address leaks.
                    message["headers"] = [*message.get("headers", ()), *_GUARD_HEADERS]
                await send(message)

            await self.app(scope, receive, guarded)
            return
        body = b"This page needs the dashboard's token: open the address it printed.\n"
        await send(
            {
                "type": "http.response.start",
                "status": 403,
                "headers": [(b"content-type", b"text/plain; charset=utf-8")],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _cookie(self, scope: Scope) -> str | None:
        for name, value in scope.get("headers", ()):
            if name != b"cookie":
                continue
            jar: SimpleCookie = SimpleCookie()
            try:
                jar.load(value.decode("latin-1"))
            except Exception:  # a malformed cookie header holds no token
                continue
            morsel = jar.get(COOKIE)
            if morsel is not None and secrets.compare_digest(morsel.value, self.token):
                return morsel.value
        return None


async def _redirect(send: Send, where: str, token: str) -> None:
    cookie = f"{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict"
    start: Message = {
        "type": "http.response.start",
        "status": 303,
        "headers": [
            (b"location", where.encode("latin-1", "replace")),
            (b"set-cookie", cookie.encode("latin-1")),
            (b"cache-control", b"no-store"),
        ],
    }
    await send(start)
    await send({"type": "http.response.body", "body": b""})
