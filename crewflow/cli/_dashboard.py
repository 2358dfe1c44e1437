"""``crewflow dashboard``: serve the local dashboard (`crewflow.report._dashboard`) over a run
database until interrupted, printing its address with its token, as Jupyter does."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

from rich.console import Console
from rich.text import Text

from crewflow.cli._common import (
    EXIT_OK,
    EXIT_USAGE,
    database_exists,
    database_path,
    exit_code,
    print_error,
    shown_database,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from crewflow.cli._common import Database

_LOCAL = ("127.0.0.1", "localhost")
_ANY = ("0.0.0.0", "::", "")  # every address: named to warn, never bound by default


def serve_dashboard(*, host: str, port: int, db: Database | None) -> int:
    """What ``crewflow dashboard`` does; returns the exit code."""
    out, err = Console(highlight=False), Console(stderr=True, highlight=False)
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        print_error(err, "the dashboard needs its extra: pip install 'crewflow[dashboard]'")
        return EXIT_USAGE
    path = database_path(db)
    if not database_exists(path):
        print_error(
            err,
            f"no run database at {shown_database(path)} yet: run a crew first, or give --db PATH",
        )
        return EXIT_USAGE
    if host not in _LOCAL:
        err.print(
            Text(
                f"warning: the dashboard listens on {host or 'every address'}: anyone who can "
                "reach it and has the token sees every prompt and output in the database.",
                style="yellow",
            ),
            soft_wrap=True,
        )
    token = secrets.token_urlsafe(24)

    def ready(address: str) -> None:
        out.print(Text(f"crewflow dashboard over {shown_database(path)}"), soft_wrap=True)
        out.print(Text(f"{address}/?token={token}"), soft_wrap=True)
        out.print(Text("Press Ctrl+C to stop.", style="dim"))

    try:
        import anyio

        anyio.run(_serve, path, host, port, token, ready)
    except (Exception, KeyboardInterrupt) as exc:
        if isinstance(exc, KeyboardInterrupt):
            return EXIT_OK
        return exit_code(err, exc)
    return EXIT_OK


def allowed_hosts(host: str) -> list[str]:
    """The ``Host`` headers the dashboard answers when bound to ``host``."""
    if host in _ANY:
        return ["*"]  # bound everywhere: the token alone guards it (warned above)
    return sorted({*_LOCAL, host})


async def _serve(
    path: Database, host: str, port: int, token: str, ready: Callable[[str], None]
) -> None:
    import anyio
    import uvicorn

    from crewflow.report._dashboard import create_app
    from crewflow.store import SQLiteStore, Store

    store: Store
    if isinstance(path, str):
        from crewflow.store.postgres import PostgresStore

        store = PostgresStore(path)
    else:
        store = SQLiteStore(path, read_only=True)
    async with store:
        app = create_app(store, token=token, hosts=allowed_hosts(host))
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            # Event streams never end by themselves: give them a second at shutdown.
            timeout_graceful_shutdown=1,
        )
        server = uvicorn.Server(config)
        async with anyio.create_task_group() as group:
            group.start_soon(server.serve)
            while not server.started:
                if server.should_exit:
                    return
                await anyio.sleep(0.02)
            bound = server.servers[0].sockets[0].getsockname()
            shown = "localhost" if host in _LOCAL else (host or "0.0.0.0")
            ready(f"http://{shown}:{bound[1]}")
