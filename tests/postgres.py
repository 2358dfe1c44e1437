"""A real PostgreSQL server for the tests: made once per test run, on a random loopback port.

``initdb`` into a temporary directory and ``pg_ctl start`` (as the ``postgres`` user when the
tests run as root, which PostgreSQL refuses to run as), with ``fsync`` off: the data is thrown
away. Each test gets a database of its own (`fresh_database`). Where no PostgreSQL is installed
the tests that need it skip, unless ``CREWFLOW_REQUIRE_POSTGRES=1`` (CI), where they fail.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

_numbers = itertools.count()


def _binaries() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``: on the PATH, else Debian's newest."""
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda path: int(Path(path).parts[-3]) if Path(path).parts[-3].isdigit() else 0,
    )
    return Path(versions[-1]).parent if versions else None


def unavailable(reason: str) -> None:
    """Skip the test, or fail it where PostgreSQL is required (CI)."""
    if os.environ.get("CREWFLOW_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"CREWFLOW_REQUIRE_POSTGRES=1 but {reason}")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.contextmanager
def server() -> Iterator[str]:
    """Start a throw-away server; yield the URL of its ``postgres`` database."""
    with contextlib.suppress(ImportError):
        import psycopg  # noqa: F401
    binaries = _binaries()
    if binaries is None:
        unavailable("no PostgreSQL server is installed (apt-get install postgresql)")
    assert binaries is not None
    as_root = os.geteuid() == 0
    prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
    with tempfile.TemporaryDirectory(prefix="crewflow-pg-") as directory:
        data = Path(directory) / "data"
        log = Path(directory) / "log"
        if as_root:
            shutil.chown(directory, "postgres")
        port = _free_port()
        subprocess.run(
            [
                *prefix,
                binaries / "initdb",
                "-D",
                data,
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
        )
        options = (
            f"-p {port} -k {directory} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off"
        )
        subprocess.run(
            [*prefix, binaries / "pg_ctl", "-D", data, "-l", log, "-o", options, "-w", "start"],
            check=True,
            capture_output=True,
        )
        try:
            yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
        finally:
            subprocess.run(
                [*prefix, binaries / "pg_ctl", "-D", data, "-m", "immediate", "stop"],
                check=False,
                capture_output=True,
            )


def fresh_database(url: str) -> str:
    """A new, empty database on the server at ``url``; its URL."""
    import psycopg

    name = f"crewflow_{os.getpid()}_{next(_numbers)}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return url.rpartition("/")[0] + f"/{name}"
